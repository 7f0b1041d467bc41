"""The ``approvals`` read model: the pending queue and every decision (DESIGN.md §4).

Consumes ``ApprovalRequested`` and ``ApprovalDecided``.

``status`` is ``pending`` after the request and the neutral ``decision`` (``approved`` |
``denied``) after the decision, as the ``Approval`` aggregate's ``apply`` sets it;
``source_decision`` keeps the source's own word (HumanLayer ``approve``/``deny``, AILANG
``rejected``, cc-broker ``allow``/``deny``). ``requested_at``/``decided_at`` are the writers'
``occurred_at`` (UTC); ``latency_ms`` (ms) is ``decided_at - requested_at`` when both are known.
``first_position`` is the request's position (the views' order), ``last_position`` the latest.
"""

from __future__ import annotations

from collections.abc import Iterable

from domain.approval import ApprovalDecided, ApprovalEvent, ApprovalRequested
from domain.base import LedgerEvent
from projections.base import Key, Projection, Rows, ms_between, utc
from projections.schema import APPROVALS


def reads(event: LedgerEvent) -> Iterable[Key]:
    """The approval row an event updates."""
    if isinstance(event, ApprovalEvent):
        return ((event.project, event.external_id),)
    return ()


def fold(event: LedgerEvent, position: int, rows: Rows) -> None:
    """Fold a request or a decision into the approval's row."""
    if not isinstance(event, ApprovalRequested | ApprovalDecided):
        return
    key = (event.project, event.external_id)
    existing = rows.get(APPROVALS.name, key)
    row = dict(existing) if existing is not None else APPROVALS.blank(key)
    if existing is None:
        row["first_position"] = position
    row["last_position"] = position
    if isinstance(event, ApprovalRequested):
        if row["decision"] is None:
            row["status"] = "pending"
        row["approval_type"] = event.approval_type
        row["session_id"] = event.session_id
        row["tool_use_id"] = event.tool_use_id
        row["tool_name"] = event.tool_name
        row["tool_input_sha256"] = event.tool_input_sha256
        row["chain_id"] = event.chain_id
        row["stage_id"] = event.stage_id
        row["requested_by"] = event.requested_by
        row["requested_at"] = utc(event.occurred_at)
    else:
        row["status"] = event.decision
        row["decided_at"] = utc(event.occurred_at)
        row["decision"] = event.decision
        row["source_decision"] = event.source_decision
        row["scope"] = event.scope
        row["decided_by"] = event.decided_by
        row["comment"] = event.comment
    row["latency_ms"] = ms_between(row["requested_at"], row["decided_at"])
    rows.put(APPROVALS.name, key, row)


PROJECTION = Projection(
    name="approvals",
    table=APPROVALS,
    consumes=(ApprovalRequested, ApprovalDecided),
    fold=fold,
    reads=reads,
)
