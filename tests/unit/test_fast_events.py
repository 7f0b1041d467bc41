"""``api.fast_events``: whatever it accepts, the full path (orjson, pydantic) accepts with the same
commands; what it leaves alone, the full path decides."""

from __future__ import annotations

import copy
import json
import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from fastapi.exceptions import RequestValidationError

import api.schemas
from api.fast_events import event_commands
from api.offload import inline
from api.problems import BadRequestError
from api.routes.ingest import _commands
from api.schemas import MAX_JSON_DEPTH, TypedEvent
from bench.workload import mixed_batches
from domain.ledger import Command

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

#: One valid event of every type (values in the upstream tools' shapes, SOURCES.md).
EXAMPLES: list[dict[str, Any]] = [
    {"type": "approval.requested", "approval_id": "a1", "approval_type": "merge",
     "session_id": "s1", "tool_use_id": "toolu_01", "tool_name": "Bash",
     "tool_input": {"command": "git push"}, "chain_id": "c1", "stage_id": "plan",
     "requested_by": "claude-code", "attributes": {"k": [1, 2.5, None]}},
    {"type": "approval.decided", "approval_id": "a1", "decision": "Deny", "scope": "once",
     "decided_by": "alice", "comment": "no"},
    {"type": "chain.created", "chain_id": "c1", "title": "Fix it", "source_type": "github_issue",
     "source_ref": "#7", "github_repo": "acme/x", "github_issue_number": 7, "workspace": "/w",
     "attributes": {}},
    {"type": "chain.stage_added", "chain_id": "c1", "stage_id": "plan",
     "agent_id": "sprint-planner", "stage_number": 2, "provider": "anthropic",
     "handoff_to": "sprint-executor"},
    {"type": "chain.stage_transitioned", "chain_id": "c1", "stage_id": "plan",
     "to_status": "running", "reason": "go", "error_message": None},
    {"type": "chain.stage_session_linked", "chain_id": "c1", "stage_id": "plan",
     "session_id": "s1"},
    {"type": "chain.stage_approval_recorded", "chain_id": "c1", "stage_id": "plan",
     "approval_status": "approved", "approval_id": "a1", "approval_type": "handoff",
     "human_feedback": "ok", "iteration": 2},
    {"type": "chain.stage_metrics_recorded", "chain_id": "c1", "stage_id": "plan",
     "metrics": {"cost_usd": 0.25, "tokens_in": 1200, "turns": 3}, "model": "claude-opus-4-1",
     "cost_provenance": "metered"},
    {"type": "chain.status_changed", "chain_id": "c1", "status": "completed", "reason": "done"},
    {"type": "session.started", "session_id": "s1", "agent": "claude-code",
     "model": "claude-sonnet-4-5", "cwd": "/w", "start_source": "startup",
     "attributes": {"permission_mode": "acceptEdits"}},
    {"type": "session.status_changed", "session_id": "s1", "status": "running"},
    {"type": "session.message_recorded", "session_id": "s1", "role": "assistant",
     "message_kind": "thinking", "content": "let me look", "attributes": {"turn": 3}},
    {"type": "session.tool_call_started", "session_id": "s1", "tool_name": "Read",
     "tool_input": {"file_path": "/w/a.py"}, "tool_use_id": "toolu_02", "agent_id": "sub-1"},
    {"type": "session.tool_call_ended", "session_id": "s1", "tool_name": "Read", "success": True,
     "tool_use_id": "toolu_02", "tool_response": {"type": "text", "file": {"numLines": 3}},
     "error": None, "is_interrupt": False, "duration_ms": 12, "attributes": {}},
    {"type": "session.command_executed", "session_id": "s1", "command": "go",
     "args": ["test", "./..."], "exit_code": 1, "duration_ns": 1500000000, "working_dir": "/w",
     "pid": 4242, "output": "FAIL"},
    {"type": "session.network_request_recorded", "session_id": "s1", "method": "GET",
     "url": "https://api.github.com/", "status_code": 200, "duration_ms": 35.5, "error": None},
    {"type": "session.secret_resolved", "session_id": "s1", "name": "GITHUB_TOKEN",
     "backend": "keychain"},
    {"type": "session.workspace_baseline_captured", "session_id": "s1",
     "files": [" M " + "a" * 64 + " src/a.py"], "reason": "start"},
    {"type": "session.evidence_recorded", "session_id": "s1",
     "entry": {"id": "e1", "type": "criterion", "criterion_id": "ac1", "status": "pass",
               "recorded_at": "2026-02-14T09:00:00Z", "exit_code": 0, "output": ""}},
    {"type": "session.file_snapshot_recorded", "session_id": "s1", "file_path": "/w/a.py",
     "content": "print(1)\n", "tool_use_id": "toolu_02"},
    {"type": "session.ended", "session_id": "s1", "reason": "other",
     "event_id": "end-1", "occurred_at": "2026-02-14T09:00:00.5+02:00", "source": "import:moat"},
]  # fmt: skip


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


