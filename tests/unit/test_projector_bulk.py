"""``Projector.run_forever`` under a bulk load (``projections.runner._bulk``, ``_await_quiet``).

The loop runs against a simulated log on a simulated clock (``SimulatedLog``): commits at given
times, a run that folds what was committed by the time it starts, a wake woken by those commits,
and a stop event whose waits pass simulated time. So timings are exact and no test sleeps; the
projector, its loop and its wake-up logic are the real ones. The same behaviour on real
databases, with real wakes and a real writer: ``tests/projection_lag.py``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from domain.ledger import Ledger
from projections import runner
from projections.db import SQLiteDatabase
from projections.runner import (
    BULK_QUIET_S,
    BULK_WINDOW_S,
    RUN_PAGES,
    Projector,
    _await_quiet,
    _bulk,
)

pytestmark = pytest.mark.unit

PAGE_SIZE = 1000
FULL_RUN = RUN_PAGES * PAGE_SIZE


# -- _bulk ---------------------------------------------------------------------------------------


def test_a_bulk_load_is_a_log_growing_by_more_than_bulk_rate_events_per_second() -> None:
    assert _bulk(101, 1.0, 100)
    assert not _bulk(100, 1.0, 100)  # exactly the rate: not more
    assert _bulk(51, 0.5, 100)
    assert not _bulk(49, 0.5, 100)
    assert _bulk(2, 0.001, 1000)  # 2,000 events/s


def test_without_an_earlier_look_there_is_no_bulk_load() -> None:
    assert not _bulk(1_000_000, None, 1)


def test_bulk_rate_zero_never_sees_a_bulk_load() -> None:
    assert not _bulk(1_000_000, 0.001, 0)


# -- _await_quiet ----------------------------------------------------------------------------------


class Clock:
    """``time`` as ``projections.runner`` uses it (``monotonic``), moved by the test's fakes."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(runner, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


class ScriptedWake:
    """A ``Wake`` whose waits answer ``answers`` in turn (then False), each taking ``takes_s`` of
    its timeout (default all of it) on ``clock``, then calls ``on_wait`` with their count so far;
    records the timeouts it was given."""

    def __init__(
        self,
        clock: Clock,
        answers: list[bool],
        takes_s: float | None = None,
        on_wait: Callable[[int], object] | None = None,
    ) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.takes_s = takes_s
        self.on_wait = on_wait
        self.timeouts: list[float] = []

    def wait(self, timeout_s: float) -> bool:
        assert len(self.timeouts) < 1000, "waits without end"
        self.timeouts.append(timeout_s)
        self.clock.now += timeout_s if self.takes_s is None else min(self.takes_s, timeout_s)
        if self.on_wait is not None:
            self.on_wait(len(self.timeouts))
        return self.answers.pop(0) if self.answers else False


def test_waiting_for_quiet_returns_at_the_first_wait_no_commit_ended(clock: Clock) -> None:
    wake = ScriptedWake(clock, [True, True, True, False, True], takes_s=0.01)
    _await_quiet(threading.Event(), wake, max_delay_s=60.0)
    assert wake.timeouts == [BULK_QUIET_S] * 4


def test_waiting_for_quiet_never_waits_past_its_deadline(clock: Clock) -> None:
    started = clock.now
    wake = ScriptedWake(clock, [True] * 100)  # a commit at the end of every wait
    _await_quiet(threading.Event(), wake, max_delay_s=0.6)
    assert wake.timeouts[:2] == [BULK_QUIET_S, BULK_QUIET_S]
    assert wake.timeouts[2] == pytest.approx(0.6 - 2 * BULK_QUIET_S)
    assert len(wake.timeouts) == 3
    assert clock.now - started == pytest.approx(0.6)


def test_waiting_for_quiet_ends_when_stop_is_set(clock: Clock) -> None:
    stop = threading.Event()
    wake = ScriptedWake(clock, [True] * 100, takes_s=0.01, on_wait=lambda n: n == 3 and stop.set())
    _await_quiet(stop, wake, max_delay_s=60.0)
    assert len(wake.timeouts) == 3
    untouched = ScriptedWake(clock, [True] * 100, takes_s=0.01)
    _await_quiet(stop, untouched, max_delay_s=60.0)  # stop already set: no wait at all
    assert untouched.timeouts == []


# -- run_forever on a simulated log ---------------------------------------------------------------


