"""Unit tests for api/hooks.py: Claude Code hook payloads to ledger commands, run through a Ledger.

The payloads are real captures (tests/fixtures/claude-code-hooks, see REALDATA-PROVENANCE.md).
Expected results are derived from the input data and the rules of DESIGN.md §2 and the hooks
reference (counted, simulated or read off the records), never from the mapper's own output.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from api.hooks import HOOK_EVENTS, HookPayloadError, map_hook
from domain.approval import ApprovalRequested
from domain.base import content_sha256
from domain.errors import IdempotencyConflictError, RuleViolationError
from domain.ledger import AGGREGATES, Command, Ledger, Outcome
from domain.session import (
    HookEventRecorded,
    MessageRecorded,
    SessionEnded,
    SessionStarted,
    ToolCallEnded,
    ToolCallStarted,
)

HOOKS = Path(__file__).resolve().parent.parent / "fixtures" / "claude-code-hooks"
AF = "agentic-framework-2026-02"
TP = "task-patterns-2025"
PRE_2026 = f"{AF}/raw-all-sessions/pre_tool_use.json"
POST_2026 = f"{AF}/raw-all-sessions/post_tool_use.matching-pre.small.json"
PRE_2025 = f"{TP}/pre_tool_use.first40.json"
POST_2025 = f"{TP}/post_tool_use.small25.json"
PERMISSIONS = f"{AF}/raw-all-sessions/permission_request.first25-small.json"
RESHAPED_FAILURES = f"{AF}/raw-all-sessions/post_tool_use_failure.first20-small.json"

ALL_FILES = sorted(str(path.relative_to(HOOKS)) for path in HOOKS.rglob("*.json"))

RECEIVED_AT = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
PROJECT = "default"


def originals(relative: str) -> list[dict[str, Any]]:
    """The Claude Code payloads of a fixture file, as Claude Code sent them.

    The failure log was re-shaped by its logging script to ``{timestamp, ...fields, raw_input}``;
    ``raw_input`` is the original payload.
    """
    records: list[dict[str, Any]] = json.loads((HOOKS / relative).read_text())
    if relative == RESHAPED_FAILURES:
        return [record["raw_input"] for record in records]
    return records


def new_ledger() -> Ledger:
    return Ledger({"PERSISTENCE_MODULE": "eventsourcing.popo"})


def post(ledger: Ledger, payloads: Iterable[dict[str, Any]], **kwargs: Any) -> list[Outcome]:
    """Each payload as its own request, as Claude Code's HTTP hooks send them."""
    outcomes: list[Outcome] = []
    for payload in payloads:
        commands = map_hook(payload, project=PROJECT, received_at=RECEIVED_AT, **kwargs)
        outcomes.extend(ledger.handle(commands))
    return outcomes


def result(outcome: Outcome) -> str:
    """``created`` / ``duplicate``, or the class name of the rejection's error."""
    if outcome.status == "rejected":
        return type(outcome.error).__name__
    return outcome.status


def event_count(ledger: Ledger) -> int:
    return len(list(ledger.recorder.select_notifications(start=1, limit=100000)))


def one(payload: dict[str, Any], **kwargs: Any) -> Command:
    commands = map_hook(payload, project=PROJECT, received_at=RECEIVED_AT, **kwargs)
    assert len(commands) == 1
    return commands[0]


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def expected_results(records: list[dict[str, Any]]) -> list[str]:
    """Per record, what DESIGN.md §2 says posting it in order does, derived from the data alone.

    The idempotency key of a hook is its session + hook event + ``tool_use_id`` (with a
    ``prompt_id``, that and the payload): the same key with the same content is a duplicate,
    with other content a conflict. A payload with none of these (the same ``Stop`` every turn),
    and a subagent hook (``agent_id`` + payload: Claude Code fires ``SubagentStart`` again when
    a subagent resumes), is a duplicate only of the session's last recorded hook, and recorded
    again otherwise; a PermissionRequest (an approval stream of its own content) is a duplicate
    whenever it was seen. A repeated SessionEnd, SubagentStart or SubagentStop is kept (Claude
    Code logs them more than once), not refused.
    """
    content_by_key: dict[tuple[str, str, str], str] = {}
    last_recorded: dict[str, tuple[str, str, str]] = {}  # session -> key of its last event
    results: list[str] = []
    for record in records:
        session_id, name, text = record["session_id"], record["hook_event_name"], canonical(record)
        natural = record.get("tool_use_id")
        if natural is None and record.get("prompt_id"):
            natural = f"{record['prompt_id']}:{text}"
        key = (session_id, name, natural if natural is not None else text)
        if natural is None and name in ("SubagentStart", "SubagentStop") and record.get("agent_id"):
            key = (session_id, name, f"{record['agent_id']}:{text}")
        by_content = natural is None and name != "PermissionRequest"
        if by_content and last_recorded.get(session_id) != key:
            results.append("created")
        elif key in content_by_key:
            same = content_by_key[key] == text
            results.append("duplicate" if same else "IdempotencyConflictError")
            continue
        else:
            results.append("created")
        content_by_key[key] = text
        if name != "PermissionRequest":
            last_recorded[session_id] = key
    return results


