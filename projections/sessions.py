"""The ``sessions`` read model: one row per agent session (DESIGN.md §4).

Consumes every session-stream event (``SessionStarted``, ``SessionStatusChanged``,
``MessageRecorded``, ``ToolCallStarted``, ``ToolCallEnded``, ``SessionEnded`` change columns; the
others only count) and ``SpanRecorded`` events linked to a session by ``runledger.session_id``,
``session.id`` (Claude Code) or ``gen_ai.conversation.id`` (OTel GenAI), in the span's
attributes or resource attributes (cost and tokens).

Columns:

- ``status``, ``agent``, ``model``, ``workspace`` (the start's ``cwd``), ``started_at``,
  ``ended_at``: as the ``Session`` aggregate's ``apply`` sets them (``SessionStarted`` ->
  ``running``, ``SessionStatusChanged`` -> its status, ``SessionEnded`` -> ``completed``; a later
  start keeps the first ``started_at``; ``occurred_at`` times, UTC).
- ``event_count``: events of the session stream; ``message_count``: ``MessageRecorded``;
  ``tool_call_count``: distinct tool calls (starts, plus ends paired ``orphan``);
  ``tool_error_count``: ends with ``success`` false.
- ``cost_usd`` (USD), ``input_tokens``, ``output_tokens``: sums over linked spans of
  ``gen_ai.usage.cost_usd``/``cost_usd``, ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens`` (span attributes).
- ``first_position``/``last_position``: positions of the first/last event (session event or
  linked span) that touched the row; ``last_event_at``: the latest ``occurred_at`` among them.

A linked span may arrive before any session event: it creates the row (``status`` None).
"""

from __future__ import annotations

from collections.abc import Iterable

from domain.base import LedgerEvent
from domain.session import (
    MessageRecorded,
    SessionEnded,
    SessionEvent,
    SessionStarted,
    SessionStatusChanged,
    ToolCallEnded,
    ToolCallStarted,
)
from domain.trace import SpanRecorded
from projections.base import Key, Projection, Row, Rows, later, span_session_id, span_usage, utc
from projections.schema import SESSIONS, clamp_int64


def _key(event: LedgerEvent) -> Key | None:
    if isinstance(event, SessionEvent):
        return (event.project, event.external_id)
    if isinstance(event, SpanRecorded):
        session_id = span_session_id(event)
        return None if session_id is None else (event.project, session_id)
    return None


def reads(event: LedgerEvent) -> Iterable[Key]:
    """The session row an event updates."""
    key = _key(event)
    return () if key is None else (key,)


def _touch(row: Row, event: LedgerEvent, position: int) -> None:
    if not row["first_position"]:
        row["first_position"] = position
    row["last_position"] = position
    row["last_event_at"] = later(row["last_event_at"], utc(event.occurred_at))


def fold(event: LedgerEvent, position: int, rows: Rows) -> None:
    """Fold one session event or linked span into its ``sessions`` row."""
    key = _key(event)
    if key is None:
        return
    existing = rows.get(SESSIONS.name, key)
    row = dict(existing) if existing is not None else SESSIONS.blank(key)
    if isinstance(event, SessionEvent):
        row["event_count"] += 1
        if isinstance(event, SessionStarted):
            row["status"] = "running"
            row["agent"] = event.agent or row["agent"]
            row["model"] = event.model or row["model"]
            row["workspace"] = event.cwd or row["workspace"]
            if row["started_at"] is None:
                row["started_at"] = utc(event.occurred_at)
        elif isinstance(event, SessionStatusChanged):
            row["status"] = event.status
        elif isinstance(event, MessageRecorded):
            row["message_count"] += 1
        elif isinstance(event, ToolCallStarted):
            row["tool_call_count"] += 1
        elif isinstance(event, ToolCallEnded):
            if event.pairing == "orphan":
                row["tool_call_count"] += 1
            if not event.success:
                row["tool_error_count"] += 1
        elif isinstance(event, SessionEnded):
            row["status"] = "completed"
            row["ended_at"] = utc(event.occurred_at)
            row["end_reason"] = event.reason
    elif isinstance(event, SpanRecorded):
        input_tokens, output_tokens, cost_usd = span_usage(event)
        if input_tokens is not None:
            row["input_tokens"] = clamp_int64(row["input_tokens"] + input_tokens)
        if output_tokens is not None:
            row["output_tokens"] = clamp_int64(row["output_tokens"] + output_tokens)
        if cost_usd is not None:
            row["cost_usd"] += cost_usd
    _touch(row, event, position)
    rows.put(SESSIONS.name, key, row)


PROJECTION = Projection(
    name="sessions",
    table=SESSIONS,
    consumes=(SessionEvent, SpanRecorded),
    fold=fold,
    reads=reads,
)
