"""The composition root's process-wide settings."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.runtime import build_runtime
from infra.settings import Settings
from tests.projection_lag import (
    assert_a_bulk_load_is_folded_once_it_pauses,
    assert_a_load_is_folded_alongside,
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


@pytest.mark.parametrize("young", [12_345, 0])
def test_the_api_process_keeps_the_garbage_collector_thresholds_of_its_settings(
    tmp_path: Path, restored_gc_thresholds: tuple[int, int, int], young: int
) -> None:
    """The app's start-up (its lifespan) freezes the start-up objects but leaves the thresholds
    to ``gc_young_threshold`` (0: the process's own), as every other process does."""
    from api.app import create_app

    gc.set_threshold(701, 11, 12)
    gc.unfreeze()  # nothing frozen before: what is frozen below, the start-up froze
    app = create_app(Settings(data_dir=tmp_path, gc_young_threshold=young, projector="off"))

    async def started() -> tuple[tuple[int, int, int], int]:
        async with app.router.lifespan_context(app):
            return gc.get_threshold(), gc.get_freeze_count()

    try:
        thresholds, frozen = asyncio.run(started())
    finally:
        gc.unfreeze()
    assert thresholds == ((young, 20, 100) if young else (701, 11, 12))
    assert frozen > 1000, frozen  # the app's objects, not a stray few


def test_a_runtime_sets_the_garbage_collector_thresholds_from_its_settings(
    tmp_path: Path, restored_gc_thresholds: tuple[int, int, int]
) -> None:
    runtime = build_runtime(Settings(data_dir=tmp_path / "a", gc_young_threshold=12_345))
    runtime.close()
    assert gc.get_threshold() == (12_345, 20, 100)

    gc.set_threshold(*restored_gc_thresholds)
    runtime = build_runtime(Settings(data_dir=tmp_path / "b", gc_young_threshold=0))
    runtime.close()
    assert gc.get_threshold() == restored_gc_thresholds
    assert Settings().gc_young_threshold == 100_000


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


@pytest.mark.parametrize("bulk_rate", [100, 0])
def test_the_in_process_projector_folds_a_bulk_load_once_it_pauses_unless_bulk_rate_is_zero(
    tmp_path: Path, bulk_rate: int
) -> None:
    runtime = build_runtime(
        Settings(
            data_dir=tmp_path,
            projector_poll_interval_s=30,
            projector_bulk_rate=bulk_rate,
            projector_bulk_max_delay_s=3.0,
        )
    )
    runtime.writer.start()
    runtime.start_projector()
    try:
        if bulk_rate:
            assert_a_bulk_load_is_folded_once_it_pauses(runtime, runtime, max_delay_s=3.0)
        else:
            assert_a_load_is_folded_alongside(runtime, runtime)
    finally:
        assert_closes_promptly(runtime)


def test_a_default_project_that_no_request_could_name_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RUNLEDGER_DEFAULT_PROJECT", "team one")
    with pytest.raises(ValidationError, match="default_project"):
        Settings()
    monkeypatch.setenv("RUNLEDGER_DEFAULT_PROJECT", "team-1")
    assert Settings().default_project == "team-1"
