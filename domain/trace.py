"""The ``trace`` stream: one OpenTelemetry trace (external id: OTLP ``trace_id``, 32 lowercase hex).

Events: ``SpanRecorded`` (OpenTelemetry fields verbatim, from opentelemetry-proto ``trace.proto``).

Rule: a ``span_id`` is recorded once per trace. Its ``event_id`` is ``"{trace_id}/{span_id}"``, so
the same span again is a duplicate and different content under the same ``span_id`` is an
``IdempotencyConflictError`` (reported per span as an OTLP partial-success rejection).
"""

from __future__ import annotations

from typing import Any

from domain.base import EventMeta, LedgerAggregate, LedgerEvent

#: The span fields, exactly as OTLP names them (snake_case, ``trace.proto``).
SPAN_FIELDS = (
    "span_id", "parent_span_id", "trace_state", "flags", "name", "kind",
    "start_time_unix_nano", "end_time_unix_nano", "status_code", "status_message",
    "attributes", "resource_attributes", "events", "links", "scope",
    "dropped_attributes_count", "dropped_events_count", "dropped_links_count",
    "resource_schema_url", "scope_schema_url",
)  # fmt: skip


class TraceEvent(LedgerEvent):
    """Base of the trace stream's events."""


class SpanRecorded(TraceEvent):
    """One span (``*_unix_nano`` are integer nanoseconds since the Unix epoch)."""

    span_id: str
    parent_span_id: str | None
    trace_state: str
    flags: int
    name: str
    kind: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    status_code: str
    status_message: str
    attributes: dict[str, Any]
    resource_attributes: dict[str, Any]
    events: list[dict[str, Any]]
    links: list[dict[str, Any]]
    scope: dict[str, Any]
    dropped_attributes_count: int
    dropped_events_count: int
    dropped_links_count: int
    resource_schema_url: str
    scope_schema_url: str

    def apply(self, aggregate: Trace) -> None:
        aggregate.span_count += 1
        if self.parent_span_id is None:
            aggregate.root_span_ids.append(self.span_id)


class Trace(LedgerAggregate):
    """One trace's stream."""

    KIND = "trace"
    EVENT_BASE = TraceEvent
    COMMANDS = ("record_span",)

    def __init__(self, id: Any) -> None:
        super().__init__(id)
        self.span_count = 0
        self.root_span_ids: list[str] = []

    def record_span(self, meta: EventMeta, *, span: dict[str, Any]) -> None:
        """Record one span; ``span`` holds every name of ``SPAN_FIELDS`` (others are ignored)."""
        payload = dict(zip(SPAN_FIELDS, map(span.get, SPAN_FIELDS), strict=True))
        self.trigger(SpanRecorded, meta, **payload)

    def state(self) -> dict[str, Any]:
        """Span count and root span ids."""
        return {
            **super().state(),
            "span_count": self.span_count,
            "root_span_ids": self.root_span_ids,
        }
