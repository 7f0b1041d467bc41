"""The S3 blob store against a real S3-compatible server over HTTP (moto's server, or the one at
``RUNLEDGER_TEST_S3_ENDPOINT_URL``)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest

from infra.blobs import BlobNotFoundError, BlobStoreUnavailableError, S3BlobStore
from infra.runtime import build_blob_store
from infra.settings import Settings
from tests.servers import free_port

pytestmark = pytest.mark.integration


def settings_for(s3_server: Any, bucket: str) -> Settings:
    env = s3_server.settings_env(bucket)
    return Settings(**{k.removeprefix("RUNLEDGER_").lower(): v for k, v in env.items()})


def test_the_s3_store_creates_its_bucket_and_keeps_each_blob_once_under_its_sha256(
    s3_server: Any, s3_bucket: str
) -> None:
    store = build_blob_store(settings_for(s3_server, s3_bucket), create=True)
    assert isinstance(store, S3BlobStore)
    data = os.urandom(40_000)
    digest = hashlib.sha256(data).hexdigest()

    ref = store.put(data, "application/octet-stream")
    assert ref == {"sha256": digest, "size_bytes": 40_000, "media_type": "application/octet-stream"}
    assert store.put(data, "application/octet-stream") == ref  # a retry stores nothing new

    client: Any = s3_server.client()
    listed = client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [(f"blobs/{digest}", 40_000)]
    stored = client.get_object(Bucket=s3_bucket, Key=f"blobs/{digest}")
    assert stored["Body"].read() == data
    assert stored["ContentType"] == "application/octet-stream"

    assert store.get(digest) == data
    with pytest.raises(BlobNotFoundError):
        store.get("0" * 64)
    with pytest.raises(BlobNotFoundError):
        store.get("../not-a-sha256")
    # A second process finds the bucket there and reads the same blob.
    again = build_blob_store(settings_for(s3_server, s3_bucket), create=False)
    assert again.get(digest) == data


def test_a_missing_or_unreachable_bucket_is_a_clear_error_at_start_up(
    s3_server: Any, s3_bucket: str
) -> None:
    with pytest.raises(RuntimeError, match=f"S3 bucket '{s3_bucket}' is not usable"):
        build_blob_store(settings_for(s3_server, s3_bucket), create=False)
    # A second process finds the bucket there (created by the first).
    build_blob_store(settings_for(s3_server, s3_bucket), create=True)
    store = build_blob_store(settings_for(s3_server, s3_bucket), create=True)
    assert isinstance(store, S3BlobStore)
    store.client.delete_bucket(Bucket=s3_bucket)
    store.ensure_bucket(create=True)  # created again
    store.client.head_bucket(Bucket=s3_bucket)
    nowhere = settings_for(s3_server, s3_bucket).model_copy(
        update={"s3_endpoint_url": f"http://127.0.0.1:{free_port()}"}
    )
    with pytest.raises(RuntimeError, match="is not reachable"):
        build_blob_store(nowhere, create=True)


def test_a_put_s3_refuses_raises_the_error_the_api_answers_503_with(
    s3_server: Any, s3_bucket: str
) -> None:
    from api.problems import problem_body

    store = build_blob_store(settings_for(s3_server, s3_bucket), create=True)
    assert isinstance(store, S3BlobStore)
    gone = S3BlobStore(store.client, s3_bucket + "-gone")  # a bucket that does not exist
    with pytest.raises(BlobStoreUnavailableError, match="NoSuchBucket") as error:
        gone.put(b"x" * 20_000, "text/plain")
    assert problem_body(error.value)["status"] == 503
    with pytest.raises(BlobStoreUnavailableError):
        gone.get("0" * 64)