def minimal_payload(name: str) -> dict[str, Any]:
    """The smallest payload of each mapped hook event that the hooks reference describes."""
    fields: dict[str, dict[str, Any]] = {
        "SessionStart": {"source": "startup", "model": "claude-opus-4-6"},
        "UserPromptSubmit": {"prompt": "hello"},
        "PreToolUse": {"tool_name": "Bash", "tool_input": {"command": "ls"}, "tool_use_id": "t1"},
        "PostToolUse": {
            "tool_name": "Bash",
            "tool_input": {"command": "ls"},
            "tool_response": {"stdout": "a\n", "stderr": "", "interrupted": False},
            "tool_use_id": "t1",
        },
        "PostToolUseFailure": {
            "tool_name": "Bash",
            "tool_input": {"command": "false"},
            "tool_use_id": "t1",
            "error": "Exit code 1",
            "is_interrupt": False,
        },
        "PermissionRequest": {"tool_name": "Bash", "tool_input": {"command": "rm -rf build"}},
        "Notification": {"message": "Claude is waiting", "notification_type": "idle_prompt"},
        "SubagentStart": {"agent_id": "a1", "agent_type": "Explore"},
        "SubagentStop": {"agent_id": "a1", "agent_type": "Explore", "stop_hook_active": False},
        "PreCompact": {"trigger": "manual", "custom_instructions": "keep the plan"},
        "Stop": {"stop_hook_active": False},
        "SessionEnd": {"reason": "prompt_input_exit"},
    }
    return {"session_id": "s-min", "hook_event_name": name, **fields[name]}


# -- every captured payload ------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("relative", ALL_FILES)
def test_every_captured_payload_maps_to_commands_that_fit_a_command_method(relative: str) -> None:
    for payload in originals(relative):
        for command in map_hook(payload, project=PROJECT, received_at=RECEIVED_AT):
            aggregate_class = AGGREGATES[command.kind]
            assert command.action in aggregate_class.COMMANDS
            method = getattr(aggregate_class, command.action)
            inspect.signature(method).bind(None, command.meta, **command.args)
            # Plain JSON data only: no default= hook, no NaN.
            json.dumps(dict(command.args), allow_nan=False)
            assert command.meta.source == "hook:claude-code"
            assert command.meta.content_sha256 == content_sha256(payload)
            assert command.project == PROJECT


@pytest.mark.unit
@pytest.mark.parametrize("relative", ALL_FILES)
def test_every_captured_file_is_recorded_by_the_ledger_as_the_idempotency_rules_say(
    relative: str,
) -> None:
    records = originals(relative)
    ledger = new_ledger()

    outcomes = post(ledger, records)

    unfit = [o.error for o in outcomes if isinstance(o.error, RuleViolationError)]
    assert unfit == [], f"commands the domain could not take: {unfit[:3]}"
    assert [result(o) for o in outcomes] == expected_results(records)


