"""The composition root's process-wide settings."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.runtime import build_runtime
from infra.settings import Settings
from tests.projection_lag import (
    assert_closes_promptly,
    assert_each_commit_reaches_the_read_model_at_once,
)

pytestmark = pytest.mark.unit


@pytest.fixture()
def restored_gc_thresholds() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    try:
        yield before
    finally:
        gc.set_threshold(*before)


def test_a_runtime_sets_the_garbage_collector_thresholds_from_its_settings(
    tmp_path: Path, restored_gc_thresholds: tuple[int, int, int]
) -> None:
    runtime = build_runtime(Settings(data_dir=tmp_path / "a", gc_young_threshold=12_345))
    runtime.close()
    assert gc.get_threshold() == (12_345, 10, 10)

    gc.set_threshold(*restored_gc_thresholds)
    runtime = build_runtime(Settings(data_dir=tmp_path / "b", gc_young_threshold=0))
    runtime.close()
    assert gc.get_threshold() == restored_gc_thresholds
    assert Settings().gc_young_threshold == 10_000


def test_the_local_blob_store_is_ready_while_its_directory_is_there(tmp_path: Path) -> None:
    import hashlib
    import shutil

    from infra.blobs import BlobNotFoundError, BlobStoreUnavailableError
    from infra.runtime import build_blob_store

    store = build_blob_store(Settings(data_dir=tmp_path), create=True)
    store.check()
    ref = store.put(b"x" * 20_000, "text/plain")
    assert ref["sha256"] == hashlib.sha256(b"x" * 20_000).hexdigest()
    assert store.get(str(ref["sha256"])) == b"x" * 20_000
    with pytest.raises(BlobNotFoundError):
        store.get("../" + "0" * 61)
    shutil.rmtree(tmp_path / "blobs")
    with pytest.raises(BlobStoreUnavailableError, match="blobs"):
        store.check()


def test_the_in_process_projector_folds_a_commit_at_once_not_at_its_next_poll(
    tmp_path: Path,
) -> None:
    runtime = build_runtime(Settings(data_dir=tmp_path, projector_poll_interval_s=30))
    runtime.writer.start()
    runtime.start_projector()
    try:
        assert_each_commit_reaches_the_read_model_at_once(runtime, runtime)
    finally:
        assert_closes_promptly(runtime)
