"""``POST /v1/events``'s answer, built after the events are committed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from api.routes.ingest import event_results
from domain.base import EventMeta
from domain.errors import ConflictError
from domain.ledger import Command, Outcome

pytestmark = pytest.mark.unit


def test_the_answer_holds_a_refusals_integer_beyond_64_bits_exactly() -> None:
    # The events of the batch are committed when the answer is built: failing to encode one
    # refusal's fields (orjson stops at 64 bits) answered 500 for a batch that was written.
    meta = EventMeta("e1", "0" * 64, datetime(2026, 11, 22, tzinfo=UTC), "api")
    command = Command("chain", "c", "add_stage", meta, {})
    refused = Outcome(
        command, uuid4(), "rejected", error=ConflictError("taken", stage_number=2**64 + 5)
    )
    created = Outcome(command, uuid4(), "created", version=3, position=7, appended=1)

    answer = json.loads(event_results([refused, created]))

    assert answer["results"][0]["error"]["stage_number"] == 2**64 + 5
    assert (answer["created"], answer["rejected"]) == (1, 1)
    assert answer["results"][1]["position"] == 7
