"""Aggregates: given a history, a command either records events or raises a typed error."""

from __future__ import annotations

import time
from dataclasses import field as dataclass_field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from domain import errors
from domain.base import EventMeta, content_sha256, stream_id
from domain.chain import ChainStatusChanged, StageTransitioned
from domain.ledger import Command, Ledger
from domain.session import SessionStatusChanged, ToolCallEnded, ToolCallStarted
from tests.spies import Calls

pytestmark = pytest.mark.unit


def meta(event_id: str, content: Any = None) -> EventMeta:
    return EventMeta(
        event_id,
        content_sha256(content if content is not None else event_id),
        datetime.now(UTC),
        "api",
    )


@pytest.fixture()
def ledger() -> Ledger:
    from infra.store import EventLog

    holder: list[EventLog] = []
    app = Ledger(
        {"PERSISTENCE_MODULE": "eventsourcing.popo"},
        snapshot_interval=5,
        position_lookup=lambda keys: holder[0].positions_of(keys),
    )
    holder.append(EventLog(app))
    return app


def session_cmd(
    action: str, event_id: str, session: str = "s1", body: Any = None, **args: Any
) -> Command:
    return Command("session", session, action, meta(event_id, body), args)


def message_cmd(event_id: str, session: str = "s1") -> Command:
    """A user prompt recorded on ``session`` (one event)."""
    return session_cmd(
        "record_message", event_id, session, role="user", message_kind="prompt", content="hi"
    )


def chain_cmd(action: str, event_id: str, **args: Any) -> Command:
    return Command("chain", "c1", action, meta(event_id), args)


def test_stream_ids_are_uuid5_of_project_kind_and_external_id() -> None:
    assert stream_id("default", "session", "abc") == stream_id("default", "session", "abc")
    assert stream_id("default", "session", "abc") != stream_id("other", "session", "abc")
    assert stream_id("default", "session", "abc") != stream_id("default", "trace", "abc")
    assert stream_id("default", "session", "abc").version == 5


def test_tool_call_end_pairs_by_tool_use_id(ledger: Ledger) -> None:
    outcomes = ledger.handle(
        [
            session_cmd(
                "start_tool_call",
                "a",
                tool_name="Bash",
                tool_input={},
                tool_input_sha256="x",
                tool_use_id="t1",
            ),
            session_cmd("end_tool_call", "b", tool_name="Bash", success=True, tool_use_id="t1"),
        ]
    )
    assert [o.status for o in outcomes] == ["created", "created"]
    ended = [e for e in ledger.history("session", "s1") if isinstance(e, ToolCallEnded)]
    assert [(e.tool_use_id, e.pairing) for e in ended] == [("t1", "tool_use_id")]


def test_end_without_tool_use_id_pairs_with_latest_unfinished_call_of_that_tool(
    ledger: Ledger,
) -> None:
    ledger.handle(
        [
            session_cmd(
                "start_tool_call", "a", tool_name="Read", tool_input={"p": 1}, tool_input_sha256="x"
            ),
            session_cmd(
                "start_tool_call", "b", tool_name="Read", tool_input={"p": 2}, tool_input_sha256="y"
            ),
            session_cmd(
                "start_tool_call", "c", tool_name="Bash", tool_input={}, tool_input_sha256="z"
            ),
            session_cmd("end_tool_call", "d", tool_name="Read", success=True),
            session_cmd("end_tool_call", "e", tool_name="Read", success=True),
            session_cmd("end_tool_call", "f", tool_name="Read", success=True),
        ]
    )
    events = ledger.history("session", "s1")
    started = [e for e in events if isinstance(e, ToolCallStarted)]
    ended = [e for e in events if isinstance(e, ToolCallEnded)]
    read_ids = [e.tool_use_id for e in started if e.tool_name == "Read"]
    assert all(e.tool_use_id_generated for e in started)
    # latest first: the second Read ends first, then the first; the third end has nothing left.
    assert [(e.tool_use_id, e.pairing) for e in ended[:2]] == [
        (read_ids[1], "latest_unfinished"),
        (read_ids[0], "latest_unfinished"),
    ]
    assert ended[2].pairing == "orphan" and ended[2].tool_use_id not in read_ids


def test_an_end_with_an_unknown_tool_use_id_is_recorded_as_orphan(ledger: Ledger) -> None:
    [outcome] = ledger.handle(
        [session_cmd("end_tool_call", "a", tool_name="Bash", success=False, tool_use_id="nope")]
    )
    assert outcome.status == "created"
    [ended] = [e for e in ledger.history("session", "s1") if isinstance(e, ToolCallEnded)]
    assert (ended.tool_use_id, ended.pairing, ended.success) == ("nope", "orphan", False)


def test_a_tool_call_ends_once(ledger: Ledger) -> None:
    ledger.handle(
        [
            session_cmd(
                "start_tool_call",
                "a",
                tool_name="Bash",
                tool_input={},
                tool_input_sha256="x",
                tool_use_id="t1",
            ),
            session_cmd("end_tool_call", "b", tool_name="Bash", success=True, tool_use_id="t1"),
        ]
    )
    [outcome] = ledger.handle(
        [session_cmd("end_tool_call", "c", tool_name="Bash", success=False, tool_use_id="t1")]
    )
    assert outcome.status == "rejected"
    assert isinstance(outcome.error, errors.ToolCallAlreadyEndedError)
    assert outcome.error.fields["tool_use_id"] == "t1"


def test_same_event_id_same_content_is_a_duplicate_with_the_original_position(
    ledger: Ledger,
) -> None:
    first = ledger.handle([session_cmd("start", "e1", agent="claude-code")])
    again = ledger.handle([session_cmd("start", "e1", agent="claude-code")])
    assert first[0].status == "created" and again[0].status == "duplicate"
    assert (again[0].version, again[0].position) == (first[0].version, first[0].position)
    assert len(ledger.history("session", "s1")) == 1


def test_same_event_id_different_content_is_an_idempotency_conflict(ledger: Ledger) -> None:
    ledger.handle([session_cmd("start", "e1", body="one")])
    [outcome] = ledger.handle([session_cmd("start", "e1", body="two")])
    assert outcome.status == "rejected"
    assert isinstance(outcome.error, errors.IdempotencyConflictError)


def test_a_rejected_command_does_not_fail_the_others_in_its_batch(ledger: Ledger) -> None:
    outcomes = ledger.handle(
        [
            Command("approval", "a1", "decide", meta("d"), {"decision": "approved"}),
            session_cmd("start", "e1"),
        ]
    )
    assert [o.status for o in outcomes] == ["rejected", "created"]
    assert isinstance(outcomes[0].error, errors.ApprovalNotFoundError)


def test_second_decision_on_an_approval_is_refused(ledger: Ledger) -> None:
    ledger.handle(
        [
            Command(
                "approval",
                "a1",
                "request",
                meta("r"),
                {"tool_name": "Bash", "tool_input": {}, "tool_input_sha256": "x"},
            ),
            Command(
                "approval",
                "a1",
                "decide",
                meta("d1"),
                {"decision": "approved", "source_decision": "approve"},
            ),
        ]
    )
    [outcome] = ledger.handle(
        [Command("approval", "a1", "decide", meta("d2"), {"decision": "denied"})]
    )
    assert isinstance(outcome.error, errors.ApprovalAlreadyDecidedError)
    assert outcome.error.fields["decision"] == "approved"
    assert ledger.load("approval", "a1").state()["status"] == "approved"


def test_stage_transitions_follow_the_machine_and_refusals_name_allowed_targets(
    ledger: Ledger,
) -> None:
    ledger.handle(
        [chain_cmd("create", "c"), chain_cmd("add_stage", "s", stage_id="st1", agent_id="planner")]
    )
    [bad] = ledger.handle(
        [chain_cmd("transition_stage", "t0", stage_id="st1", to_status="completed")]
    )
    assert isinstance(bad.error, errors.InvalidTransitionError)
    assert bad.error.fields["allowed"] == ["running"]
    moves = ["running", "awaiting_approval", "running", "completed"]
    outcomes = ledger.handle(
        [
            chain_cmd("transition_stage", f"t{i}", stage_id="st1", to_status=s)
            for i, s in enumerate(moves, 1)
        ]
    )
    assert [o.status for o in outcomes] == ["created"] * 4
    [late] = ledger.handle(
        [chain_cmd("transition_stage", "t9", stage_id="st1", to_status="running")]
    )
    assert (
        isinstance(late.error, errors.InvalidTransitionError) and late.error.fields["allowed"] == []
    )


