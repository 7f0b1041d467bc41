"""Helpers of the tests that time how soon a commit reaches the read models."""

from __future__ import annotations

import time
from typing import Any

from tests.commands import message


def wait_for_messages(runtime: Any, count: int, within_s: float) -> float | None:
    """Seconds until the sessions read model shows ``count`` messages of session ``woken``."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        row = runtime.views.get_session("default", "woken")
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
