"""Checks shared by the tests that compare runledger's recorders with eventsourcing's."""

from __future__ import annotations

from typing import Any


def assert_same_notifications(ours: Any, library: Any) -> None:
    """``ours.select_notifications`` answers what ``library``'s does for every statement shape
    (start inclusive or not, stop, topics, limit), on a log of at least 16 events in 2+ topics.

    Raises:
        AssertionError: the log is too small, a shape selects nothing, or the answers differ.
    """
    everything = library.select_notifications(start=None, limit=10_000)
    last = everything[-1].id if everything else 0
    topics = sorted({n.topic for n in everything})
    assert last >= 16 and len(topics) >= 2, (last, topics)
    for args, kwargs in [
        ((None, 10_000), {}),
        ((1, last // 4), {}),
        ((last // 8, last // 4), {"inclusive_of_start": False}),
        ((last // 16, 100), {"stop": last // 2}),
        ((None, 100), {"stop": last // 6}),
        ((1, 100), {"topics": topics[:1]}),
        ((3, 100), {"stop": last * 3 // 4, "topics": topics, "inclusive_of_start": False}),
    ]:
        expected = library.select_notifications(*args, **kwargs)
        assert expected, (args, kwargs)
        assert ours.select_notifications(*args, **kwargs) == expected, (args, kwargs)