def test_a_stage_awaiting_approval_moves_the_chain_to_pending_approval_and_back(
    ledger: Ledger,
) -> None:
    ledger.handle(
        [
            chain_cmd("create", "c"),
            chain_cmd("add_stage", "s", stage_id="st1", agent_id="planner"),
            chain_cmd("transition_stage", "t1", stage_id="st1", to_status="running"),
            chain_cmd("transition_stage", "t2", stage_id="st1", to_status="awaiting_approval"),
            chain_cmd("transition_stage", "t3", stage_id="st1", to_status="running"),
        ]
    )
    events = ledger.history("chain", "c1")
    statuses = [e.status for e in events if isinstance(e, ChainStatusChanged)]
    assert statuses == ["pending_approval", "active"]
    assert sum(isinstance(e, StageTransitioned) for e in events) == 3


def test_stage_commands_need_the_chain_and_the_stage(ledger: Ledger) -> None:
    [no_chain] = ledger.handle([chain_cmd("add_stage", "s", stage_id="st1", agent_id="planner")])
    assert isinstance(no_chain.error, errors.ChainNotFoundError)
    ledger.handle([chain_cmd("create", "c")])
    [no_stage] = ledger.handle(
        [chain_cmd("link_stage_session", "l", stage_id="zz", session_id="s1")]
    )
    assert isinstance(no_stage.error, errors.StageNotFoundError)


def test_session_status_changes_follow_the_humanlayer_machine(ledger: Ledger) -> None:
    ledger.handle([session_cmd("start", "a"), session_cmd("end", "b", reason="other")])
    [bad] = ledger.handle([session_cmd("change_status", "c", status="interrupting")])
    assert isinstance(bad.error, errors.InvalidTransitionError)
    assert bad.error.fields["allowed"] == ["running"]
    [second_end] = ledger.handle([session_cmd("end", "d", reason="again")])
    assert isinstance(second_end.error, errors.SessionEndedError)


def test_a_prompt_after_stop_marks_the_session_running_again(ledger: Ledger) -> None:
    ledger.handle(
        [
            session_cmd("start", "a"),
            session_cmd("stop_turn", "b", payload={}),
            session_cmd("record_message", "c", role="user", message_kind="prompt", content="hi"),
        ]
    )
    changes = [
        (e.previous_status, e.status)
        for e in ledger.history("session", "s1")
        if isinstance(e, SessionStatusChanged)
    ]
    assert changes == [("running", "waiting_input"), ("waiting_input", "running")]
    assert ledger.load("session", "s1").state()["status"] == "running"


def test_state_at_a_version_and_as_of_a_time(ledger: Ledger) -> None:
    ledger.handle(
        [
            session_cmd(
                "record_evidence",
                f"e{i}",
                entry={
                    "type": "criterion",
                    "criterion_id": "ac1",
                    "status": s,
                    "recorded_at": "2026-01-01T00:00:00Z",
                },
            )
            for i, s in enumerate(["fail", "pass", "fail", "pass", "pass", "fail", "pass"])
        ]
    )
    at3 = ledger.load("session", "s1", version=3).state()
    assert at3["version"] == 3 and at3["criterion_states"]["ac1"]["status"] == "fail"
    assert ledger.snapshots is not None
    snapshots = list(ledger.snapshots.get(stream_id("default", "session", "s1")))
    assert [s.originator_version for s in snapshots] == [5]  # taken by handle (interval 5)
    at7 = ledger.load("session", "s1", version=7).state()  # beyond a snapshot (interval 5)
    assert at7["criterion_states"]["ac1"]["status"] == "pass"
    events = ledger.history("session", "s1")
    assert ledger.version_as_of("session", "s1", events[3].timestamp) >= 4
    with pytest.raises(errors.VersionNotFoundError):
        ledger.version_as_of("session", "s1", events[0].timestamp - timedelta(seconds=1))
    with pytest.raises(errors.StreamNotFoundError):
        ledger.load("session", "nope")


def test_unknown_commands_and_bad_arguments_are_rule_violations(ledger: Ledger) -> None:
    outcomes = ledger.handle(
        [
            session_cmd("drop_table", "a"),
            session_cmd("start", "b", not_an_arg=1),
        ]
    )
    assert all(isinstance(o.error, errors.RuleViolationError) for o in outcomes)
    with pytest.raises(errors.RuleViolationError):
        ledger.load("nonsense", "x")


def test_a_decision_outside_the_neutral_vocabulary_is_a_rule_violation(ledger: Ledger) -> None:
    ledger.handle([Command("approval", "a1", "request", meta("r"), {})])
    [outcome] = ledger.handle(
        [Command("approval", "a1", "decide", meta("d"), {"decision": "maybe"})]
    )
    assert isinstance(outcome.error, errors.RuleViolationError)
    assert ledger.load("approval", "a1").state()["status"] == "pending"