@pytest.mark.unit
def test_the_captures_repeat_session_end_and_subagent_hooks_which_the_ledger_keeps() -> None:
    # Read off the files: every session's SessionEnd was logged twice (the second without
    # transcript_path/cwd); two subagents started twice under one agent_id (a resumed subagent:
    # Claude Code fires SubagentStart "when a subagent spawns or resumes"), one of them stopped
    # twice. The call a subagent's first start opens is the one tool call; later starts and
    # stops of an agent_id are kept verbatim, never refused.
    ends = originals(f"{AF}/raw-all-sessions/session_end.json")
    starts = originals(f"{AF}/raw-all-sessions/subagent_start.json")
    stops = originals(f"{AF}/raw-all-sessions/subagent_stop.json")
    sessions_ended = Counter(record["session_id"] for record in ends)
    agents_started = Counter((r["session_id"], r["agent_id"]) for r in starts)
    agents_stopped = Counter((r["session_id"], r["agent_id"]) for r in stops)
    assert max(agents_started.values()) == 2 and max(agents_stopped.values()) == 2
    ledger = new_ledger()

    end_results = Counter(result(o) for o in post(ledger, ends))
    start_results = Counter(result(o) for o in post(ledger, starts))
    stop_results = Counter(result(o) for o in post(ledger, stops))

    assert end_results == {"created": len(ends)}
    for session_id, count in sessions_ended.items():
        history = ledger.history("session", session_id)
        assert sum(isinstance(e, SessionEnded) for e in history) == 1
        assert (
            sum(getattr(e, "hook_event_name", None) == "SessionEnd" for e in history) == count - 1
        )
    assert start_results == {"created": len(starts)}
    assert stop_results == {"created": len(stops)}
    for session_id in {session for session, _ in agents_started | agents_stopped}:
        history = ledger.history("session", session_id)
        kept = Counter(
            (e.hook_event_name, e.payload["tool_use_id"])
            for e in history
            if isinstance(e, HookEventRecorded) and e.hook_event_name != "SessionEnd"
        )
        opened = Counter(e.tool_use_id for e in history if isinstance(e, ToolCallStarted))
        closed = Counter(e.tool_use_id for e in history if isinstance(e, ToolCallEnded))
        for (session, agent_id), count in agents_started.items():
            if session == session_id:
                assert (opened[agent_id], kept["SubagentStart", agent_id]) == (1, count - 1)
        for (session, agent_id), count in agents_stopped.items():
            if session == session_id:
                assert (closed[agent_id], kept["SubagentStop", agent_id]) == (1, count - 1)


# -- pairing ---------------------------------------------------------------------------------


@pytest.mark.unit
def test_post_tool_use_with_tool_use_id_ends_the_call_started_under_that_id() -> None:
    pre, post_records = originals(PRE_2026), originals(POST_2026)
    (session_id,) = {record["session_id"] for record in pre + post_records}
    pre_ids = {record["tool_use_id"] for record in pre}
    ledger = new_ledger()

    post(ledger, pre)
    post(ledger, post_records)

    ends = [e for e in ledger.history("session", session_id) if isinstance(e, ToolCallEnded)]
    assert len(ends) == len(post_records)
    assert {e.pairing for e in ends} == {"tool_use_id"}
    assert [e.tool_use_id for e in ends] == [record["tool_use_id"] for record in post_records]
    assert {e.tool_use_id for e in ends} <= pre_ids
    assert all(e.success for e in ends)


@pytest.mark.unit
@pytest.mark.parametrize("same_session", [False, True], ids=["as-captured", "same-session"])
def test_2025_post_tool_use_without_tool_use_id_pairs_with_the_latest_unfinished_call(
    same_session: bool,
) -> None:
    # As captured, the two 2025 files come from different sessions, so every end is an orphan;
    # moved into the PreToolUse session, ends of tools with open calls pair with the latest one.
    pre, post_records = originals(PRE_2025), originals(POST_2025)
    assert not any("tool_use_id" in record for record in pre + post_records)
    if same_session:
        post_records = [{**record, "session_id": pre[0]["session_id"]} for record in post_records]
    ledger = new_ledger()

    post(ledger, pre)
    post(ledger, post_records)

    starts: dict[tuple[str, str], list[str]] = defaultdict(list)
    for session_id in {record["session_id"] for record in pre}:
        for event in ledger.history("session", session_id):
            if isinstance(event, ToolCallStarted):
                starts[(session_id, event.tool_name)].append(event.tool_use_id)
    started_ids = {tool_use_id for ids in starts.values() for tool_use_id in ids}
    expected: list[tuple[str, str | None]] = []
    last: dict[str, str] = {}  # session -> its last recorded payload
    for record in post_records:
        if last.get(record["session_id"]) == canonical(record):  # a retry appends nothing
            continue
        last[record["session_id"]] = canonical(record)
        open_calls = starts[(record["session_id"], record["tool_name"])]
        expected.append(("latest_unfinished", open_calls.pop()) if open_calls else ("orphan", None))

    ends = [
        event
        for session_id in sorted({record["session_id"] for record in post_records})
        for event in ledger.history("session", session_id)
        if isinstance(event, ToolCallEnded)
    ]
    actual = [(e.pairing, e.tool_use_id if e.pairing != "orphan" else None) for e in ends]
    assert actual == expected
    assert not {e.tool_use_id for e in ends if e.pairing == "orphan"} & started_ids
    if same_session:
        assert {"latest_unfinished", "orphan"} <= {pairing for pairing, _ in expected}


