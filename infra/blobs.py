"""Blob store: large payload values kept outside the log, addressed by their sha256.

An event holds ``{"sha256": hex, "size_bytes": int, "media_type": str}`` instead of the value
(DESIGN.md §2). ``put`` is idempotent (same bytes, same key), so a retried request stores nothing new.
Implementations: ``LocalBlobStore`` (a directory, the default), ``MemoryBlobStore`` (tests).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

_HEX = set("0123456789abcdef")


class BlobNotFoundError(KeyError):
    """No blob with that sha256."""


def is_sha256_hex(value: str) -> bool:
    """True for 64 lowercase hex characters."""
    return len(value) == 64 and set(value) <= _HEX


def blob_ref(data: bytes, media_type: str) -> dict[str, object]:
    """The reference an event holds for ``data``."""
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size_bytes": len(data),
        "media_type": media_type,
    }


class BlobStore(Protocol):
    """Content-addressed bytes."""

    def put(self, data: bytes, media_type: str) -> dict[str, object]:
        """Store ``data``; return its reference ``{sha256, size_bytes, media_type}``."""
        ...

    def get(self, sha256: str) -> bytes:
        """The bytes stored under ``sha256``.

        Raises:
            BlobNotFoundError: nothing stored under it.
        """
        ...


class MemoryBlobStore:
    """Blobs in a dict (unit tests)."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}

    def put(self, data: bytes, media_type: str) -> dict[str, object]:
        """See ``BlobStore.put``."""
        ref = blob_ref(data, media_type)
        self._blobs[str(ref["sha256"])] = data
        return ref

    def get(self, sha256: str) -> bytes:
        """See ``BlobStore.get``."""
        try:
            return self._blobs[sha256]
        except KeyError:
            raise BlobNotFoundError(sha256) from None


class LocalBlobStore:
    """Blobs as files ``<root>/<sha[:2]>/<sha>``, written atomically (temp file + rename + fsync)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes, media_type: str) -> dict[str, object]:
        """See ``BlobStore.put``; durable (fsync) before it returns."""
        ref = blob_ref(data, media_type)
        path = self._path(str(ref["sha256"]))
        if path.exists():
            return ref
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ref

    def get(self, sha256: str) -> bytes:
        """See ``BlobStore.get``."""
        if not is_sha256_hex(sha256):
            raise BlobNotFoundError(sha256)
        try:
            return self._path(sha256).read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(sha256) from None
