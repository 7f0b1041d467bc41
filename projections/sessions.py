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
  start (Claude Code ``SessionStart`` with source ``resume``) keeps the first ``started_at`` and
  clears ``ended_at`` and ``end_reason`` until the next end; ``occurred_at`` times, UTC).
- ``event_count``: events of the session stream; ``message_count``: ``MessageRecorded``;
  ``tool_call_count``: distinct tool calls (starts, plus ends paired ``orphan``, less the late
  starts of those orphans);
  ``tool_error_count``: ends with ``success`` false.
- ``cost_usd`` (USD), ``input_tokens``, ``output_tokens``: sums over linked spans of
  ``gen_ai.usage.cost_usd``/``cost_usd``, ``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens`` (span attributes).
- ``first_position``/``last_position``: positions of the first/last event (session event or
  linked span) that touched the row; ``last_event_at``: the latest ``occurred_at`` among them.

A linked span may arrive before any session event: it creates the row (``status`` None).
``STATUSES`` are the values ``status`` can hold besides None.
"""

from __future__ import annotations

from collections.abc import Iterable

from domain.base import LedgerEvent
from domain.session import (
    STATUS_TRANSITIONS,
    MessageRecorded,
    SessionEnded,
    SessionEvent,
    SessionStarted,
    SessionStatusChanged,
    ToolCallEnded,
    ToolCallStarted,
)
from domain.trace import SpanRecorded
from projections.base import Key, Projection, Rows, later, span_facts, span_session_id, utc
from projections.schema import SESSIONS, clamp_int64

#: ``status`` after ``SessionStarted`` and after ``SessionEnded`` (as ``Session.apply`` sets it).
STARTED_STATUS = "running"
ENDED_STATUS = "completed"
#: Every ``status`` a row can hold (None aside), in ``STATUS_TRANSITIONS`` order: the two above
#: and every target of a ``SessionStatusChanged`` move (not ``draft``: no move enters it).
STATUSES: tuple[str, ...] = tuple(
    status
    for status in STATUS_TRANSITIONS
    if status is not None
    and (
        status in (STARTED_STATUS, ENDED_STATUS)
        or any(status in targets for targets in STATUS_TRANSITIONS.values())
    )
)

# What fold does for an event class (worked out once per class, as isinstance would decide).
_OTHER, _STARTED, _STATUS, _MESSAGE, _TOOL_START, _TOOL_END, _ENDED, _SPAN, _NONE = range(9)
_SESSION_KINDS: tuple[tuple[type[LedgerEvent], int], ...] = (
    (SessionStarted, _STARTED),
    (SessionStatusChanged, _STATUS),
    (MessageRecorded, _MESSAGE),
    (ToolCallStarted, _TOOL_START),
    (ToolCallEnded, _TOOL_END),
    (SessionEnded, _ENDED),
)
_KINDS: dict[type, int] = {}


def _kind(cls: type) -> int:
    kind = _KINDS.get(cls)
    if kind is None:
        if issubclass(cls, SessionEvent):
            kind = next((k for c, k in _SESSION_KINDS if issubclass(cls, c)), _OTHER)
        elif issubclass(cls, SpanRecorded):
            kind = _SPAN
        else:
            kind = _NONE
        _KINDS[cls] = kind
    return kind


def _key(event: LedgerEvent) -> Key | None:
    kind = _kind(type(event))
    if kind == _NONE:
        return None
    if kind == _SPAN:
        session_id = span_session_id(event)  # type: ignore[arg-type]
        return None if session_id is None else (event.project, session_id)
    return (event.project, event.external_id)


def reads(event: LedgerEvent) -> Iterable[Key]:
    """The session row an event updates."""
    key = _key(event)
    return () if key is None else (key,)


def fold(event: LedgerEvent, position: int, rows: Rows) -> None:
    """Fold one session event or linked span into its ``sessions`` row."""
    kind = _kind(type(event))
    if kind == _NONE:
        return
    if kind == _SPAN:
        facts = span_facts(event)  # type: ignore[arg-type]
        if facts.session_id is None:
            return
        key = (event.project, facts.session_id)
    else:
        key = (event.project, event.external_id)
    existing = rows.get(_TABLE, key)
    row = dict(existing) if existing is not None else SESSIONS.blank(key)
    if kind == _SPAN:
        if facts.input_tokens is not None:
            row["input_tokens"] = clamp_int64(row["input_tokens"] + facts.input_tokens)
        if facts.output_tokens is not None:
            row["output_tokens"] = clamp_int64(row["output_tokens"] + facts.output_tokens)
        if facts.cost_usd is not None:
            row["cost_usd"] += facts.cost_usd
    else:
        row["event_count"] += 1
        if kind == _TOOL_START:
            if not event.late:  # type: ignore[attr-defined]  # a late start's end counted it
                row["tool_call_count"] += 1
        elif kind == _TOOL_END:
            ended: ToolCallEnded = event  # type: ignore[assignment]
            if ended.pairing == "orphan":
                row["tool_call_count"] += 1
            if not ended.success:
                row["tool_error_count"] += 1
        elif kind == _MESSAGE:
            row["message_count"] += 1
        elif kind == _STARTED:
            started: SessionStarted = event  # type: ignore[assignment]
            row["status"] = STARTED_STATUS
            row["ended_at"] = row["end_reason"] = None  # a resume: open until the next end
            row["agent"] = started.agent or row["agent"]
            row["model"] = started.model or row["model"]
            row["workspace"] = started.cwd or row["workspace"]
            if row["started_at"] is None:
                row["started_at"] = utc(started.occurred_at)
        elif kind == _STATUS:
            row["status"] = event.status  # type: ignore[attr-defined]
        elif kind == _ENDED:
            row["status"] = ENDED_STATUS
            row["ended_at"] = utc(event.occurred_at)
            row["end_reason"] = event.reason  # type: ignore[attr-defined]
    # the event (session event or linked span) touched the row
    if not row["first_position"]:
        row["first_position"] = position
    row["last_position"] = position
    row["last_event_at"] = later(row["last_event_at"], utc(event.occurred_at))
    rows.put(_TABLE, key, row)


_TABLE = SESSIONS.name


PROJECTION = Projection(
    name="sessions",
    table=SESSIONS,
    consumes=(SessionEvent, SpanRecorded),
    fold=fold,
    reads=reads,
)