@pytest.mark.unit
def test_subagent_stop_ends_the_subagent_call_its_start_opened() -> None:
    starts = originals(f"{AF}/session-05fe2b0c/subagent_start.json")
    stops = originals(f"{AF}/raw-all-sessions/subagent_stop.json")
    started = {(r["session_id"], r["agent_id"]): r["agent_type"] for r in starts}
    ledger = new_ledger()

    post(ledger, starts)
    post(ledger, stops)

    ends = {
        (session_id, e.tool_use_id): e
        for session_id in {r["session_id"] for r in stops}
        for e in ledger.history("session", session_id)
        if isinstance(e, ToolCallEnded)
    }
    assert len(ends) == len({(r["session_id"], r["agent_id"]) for r in stops})
    paired = {key for key, e in ends.items() if e.pairing == "tool_use_id"}
    assert paired == set(started) & set(ends)
    assert paired, "the fixture has stops of started subagents"
    for record in stops:
        end = ends[(record["session_id"], record["agent_id"])]
        # An empty agent_type (seen in the capture) names no subagent type.
        agent_type = record["agent_type"]
        assert end.tool_name == (f"Subagent:{agent_type}" if agent_type else "Subagent")
        assert end.attributes["agent_transcript_path"] == record["agent_transcript_path"]


@pytest.mark.unit
def test_2025_subagent_stop_without_agent_id_is_an_orphan_end_of_a_subagent() -> None:
    stops = originals(f"{TP}/subagent_stop.json")
    assert not any("agent_id" in record for record in stops)
    ledger = new_ledger()

    post(ledger, stops)

    ends = [
        e
        for session_id in {r["session_id"] for r in stops}
        for e in ledger.history("session", session_id)
        if isinstance(e, ToolCallEnded)
    ]
    assert len(ends) == len({canonical(record) for record in stops})
    assert {(e.tool_name, e.pairing) for e in ends} == {("Subagent", "orphan")}


# -- idempotency -----------------------------------------------------------------------------


@pytest.mark.unit
def test_every_turn_of_a_session_is_recorded_though_its_stop_payload_is_the_same() -> None:
    # Claude Code sends the same Stop payload at the end of every turn, and a user may send the
    # same prompt twice ("continue"); keyed on content alone, the second turn's Stop was a
    # duplicate and the session stayed "running" while it waited for input.
    stop = originals(f"{AF}/raw-all-sessions/stop.json")[0]
    session_id = stop["session_id"]
    prompt = {**{k: stop[k] for k in ("session_id", "transcript_path", "cwd")},
              "hook_event_name": "UserPromptSubmit", "prompt": "continue"}  # fmt: skip
    ledger = new_ledger()
    statuses = []
    for _turn in range(3):
        for payload in (prompt, stop):
            (outcome,) = post(ledger, [payload])
            assert outcome.status == "created", outcome
            statuses.append(ledger.load("session", session_id, project=PROJECT).status)
    (retried,) = post(ledger, [stop])  # a retry of the last Stop: nothing new

    assert statuses == ["running", "waiting_input"] * 3
    assert retried.status == "duplicate"
    session = ledger.load("session", session_id, project=PROJECT)
    assert (session.message_count, session.status) == (3, "waiting_input")
    history = ledger.history("session", session_id, project=PROJECT)
    stops = [e.event_id for e in history if getattr(e, "reason", None) == "Stop"]
    assert len(stops) == len(set(stops)) == 3
    assert {event_id.split("@")[0] for event_id in stops} == {one(stop).meta.event_id}


@pytest.mark.unit
def test_a_retry_appends_nothing_and_a_later_resend_only_what_its_content_alone_names() -> None:
    payloads = [
        payload
        for relative in (
            PRE_2026,
            POST_2026,
            f"{AF}/raw-all-sessions/user_prompt_submit.json",
            f"{AF}/raw-all-sessions/notification.json",
            f"{AF}/raw-all-sessions/stop.json",
            f"{AF}/session-05fe2b0c/subagent_start.json",
            f"{AF}/raw-all-sessions/subagent_stop.json",
            f"{AF}/session-05fe2b0c/post_tool_use_failure.json",
            PRE_2025,
            POST_2025,
        )
        for payload in originals(relative)
    ]
    ledger = new_ledger()
    first: list[Outcome] = []
    for payload in payloads:  # each sent twice in a row: the second is a retry
        sent, retried = post(ledger, [payload, payload])
        assert retried.status == "duplicate" and retried.version == sent.version, payload
        first.append(sent)
    assert {o.status for o in first} <= {"created", "duplicate"}
    events_after_first = event_count(ledger)

    second = post(ledger, payloads)

    # Sent again after the session moved on, a payload with a natural key (tool_use_id) is a
    # duplicate; one named by its content alone (or content and agent_id) is another
    # occurrence: nothing in it tells a late resend from Claude Code's next identical Stop or
    # Notification, or from a resumed subagent's start.
    # (and two identical ones in a row, e.g. a file of Stops, are one: the second is a retry)
    expected = expected_results(payloads + payloads)[len(payloads) :]
    assert [result(o) for o in second] == expected
    assert "created" in expected and "duplicate" in expected
    resent = [p for p, status in zip(payloads, expected, strict=True) if status == "created"]
    assert all(one(p).repeatable for p in resent)
    # (one of them appends an implied status change as well)
    assert event_count(ledger) - events_after_first == sum(o.appended for o in second)
    assert [o.appended >= 1 for o in second if o.status == "created"] == [True] * len(resent)


@pytest.mark.unit
@pytest.mark.parametrize(
    "relative",
    [
        PRE_2026,
        f"{AF}/raw-all-sessions/user_prompt_submit.json",
        f"{AF}/raw-all-sessions/stop.json",
    ],
)
def test_a_retried_hook_is_answered_with_the_version_of_its_first_answer(relative: str) -> None:
    # DESIGN.md §2: a duplicate "answers with the original position". The first hook of a
    # session also appends an implicit status change, which must not make the answers differ.
    payload = originals(relative)[0]
    ledger = new_ledger()

    (first,) = post(ledger, [payload])
    (retry,) = post(ledger, [payload])

    assert (first.status, retry.status) == ("created", "duplicate")
    assert retry.version == first.version


@pytest.mark.unit
def test_a_retried_permission_request_is_a_duplicate_on_the_same_approval() -> None:
    payload = originals(PERMISSIONS)[0]
    ledger = new_ledger()

    first = post(ledger, [payload])
    second = post(ledger, [copy.deepcopy(payload)])

    assert [result(o) for o in first] == ["created"]
    assert [result(o) for o in second] == ["duplicate"]
    assert second[0].stream_id == first[0].stream_id


@pytest.mark.unit
def test_different_content_under_the_same_tool_use_id_is_an_idempotency_conflict() -> None:
    original = originals(PRE_2026)[0]
    changed = copy.deepcopy(original)
    changed["tool_input"]["command"] = "rm -rf /"
    ledger = new_ledger()
    post(ledger, [original])

    (outcome,) = post(ledger, [changed])

    assert outcome.status == "rejected"
    assert isinstance(outcome.error, IdempotencyConflictError)
    assert outcome.error.fields["event_id"] == (
        f"cc:{original['session_id']}:PreToolUse:{original['tool_use_id']}"
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    ("payload", "expected_suffix"),
    [
        ({"hook_event_name": "PreToolUse", "tool_use_id": "toolu_1"}, "toolu_1"),
        ({"hook_event_name": "SubagentStart", "agent_id": "a9"}, "a9:sha256:"),
        ({"hook_event_name": "SubagentStop", "agent_id": "a9"}, "a9:sha256:"),
        ({"hook_event_name": "Stop", "agent_id": "a9"}, None),
        ({"hook_event_name": "PreToolUse"}, None),
    ],
    ids=["tool_use_id", "subagent-start", "subagent-stop", "agent_id-elsewhere", "no-natural-key"],
)
def test_event_id_is_the_hooks_natural_key_or_else_its_content_hash(
    payload: dict[str, Any], expected_suffix: str | None
) -> None:
    full = {"session_id": "s1", "tool_name": "Bash", "tool_input": {}, **payload}

    command = one(full)

    sha = content_sha256(full)
    suffix = expected_suffix if expected_suffix is not None else "sha256:"
    if suffix.endswith(":"):  # named by its content (as well)
        suffix += sha
    assert command.meta.event_id == f"cc:s1:{full['hook_event_name']}:{suffix}"
    assert command.repeatable == (payload.get("tool_use_id") is None)
    assert command.meta.content_sha256 == sha


# -- per-event mapping -----------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "kind", "action", "fixed_args"),
    [
        ("SessionStart", "session", "start", {"agent": "claude-code", "start_source": "startup"}),
        (
            "UserPromptSubmit",
            "session",
            "record_message",
            {"role": "user", "message_kind": "prompt"},
        ),
        ("PreToolUse", "session", "start_tool_call", {"tool_name": "Bash", "tool_use_id": "t1"}),
        ("PostToolUse", "session", "end_tool_call", {"success": True, "tool_use_id": "t1"}),
        (
            "PostToolUseFailure",
            "session",
            "end_tool_call",
            {"success": False, "is_interrupt": False},
        ),
        (
            "PermissionRequest",
            "approval",
            "request",
            {"approval_type": "tool", "session_id": "s-min"},
        ),
        (
            "Notification",
            "session",
            "record_message",
            {"role": "system", "message_kind": "notification"},
        ),
        (
            "SubagentStart",
            "session",
            "start_tool_call",
            {"tool_name": "Subagent:Explore", "tool_use_id": "a1"},
        ),
        (
            "SubagentStop",
            "session",
            "end_tool_call",
            {"tool_name": "Subagent:Explore", "tool_use_id": "a1"},
        ),
        ("PreCompact", "session", "record_message", {"role": "system", "content": "keep the plan"}),
        ("Stop", "session", "stop_turn", {"payload": {"stop_hook_active": False}}),
        ("SessionEnd", "session", "end", {"reason": "prompt_input_exit", "attributes": {}}),
    ],
)
def test_each_mapped_hook_event_becomes_its_command(
    name: str, kind: str, action: str, fixed_args: dict[str, Any]
) -> None:
    payload = minimal_payload(name)

    command = one(payload)

    assert (command.kind, command.action) == (kind, action)
    expected_stream = "cc-perm-" + content_sha256(payload)[:32] if kind == "approval" else "s-min"
    assert command.external_id == expected_stream
    assert {key: command.args[key] for key in fixed_args} == fixed_args


