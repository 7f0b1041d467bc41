"""Blob store: large payload values kept outside the log, addressed by their sha256.

An event holds ``{"sha256": hex, "size_bytes": int, "media_type": str}`` instead of the value
(DESIGN.md §2). ``put`` is idempotent (same bytes, same key), so a retried request stores nothing new.
Implementations: ``LocalBlobStore`` (a directory, the default), ``S3BlobStore`` (an S3 bucket
through boto3: AWS S3, MinIO, any S3-compatible server), ``MemoryBlobStore`` (tests).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

_HEX = set("0123456789abcdef")


class BlobNotFoundError(KeyError):
    """No blob with that sha256."""


class BlobStoreUnavailableError(RuntimeError):
    """The blob store refused or could not be reached (S3: after boto3's own retries)."""


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

    def check(self) -> None:
        """Raise ``BlobStoreUnavailableError`` when blobs cannot be stored now (readiness)."""
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

    def check(self) -> None:
        """See ``BlobStore.check``: always ready."""


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

    def check(self) -> None:
        """See ``BlobStore.check``: the directory exists and is writable."""
        if not (self.root.is_dir() and os.access(self.root, os.W_OK)):
            raise BlobStoreUnavailableError(f"blob directory {self.root} is not writable")


#: S3 error codes meaning "no such object" / "no such bucket" (AWS, MinIO, moto).
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_NO_BUCKET = {"NoSuchBucket", "404", "NotFound"}


class S3BlobStore:
    """Blobs as objects ``<prefix><sha256>`` of an S3 bucket (``Content-Type`` = the media type).

    ``put`` is one ``PutObject``: the key is the content's sha256, so a retried request writes
    the same bytes over themselves (no ``HeadObject`` round trip before every new blob); S3's
    write is atomic and durable once it answers. boto3 retries throttling and transient errors
    itself (its ``standard`` retry mode, set by ``s3_client``).

    Args:
        client: a boto3 S3 client (``s3_client``).
        bucket: the bucket's name.
        prefix: key prefix (``blobs/``).
    """

    def __init__(self, client: Any, bucket: str, prefix: str = "blobs/") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    def ensure_bucket(self, *, create: bool) -> None:
        """Check that the bucket exists; create it when missing and ``create``.

        Raises:
            RuntimeError: the bucket is missing (and not ``create``), not accessible, not
                reachable, or could not be created, with S3's error code.
        """
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as error:
            code = _code(error)
            if code not in _NO_BUCKET or not create:
                raise RuntimeError(f"S3 bucket {self.bucket!r} is not usable: {code}") from None
        except BotoCoreError as error:
            raise RuntimeError(f"S3 bucket {self.bucket!r} is not reachable: {error}") from None
        region = self.client.meta.region_name
        location = (
            {"CreateBucketConfiguration": {"LocationConstraint": region}}
            if region and region != "us-east-1"
            else {}
        )
        try:
            self.client.create_bucket(Bucket=self.bucket, **location)
        except ClientError as error:  # another process created it first
            if _code(error) != "BucketAlreadyOwnedByYou":
                raise RuntimeError(
                    f"S3 bucket {self.bucket!r} could not be created: {_code(error)}"
                ) from None

    def put(self, data: bytes, media_type: str) -> dict[str, object]:
        """See ``BlobStore.put``; stored when S3 answered.

        Raises:
            BlobStoreUnavailableError: S3 refused or could not be reached after boto3's retries
                (the request then fails with 503, nothing appended).
        """
        ref = blob_ref(data, media_type)
        key = self.prefix + str(ref["sha256"])
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=media_type)
        except (ClientError, BotoCoreError) as error:
            raise self._unavailable(error) from error
        return ref

    def get(self, sha256: str) -> bytes:
        """See ``BlobStore.get``.

        Raises:
            BlobNotFoundError: no such object.
            BlobStoreUnavailableError: S3 refused or could not be reached.
        """
        if not is_sha256_hex(sha256):
            raise BlobNotFoundError(sha256)
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + sha256)
            data: bytes = answer["Body"].read()
        except ClientError as error:
            if _code(error) in _NOT_FOUND:
                raise BlobNotFoundError(sha256) from None
            raise self._unavailable(error) from error
        except BotoCoreError as error:
            raise self._unavailable(error) from error
        return data

    def check(self) -> None:
        """See ``BlobStore.check``: the bucket answers (``HeadBucket``)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as error:
            raise self._unavailable(error) from error

    def _unavailable(self, error: Exception) -> BlobStoreUnavailableError:
        return BlobStoreUnavailableError(f"S3 bucket {self.bucket!r}: {error}")


def _code(error: ClientError) -> str:
    """S3's error code of a refusal (``NoSuchKey``, ``404``, ``AccessDenied``, ...)."""
    return str(error.response.get("Error", {}).get("Code"))


def s3_client(
    *,
    endpoint_url: str | None,
    region: str,
    path_style: bool,
    access_key_id: str | None,
    secret_access_key: str | None,
) -> Any:
    """A boto3 S3 client: ``standard`` retries (5 attempts), 10 s connect and 60 s read timeouts.

    Args:
        endpoint_url: the S3 endpoint (``http://minio:9000``); None: AWS's.
        region: the region name (``us-east-1``).
        path_style: path-style addressing (``http://host/bucket/key``) instead of boto3's choice.
        access_key_id, secret_access_key: credentials; None: boto3's own chain (``AWS_*``
            variables, instance profile).

    Returns:
        A ``botocore`` S3 client (thread-safe; one per process).
    """
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=region,
        s3={"addressing_style": "path" if path_style else "auto"},
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )
