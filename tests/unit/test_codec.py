"""The orjson transcoder writes and reads eventsourcing's JSONTranscoder format."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.application import Application
from eventsourcing.persistence import JSONTranscoder, OperationalError

from domain.base import EventMeta, content_sha256
from domain.ledger import Command, Ledger
from infra.codec import OrjsonMapper, OrjsonTranscoder, connection_lost
from tests.recorders import assert_same_notifications

pytestmark = pytest.mark.unit


def transcoders() -> tuple[JSONTranscoder, OrjsonTranscoder]:
    app = Application({"PERSISTENCE_MODULE": "eventsourcing.popo"})
    stdlib, fast = JSONTranscoder(), OrjsonTranscoder()
    app.register_transcodings(stdlib)
    app.register_transcodings(fast)
    return stdlib, fast


def orjson_ledger() -> Ledger:
    """An in-memory Ledger with runledger's transcoder and mapper (as ``infra.store`` sets them)."""
    ledger = Ledger(
        {
            "PERSISTENCE_MODULE": "eventsourcing.popo",
            "TRANSCODER_TOPIC": "infra.codec:OrjsonTranscoder",
            "MAPPER_TOPIC": "infra.codec:OrjsonMapper",
        }
    )
    assert isinstance(ledger.mapper, OrjsonMapper)
    return ledger


def meta(n: int) -> EventMeta:
    """Event ``e<n>`` of 2026-01-01 from the API."""
    return EventMeta(f"e{n}", content_sha256(n), datetime(2026, 1, 1, tzinfo=UTC), "api")


def record_messages(ledger: Ledger, count: int, **message: str) -> None:
    """``count`` ``record_message`` commands on sessions s0 and s1 (alternately), all created."""
    outcomes = ledger.handle(
        [
            Command(
                "session",
                f"s{n % 2}",
                "record_message",
                meta(n),
                {
                    key: f"{value} {n}" if key == "content" else value
                    for key, value in message.items()
                },
            )
            for n in range(count)
        ]
    )
    assert all(o.status == "created" for o in outcomes), outcomes


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


def test_the_one_pass_mapper_writes_the_library_mappers_bytes() -> None:
    from eventsourcing.persistence import Mapper

    from domain.base import LedgerSnapshot

    ledger = orjson_ledger()

    outcomes = ledger.handle(
        [
            Command("session", "s1", "start", meta(1), {"agent": "claude-code", "model": "m"}),
            Command(
                "session",
                "s1",
                "start_tool_call",
                meta(2),
                {
                    "tool_name": "Bash",
                    "tool_input": {"big": 2**70},
                    "tool_input_sha256": "0" * 64,
                    "tool_use_id": "t1",
                },
            ),
            Command(
                "session",
                "s1",
                "end_tool_call",
                meta(3),
                {
                    "tool_name": "Bash",
                    "success": True,
                    "tool_use_id": "t1",
                    "tool_response": {"a": 1},
                },
            ),
            Command("chain", "c1", "create", meta(4), {"title": "t"}),
        ]
    )
    assert [o.status for o in outcomes] == ["created"] * 4, outcomes
    stdlib, fast = transcoders()
    library = Mapper(transcoder=fast)
    reader = Mapper(transcoder=stdlib)
    stored = list(ledger.recorder.select_notifications(start=1, limit=100))
    assert len(stored) >= 4
    events = [ledger.mapper.to_domain_event(s) for s in stored]
    snapshot = LedgerSnapshot.take(ledger.load("session", "s1"))
    for item in [*events, snapshot]:
        ours = ledger.mapper.to_stored_event(item)
        theirs = library.to_stored_event(item)
        assert ours == theirs
        assert reader.to_domain_event(ours) == item


def test_a_timestamp_shared_by_a_transactions_events_is_written_as_each_events_own() -> None:
    """The mapper tags a transaction's shared ``timestamp`` once and reuses it only for the very
    same object: events that carry another instant (an equal one included) get their own."""
    from eventsourcing.persistence import Mapper

    ledger = orjson_ledger()
    record_messages(ledger, 3, role="assistant", message_kind="text", content="hi")
    events: list[Any] = [
        ledger.mapper.to_domain_event(s) for s in ledger.recorder.select_notifications(1, 3)
    ]
    first, second, third = events
    assert first.timestamp is not second.timestamp and first.timestamp == second.timestamp
    _, fast = transcoders()
    library: Mapper[UUID] = Mapper(transcoder=fast)
    # Events read back hold equal but distinct datetimes; give two of them one object, as the
    # writer's events of one transaction have, and one a later instant.
    later = first.timestamp + timedelta(microseconds=1)
    object.__setattr__(second, "timestamp", first.timestamp)
    object.__setattr__(third, "timestamp", later)
    for event in (first, second, third, first):
        assert ledger.mapper.to_stored_event(event) == library.to_stored_event(event)
    assert later.isoformat().encode() in ledger.mapper.to_stored_event(third).state