@pytest.mark.unit
def test_hook_events_lists_exactly_the_hooks_with_a_mapping_of_their_own() -> None:
    mapped = {
        name for name in HOOK_EVENTS if one(minimal_payload(name)).action != "record_hook_event"
    }

    assert mapped == set(HOOK_EVENTS)
    assert len(HOOK_EVENTS) == len(set(HOOK_EVENTS)) == 12


@pytest.mark.unit
def test_permission_request_opens_a_pending_approval_for_the_tool_call() -> None:
    payload = next(r for r in originals(PERMISSIONS) if "permission_suggestions" in r)
    ledger = new_ledger()

    (outcome,) = post(ledger, [payload])

    assert result(outcome) == "created"
    external_id = "cc-perm-" + content_sha256(payload)[:32]
    approval = ledger.load("approval", external_id)
    assert approval.state()["status"] == "pending"
    (requested,) = ledger.history("approval", external_id)
    assert isinstance(requested, ApprovalRequested)
    assert requested.approval_type == "tool"
    assert requested.session_id == payload["session_id"]
    assert requested.tool_use_id is None
    assert requested.tool_name == payload["tool_name"]
    assert requested.tool_input == payload["tool_input"]
    assert requested.tool_input_sha256 == content_sha256(payload["tool_input"])
    assert requested.requested_by == "claude-code"
    assert requested.attributes["permission_suggestions"] == payload["permission_suggestions"]
    assert requested.attributes["permission_mode"] == payload["permission_mode"]


@pytest.mark.unit
def test_session_start_records_model_source_and_keeps_agent_type_as_an_attribute() -> None:
    payload = next(
        r for r in originals(f"{AF}/raw-all-sessions/session_start.json") if "agent_type" in r
    )
    ledger = new_ledger()

    post(ledger, [payload])

    (started,) = ledger.history("session", payload["session_id"])
    assert isinstance(started, SessionStarted)
    assert started.agent == "claude-code"
    assert started.model == payload["model"]
    assert started.start_source == payload["source"]
    assert started.attributes == {"agent_type": payload["agent_type"]}


@pytest.mark.unit
def test_notification_is_a_system_message_with_its_notification_type() -> None:
    payload = originals(f"{AF}/raw-all-sessions/notification.json")[0]
    ledger = new_ledger()

    post(ledger, [payload])

    (message,) = ledger.history("session", payload["session_id"])
    assert isinstance(message, MessageRecorded)
    assert (message.role, message.message_kind) == ("system", "notification")
    assert message.content == payload["message"]
    assert message.attributes == {
        "transcript_path": payload["transcript_path"],
        "cwd": payload["cwd"],
        "notification_type": payload["notification_type"],
    }


@pytest.mark.unit
def test_post_tool_use_failure_records_an_unsuccessful_end_with_the_error() -> None:
    (payload,) = originals(f"{AF}/session-05fe2b0c/post_tool_use_failure.json")
    ledger = new_ledger()

    post(ledger, [payload])

    (end,) = [
        e for e in ledger.history("session", payload["session_id"]) if isinstance(e, ToolCallEnded)
    ]
    assert end.success is False
    assert end.error == payload["error"]
    assert end.is_interrupt is payload["is_interrupt"]
    assert end.tool_use_id == payload["tool_use_id"]
    assert end.pairing == "orphan"
    assert end.attributes["tool_input"] == payload["tool_input"]


