"""Events as JSON for the audit endpoints and the command line.

Shape of one rendered event::

    {"position": int | null, "stream": {"kind", "project", "external_id", "stream_id"},
     "version": int, "type": "ToolCallEnded", "class_version": int, "event_id": str,
     "recorded_at": RFC 3339, "occurred_at": RFC 3339, "source": str, "content_sha256": hex,
     "payload": {event-specific fields}}
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from domain.base import LedgerEvent

#: Fields every event carries; the rest is the payload.
ENVELOPE = {
    "originator_id", "originator_version", "timestamp", "project", "external_id", "event_id",
    "content_sha256", "occurred_at", "source",
}  # fmt: skip


def jsonable(value: Any) -> Any:
    """Datetimes to RFC 3339 strings, recursively; everything else unchanged."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def render_event(event: LedgerEvent, position: int | None) -> dict[str, Any]:
    """One event as JSON (see module docstring)."""
    fields = vars(event)
    return {
        "position": position,
        "stream": {
            "kind": type(event).aggregate_class.KIND,
            "project": event.project,
            "external_id": event.external_id,
            "stream_id": str(event.originator_id),
        },
        "version": event.originator_version,
        "type": type(event).__name__,
        "class_version": getattr(type(event), "class_version", 1),
        "event_id": event.event_id,
        "recorded_at": event.timestamp.isoformat(),
        "occurred_at": event.occurred_at.isoformat(),
        "source": event.source,
        "content_sha256": event.content_sha256,
        "payload": jsonable({k: v for k, v in fields.items() if k not in ENVELOPE}),
    }
