"""Moving large payload values to the blob store before their event is recorded.

A value whose serialised size exceeds ``blob_threshold_bytes`` (default 16 KiB) is written to the
blob store under its sha256 and replaced by ``{"sha256", "size_bytes", "media_type"}`` (DESIGN.md §2).
Raw bytes (e.g. a baseline's tar.gz archive) always go to the blob store. The blob is durable before
the event is committed, so an acknowledged event never points at a missing blob.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from domain.base import canonical_json
from infra.blobs import BlobStore

Offload = Callable[[Any, str], Any]


def inline(value: Any, media_type: str) -> Any:
    """The ``Offload`` without a blob store: every value stays inline (``value`` unchanged;
    ``media_type`` unused). The default of ``EventBody.to_command`` and ``to_commands``."""
    return value


def make_offload(store: BlobStore, threshold_bytes: int) -> Offload:
    """An ``offload(value, media_type)`` function bound to ``store`` and the size threshold.

    Returns:
        A function returning ``value`` unchanged when small, else its blob reference.
    """

    def offload(value: Any, media_type: str) -> Any:
        if value is None:
            return None
        if isinstance(value, bytes):
            return store.put(value, media_type)
        if isinstance(value, str):
            data = value.encode()
            media = "text/plain; charset=utf-8"
        else:
            data = canonical_json(value)
            media = "application/json"
        if len(data) <= threshold_bytes:
            return value
        return store.put(
            data, media if media_type in ("text/plain", "application/json") else media_type
        )

    offload.threshold_bytes = threshold_bytes  # type: ignore[attr-defined]
    return offload


def json_and_sha256(offload: Offload, value: Any) -> tuple[Any, str]:
    """``(offload(value, "application/json"), content_sha256(value))``, serialising ``value`` once
    when it stays inline (the common case: a tool input below the threshold).

    Returns:
        The value or its blob reference, and the sha256 hex of its canonical JSON.
    """
    data = canonical_json(value)
    digest = hashlib.sha256(data).hexdigest()
    threshold = getattr(offload, "threshold_bytes", None)
    if value is None or (threshold is not None and len(data) <= threshold):
        return value, digest
    return offload(value, "application/json"), digest