class SimulatedStop(threading.Event):
    """A stop event whose waits pass simulated time instead of real time."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def wait(self, timeout: float | None = None) -> bool:
        if not self.is_set() and timeout is not None:
            self.clock.now += timeout
        return self.is_set()


class SimulatedLog:
    """Commits ``(at, events)`` on ``clock`` (seconds after the loop starts), and what
    ``run_forever`` sees of them: ``run_locked`` stands in for ``Projector._run_locked`` (folds
    what was committed when it starts, ``max_pages`` pages at most, in ``RUN_S``; or, with
    ``fold_rate``, page after page as the log has them, until a short page or ``max_pages``,
    each taking one second per ``fold_rate`` events), ``head`` for
    ``Projector._head`` (the events committed so far), ``wake`` is woken by the commits (all
    pending ones consumed by one wait), and ``stop`` is set by the first run that finds nothing
    after the last commit."""

    RUN_S = 0.002

    def __init__(
        self, clock: Clock, commits: list[tuple[float, int]], fold_rate: float | None = None
    ) -> None:
        self.clock = clock
        self.fold_rate = fold_rate
        self.start = clock.now
        self.commits = sorted((self.start + at, events) for at, events in commits)
        self.folded = 0
        self.seen = self.start  # the commits up to this time have woken a wait
        self.runs: list[tuple[float, int]] = []  # (started, folded), seconds after the start
        self.quiet_waits: list[float] = []  # when _await_quiet was entered
        self.stop = SimulatedStop(clock)

    @property
    def total(self) -> int:
        return sum(events for _, events in self.commits)

    def run_locked(self, chosen: Any, *, max_pages: int | None) -> int:
        assert len(self.runs) < 100_000, "runs without end"
        assert max_pages is not None
        started = self.clock.now
        if self.fold_rate is None:
            processed = min(self.head() - self.folded, max_pages * PAGE_SIZE)
            self.folded += processed
            self.clock.now += self.RUN_S
        else:  # page after page, as they come, until a short one or max_pages
            processed = 0
            for _ in range(max_pages):
                page = min(self.head() - self.folded, PAGE_SIZE)
                self.folded += page
                processed += page
                self.clock.now += page / self.fold_rate
                if page < PAGE_SIZE:
                    break
        self.runs.append((started - self.start, processed))
        if not processed and started > self.commits[-1][0]:
            self.stop.set()
        return processed

    def head(self) -> int:
        return sum(events for at, events in self.commits if at <= self.clock.now)

    def wait(self, timeout_s: float) -> bool:
        """The ``Wake``: True at once for a commit since the last wait, or at the next commit
        within ``timeout_s``; else False after ``timeout_s``."""
        now = self.clock.now
        woken = any(self.seen < at <= now for at, _ in self.commits)
        if not woken:
            upcoming = [at for at, _ in self.commits if now < at <= now + timeout_s]
            woken = bool(upcoming)
            self.clock.now = upcoming[0] if upcoming else now + timeout_s
        self.seen = self.clock.now
        return woken

    def folds(self, after: float, before: float) -> list[tuple[float, int]]:
        """The runs that folded something and started within ``(after, before)``."""
        return [(at, n) for at, n in self.runs if n and after < at < before]


def steady(events: int, every_s: float, start_s: float, end_s: float) -> list[tuple[float, int]]:
    """A commit of ``events`` every ``every_s`` seconds from ``start_s`` to ``end_s``."""
    count = round((end_s - start_s) / every_s)
    return [(start_s + i * every_s, events) for i in range(count + 1)]


@pytest.fixture()
def projector(tmp_path: Path) -> Iterator[Projector]:
    db = SQLiteDatabase(tmp_path / "views.sqlite")
    yield Projector(Ledger({"PERSISTENCE_MODULE": "eventsourcing.popo"}), db, page_size=PAGE_SIZE)
    db.close()


def simulate(
    projector: Projector,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
    commits: list[tuple[float, int]],
    *,
    wake: bool = True,
    fold_rate: float | None = None,
    **options: Any,
) -> SimulatedLog:
    """Run ``projector.run_forever(**options)`` on a ``SimulatedLog`` of ``commits`` until it has
    folded them all and found nothing more."""
    log = SimulatedLog(clock, commits, fold_rate)
    monkeypatch.setattr(projector, "_run_locked", log.run_locked)
    monkeypatch.setattr(projector, "_head", log.head)

    def await_quiet(stop: threading.Event, wake: Any, max_delay_s: float) -> None:
        log.quiet_waits.append(clock.now - log.start)
        _await_quiet(stop, wake, max_delay_s)

    monkeypatch.setattr(runner, "_await_quiet", await_quiet)
    options.setdefault("poll_interval_s", 0.2)
    projector.run_forever(log.stop, wake=log if wake else None, **options)
    assert log.folded == log.total
    return log


def deferred_at(log: SimulatedLog, load_ends: float) -> float:
    """When the projector took the load for a bulk load, having folded nothing from then until
    ``BULK_QUIET_S`` after the load's last commit at ``load_ends``."""
    assert log.quiet_waits, "never took it for a bulk load"
    detected = log.quiet_waits[0]
    assert log.folds(detected, load_ends + BULK_QUIET_S) == []  # nothing folded while it lasted
    return detected