@pytest.mark.unit
@pytest.mark.parametrize("name", ["TaskCompleted", "PermissionDenied", "Setup"])
def test_an_unknown_hook_event_is_kept_whole_as_hook_event_recorded(name: str) -> None:
    payload = {
        "session_id": "s-unknown",
        "hook_event_name": name,
        "transcript_path": "/tmp/t.jsonl",
        "task": {"id": "task-7", "subject": "write tests", "owner": None},
        "prompt_id": "p-1",
    }
    ledger = new_ledger()

    (outcome,) = post(ledger, [payload])

    assert outcome.status == "created"
    (event,) = ledger.history("session", "s-unknown")
    assert isinstance(event, HookEventRecorded)
    assert event.hook_event_name == name
    assert event.payload == payload


@pytest.mark.unit
@pytest.mark.parametrize("name", HOOK_EVENTS)
def test_fields_of_newer_claude_code_versions_are_kept_for_every_mapped_hook(name: str) -> None:
    newer = {
        "prompt_id": "p-42",
        "effort": "high",
        "scratchpad_dir": "/tmp/scratch",
        "future_field": {"nested": [1, 2]},
    }
    command = one({**minimal_payload(name), **newer})

    assert command.action != "record_hook_event"
    kept = command.args["payload"] if name == "Stop" else command.args["attributes"]
    assert {key: kept[key] for key in newer} == newer
    assert "session_id" not in kept
    assert "hook_event_name" not in kept


# -- malformed bodies ------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [[], "PreToolUse", None, 42, [{"session_id": "s", "hook_event_name": "Stop"}]],
    ids=["empty-array", "string", "null", "number", "array-of-payloads"],
)
def test_a_body_that_is_not_a_json_object_is_refused(body: object) -> None:
    with pytest.raises(HookPayloadError) as raised:
        map_hook(body, project=PROJECT, received_at=RECEIVED_AT)

    assert [error["loc"] for error in raised.value.errors] == [()]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("payload", "bad_locs"),
    [
        ({"hook_event_name": "Stop"}, {("session_id",)}),
        ({"session_id": "", "hook_event_name": "Stop"}, {("session_id",)}),
        ({"session_id": 7, "hook_event_name": "Stop"}, {("session_id",)}),
        ({"session_id": "s"}, {("hook_event_name",)}),
        ({}, {("session_id",), ("hook_event_name",)}),
        (
            {"session_id": "s", "hook_event_name": "PreToolUse", "tool_name": 3, "tool_input": {}},
            {("tool_name",)},
        ),
        (
            {"session_id": "s", "hook_event_name": "PreToolUse", "tool_name": "Bash"},
            {("tool_input",)},
        ),
        (
            {
                "session_id": "s",
                "hook_event_name": "PostToolUseFailure",
                "tool_name": "Bash",
                "is_interrupt": "no",
            },
            {("is_interrupt",)},
        ),
        ({"session_id": "s", "hook_event_name": "UserPromptSubmit"}, {("prompt",)}),
        ({"session_id": "s", "hook_event_name": "Notification", "message": ["a"]}, {("message",)}),
        ({"session_id": "s", "hook_event_name": "Stop", "tool_use_id": 5}, {("tool_use_id",)}),
        ({"session_id": "s", "hook_event_name": "Stop", "x": float("nan")}, {("x",)}),
        ({"session_id": "s", "hook_event_name": "Stop", "at": RECEIVED_AT}, {("at",)}),
    ],
    ids=[
        "missing-session_id",
        "empty-session_id",
        "numeric-session_id",
        "missing-hook_event_name",
        "both-missing",
        "numeric-tool_name",
        "pre-tool-use-without-tool_input",
        "string-is_interrupt",
        "prompt-missing",
        "message-not-a-string",
        "numeric-tool_use_id",
        "nan",
        "not-json-data",
    ],
)
def test_a_payload_with_missing_or_mistyped_fields_is_refused_naming_each_field(
    payload: dict[str, Any], bad_locs: set[tuple[str, ...]]
) -> None:
    with pytest.raises(HookPayloadError) as raised:
        map_hook(payload, project=PROJECT, received_at=RECEIVED_AT)

    assert {tuple(error["loc"]) for error in raised.value.errors} == bad_locs
    assert all(error["msg"] for error in raised.value.errors)
    assert isinstance(raised.value, ValueError)