def two_writers(tmp_path: Any) -> tuple[Ledger, Ledger]:
    """Two Ledgers on one SQLite file: two processes' write caches over one log."""
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "log.sqlite"),
    }
    return Ledger(env), Ledger(env)


def test_a_refusal_decided_on_a_stale_cached_stream_is_rechecked_on_fresh_state(
    tmp_path: Any,
) -> None:
    a, b = two_writers(tmp_path)
    a.handle(
        [chain_cmd("create", "c"), chain_cmd("add_stage", "s1", stage_id="st1", agent_id="planner")]
    )
    b.handle([chain_cmd("add_stage", "s2", stage_id="st2", agent_id="executor")])
    # a's cache has no st2; the refusal (StageNotFound) must not be reported from stale state.
    [outcome] = a.handle([chain_cmd("transition_stage", "t", stage_id="st2", to_status="running")])
    assert outcome.status == "created", outcome.error
    assert [e.originator_version for e in a.history("chain", "c1")] == [1, 2, 3, 4]


def test_an_append_on_a_stale_cached_stream_is_retried_and_stays_idempotent(tmp_path: Any) -> None:
    a, b = two_writers(tmp_path)
    a.handle([session_cmd("start", "e1")])
    b.handle(
        [session_cmd("record_message", "m1", role="user", message_kind="prompt", content="hi")]
    )
    # a retry of b's event through a: a's cached stream is one event behind
    [dup] = a.handle(
        [session_cmd("record_message", "m1", role="user", message_kind="prompt", content="hi")]
    )
    assert dup.status == "duplicate"
    [new] = a.handle([session_cmd("end", "e2")])
    assert new.status == "created"
    versions = [e.originator_version for e in b.history("session", "s1")]
    assert versions == list(range(1, len(versions) + 1))
    assert [e.event_id for e in b.history("session", "s1")].count("m1") == 1