def test_a_load_faster_than_bulk_rate_is_folded_once_it_pauses(
    projector: Projector, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 50 events every 10 ms for 2 s: 5,000 events/s
    log = simulate(
        projector, clock, monkeypatch, steady(50, 0.01, 1.0, 3.0),
        bulk_rate=1000, bulk_max_delay_s=30.0,
    )  # fmt: skip
    detected = deferred_at(log, 3.0)
    # at the first look BULK_WINDOW_S after the one at the load's first fold
    assert 1.0 + BULK_WINDOW_S <= detected < 1.0 + BULK_WINDOW_S + 0.02
    # then the rest at once, a quiet spell after the last commit
    [(at, folded)] = log.folds(3.0, 10.0)
    assert at == pytest.approx(3.0 + BULK_QUIET_S)
    assert sum(n for _, n in log.folds(0.0, detected)) + folded == log.total
    assert folded > 0.7 * log.total


def test_a_load_faster_than_the_projector_folds_is_deferred_too(
    projector: Projector, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40,000 events/s for 3 s against a projector folding 20,000 events/s alongside it: its
    runs soon fold full pages and never reach the head while the load lasts. The log's growth,
    not what a run folded, tells the load: it is deferred all the same."""
    log = simulate(
        projector, clock, monkeypatch, steady(400, 0.01, 1.0, 4.0), fold_rate=20_000,
        bulk_rate=10_000, bulk_max_delay_s=30.0, min_interval_s=0.05,
    )  # fmt: skip
    assert FULL_RUN in [n for _, n in log.runs], "the runs never fell behind the load"
    detected = deferred_at(log, 4.0)
    assert detected < 1.0 + BULK_WINDOW_S + 1.0  # at the first look due, after a full run
    assert sum(n for _, n in log.folds(4.0, 100.0)) > 0.5 * log.total


def test_a_bulk_load_longer_than_bulk_max_delay_is_folded_every_bulk_max_delay(
    projector: Projector, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = simulate(
        projector, clock, monkeypatch, steady(50, 0.01, 1.0, 5.0),
        bulk_rate=1000, bulk_max_delay_s=1.0,
    )  # fmt: skip
    during = log.folds(1.0 + BULK_WINDOW_S + 0.1, 5.0)
    assert 3 <= len(during) <= 4, during
    for (before, _), (after, _) in itertools.pairwise(during):
        assert after - before == pytest.approx(1.0, abs=0.01)


def test_catching_up_in_full_runs_never_waits_for_quiet(
    projector: Projector, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a backlog of exactly five full runs, folded in 2 ms each: 1,000,000 events/s
    log = simulate(
        projector, clock, monkeypatch, [(0.0, 5 * FULL_RUN)], bulk_rate=1, bulk_max_delay_s=30.0
    )
    assert [n for _, n in log.runs if n] == [FULL_RUN] * 5
    assert log.quiet_waits == []


@pytest.mark.parametrize(
    "setup",
    [
        {"wake": False, "bulk_rate": 1000, "poll_interval_s": 0.005},  # no commit to wait on
        {"bulk_rate": 0},  # bulk-load deferral turned off
    ],
    ids=["without-a-wake", "bulk-rate-zero"],
)
def test_a_fast_load_is_folded_alongside_without_a_wake_or_with_bulk_rate_zero(
    projector: Projector, clock: Clock, monkeypatch: pytest.MonkeyPatch, setup: dict[str, Any]
) -> None:
    log = simulate(
        projector, clock, monkeypatch, steady(50, 0.01, 1.0, 2.0), bulk_max_delay_s=30.0, **setup
    )
    assert log.quiet_waits == []
    assert len(log.folds(1.0, 2.0)) >= 50


def test_a_load_slower_than_bulk_rate_is_folded_alongside_whenever_its_commits_come(
    projector: Projector, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """512 events every 60 ms (an OpenTelemetry SDK's batches): 8,533 events/s, below 10,000.
    With runs at most every 50 ms, each commit comes 10 ms after the (empty) run that followed
    the previous fold; the rate is that of the log, not of those 10 ms (51,200 events/s)."""
    log = simulate(
        projector, clock, monkeypatch, steady(512, 0.06, 1.0, 3.0),
        bulk_rate=10_000, bulk_max_delay_s=5.0, min_interval_s=0.05,
    )  # fmt: skip
    assert log.quiet_waits == []
    assert len(log.folds(1.0, 3.0)) >= 30