#: Values put in place of a field by the generated cases: lax-mode conversions pydantic makes
#: (``"5"``, ``5.0``, ``"true"``), bounds, patterns with a final newline, timestamps of every
#: form RFC 3339 allows or not, source words, nesting at the limit and past it.
VALUES: list[Any] = [
    None, "", "x", "x" * 512, "x" * 513, "api", "api\n", "hook:claude-code", "import:moat",
    "otlp ", 0, 1, -1, 5, 5.0, 5.5, -0.0, 1e308, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
    2**64 + 1, True, False, "true", "5", [], ["a"], [1], ["a", 1], {}, {"a": None},
    {"a": [1, {"b": "😀"}]}, "2026-02-14T09:00:00Z", "2026-02-14t09:00:00.5+02:00",
    "2026-02-14 09:00:00.1234567-05:30", "2026-02-14T09:00:00", "2026-02-14T09:00Z",
    "2026-02-14T09:00:00.0Z", "2026-02-14T09:00:00.000000Z", "2026-02-14T09:00:00.999999Z",
    "2026-02-14T09:00:00.1234567Z", "2026-02-14T24:00:00Z", "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.5Z", "2026-13-01T00:00:00Z", "2026-02-14T09:00:00z",
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-01:00", "1700000000", 1700000000,
    "2026-02-30T09:00:00Z", "2026-02-14T09:00:60Z", "approve", "Deny", "DENY", "nope",
    "running", "completed", "pending", "approved", "rejected", "tool", "merge", "user",
    "metered", "github_issue", "é中", "a\x00b", "😀", "\ud800", {"cost_usd": 1, "turns": 5.5},
    {"bogus": 1}, {"cost_usd": -1}, {"cost_usd": True},
    {"type": "phase", "recorded_at": "2026-02-14T09:00:00Z", "status": "pass", "output": "x"},
    {"type": "", "recorded_at": "x"}, {"type": "criterion", "recorded_at": "2026-02-14"},
    {"type": "criterion", "recorded_at": "2026-02-14T09:00:00Z", "bogus": 1},
    " M " + "b" * 64 + " x", [" M " + "b" * 64 + " x", "?? deleted y"], "aGVsbG8=", "a=b",
    _deep(MAX_JSON_DEPTH - 3), _deep(MAX_JSON_DEPTH - 2), {"a": _deep(MAX_JSON_DEPTH - 4)},
    {"a": _deep(MAX_JSON_DEPTH - 3)},
]  # fmt: skip

TYPES = [example["type"] for example in EXAMPLES]


def _mutated(rng: random.Random) -> dict[str, Any]:
    """An example, half of the time with one or two fields set to other values, removed or
    added."""
    event = copy.deepcopy(rng.choice(EXAMPLES))
    names = [*event, "event_id", "occurred_at", "source", "args_", "bogus", "value"]
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        name = rng.choice(names)
        roll = rng.random()
        if roll < 0.1:
            event.pop(name, None)
        elif roll < 0.15:
            event["type"] = rng.choice(TYPES)
        else:
            event[name] = copy.deepcopy(rng.choice(VALUES))
    return event