# -- clocks and blobs ------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        ("2026-02-10T15:35:19.793307Z", datetime(2026, 2, 10, 15, 35, 19, 793307, tzinfo=UTC)),
        ("2026-02-10T17:35:19+02:00", datetime(2026, 2, 10, 15, 35, 19, tzinfo=UTC)),
        ("2026-02-10T15:35:19.793307", datetime(2026, 2, 10, 15, 35, 19, 793307, tzinfo=UTC)),
        ("yesterday", RECEIVED_AT),
        ("2026-02-10", RECEIVED_AT),
        ("2026-13-10T15:35:19Z", RECEIVED_AT),
        (1770737719, RECEIVED_AT),
        ("0001-01-01T00:00:00+14:00", RECEIVED_AT),
        ("9999-12-31T23:59:59-14:00", RECEIVED_AT),
    ],
    ids=[
        "utc-z",
        "offset",
        "naive-is-utc",
        "not-a-time",
        "date-only",
        "month-13",
        "epoch-number",
        "before-year-1-in-utc",
        "after-year-9999-in-utc",
    ],
)
def test_occurred_at_is_the_payloads_rfc3339_timestamp_else_the_receive_time(
    timestamp: object, expected: datetime
) -> None:
    command = one({"session_id": "s", "hook_event_name": "Stop", "timestamp": timestamp})

    assert command.meta.occurred_at == expected
    assert command.meta.occurred_at.utcoffset() == timedelta(0)


@pytest.mark.unit
def test_occurred_at_is_the_receive_time_when_the_payload_has_no_timestamp() -> None:
    local = timezone(timedelta(hours=-5))
    received = datetime(2026, 3, 1, 7, 0, tzinfo=local)

    (command,) = map_hook(originals(PRE_2026)[0], project=PROJECT, received_at=received)

    assert command.meta.occurred_at == received
    assert command.meta.occurred_at.tzinfo == UTC


@pytest.mark.unit
def test_the_logged_timestamp_of_a_reshaped_failure_record_becomes_its_occurred_at() -> None:
    record = json.loads((HOOKS / RESHAPED_FAILURES).read_text())[0]
    stamp = datetime.fromisoformat(record["timestamp"]).replace(tzinfo=UTC)

    command = one(record)

    assert command.meta.occurred_at == stamp
    assert command.args["attributes"]["raw_input"] == record["raw_input"]


@pytest.mark.unit
def test_offload_receives_the_tool_response_and_its_return_value_is_what_is_stored() -> None:
    payload = originals(POST_2026)[0]
    calls: list[tuple[Any, str]] = []

    def offload(value: Any, media_type: str) -> Any:
        calls.append((value, media_type))
        return {
            "sha256": content_sha256(value),
            "size_bytes": len(canonical(value)),
            "media_type": media_type,
        }

    ledger = new_ledger()
    post(ledger, originals(PRE_2026))

    post(ledger, [payload], offload=offload)

    assert (payload["tool_response"], "application/json") in calls
    (end,) = [
        e
        for e in ledger.history("session", payload["session_id"])
        if isinstance(e, ToolCallEnded) and e.tool_use_id == payload["tool_use_id"]
    ]
    assert end.tool_response == {
        "sha256": content_sha256(payload["tool_response"]),
        "size_bytes": len(canonical(payload["tool_response"])),
        "media_type": "application/json",
    }


@pytest.mark.unit
def test_offloaded_tool_input_keeps_the_hash_of_the_input_itself() -> None:
    payload = originals(PRE_2026)[0]

    command = one(payload, offload=lambda value, media_type: {"blob": media_type})

    assert command.args["tool_input"] == {"blob": "application/json"}
    assert command.args["tool_input_sha256"] == content_sha256(payload["tool_input"])
    assert command.meta.content_sha256 == content_sha256(payload)


@pytest.mark.unit
def test_offload_is_given_the_prompt_as_text_and_never_the_session_id() -> None:
    payload = originals(f"{AF}/raw-all-sessions/user_prompt_submit.json")[0]
    calls: list[tuple[Any, str]] = []

    def offload(value: Any, media_type: str) -> Any:
        calls.append((value, media_type))
        return value

    command = one(payload, offload=offload)

    assert (payload["prompt"], "text/plain") in calls
    assert payload["session_id"] not in [value for value, _ in calls]
    assert command.args["content"] == payload["prompt"]
    assert (command.args["role"], command.args["message_kind"]) == ("user", "prompt")


def test_offload_keeps_small_values_inline_and_hashes_each_value_once() -> None:
    from api.offload import json_and_sha256, make_offload
    from domain.base import content_sha256
    from infra.blobs import MemoryBlobStore

    store = MemoryBlobStore()
    offload = make_offload(store, threshold_bytes=64)
    small, large = {"p": "x"}, {"p": "y" * 100}
    assert json_and_sha256(offload, small) == (small, content_sha256(small))
    ref, digest = json_and_sha256(offload, large)
    assert digest == content_sha256(large) == ref["sha256"]
    assert store.get(digest) == b'{"p":"' + b"y" * 100 + b'"}'
    assert json_and_sha256(offload, None) == (None, content_sha256(None))
    # an offload without a known threshold (e.g. the identity) is simply called
    assert json_and_sha256(lambda v, _m: v, large) == (large, content_sha256(large))