def test_the_write_cache_keeps_streams_from_their_second_batch_within_both_budgets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write to a cached stream reads nothing from the store; one to an uncached stream replays
    it. Kept: streams written in an earlier batch; least recently written evicted first."""
    app = Ledger({"PERSISTENCE_MODULE": "eventsourcing.popo"}, cache_size=3, cache_events=10)
    reads = Calls(monkeypatch, app.recorder, "select_events")
    tags = iter(range(1000))

    def write(session: str, count: int = 1, *, start: bool = False) -> int:
        """Append ``count`` events to ``session`` (a start, then messages); the stream reads."""
        reads.count = 0
        commands = [message_cmd(f"{session}-{next(tags)}", session) for _ in range(count - start)]
        if start:
            commands.insert(0, session_cmd("start", f"{session}-start", session=session))
        outcomes = app.handle(commands)
        assert [(o.status, o.appended) for o in outcomes] == [("created", 1)] * count, outcomes
        return reads.count

    assert write("a", 4, start=True) == 1  # new: one read that finds nothing; not kept
    assert write("b", 4, start=True) == 1
    assert write("a") == 1  # replayed, then kept: a 5
    assert write("b") == 1  # a 5 + b 5 = 10
    assert write("a") == 0  # a 6 + b 5 = 11 > 10: b goes
    assert write("b") == 1  # b 6 + a 6 = 12: a goes
    assert write("c", 2, start=True) == 1  # new: not kept
    assert write("c") == 1  # b 6 + c 3
    assert write("b") == 0  # b 7 + c 3 = 10
    assert write("c") == 0  # c 4 + b 7 = 11: b goes
    assert write("b") == 1
    assert len(app.history("session", "b")) == 8


def test_a_stream_longer_than_the_events_budget_is_not_cached_and_the_streams_budget_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = Ledger({"PERSISTENCE_MODULE": "eventsourcing.popo"}, cache_size=2, cache_events=5)
    reads = Calls(monkeypatch, app.recorder, "select_events")

    app.handle(
        [session_cmd("start", "s", session="long")]
        + [message_cmd(f"m{i}", "long") for i in range(4)]
    )
    app.handle([message_cmd("m5", "long")])  # replayed; 6 events > 5: not kept
    reads.count = 0
    app.handle([message_cmd("m6", "long")])
    assert reads.count == 1
    for name in ("p", "q", "r"):
        app.handle([session_cmd("start", f"{name}1", session=name)])
    for name in ("p", "q", "r"):
        app.handle([message_cmd(f"{name}2", name)])  # kept from now on: p, q, r; 3 > 2: p goes
    reads.count = 0
    app.handle([message_cmd("q3", "q"), message_cmd("r3", "r")])
    assert reads.count == 0
    app.handle([message_cmd("p3", "p")])
    assert reads.count == 1


def test_state_at_every_version_is_the_same_with_and_without_snapshots(tmp_path: Any) -> None:
    history = [
        session_cmd("start", "a"),
        session_cmd(
            "start_tool_call",
            "b",
            tool_name="Bash",
            tool_input={},
            tool_input_sha256="x",
            tool_use_id="t1",
        ),
        session_cmd(
            "end_tool_call", "c", tool_name="Read", success=True, tool_use_id="t2"
        ),  # orphan end
        session_cmd(
            "start_tool_call",
            "d",
            tool_name="Read",
            tool_input={},
            tool_input_sha256="y",
            tool_use_id="t2",
        ),  # late start
        session_cmd(
            "record_evidence",
            "e",
            entry={
                "type": "criterion",
                "criterion_id": "ac1",
                "status": "fail",
                "recorded_at": "t",
            },
        ),
        session_cmd("start_tool_call", "f", tool_name="Bash", tool_input={}, tool_input_sha256="z"),
        session_cmd("end_tool_call", "g", tool_name="Bash", success=True, tool_use_id="t1"),
        session_cmd("stop_turn", "h", payload={"stop_hook_active": False}),
        session_cmd(
            "record_evidence", "i", entry={"type": "phase", "phase_id": "p1", "recorded_at": "t2"}
        ),
        session_cmd("end", "j", reason="other"),
    ]
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(tmp_path / "log.sqlite"),
    }
    with_snapshots = Ledger(env, snapshot_interval=2)
    with_snapshots.handle(history[:5])
    with_snapshots.handle(history[5:])
    without = Ledger(env)  # same log, no snapshot store
    last = without.load("session", "s1").version
    assert last == len(with_snapshots.history("session", "s1"))
    for version in range(1, last + 1):
        assert (
            with_snapshots.load("session", "s1", version=version).state()
            == without.load("session", "s1", version=version).state()
        )
    final = without.load("session", "s1").state()
    assert final["tool_call_count"] == 3 and final["open_tool_calls"] == [
        {"tool_use_id": e.tool_use_id, "tool_name": "Bash"}
        for e in without.history("session", "s1")
        if isinstance(e, ToolCallStarted) and e.tool_use_id_generated
    ]
    # a writer on the same log still sees every event id (snapshots leave the index out)
    [dup] = Ledger(env, snapshot_interval=2).handle([history[1]])
    assert dup.status == "duplicate"


def test_history_pages_by_version_and_knows_an_empty_page_from_a_missing_stream(
    ledger: Ledger,
) -> None:
    ledger.handle(
        [
            session_cmd("record_message", f"m{i}", role="assistant", message_kind="m", content=i)
            for i in range(7)
        ]
    )
    page = ledger.history("session", "s1", after_version=2, limit=3)
    assert [e.originator_version for e in page] == [3, 4, 5]
    assert ledger.history("session", "s1", after_version=7) == []
    assert ledger.current_version(stream_id("default", "session", "s1")) == 7
    with pytest.raises(errors.StreamNotFoundError):
        ledger.history("session", "nope", after_version=3)


def test_state_as_of_a_time_is_a_bounded_binary_search(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3 events per recorded_at instant (one batch), 40 instants: ties and gaps both occur.
    for batch in range(40):
        ledger.handle(
            [
                session_cmd(
                    "record_message",
                    f"m{batch}-{i}",
                    role="assistant",
                    message_kind="text",
                    content="hi",
                )
                for i in range(3)
            ]
        )
    events = ledger.history("session", "s1")
    assert len(events) == 120
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps)
    decoded = Calls(monkeypatch, ledger.mapper, "to_domain_event")
    probes = [*stamps, *(t + timedelta(microseconds=1) for t in stamps)]
    for as_of in probes:
        decoded.count = 0
        expected = max(e.originator_version for e in events if e.timestamp <= as_of)
        assert ledger.version_as_of("session", "s1", as_of) == expected
        # events read: 2 + ceil(log2(120)), not the stream up to as_of
        assert decoded.count <= 2 + 7
    with pytest.raises(errors.VersionNotFoundError):
        ledger.version_as_of("session", "s1", stamps[0] - timedelta(microseconds=1))
    with pytest.raises(errors.StreamNotFoundError):
        ledger.version_as_of("session", "nope", stamps[0])


def test_the_events_of_one_transaction_share_their_recorded_at(ledger: Ledger) -> None:
    """``recorded_at`` is one instant per ``handle`` (the events it commits together), later
    calls take their own; the state as of that instant is the transaction's last version."""
    outcomes = ledger.handle(
        [
            message_cmd("m0"),
            message_cmd("m1"),
            message_cmd("m2"),
            chain_cmd("create", "c", title="t"),
        ]
    )
    assert [o.status for o in outcomes] == ["created"] * 4, outcomes
    time.sleep(0.001)
    [outcome] = ledger.handle([message_cmd("m3")])
    assert outcome.status == "created", outcome
    *first, last = [e.timestamp for e in ledger.history("session", "s1")]
    [chain_stamp] = [e.timestamp for e in ledger.history("chain", "c1")]
    assert len(first) >= 3 and set(first) == {chain_stamp}
    assert last > chain_stamp
    assert ledger.version_as_of("session", "s1", chain_stamp) == len(first)


