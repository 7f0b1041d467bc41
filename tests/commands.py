"""Commands the tests send straight to a ``Ledger`` or a writer (no HTTP)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from domain.base import EventMeta, content_sha256
from domain.ledger import Command


def message(event_id: str, session: str, content: Any = None) -> Command:
    """``record_message`` of an assistant message ``content`` (default: the event id) in session
    ``session``, from the API, now; its content hash is that of ``event_id``, so the same id sent
    again is a duplicate."""
    return Command(
        "session",
        session,
        "record_message",
        EventMeta(event_id, content_sha256(event_id), datetime.now(UTC), "api"),
        {
            "role": "assistant",
            "message_kind": "message",
            "content": event_id if content is None else content,
        },
    )