def _body(events: list[Any], rng: random.Random) -> bytes:
    """``{"events": [...]}`` as a client may write it: compact or not, ASCII-escaped or not."""
    text = json.dumps({"events": events}, ensure_ascii=rng.random() < 0.3)
    return text.encode("utf-8", "surrogatepass")


def _fast(body: bytes, max_events: int = 1000) -> tuple[list[Command], bool] | None:
    return event_commands(body, "p", inline, max_events)


def _full(body: bytes, max_events: int = 1000) -> tuple[list[Command], bool] | Exception:
    try:
        return _commands(body, "p", inline, max_events)
    except (BadRequestError, RequestValidationError) as error:
        return error


def _same(fast: tuple[list[Command], bool], full: tuple[list[Command], bool]) -> None:
    """The same commands, numbers by type (``5`` is not ``5.0``) and instants by offset, and
    both a single event or both a batch."""
    assert fast[1] == full[1]
    assert len(fast[0]) == len(full[0])
    for mine, theirs in zip(fast[0], full[0], strict=True):
        assert (mine.kind, mine.external_id, mine.action, mine.project, mine.repeatable) == (
            theirs.kind,
            theirs.external_id,
            theirs.action,
            theirs.project,
            theirs.repeatable,
        )
        assert mine.meta == theirs.meta
        assert mine.meta.occurred_at.isoformat() == theirs.meta.occurred_at.isoformat()
        assert json.dumps(mine.args, sort_keys=True, default=repr) == json.dumps(
            theirs.args, sort_keys=True, default=repr
        )


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # An event without occurred_at takes the time it is read: the same in both paths here.
    monkeypatch.setattr(api.schemas, "utcnow", lambda: NOW)


@pytest.mark.parametrize("shape", ["batch", "single"])
def test_every_event_type_but_one_takes_the_fast_path_with_the_full_paths_commands(
    shape: str,
) -> None:
    for example in EXAMPLES:
        batch = {"events": [example, example | {"event_id": "again"}]}
        body = orjson.dumps(batch if shape == "batch" else example)
        fast, full = _fast(body), _full(body)
        assert not isinstance(full, Exception), (example["type"], full)
        if example["type"] == "session.workspace_baseline_captured":
            assert fast is None  # a model_validator needs the model: the full path
            continue
        assert fast is not None, example["type"]
        _same(fast, full)


def test_the_benchmark_batches_take_the_fast_path() -> None:
    for batch in mixed_batches(3, prefix="fast"):
        body = batch.body()
        fast = _fast(body)
        assert fast is not None
        full = _full(body)
        assert not isinstance(full, Exception)
        _same(fast, full)


def test_whatever_the_fast_path_accepts_the_full_path_accepts_alike() -> None:
    rng = random.Random(20261207)
    taken = refused = left = 0
    for _ in range(5000):
        events = [_mutated(rng) for _ in range(rng.randint(1, 2))]
        if rng.random() < 0.2:
            events = events[0]  # one event, not a batch
        body = _body(events, rng)
        fast, full = _fast(body, 2), _full(body, 2)
        if fast is None:
            if isinstance(full, Exception):
                refused += 1
            else:
                left += 1
            continue
        assert not isinstance(full, Exception), (body[:300], full)
        _same(fast, full)
        taken += 1
    # Every branch is exercised: taken fast, refused by the full path, and left to it but taken.
    assert min(taken, refused) > 1000 and left > 100, (taken, refused, left)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", "api\n"),  # Python's "$" would match before the newline; pydantic's not
        ("github_issue_number", "5"),  # pydantic's lax mode reads it as 5
        ("github_issue_number", 5.0),
        ("github_issue_number", 2**63),  # beyond 64 bits signed: a 422
        ("github_issue_number", 2**70),  # beyond orjson: the exact parser
        ("title", "\ud800"),  # an unpaired surrogate: a 400
        ("attributes", {"a": _deep(MAX_JSON_DEPTH - 3)}),  # level 65: a 400
        ("occurred_at", "2026-02-14T09:00:00"),  # no offset: a 422
        ("occurred_at", "0001-01-01T00:00:00+14:00"),  # before year 1 in UTC: a 422
        ("bogus", 1),
    ],
)
def test_values_the_models_read_otherwise_or_refuse_take_the_full_path(
    field: str, value: Any
) -> None:
    event = {"type": "chain.created", "chain_id": "c1", field: value}
    assert _fast(json.dumps({"events": [event]}).encode()) is None
    if field == "attributes":  # one level less deep in a single event
        event[field] = {"a": _deep(MAX_JSON_DEPTH - 1)}
    assert _fast(json.dumps(event).encode()) is None