@pytest.mark.parametrize(
    "occurred_at",
    [
        datetime(2026, 1, 1, 12, 30, 5, 123456, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),  # no fraction: isoformat writes none
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 12, 0, 0, 500, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=-8))),
        datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=5, minutes=30, seconds=15))),
        datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(minutes=1, microseconds=7))),
        datetime(2026, 1, 1, 12, 0, 0, 1),  # naive
    ],
    ids=str,
)
def test_an_events_datetimes_are_written_as_the_library_mapper_writes_them(
    occurred_at: datetime,
) -> None:
    from eventsourcing.persistence import Mapper

    ledger = orjson_ledger()
    event_meta = EventMeta("e1", content_sha256(1), occurred_at, "api")
    [outcome] = ledger.handle([Command("session", "s1", "start", event_meta, {"agent": "a"})])
    assert outcome.status == "created", outcome
    [stored] = ledger.recorder.select_notifications(start=1, limit=1)
    event = ledger.mapper.to_domain_event(stored)
    assert event.occurred_at == occurred_at
    _, fast = transcoders()
    assert ledger.mapper.to_stored_event(event) == Mapper(transcoder=fast).to_stored_event(event)
    assert occurred_at.isoformat().encode() in stored.state


def test_the_lean_decoder_gives_the_library_mappers_objects_and_errors() -> None:
    from dataclasses import replace
    from typing import ClassVar

    from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent
    from eventsourcing.utils import get_topic

    from domain.base import LedgerSnapshot
    from domain.session import MessageRecorded

    ledger = orjson_ledger()
    record_messages(ledger, 6, role="assistant", message_kind="message", content="é")
    library = Mapper(transcoder=ledger.mapper.transcoder)
    stored = list(ledger.recorder.select_notifications(start=1, limit=100))
    snapshot = ledger.mapper.to_stored_event(LedgerSnapshot.take(ledger.load("session", "s1")))
    as_text = [replace(s, originator_id=str(s.originator_id)) for s in stored]  # SQLite's ids
    for item in [*stored, snapshot, *as_text]:
        ours, theirs = ledger.mapper.to_domain_event(item), library.to_domain_event(item)
        assert type(ours) is type(theirs)
        assert vars(ours) == vars(theirs)
        assert type(ours.originator_id) is UUID

    class MessageRecordedV2(MessageRecorded):  # an upcast from version 1 to 2
        class_version: ClassVar[int] = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["upcast"] = True

    message = next(s for s in stored if s.topic == get_topic(MessageRecorded))
    upcast = replace(message, topic=get_topic(MessageRecordedV2))
    ours, theirs = ledger.mapper.to_domain_event(upcast), library.to_domain_event(upcast)
    assert vars(ours) == vars(theirs)
    assert vars(ours)["upcast"] is True

    corrupt = StoredEvent(uuid4(), 1, message.topic, b'{"not json')
    with pytest.raises(MapperDeserialisationError) as ours_error:
        ledger.mapper.to_domain_event(corrupt)
    with pytest.raises(MapperDeserialisationError) as theirs_error:
        library.to_domain_event(corrupt)
    assert str(ours_error.value) == str(theirs_error.value)


def test_the_sqlite_recorders_read_what_the_librarys_read_with_stream_ids_parsed_once(
    tmp_path: Path,
) -> None:
    from eventsourcing.sqlite import SQLiteAggregateRecorder, SQLiteApplicationRecorder

    from domain.base import stream_id
    from infra import codec
    from infra.settings import Settings
    from infra.store import build_ledger

    ledger, _ = build_ledger(Settings(data_dir=tmp_path, snapshot_interval=3), create_table=True)
    record_messages(ledger, 20, role="user", message_kind="prompt", content="prompt")
    ours, snapshots = ledger.recorder, ledger.snapshots.recorder  # type: ignore[union-attr]
    assert type(ours) is codec.CachedIdSQLiteApplicationRecorder
    assert type(snapshots) is codec.CachedIdSQLiteAggregateRecorder
    library = SQLiteApplicationRecorder(ours.datastore, events_table_name=ours.events_table_name)
    library_snapshots = SQLiteAggregateRecorder(
        snapshots.datastore, events_table_name=snapshots.events_table_name
    )
    codec._uuid_of.cache_clear()
    notifications = ours.select_notifications(start=1, limit=100)
    assert notifications == library.select_notifications(start=1, limit=100)
    assert len(notifications) >= 10
    assert all(type(n.originator_id) is UUID for n in notifications)
    assert codec._uuid_of.cache_info().currsize == 2  # two streams, each id parsed once
    assert_same_notifications(ours, library)
    sid = stream_id("default", "session", "s1")
    assert ours.select_events(sid, gt=1) == library.select_events(sid, gt=1)
    assert snapshots.select_events(sid) == library_snapshots.select_events(sid)
    assert snapshots.select_events(sid)  # taken every 3 events


