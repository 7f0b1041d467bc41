"""A rebuild in parts: ``catalog.split`` cuts the projections, ``Projector.rebuild(jobs=...)``
resets them under the lock and ``infra.runtime.process_parts`` folds each part in a spawned
process of its own (SQLite file here; PostgreSQL in tests/integration)."""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from infra.runtime import Runtime, build_runtime, die_with_parent, process_parts
from infra.settings import Settings
from projections.catalog import NAMES, PROJECTIONS, REBUILD_WEIGHTS, split
from projections.runner import Projector
from tests.unit.test_projections import Writer, dump_tables, positions, write_realistic

pytestmark = pytest.mark.unit


def weight(names: list[str]) -> float:
    return sum(REBUILD_WEIGHTS[name] for name in names)


def test_every_projection_has_a_rebuild_weight() -> None:
    assert sorted(REBUILD_WEIGHTS) == sorted(NAMES)
    assert all(w > 0 for w in REBUILD_WEIGHTS.values())


@pytest.mark.parametrize("parts", [1, 2, 3, 4, 7, 10, 25])
def test_split_cuts_the_weight_order_where_the_heaviest_part_is_lightest(parts: int) -> None:
    groups = [[p.name for p in group] for group in split(PROJECTIONS, parts)]
    order = list(REBUILD_WEIGHTS)
    assert len(groups) == min(parts, len(order)) and all(groups)
    assert list(itertools.chain.from_iterable(groups)) == order  # contiguous, each once
    # every other way of cutting the order into that many runs is no better
    cuts = itertools.combinations(range(1, len(order)), len(groups) - 1)
    best = min(
        max(weight(order[a:b]) for a, b in itertools.pairwise((0, *cut, len(order))))
        for cut in cuts
    )
    assert max(map(weight, groups)) == pytest.approx(best)


def test_split_keeps_a_subset_and_puts_unknown_projections_last() -> None:
    by_name = {p.name: p for p in PROJECTIONS}
    extra = dataclasses.replace(by_name["sessions"], name="zz_extra")
    chosen = [by_name["chain_stages"], extra, by_name["sessions"]]
    groups = split(chosen, 2)
    # weights 2.34 | 1.59 + 1.0 (an unknown projection weighs 1.0, last)
    assert [[p.name for p in g] for g in groups] == [["sessions"], ["chain_stages", "zz_extra"]]
    assert split([], 3) == []
    with pytest.raises(ValueError, match="parts"):
        split(PROJECTIONS, 0)


@pytest.fixture()
def sqlite_runtime(tmp_path: Path) -> Iterator[tuple[Settings, Runtime]]:
    settings = Settings(data_dir=tmp_path)
    runtime = build_runtime(settings, create_tables=True)
    try:
        write_realistic(Writer(runtime.ledger), lambda: None)
        yield settings, runtime
    finally:
        runtime.close()


def test_a_rebuild_in_spawned_parts_equals_a_rebuild_in_this_process(
    sqlite_runtime: tuple[Settings, Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, runtime = sqlite_runtime
    head = runtime.ledger.recorder.max_notification_id()
    assert runtime.projector.rebuild() == head
    serial = dump_tables(runtime.db)
    assert all(serial.values()), "the scenario fills every table"

    # this process only resets and waits: every fold happens in the spawned parts
    def no_folding_here(*_: Any, **__: Any) -> int:
        raise AssertionError("the rebuilding process folded a part itself")

    monkeypatch.setattr(runtime.projector, "_catch_up", no_folding_here)
    handed: list[list[list[str]]] = []
    run = process_parts(settings)

    def spy(parts: list[list[str]], tick: Callable[[], None]) -> list[int]:
        handed.append(parts)
        return run(parts, tick)

    progress: list[tuple[int, int]] = []
    folded = runtime.projector.rebuild(
        jobs=2, run_parts=spy, progress=lambda p, h: progress.append((p, h))
    )
    assert folded == head
    assert len(handed) == 1 and len(handed[0]) == 2
    assert sorted(itertools.chain.from_iterable(handed[0])) == sorted(NAMES)
    assert dump_tables(runtime.db) == serial
    assert positions(runtime.db) == dict.fromkeys(NAMES, head)
    assert progress[0] == (0, head) and progress[-1] == (head, head)


def test_a_failed_part_leaves_the_others_done_and_the_next_run_finishes_it(
    sqlite_runtime: tuple[Settings, Runtime],
) -> None:
    _, runtime = sqlite_runtime
    head = runtime.ledger.recorder.max_notification_id()
    runtime.projector.rebuild()
    serial = dump_tables(runtime.db)
    handed: list[list[str]] = []

    def first_part_only(parts: list[list[str]], tick: Callable[[], None]) -> list[int]:
        handed.extend(parts)
        Projector(runtime.ledger, runtime.db).catch_up(parts[0])
        raise RuntimeError("the second part's process died")

    with pytest.raises(RuntimeError, match="second part"):
        runtime.projector.rebuild(jobs=2, run_parts=first_part_only)
    reached = positions(runtime.db)
    assert {name: reached[name] for name in handed[0]} == dict.fromkeys(handed[0], head)
    assert {name: reached[name] for name in handed[1]} == dict.fromkeys(handed[1], 0)
    assert runtime.projector.run_once() == head  # from the lowest position: the failed part
    assert dump_tables(runtime.db) == serial
    assert positions(runtime.db) == dict.fromkeys(NAMES, head)


def test_jobs_need_a_part_runner_and_one_projection_is_rebuilt_here(
    sqlite_runtime: tuple[Settings, Runtime],
) -> None:
    _, runtime = sqlite_runtime
    head = runtime.ledger.recorder.max_notification_id()
    with pytest.raises(ValueError, match="jobs"):
        runtime.projector.rebuild(jobs=0)
    with pytest.raises(ValueError, match="run_parts"):
        runtime.projector.rebuild(jobs=2)

    def never(parts: list[list[str]], tick: Callable[[], None]) -> list[int]:
        raise AssertionError(f"one projection was split into {parts}")

    assert runtime.projector.rebuild(["sessions"], jobs=4, run_parts=never) == head
    assert positions(runtime.db)["sessions"] == head


def _report_death_signal(parent_pid: int, answer: Connection) -> None:
    """In a spawned process: arm ``die_with_parent``, then send ``prctl(PR_GET_PDEATHSIG)``."""
    die_with_parent(parent_pid)
    armed = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(2, ctypes.byref(armed), 0, 0, 0)  # PR_GET_PDEATHSIG
    answer.send(armed.value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_a_worker_is_armed_to_die_with_its_parent_and_exits_if_its_parent_is_already_gone() -> None:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    armed = context.Process(target=_report_death_signal, args=(os.getpid(), send))
    armed.start()
    assert receive.poll(60) and receive.recv() == signal.SIGKILL
    armed.join(30)
    assert armed.exitcode == 0
    # a parent pid that is not its parent's: the parent died before the signal was armed
    orphan = context.Process(target=_report_death_signal, args=(os.getpid() + 4_000_000, send))
    orphan.start()
    orphan.join(60)
    assert orphan.exitcode == 1
    assert not receive.poll(0)  # it never got as far as answering