def test_a_body_at_the_depth_limit_is_taken_and_one_past_it_is_not() -> None:
    event = {"type": "chain.created", "chain_id": "c1", "attributes": {}}
    # attributes is level 4, its value "a" level 5: its innermost list level MAX_JSON_DEPTH
    at_limit = orjson.dumps({"events": [event | {"attributes": {"a": _deep(MAX_JSON_DEPTH - 4)}}]})
    past = orjson.dumps({"events": [event | {"attributes": {"a": _deep(MAX_JSON_DEPTH - 3)}}]})
    assert _fast(at_limit) is not None
    assert _fast(past) is None
    with pytest.raises(BadRequestError, match="levels"):
        _commands(past, "p", inline, 1000)
    # one event alone: attributes is level 2
    single_at_limit = orjson.dumps(event | {"attributes": {"a": _deep(MAX_JSON_DEPTH - 2)}})
    single_past = orjson.dumps(event | {"attributes": {"a": _deep(MAX_JSON_DEPTH - 1)}})
    assert _fast(single_at_limit) is not None
    assert _fast(single_past) is None
    with pytest.raises(BadRequestError, match="levels"):
        _commands(single_past, "p", inline, 1000)


def test_batches_over_the_limit_empty_batches_and_broken_json_take_the_full_path() -> None:
    event = {"type": "chain.created", "chain_id": "c1"}
    assert _fast(orjson.dumps({"events": [event] * 3}), 2) is None
    assert _fast(orjson.dumps({"events": [event] * 2}), 2) is not None
    assert _fast(orjson.dumps({"events": []}), 2) is None
    assert _fast(b'{"events": [', 2) is None
    assert _fast(b"[]", 2) is None


def test_the_models_are_the_fast_paths_source() -> None:
    # A model the fast path cannot mirror fails at import, not at run time: every type of the
    # TypedEvent union but the one with a model_validator has a struct.
    from api.fast_events import _LAYOUTS

    models = {layout.model for layout in _LAYOUTS.values()}
    union = set(TypedEvent.__origin__.__args__)  # type: ignore[attr-defined]
    assert union - models == {api.schemas.WorkspaceBaselineCapturedBody}


def test_an_integer_beyond_64_bits_in_a_free_form_value_is_read_exactly() -> None:
    # orjson would round it; the full path reads such a body with the exact parser.
    event = {"type": "session.tool_call_started", "session_id": "s1", "tool_name": "Bash",
             "tool_input": {"n": 2**70 + 1, "m": -(2**64) - 3}}  # fmt: skip
    body = json.dumps({"events": [event]}).encode()
    fast, full = _fast(body), _full(body)
    assert fast is not None and not isinstance(full, Exception)
    _same(fast, full)
    assert fast[0][0].args["tool_input"] == {"n": 2**70 + 1, "m": -(2**64) - 3}


def test_fields_are_read_by_name_from_a_model_or_a_struct_and_only_by_identifiers() -> None:
    from types import SimpleNamespace

    from api.schemas import _fields

    holder = SimpleNamespace(a=1, b=None, m=[2], class_=3)
    assert _fields(holder, "b", "a") == {"b": None, "a": 1}
    assert _fields(holder, "m") == {"m": [2]}  # one name: a dict too, not the bare value
    assert _fields(holder, "m")["m"] is holder.m
    for names in [(), ("a", "b.c"), ("class",), ("a", "1a")]:
        with pytest.raises(ValueError, match="identifiers"):
            _fields(holder, *names)
    with pytest.raises(AttributeError):
        _fields(holder, "missing")
