"""Bounded writer loads: a writer restores a stream from its newest snapshot and asks the store's
key index about the event ids and tool calls a batch names, instead of replaying the stream from
its first event. Checked against whole-stream replay (no snapshots), on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from domain.base import EventMeta, content_sha256
from domain.ledger import Command, Ledger, Outcome
from infra.settings import Settings
from infra.store import build_ledger
from tests.commands import message
from tests.spies import Calls

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Settings keywords of one store: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield {"data_dir": tmp_path / "bounded"}
    else:
        yield {
            "database_url": request.getfixturevalue("postgres_url"),
            "database_schema": request.getfixturevalue("pg_schema"),
            "data_dir": tmp_path / "bounded",
        }


def writer(
    store: dict[str, Any], *, interval: int, create: bool = False, cache: int = 0, replay: int = 0
) -> Ledger:
    """A Ledger on ``store`` snapshotting every ``interval`` events, with a write cache of
    ``cache`` streams (0: every batch loads its streams from the store), replaying streams whole
    while their newest snapshot is at most at version ``replay``."""
    settings = Settings(
        **store,
        snapshot_interval=interval,
        write_cache_streams=cache,
        writer_replay_events=replay,
    )
    ledger, _ = build_ledger(settings, create_table=create)
    return ledger


def tool(
    action: str, event_id: str, session: str, tool_use_id: str | None, name: str = "Bash"
) -> Command:
    """``start_tool_call`` / ``end_tool_call`` of ``name`` (``tool_use_id`` None: left out)."""
    args: dict[str, Any] = {"tool_name": name}
    if action == "start_tool_call":
        args.update(tool_input={"command": event_id}, tool_input_sha256=content_sha256(event_id))
    else:
        args.update(success=True)
    if tool_use_id is not None:
        args["tool_use_id"] = tool_use_id
    meta = EventMeta(event_id, content_sha256([event_id, args]), datetime.now(UTC), "api")
    return Command("session", session, action, meta, args)


def changed(command: Command) -> Command:
    """``command``'s event id with other content (an idempotency conflict)."""
    meta = command.meta._replace(content_sha256=content_sha256(["changed", command.meta]))
    return command._replace(meta=meta)


def failing(message: str) -> Callable[..., None]:
    """A stand-in for a store method that raises ``RuntimeError(message)`` whatever it is given."""

    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError(message)

    return fail


def summary(outcomes: list[Outcome]) -> list[tuple[str, int | None, str | None]]:
    return [(o.status, o.version, type(o.error).__name__ if o.error else None) for o in outcomes]


