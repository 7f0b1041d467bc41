"""Read models of the ledger: pure folds per projection, the catch-up runner, the views.

Modules: ``db`` (database protocol, SQLite), ``schema`` (tables and DDL), ``base`` (fold API),
one module per read model (``sessions``, ``tool_calls``, ``approvals``, ``workspace_baselines``,
``criteria``, ``chains``, ``traces``), ``catalog`` (all projections by name), ``runner`` (the
catch-up projector) and ``views`` (the read queries of the HTTP API).
"""