def test_recorded_at_never_goes_back_within_a_stream(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    import domain.base

    ledger.handle(
        [session_cmd("record_message", "m1", role="assistant", message_kind="text", content="hi")]
    )
    first = ledger.history("session", "s1")[0].timestamp
    # This writer's clock is behind the one that wrote the stream (another host, a clock step).
    monkeypatch.setattr(domain.base, "utcnow", lambda: first - timedelta(seconds=5))
    ledger.handle(
        [session_cmd("record_message", "m2", role="assistant", message_kind="text", content="hi")]
    )
    ledger.handle(
        [session_cmd("record_message", "m3", role="assistant", message_kind="text", content="hi")],
    )
    assert [e.timestamp for e in ledger.history("session", "s1")] == [first, first, first]
    assert ledger.version_as_of("session", "s1", first) == 3


def test_events_built_by_trigger_equal_the_constructors_events() -> None:
    from uuid import uuid4

    from domain.base import LedgerEvent, _new_event

    class Noted(LedgerEvent):
        note: str
        tags: list[str] = dataclass_field(default_factory=list)
        level: int = 3

    fields = {
        "originator_id": uuid4(),
        "originator_version": 1,
        "timestamp": datetime.now(UTC),
        "project": "p",
        "external_id": "x",
        "event_id": "e1",
        "content_sha256": "0" * 64,
        "occurred_at": datetime.now(UTC),
        "source": "api",
        "note": "hello",
    }
    built = _new_event(Noted, dict(fields))
    assert built == Noted(**fields)
    assert (built.tags, built.level) == ([], 3)
    assert _new_event(Noted, dict(fields)).tags is not built.tags  # a fresh default per event
    with pytest.raises(TypeError):
        _new_event(Noted, {**fields, "unknown": 1})
    with pytest.raises(TypeError):
        _new_event(Noted, {k: v for k, v in fields.items() if k != "note"})
    with pytest.raises(TypeError):
        _new_event(Noted, {**fields, "originator_id": "not-a-uuid"})


@pytest.mark.parametrize("persistence", ["popo", "sqlite"])
def test_a_retried_batch_of_duplicates_is_answered_from_one_position_lookup(
    persistence: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.store import EventLog

    env = {"PERSISTENCE_MODULE": f"eventsourcing.{persistence}"}
    if persistence == "sqlite":
        env["SQLITE_DBNAME"] = str(tmp_path / "log.sqlite")
    holder: list[EventLog] = []
    app = Ledger(env, position_lookup=lambda keys: holder[0].positions_of(keys))
    log = EventLog(app)
    holder.append(log)
    batch = [
        session_cmd(
            "record_message", f"m{i}", f"s{i % 7}", role="user", message_kind="prompt", content=i
        )
        for i in range(900)  # more keys than one SQLite query takes
    ]
    created = app.handle(batch)
    assert {o.status for o in created} == {"created"}
    lookups = Calls(monkeypatch, log, "positions_of")
    again = app.handle(batch)
    assert lookups.count == 1
    assert [o.status for o in again] == ["duplicate"] * 900
    assert [(o.stream_id, o.version, o.position) for o in again] == [
        (o.stream_id, o.version, o.position) for o in created
    ]
    # the range query of one stream (the audit routes' read) agrees on every position
    ranges = {sid: log.positions(sid) for sid in {o.stream_id for o in created}}
    assert all(ranges[o.stream_id][o.version] == o.position for o in created)
    missing = [(created[0].stream_id, 10_000), (created[1].stream_id, 0)]
    assert log.positions_of(missing) == {}