def test_a_writer_restores_a_long_stream_from_its_snapshot_and_still_finds_every_event_id(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = writer(store, interval=10, create=True)
    for start in range(0, 95, 5):
        outcomes = first.handle([message(f"m{i}", "long") for i in range(start, start + 5)])
        assert {o.status for o in outcomes} == {"created"}
    created = {o.command.meta.event_id: o for o in first.handle([message("m95", "long")])}
    second = writer(store, interval=10)
    decoded = Calls(monkeypatch, second.mapper, "to_domain_event")
    outcomes = second.handle(
        [message("m3", "long"), changed(message("m41", "long")), message("m96", "long")]
    )
    assert summary(outcomes) == [
        ("duplicate", 4, None),  # m3 is the 4th event, recorded before the newest snapshot (90)
        ("rejected", None, "IdempotencyConflictError"),
        ("created", 97, None),
    ]
    assert outcomes[0].position is not None
    # the snapshot at 90 and the 6 events after it, not the 96 events of the stream
    assert decoded.count <= 1 + 6 + 2, decoded.count
    assert created["m95"].version == 96
    history = [e.event_id for e in first.history("session", "long")]
    assert history == [f"m{i}" for i in range(97)]


def test_tool_calls_that_ended_before_the_snapshot_still_refuse_a_second_start_or_end(
    store: dict[str, Any],
) -> None:
    first = writer(store, interval=5, create=True)
    setup = [
        tool("start_tool_call", "s-a", "sess", "a"),
        tool("end_tool_call", "e-a", "sess", "a"),
        tool("end_tool_call", "e-b", "sess", "b"),  # an orphan end: its start comes later
        tool("start_tool_call", "s-c", "sess", "c", "Read"),  # stays open
        *[message(f"pad{i}", "sess") for i in range(8)],
    ]
    assert {o.status for o in first.handle(setup)} == {"created"}
    version = first.load("session", "sess").version  # a session's first event adds its start
    assert version > 10  # snapshots at 5 and 10: "a" and "b" ended before the newest one
    second = writer(store, interval=5)
    outcomes = [
        second.handle([command])[0]
        for command in [
            tool("start_tool_call", "s-a2", "sess", "a"),
            tool("end_tool_call", "e-a2", "sess", "a"),
            tool("start_tool_call", "s-b", "sess", "b"),  # the orphan's late start
            tool("start_tool_call", "s-b2", "sess", "b"),
            tool("end_tool_call", "e-c", "sess", None, "Read"),  # pairs with the open call
            tool("end_tool_call", "e-c2", "sess", "c", "Read"),
        ]
    ]
    assert summary(outcomes) == [
        ("rejected", None, "ToolCallAlreadyStartedError"),
        ("rejected", None, "ToolCallAlreadyEndedError"),
        ("created", version + 1, None),
        ("rejected", None, "ToolCallAlreadyStartedError"),
        ("created", version + 2, None),
        ("rejected", None, "ToolCallAlreadyEndedError"),
    ]
    ended = first.history("session", "sess", after_version=version + 1)[0]
    assert (ended.tool_use_id, ended.pairing) == ("c", "latest_unfinished")  # type: ignore[attr-defined]


def test_ids_holding_a_nul_are_stored_in_the_key_index_and_found_from_a_snapshot(
    store: dict[str, Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL's text refuses NUL: storing such an id's key failed, which left that batch's
    # snapshots unmarked (its streams then replayed whole by every writer, for good).
    first = writer(store, interval=5, create=True)
    setup = [
        tool("start_tool_call", "s\x00a", "nul", "a\x00b"),
        tool("end_tool_call", "e\x00a", "nul", "a\x00b"),
        *[message(f"pad\x00{i}", "nul") for i in range(8)],
        message("plain", "other"),
        *[message(f"pad{i}", "other") for i in range(8)],
    ]
    assert {o.status for o in first.handle(setup)} == {"created"}
    assert "write-side keys failed" not in caplog.text
    second = writer(store, interval=5)
    decoded = Calls(monkeypatch, second.mapper, "to_domain_event")
    outcomes = second.handle(
        [
            tool("start_tool_call", "s\x00a", "nul", "a\x00b"),  # a resend
            changed(message("pad\x003", "nul")),
            tool("end_tool_call", "e\x00a2", "nul", "a\x00b"),  # ended already
            message("pad3", "other"),
        ]
    )
    assert summary(outcomes) == [
        ("duplicate", 2, None),  # the session's first event is its implied start
        ("rejected", None, "IdempotencyConflictError"),
        ("rejected", None, "ToolCallAlreadyEndedError"),
        ("duplicate", 5, None),
    ]
    # from their newest snapshots (10 and 5) and the 1 and 4 events after them, not their
    # 11 and 9 events replayed whole
    assert decoded.count == 2 + 5, decoded.count


def random_batches(seed: int, count: int) -> list[list[Command]]:
    """Batches of messages and tool call starts and ends over 3 sessions, with resent event ids
    (same content: duplicates; other content: conflicts) and reused tool_use_ids."""
    rng = random.Random(seed)
    sent: list[Command] = []
    batches = []
    for n in range(count):
        batch = []
        for k in range(rng.randint(1, 6)):
            session = f"r{rng.randrange(3)}"
            roll = rng.random()
            event_id = f"{n}.{k}"
            if sent and roll < 0.12:
                command = rng.choice(sent)  # the same event again
            elif sent and roll < 0.17:
                command = changed(rng.choice(sent))
            elif roll < 0.45:
                use = rng.choice([f"t{rng.randrange(12)}", None])
                command = tool(
                    "start_tool_call", event_id, session, use, rng.choice(["Bash", "Read"])
                )
            elif roll < 0.75:
                use = rng.choice([f"t{rng.randrange(12)}", None])
                command = tool(
                    "end_tool_call", event_id, session, use, rng.choice(["Bash", "Read"])
                )
            else:
                command = message(event_id, session)
            batch.append(command)
            sent.append(command)
        batches.append(batch)
    return batches


def test_bounded_loads_decide_every_command_as_replaying_whole_streams_does(
    store: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bounded = writer(store, interval=3, create=True, cache=2)  # some cached, some loaded
    reference = writer({"data_dir": tmp_path / "reference"}, interval=0, create=True)
    assert bounded._key_index is not None and reference._key_index is None
    index = bounded._key_index
    get_keys, streams_asked = index.get_keys, []

    def counting(keys: Any) -> Any:
        streams_asked.append(len({sid for sid, _ in keys}))
        return get_keys(keys)

    monkeypatch.setattr(index, "get_keys", counting)
    for batch in random_batches(seed=7, count=150):
        assert summary(bounded.handle(batch)) == summary(reference.handle(batch)), batch
    assert 1 in streams_asked and max(streams_asked) > 1, streams_asked  # both of its queries
    for session in ("r0", "r1", "r2"):
        ours = [(e.event_id, type(e).__name__) for e in bounded.history("session", session)]
        theirs = [(e.event_id, type(e).__name__) for e in reference.history("session", session)]
        assert ours == theirs and len(ours) > 30
        assert (
            bounded.load("session", session).state() == reference.load("session", session).state()
        )


def test_a_snapshot_from_before_the_key_index_makes_the_writer_replay_the_stream_whole(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    old = writer(store, interval=10, create=True)
    old._key_index = None  # as runledger wrote before the key index: unmarked snapshots
    old.handle([message(f"m{i}", "legacy") for i in range(25)])
    second = writer(store, interval=10)
    decoded = Calls(monkeypatch, second.mapper, "to_domain_event")
    assert summary(second.handle([message("m2", "legacy")])) == [("duplicate", 3, None)]
    assert decoded.count >= 25  # replayed whole: the snapshot at 20 is not marked
    # Writing past the next snapshot stores every key of the stream and marks that snapshot.
    second.handle([message(f"n{i}", "legacy") for i in range(5)])
    third = writer(store, interval=10)
    decoded = Calls(monkeypatch, third.mapper, "to_domain_event")
    assert summary(third.handle([message("m2", "legacy"), message("n0", "legacy")])) == [
        ("duplicate", 3, None),
        ("duplicate", 26, None),
    ]
    assert decoded.count <= 1 + 2, decoded.count  # the snapshot at 30; nothing after it


def test_when_the_key_index_cannot_be_written_snapshots_stay_unmarked_and_writes_go_on(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = writer(store, interval=10, create=True)
    assert first._key_index is not None
    monkeypatch.setattr(first._key_index, "put_keys", failing("relation does not exist"))
    outcomes = first.handle([message(f"m{i}", "s") for i in range(12)])
    assert {o.status for o in outcomes} == {"created"}  # committed and acknowledged
    second = writer(store, interval=10)
    decoded = Calls(monkeypatch, second.mapper, "to_domain_event")
    assert summary(second.handle([message("m1", "s")])) == [("duplicate", 2, None)]
    assert decoded.count >= 12  # the unmarked snapshot at 10 is not used


def test_a_snapshot_that_cannot_be_stored_is_skipped_and_the_committed_batch_acknowledged(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = writer(store, interval=10, create=True)
    assert first.snapshots is not None
    monkeypatch.setattr(first.snapshots, "put", failing("disk full"))
    outcomes = first.handle([message(f"m{i}", "s") for i in range(25)])
    assert summary(outcomes) == [("created", v, None) for v in range(1, 26)]
    assert all(o.position is not None for o in outcomes)
    failed = [r for r in caplog.records if "snapshot of stream" in r.getMessage()]
    assert len(failed) == 2, [r.getMessage() for r in caplog.records]  # versions 10 and 20
    again = writer(store, interval=10)
    assert again.snapshots is not None
    assert list(again.snapshots.get(outcomes[0].stream_id)) == []
    assert summary(again.handle([message("m24", "s"), message("m25", "s")])) == [
        ("duplicate", 25, None),
        ("created", 26, None),
    ]
    assert [e.event_id for e in again.history("session", "s")] == [f"m{i}" for i in range(26)]


def test_only_a_stream_restored_from_a_snapshot_asks_the_key_index_once_per_batch(
    store: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = writer(store, interval=10, create=True, cache=100, replay=1000)
    assert first._key_index is not None
    asked = Calls(monkeypatch, first._key_index, "get_keys")
    for start in range(0, 40, 10):  # replayed whole once (snapshot 10 <= 1000), then cached
        first.handle([message(f"m{i}", "hot") for i in range(start, start + 10)])
    assert asked.count == 0
    for version, (replay, asks) in enumerate([(1000, 0), (30, 1), (0, 1)], start=41):
        again = writer(store, interval=10, replay=replay)  # the newest snapshot is at 40
        assert again._key_index is not None
        asked = Calls(monkeypatch, again._key_index, "get_keys")
        decoded = Calls(monkeypatch, again.mapper, "to_domain_event")
        outcomes = again.handle([message("m5", "hot"), message(f"new{version}", "hot")])
        assert summary(outcomes) == [("duplicate", 6, None), ("created", version, None)]
        assert asked.count == asks
        assert (decoded.count >= 40) == (asks == 0), (replay, decoded.count)
