"""Helpers of the tests that time how soon a commit reaches the read models."""

from __future__ import annotations

import time
from typing import Any

from tests.commands import message


def wait_for_messages(
    runtime: Any, count: int, within_s: float, session: str = "woken"
) -> float | None:
    """Seconds until the sessions read model shows ``count`` messages of session ``session``."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        row = runtime.views.get_session("default", session)
        if row is not None and row["message_count"] == count:
            return time.monotonic() - started
        time.sleep(0.005)
    return None


def assert_each_commit_reaches_the_read_model_at_once(writing: Any, projecting: Any) -> None:
    """Three messages committed one by one by ``writing``'s writer each show in ``projecting``'s
    sessions read model within 2 s, while its projector polls only every 30 s."""
    time.sleep(0.5)  # the projector's first run found an empty log; it now waits up to 30 s
    for n in range(1, 4):
        assert writing.writer.submit_sync([message(f"w{n}", "woken")])[0].status == "created"
        lag = wait_for_messages(projecting, n, within_s=5)
        assert lag is not None and lag < 2, lag


def assert_closes_promptly(runtime: Any) -> None:
    """``runtime.close()`` returns within 5 s: it does not sit out a 30 s poll interval."""
    started = time.monotonic()
    runtime.close()
    assert time.monotonic() - started < 5


def bulk_load(writing: Any, projecting: Any, duration_s: float) -> list[tuple[float, int, int]]:
    """Commits of 10 messages of session ``bulk`` through ``writing``'s writer, 10 ms apart, for
    ``duration_s`` (over 300 events/s wherever a commit takes under 10 ms), each followed by a
    look at ``projecting``'s sessions read model.

    Returns:
        Per commit: (seconds since the load started, messages committed, messages the read model
        shows).
    """
    samples: list[tuple[float, int, int]] = []
    committed = 0
    started = time.monotonic()
    while time.monotonic() - started < duration_s:
        batch = [message(f"bulk-{committed + i}", "bulk") for i in range(10)]
        assert {o.status for o in writing.writer.submit_sync(batch)} == {"created"}
        committed += len(batch)
        row = projecting.views.get_session("default", "bulk")
        samples.append((time.monotonic() - started, committed, row["message_count"] if row else 0))
        time.sleep(0.01)
    return samples


def assert_a_bulk_load_is_folded_once_it_pauses(
    writing: Any, projecting: Any, max_delay_s: float
) -> None:
    """A 1.5 s load through ``writing``'s writer, faster than ``projecting``'s projector's
    ``projector_bulk_rate``: for a while the read model lacks what was committed more than
    0.5 s before (folding alongside, it trails by ~0.05 s), and within ``max_delay_s`` (its
    ``projector_bulk_max_delay_s``) plus a margin after the load it shows every message."""
    time.sleep(0.5)  # the projector's first run found an empty log; it now waits for a commit
    samples = bulk_load(writing, projecting, duration_s=1.5)

    def committed_by(at: float) -> int:
        return max((committed for t, committed, _ in samples if t <= at), default=0)

    assert any(shown < committed_by(at - 0.5) for at, _, shown in samples), samples
    lag = wait_for_messages(projecting, samples[-1][1], within_s=max_delay_s + 10, session="bulk")
    assert lag is not None, projecting.projector.status()


def assert_a_load_is_folded_alongside(writing: Any, projecting: Any) -> None:
    """The same load, with ``projector_bulk_rate=0``: the read model follows it (it shows many
    counts along the way, not the one or two a deferring projector shows before it defers),
    and shows every message soon after."""
    time.sleep(0.5)
    samples = bulk_load(writing, projecting, duration_s=1.5)
    assert len({shown for _, _, shown in samples}) >= 6, samples
    assert wait_for_messages(projecting, samples[-1][1], within_s=10, session="bulk") is not None
