"""``api.tail.LogHeadWatch``: one reader of the log's head for every live tail of a process."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from api.tail import LogHeadWatch
from infra.wake import LocalSignal

pytestmark = pytest.mark.unit


class Head:
    """A log head the test moves; counts reads; fails while ``failing``."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.failing = False

    def __call__(self) -> int:
        if self.failing:
            raise ConnectionError("the store is down")
        return self.value


def wait_until(check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_one_read_of_the_head_serves_every_waiting_tail() -> None:
    watch = LogHeadWatch(Head(5), wake=LocalSignal(), poll_s=0.25)

    async def fifty_tails() -> list[bool]:
        return list(await asyncio.gather(*(watch.wait_past(5, 1.0) for _ in range(50))))

    assert asyncio.run(fifty_tails()) == [False] * 50  # the head never moved past them
    # a read at the start and one per poll: not 50 tails x 4 polls a second
    assert 2 <= watch.reads <= 10
    wait_until(lambda: not watch.running)  # nobody waits: the thread ended


def test_a_commit_wakes_the_waiting_tails_without_waiting_for_the_poll() -> None:
    head = Head(5)
    commits = LocalSignal()
    watch = LogHeadWatch(head, wake=commits, poll_s=60.0)

    def commit() -> None:
        wait_until(lambda: watch.reads >= 1)
        head.value = 6
        commits.notify()  # what the group-commit writer does after a commit

    async def tails() -> tuple[list[bool], float]:
        started = time.monotonic()
        threading.Thread(target=commit).start()
        woken = await asyncio.gather(*(watch.wait_past(5, 30.0) for _ in range(3)))
        return list(woken), time.monotonic() - started

    woken, waited = asyncio.run(tails())
    assert woken == [True] * 3
    assert waited < 10  # the commit's signal, not the 60 s poll nor the 30 s timeout
    reads = watch.reads

    async def behind() -> bool:
        return await watch.wait_past(3, 30.0)

    assert asyncio.run(behind()) is True  # already past: no wait, no read
    assert watch.reads == reads
    watch.close()


def test_while_the_head_cannot_be_read_tails_time_out_and_then_follow_again() -> None:
    head = Head(5)
    head.failing = True
    watch = LogHeadWatch(head, wake=LocalSignal(), poll_s=0.05)

    async def wait() -> bool:
        return await watch.wait_past(4, 0.3)

    assert asyncio.run(wait()) is False
    head.failing = False
    assert asyncio.run(wait()) is True
    watch.close()


def test_close_releases_the_waiting_tails_and_later_ones_do_not_wait() -> None:
    watch = LogHeadWatch(Head(5), wake=LocalSignal(), poll_s=60.0)

    async def wait() -> tuple[bool, float]:
        started = time.monotonic()
        past = await watch.wait_past(5, 30.0)
        return past, time.monotonic() - started

    def close_soon() -> None:
        wait_until(lambda: watch.reads >= 1)
        watch.close()

    threading.Thread(target=close_soon).start()
    past, waited = asyncio.run(wait())
    assert past is False and waited < 10
    assert not watch.running
    assert asyncio.run(wait())[0] is False
