"""The orjson transcoder writes and reads eventsourcing's JSONTranscoder format."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder

from infra.codec import OrjsonTranscoder

pytestmark = pytest.mark.unit


def transcoders() -> tuple[JSONTranscoder, OrjsonTranscoder]:
    app = Application({"PERSISTENCE_MODULE": "eventsourcing.popo"})
    stdlib, fast = JSONTranscoder(), OrjsonTranscoder()
    app.register_transcodings(stdlib)
    app.register_transcodings(fast)
    return stdlib, fast


VALUES = [
    {"timestamp": datetime(2026, 2, 14, 10, 0, tzinfo=UTC), "n": 1, "s": "é", "l": [1, None, True]},
    {"outer": {"inner": [{"at": datetime(2026, 1, 1, tzinfo=UTC)}]}, "_id": uuid4()},
    {"big": 2**70, "t": datetime(2026, 1, 1, tzinfo=UTC)},
    {"plain": {"_type_": "looks", "x": 1}},
]


@pytest.mark.parametrize("value", VALUES)
def test_either_transcoder_reads_what_the_other_wrote(value: dict[str, object]) -> None:
    stdlib, fast = transcoders()
    assert fast.decode(stdlib.encode(value)) == value
    assert stdlib.decode(fast.encode(value)) == value
    assert fast.decode(fast.encode(value)) == value
