"""The ``chain_summaries`` and ``chain_stages`` read models: execution chains (DESIGN.md §4).

Consumes ``ChainCreated``, ``StageAdded``, ``StageTransitioned``, ``StageSessionLinked``,
``StageApprovalRecorded``, ``StageMetricsRecorded``, ``ChainStatusChanged``.

Modelled on AILANG's observatory (``internal/observatory/schema_chains.sql``: tables
``execution_chains``/``chain_stages`` and view ``chain_summary``, SOURCES.md §3.1):

- ``chain_stages``: one row per stage. ``status`` follows ``StageTransitioned``; ``started_at`` is
  the first move to ``running``, ``completed_at`` the move to ``completed`` or ``failed``
  (``occurred_at``, UTC); ``approval_*``, ``human_feedback``, ``iteration`` from
  ``StageApprovalRecorded`` (a field the event leaves None keeps its value); metric columns are
  sums of ``StageMetricsRecorded.metrics`` (``cost_usd`` USD, ``duration_ms`` ms, counts rounded
  to integers).
- ``chain_summaries``: one row per chain. ``status`` (``active | pending_approval | completed |
  failed``) as the ``Chain`` aggregate sets it; ``current_stage_id`` is the last stage moved to
  ``running``/``awaiting_approval`` and ``current_agent_id`` its agent; ``stage_count``,
  ``stages_completed``; metric totals over all stages; ``agent_flow`` the stages' agent ids in
  ``stage_number`` order joined with ``" -> "`` (AILANG ``GROUP_CONCAT(agent_id, ' -> ')``, ordered);
  ``pending_approvals`` the number of stages whose ``approval_status`` is ``pending``.
  ``created_at`` is the creation's ``occurred_at``, ``updated_at`` the latest ``occurred_at``,
  ``completed_at`` the move to ``completed``/``failed``.

The summary keeps its own per-stage index (internal column ``stage_index``) instead of reading
``chain_stages``, so each of the two projections rebuilds on its own. ``STATUSES`` are the
values a summary's ``status`` can hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from domain.base import LedgerEvent
from domain.chain import (
    CHAIN_TRANSITIONS,
    ChainCreated,
    ChainEvent,
    ChainStatusChanged,
    StageAdded,
    StageApprovalRecorded,
    StageMetricsRecorded,
    StageSessionLinked,
    StageTransitioned,
)
from projections.base import Key, Projection, Row, Rows, as_count, as_number, later, utc
from projections.schema import CHAIN_STAGES, CHAIN_SUMMARIES, clamp_int64

#: ``StageMetricsRecorded.metrics`` keys (``domain.chain.STAGE_METRICS``): fractional ones
#: (``cost_usd`` USD, ``duration_ms`` ms) and counts.
FRACTIONAL_METRICS = ("cost_usd", "duration_ms")
COUNT_METRICS = ("tokens_in", "tokens_out", "turns", "tool_calls")

#: Stage statuses that make a stage the chain's current one, and terminal ones.
_CURRENT = ("running", "awaiting_approval")
_TERMINAL = ("completed", "failed")

AGENT_FLOW_SEPARATOR = " -> "

#: A summary's ``status`` after ``ChainCreated`` (as ``Chain.apply`` sets it).
CREATED_STATUS = "active"
#: Every ``status`` a summary can hold, in ``CHAIN_TRANSITIONS`` order: the one above and every
#: target of a ``ChainStatusChanged`` move. (``pending`` is a stage's status, never a chain's.)
STATUSES: tuple[str, ...] = tuple(
    status
    for status in CHAIN_TRANSITIONS
    if status == CREATED_STATUS or any(status in targets for targets in CHAIN_TRANSITIONS.values())
)


def add_metrics(row: Row, metrics: Mapping[str, Any] | None) -> None:
    """Add ``StageMetricsRecorded.metrics`` increments to a row's metric columns (in place).

    Values that are not finite numbers are ignored; counts are rounded to integers.
    """
    if not isinstance(metrics, Mapping):
        return
    for name in FRACTIONAL_METRICS:
        number = as_number(metrics.get(name))
        if number is not None:
            row[name] = float(row[name]) + number
    for name in COUNT_METRICS:
        count = as_count(metrics.get(name))
        if count is not None:
            row[name] = clamp_int64(int(row[name]) + count)


# -- chain_stages -------------------------------------------------------------------------------


def _stage_key(event: ChainEvent) -> Key | None:
    stage_id = getattr(event, "stage_id", None)
    if not isinstance(stage_id, str):
        return None
    return (event.project, event.external_id, stage_id)


def reads_stages(event: LedgerEvent) -> Iterable[Key]:
    """The stage row a stage event updates."""
    if isinstance(event, ChainEvent):
        key = _stage_key(event)
        if key is not None:
            return (key,)
    return ()


def fold_stages(event: LedgerEvent, position: int, rows: Rows) -> None:
    """Fold a stage event into its ``chain_stages`` row (chain-level events are skipped)."""
    if not isinstance(event, ChainEvent):
        return
    key = _stage_key(event)
    if key is None:
        return
    existing = rows.get(CHAIN_STAGES.name, key)
    row = dict(existing) if existing is not None else CHAIN_STAGES.blank(key)
    if existing is None:
        row["first_position"] = position
    row["last_position"] = position
    if isinstance(event, StageAdded):
        row["stage_number"] = event.stage_number
        row["agent_id"] = event.agent_id
        row["provider"] = event.provider
        row["handoff_to"] = event.handoff_to
        row["status"] = row["status"] or "pending"
    elif isinstance(event, StageTransitioned):
        row["status"] = event.to_status
        occurred = utc(event.occurred_at)
        if event.to_status == "running" and row["started_at"] is None:
            row["started_at"] = occurred
        if event.to_status in _TERMINAL:
            row["completed_at"] = occurred
        if event.error_message is not None:
            row["error_message"] = event.error_message
    elif isinstance(event, StageSessionLinked):
        row["session_id"] = event.session_id
    elif isinstance(event, StageApprovalRecorded):
        row["approval_status"] = event.approval_status
        for name in ("approval_id", "approval_type", "human_feedback", "iteration"):
            value = getattr(event, name)
            if value is not None:
                row[name] = value
    elif isinstance(event, StageMetricsRecorded):
        add_metrics(row, event.metrics)
        row["model"] = event.model or row["model"]
        row["cost_provenance"] = event.cost_provenance or row["cost_provenance"]
    rows.put(CHAIN_STAGES.name, key, row)


# -- chain_summaries ----------------------------------------------------------------------------


def reads_summaries(event: LedgerEvent) -> Iterable[Key]:
    """The chain's summary row."""
    if isinstance(event, ChainEvent):
        return ((event.project, event.external_id),)
    return ()


