"""The ``spans`` and ``trace_summaries`` read models: OpenTelemetry traces (DESIGN.md §4).

Consumes ``SpanRecorded`` (fields verbatim from opentelemetry-proto ``trace.proto``).

- ``spans``: one row per span, the OTel columns verbatim (``*_unix_nano``: integer ns since the
  Unix epoch; ``kind``/``status_code``: enum names such as ``SPAN_KIND_SERVER``,
  ``STATUS_CODE_ERROR``), plus ``duration_ms`` (ms, ``(end - start) / 1e6``), ``service_name``
  (resource ``service.name``), links to the ledger's streams (``session_id``: see
  ``projections.base.SESSION_KEYS``; ``chain_id``: ``runledger.chain_id``/``chain.id``;
  ``stage_id``: ``runledger.stage_id``/``stage.id``), ``model`` (``gen_ai.response.model``, else
  ``gen_ai.request.model``) and usage (``gen_ai.usage.input_tokens``,
  ``gen_ai.usage.output_tokens``, ``gen_ai.usage.cost_usd``/``cost_usd`` in USD).
- ``trace_summaries``: one row per trace: the root span (the first span in log order without a
  parent; until it arrives, NULL: a child may be recorded before its root), its name, the service
  name (the root's, else the first span's), the first linked session, ``span_count``,
  ``error_count`` (spans with ``status_code == "STATUS_CODE_ERROR"``), the earliest start and
  latest end (ns) and their difference in ms.

A ``span_id`` is recorded once per trace (the domain's rule), so a span row is only ever written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from domain.base import LedgerEvent
from domain.trace import SpanRecorded
from projections.base import (
    Key,
    Projection,
    Rows,
    as_nano,
    span_facts,
)
from projections.schema import SPANS, TRACE_SUMMARIES

ERROR_STATUS = "STATUS_CODE_ERROR"


def _duration_ms(start: int | None, end: int | None) -> float | None:
    if start is None or end is None:
        return None
    return (end - start) / 1e6


def _mapping(value: object) -> object:
    return value if isinstance(value, Mapping) else {}


def _sequence(value: object) -> object:
    return value if isinstance(value, list) else []


def fold_spans(event: LedgerEvent, position: int, rows: Rows) -> None:
    """Write the span's row."""
    if not isinstance(event, SpanRecorded):
        return
    key = (event.project, event.external_id, event.span_id)
    start = as_nano(event.start_time_unix_nano)
    end = as_nano(event.end_time_unix_nano)
    facts = span_facts(event)
    # every column of SPANS, in its order (what SPANS.blank(key) updated with them gives)
    row = {
        "project": key[0],
        "trace_id": key[1],
        "span_id": key[2],
        "parent_span_id": event.parent_span_id or None,
        "name": event.name,
        "kind": event.kind,
        "start_time_unix_nano": start,
        "end_time_unix_nano": end,
        "duration_ms": _duration_ms(start, end),
        "status_code": event.status_code,
        "status_message": event.status_message,
        "trace_state": event.trace_state,
        "flags": as_nano(event.flags),
        "attributes": _mapping(event.attributes),
        "resource_attributes": _mapping(event.resource_attributes),
        "events": _sequence(event.events),
        "links": _sequence(event.links),
        "scope": _mapping(event.scope),
        "service_name": facts.service_name,
        "session_id": facts.session_id,
        "chain_id": facts.chain_id,
        "stage_id": facts.stage_id,
        "model": facts.model,
        "input_tokens": facts.input_tokens,
        "output_tokens": facts.output_tokens,
        "cost_usd": facts.cost_usd,
        "position": position,
    }
    rows.put(SPANS.name, key, row)


def reads_summaries(event: LedgerEvent) -> Iterable[Key]:
    """The trace's summary row."""
    if isinstance(event, SpanRecorded):
        return ((event.project, event.external_id),)
    return ()


def fold_summaries(event: LedgerEvent, position: int, rows: Rows) -> None:
    """Fold a span into its trace's summary."""
    if not isinstance(event, SpanRecorded):
        return
    key = (event.project, event.external_id)
    existing = rows.get(TRACE_SUMMARIES.name, key)
    row = dict(existing) if existing is not None else TRACE_SUMMARIES.blank(key)
    if existing is None:
        row["first_position"] = position
    row["last_position"] = position
    row["span_count"] += 1
    if event.status_code == ERROR_STATUS:
        row["error_count"] += 1
    start = as_nano(event.start_time_unix_nano)
    end = as_nano(event.end_time_unix_nano)
    if start is not None and (
        row["start_time_unix_nano"] is None or start < row["start_time_unix_nano"]
    ):
        row["start_time_unix_nano"] = start
    if end is not None and (row["end_time_unix_nano"] is None or end > row["end_time_unix_nano"]):
        row["end_time_unix_nano"] = end
    row["duration_ms"] = _duration_ms(row["start_time_unix_nano"], row["end_time_unix_nano"])
    facts = span_facts(event)
    service = facts.service_name
    is_root = not event.parent_span_id
    if is_root and row["root_span_id"] is None:
        row["root_span_id"] = event.span_id
        row["root_name"] = event.name
        row["service_name"] = service or row["service_name"]
    elif row["service_name"] is None:
        row["service_name"] = service
    if row["session_id"] is None:
        row["session_id"] = facts.session_id
    rows.put(TRACE_SUMMARIES.name, key, row)


SPANS_PROJECTION = Projection(
    name="spans",
    table=SPANS,
    consumes=(SpanRecorded,),
    fold=fold_spans,
)

TRACE_SUMMARIES_PROJECTION = Projection(
    name="trace_summaries",
    table=TRACE_SUMMARIES,
    consumes=(SpanRecorded,),
    fold=fold_summaries,
    reads=reads_summaries,
)
