"""The ``tool_calls`` read model: one row per tool call of a session (DESIGN.md §4).

Consumes ``ToolCallStarted`` (Claude Code ``PreToolUse``, ``SubagentStart``) and
``ToolCallEnded`` (``PostToolUse``, ``PostToolUseFailure``, ``SubagentStop``).

The domain already paired each end with its start (``pairing``: ``tool_use_id``,
``latest_unfinished`` when the hook carried no ``tool_use_id`` and the end was matched to the
latest unfinished call of the same tool, or ``orphan`` for an end with no start), and an end
always names the resolved ``tool_use_id``. So a row is keyed by ``(project, session_id,
tool_use_id)``; an orphan end creates a row with no start (``started_at``, ``start_position``
None). A start arriving after its orphan end (same ``tool_use_id``; the domain records it as
``ToolCallStarted.late``) pairs the call: its row's ``pairing`` becomes ``tool_use_id``, as had
the start come first.

``duration_ms`` (ms): the end event's ``duration_ms`` when given, else ``ended_at - started_at``
(both the writers' ``occurred_at``); None while either side is missing. ``first_position`` is the
position of the event that opened the row (the start, or an orphan's end): the views' order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from domain.base import LedgerEvent
from domain.session import ToolCallEnded, ToolCallStarted
from projections.base import Key, Projection, Rows, ms_between, utc
from projections.schema import TOOL_CALLS

_CONSUMES = (ToolCallStarted, ToolCallEnded)


def _key(event: ToolCallStarted | ToolCallEnded) -> Key:
    return (event.project, event.external_id, event.tool_use_id)


def reads(event: LedgerEvent) -> Iterable[Key]:
    """The tool call row an event updates."""
    if isinstance(event, _CONSUMES):
        return (_key(event),)
    return ()


def _duration_ms(given: float | None, row: dict[str, object]) -> float | None:
    if isinstance(given, int | float) and not isinstance(given, bool) and math.isfinite(given):
        return float(given)
    started = row["started_at"]
    ended = row["ended_at"]
    return ms_between(started, ended)  # type: ignore[arg-type]


def fold(event: LedgerEvent, position: int, rows: Rows) -> None:
    """Fold a tool call's start or end into its row."""
    if not isinstance(event, _CONSUMES):
        return
    key = _key(event)
    existing = rows.get(TOOL_CALLS.name, key)
    row = dict(existing) if existing is not None else TOOL_CALLS.blank(key)
    if existing is None:
        row["first_position"] = position
    if isinstance(event, ToolCallStarted):
        row["tool_name"] = event.tool_name
        row["tool_input_sha256"] = event.tool_input_sha256
        row["agent_id"] = event.agent_id
        row["started_at"] = utc(event.occurred_at)
        row["start_position"] = position
        if row["pairing"] == "orphan":  # its end came first: this start pairs it by id
            row["pairing"] = "tool_use_id"
        if row["end_position"] is not None and row["duration_ms"] is None:
            row["duration_ms"] = _duration_ms(None, row)
    else:
        row["tool_name"] = row["tool_name"] or event.tool_name
        row["ended_at"] = utc(event.occurred_at)
        row["success"] = bool(event.success)
        row["pairing"] = event.pairing
        row["error"] = event.error
        row["end_position"] = position
        row["duration_ms"] = _duration_ms(event.duration_ms, row)
    rows.put(TOOL_CALLS.name, key, row)


PROJECTION = Projection(
    name="tool_calls",
    table=TOOL_CALLS,
    consumes=(ToolCallStarted, ToolCallEnded),
    fold=fold,
    reads=reads,
)