@pytest.mark.parametrize(
    "number",
    [2**64, 2**70 + 1, -(2**63) - 1, -(2**80) + 3, 15511210043330985984000000],
)
def test_integers_beyond_orjsons_range_come_back_exact_not_rounded(number: int) -> None:
    from domain.base import may_hold_big_int

    stdlib, fast = transcoders()
    written = stdlib.encode({"n": number, "nested": [{"n": number}], "s": "x"})
    assert may_hold_big_int(written)
    decoded = fast.decode(written)
    assert decoded == {"n": number, "nested": [{"n": number}], "s": "x"}
    assert type(decoded["n"]) is int and type(decoded["nested"][0]["n"]) is int
    # through the ledger: appended, read back from the log and loaded, still exact
    ledger = orjson_ledger()
    outcome = ledger.handle(
        [
            Command(
                "session",
                "big",
                "start_tool_call",
                meta(1),
                {"tool_name": "Bash", "tool_input": {"n": number}, "tool_input_sha256": "0" * 64},
            )
        ]
    )[0]
    assert outcome.status == "created", outcome
    events = [ledger.mapper.to_domain_event(n) for n in ledger.recorder.select_notifications(1, 10)]
    assert [e.tool_input for e in events if hasattr(e, "tool_input")] == [{"n": number}]


def test_ordinary_event_states_take_the_fast_path() -> None:
    from domain.base import may_hold_big_int

    # ISO timestamps, uuids, sha256 hex, 19-digit nanoseconds, int64's largest value
    state = (
        b'{"timestamp":{"_type_":"datetime_iso","_data_":"2026-11-21T12:00:00.123456+00:00"},'
        b'"id":"6f1c6b52-5a1e-4f0e-9c84-3b1d2a7e9d10","sha":"' + b"0123456789abcdef" * 4 + b'",'
        b'"start_time_unix_nano":1763726400123456789,"max":9223372036854775807,"n":-12345}'
    )
    assert not may_hold_big_int(state)
    # int64's smallest value is read the slow, exact way (conservative), like anything longer
    assert may_hold_big_int(b'{"min":-9223372036854775808}')


def _raised_from(cause: BaseException) -> OperationalError:
    error = OperationalError(str(cause))
    error.__cause__ = cause
    return error


def test_only_a_closed_or_lost_connection_counts_as_lost() -> None:
    import sqlite3

    import psycopg
    from psycopg import errors
    from psycopg_pool import PoolTimeout

    lost = [
        psycopg.OperationalError("server closed the connection unexpectedly"),
        psycopg.InterfaceError("the connection is closed"),
        errors.AdminShutdown("terminating connection due to administrator command"),
        errors.CrashShutdown("terminating connection because of crash of another process"),
        errors.CannotConnectNow("the database system is starting up"),
        errors.ConnectionFailure("connection failure"),
    ]
    not_lost = [
        errors.LockNotAvailable("canceling statement due to lock timeout"),
        errors.QueryCanceled("canceling statement due to statement timeout"),
        PoolTimeout("couldn't get a connection after 10.00 sec"),
        sqlite3.OperationalError("database is locked"),
        ValueError("no database error"),
    ]
    assert [connection_lost(_raised_from(e)) for e in lost] == [True] * len(lost)
    assert [connection_lost(_raised_from(e)) for e in not_lost] == [False] * len(not_lost)
    assert connection_lost(OperationalError("no cause")) is False


def test_dicts_with_keys_that_are_not_strings_are_written_as_before() -> None:
    """String keys are tried first (faster); a dict with another key is written as orjson's
    ``OPT_NON_STR_KEYS`` writes it, which both writers used for every dict before."""
    import orjson

    from domain.base import canonical_json
    from infra.codec import _OPTIONS

    at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    value = {"s": {10: "ten", 9: "nine"}, 1: [{"at": "x"}]}
    _, fast = transcoders()
    encoded = fast.encode({**value, "t": at})
    assert encoded == orjson.dumps({**value, "t": at}, default=fast._encode_obj, option=_OPTIONS)
    assert fast.decode(encoded) == {"s": {"10": "ten", "9": "nine"}, "1": [{"at": "x"}], "t": at}
    sort = orjson.OPT_SORT_KEYS
    assert canonical_json(value) == orjson.dumps(value, option=sort | orjson.OPT_NON_STR_KEYS)
    assert canonical_json(value) == b'{"1":[{"at":"x"}],"s":{"10":"ten","9":"nine"}}'
    plain = {"b": [1, {"d": None, "c": 2.5}], "a": "é"}
    assert canonical_json(plain) == b'{"a":"\xc3\xa9","b":[1,{"c":2.5,"d":null}]}'
    assert canonical_json({"big": 2**70, "a": 1}) == b'{"a":1,"big":1180591620717411303424}'