def _stage_order(item: tuple[str, dict[str, Any]]) -> tuple[bool, int, str]:
    number = item[1].get("stage_number")
    return (number is None, number if isinstance(number, int) else 0, item[0])


def _derive(row: Row) -> None:
    stages: dict[str, dict[str, Any]] = row["stage_index"]
    ordered = sorted(stages.items(), key=_stage_order)
    row["stage_count"] = len(stages)
    row["stages_completed"] = sum(1 for s in stages.values() if s.get("status") == "completed")
    row["pending_approvals"] = sum(
        1 for s in stages.values() if s.get("approval_status") == "pending"
    )
    row["agent_flow"] = AGENT_FLOW_SEPARATOR.join(str(s.get("agent_id") or "?") for _, s in ordered)
    current = stages.get(row["current_stage_id"] or "")
    row["current_agent_id"] = current.get("agent_id") if current else None


def fold_summaries(event: LedgerEvent, position: int, rows: Rows) -> None:
    """Fold a chain event into the chain's ``chain_summaries`` row."""
    if not isinstance(event, ChainEvent):
        return
    key = (event.project, event.external_id)
    existing = rows.get(CHAIN_SUMMARIES.name, key)
    row = dict(existing) if existing is not None else CHAIN_SUMMARIES.blank(key)
    if existing is None:
        row["first_position"] = position
    row["last_position"] = position
    occurred = utc(event.occurred_at)
    row["updated_at"] = later(row["updated_at"], occurred)
    # What _derive reads (the stage index, current_stage_id) changes only with a new row, a new
    # stage, or the events below that set a stage's number, agent, status or approval status.
    derive = existing is None
    stage_id = getattr(event, "stage_id", None)
    stage: dict[str, Any] | None = None
    if isinstance(stage_id, str):
        # Copy the index and the stage it changes: the dicts from rows.get stay untouched.
        stages: dict[str, dict[str, Any]] = dict(row["stage_index"] or {})
        row["stage_index"] = stages
        known = stages.get(stage_id)
        derive = derive or known is None
        stage = dict(
            known
            or {"stage_number": None, "agent_id": None, "status": None, "approval_status": None}
        )
        stages[stage_id] = stage
    if isinstance(event, ChainCreated):
        row["status"] = CREATED_STATUS
        row["created_at"] = occurred
        for name in (
            "title",
            "source_type",
            "source_ref",
            "github_repo",
            "github_issue_number",
            "workspace",
        ):
            row[name] = getattr(event, name)
    elif isinstance(event, ChainStatusChanged):
        row["status"] = event.status
        if event.status in _TERMINAL:
            row["completed_at"] = occurred
    elif stage is not None:
        if isinstance(event, StageAdded):
            stage.update(stage_number=event.stage_number, agent_id=event.agent_id)
            stage["status"] = stage["status"] or "pending"
            derive = True
        elif isinstance(event, StageTransitioned):
            stage["status"] = event.to_status
            if event.to_status in _CURRENT:
                row["current_stage_id"] = event.stage_id
            derive = True
        elif isinstance(event, StageApprovalRecorded):
            stage["approval_status"] = event.approval_status
            derive = True
        elif isinstance(event, StageMetricsRecorded):
            add_metrics(row, event.metrics)
    if derive:
        _derive(row)
    rows.put(CHAIN_SUMMARIES.name, key, row)


CHAIN_SUMMARIES_PROJECTION = Projection(
    name="chain_summaries",
    table=CHAIN_SUMMARIES,
    consumes=(ChainEvent,),
    fold=fold_summaries,
    reads=reads_summaries,
)

CHAIN_STAGES_PROJECTION = Projection(
    name="chain_stages",
    table=CHAIN_STAGES,
    consumes=(
        StageAdded,
        StageTransitioned,
        StageSessionLinked,
        StageApprovalRecorded,
        StageMetricsRecorded,
    ),
    fold=fold_stages,
    reads=reads_stages,
)
