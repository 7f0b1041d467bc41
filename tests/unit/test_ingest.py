"""``POST /v1/events``'s answer, built after the events are committed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from api.problems import BadRequestError
from api.routes.ingest import MAX_JSON_DEPTH, _parse_json, event_results
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


def _nested(levels: int, inner: bytes = b"1") -> bytes:
    return b"[" * levels + inner + b"]" * levels


BIG = b"123456789012345678901234567890"  # 30 digits: read by the exact-integer parser


@pytest.mark.parametrize("inner", [b"1", BIG], ids=["orjson", "exact-integers"])
def test_a_body_may_nest_max_json_depth_levels_and_no_more(inner: bytes) -> None:
    assert _parse_json(_nested(MAX_JSON_DEPTH, inner)) == json.loads(_nested(MAX_JSON_DEPTH, inner))
    deeper = (_nested(MAX_JSON_DEPTH + 1, inner), b'{"a": %s}' % _nested(MAX_JSON_DEPTH, inner))
    for body in (*deeper, _nested(5000, inner)):
        with pytest.raises(BadRequestError, match=f"more than {MAX_JSON_DEPTH} levels"):
            _parse_json(body)


def test_wide_bodies_below_the_depth_limit_are_taken_whatever_their_brackets() -> None:
    # More brackets than MAX_JSON_DEPTH, side by side: the walk runs and lets them through.
    body = b'{"events": [%s]}' % b", ".join([b'{"a": [[1], {"b": [2]}]}'] * 100)
    assert _parse_json(body) == json.loads(body)
    assert _parse_json(body.replace(b"[1]", b"[%s]" % BIG)) == json.loads(
        body.replace(b"[1]", b"[%s]" % BIG)
    )


@pytest.mark.parametrize(
    "text", [b'"\\ud800"', b'"a\\udfff"', b'"\\ude00\\ud83d"'], ids=["high", "low", "reversed"]
)
def test_an_unpaired_surrogate_escape_is_a_bad_request_through_either_parser(text: bytes) -> None:
    for body in (
        b'{"x": %s}' % text,
        b'{"n": %s, "x": [%s]}' % (BIG, text),
        b'{"n": %s, %s: 1}' % (BIG, text),
    ):
        with pytest.raises(BadRequestError, match="surrogate"):
            _parse_json(body)


def test_a_surrogate_pair_is_one_character_and_an_integer_beyond_64_bits_stays_exact() -> None:
    assert _parse_json(b'{"n": %s, "x": "\\ud83d\\ude00"}' % BIG) == {
        "n": int(BIG),
        "x": "\N{GRINNING FACE}",
    }
