"""Shared machinery of the four stream kinds: deterministic ids, event metadata, idempotency.

Every stream is one aggregate whose id is ``uuid5(NAMESPACE, f"{project}/{kind}/{external_id}")``
(DESIGN.md §2), so any writer addresses a stream by the upstream tool's own id. Any event may be a
stream's first one: the upstream tools send in any order, so there is no separate "created" event
(a hook for a tool call may be the first thing the ledger hears of a session).

Every event carries, besides its payload:

- ``event_id``: the writer's idempotency key. Re-sending it with the same ``content_sha256``
  appends nothing (duplicate); with a different one it is an ``IdempotencyConflictError``.
  Keys are unique within a stream (the stream is part of every request's address).
- ``content_sha256``: sha256 hex of the canonical JSON of what the writer sent.
- ``occurred_at``: the writer's clock (tz-aware UTC); ``timestamp`` is the ledger's own
  ``recorded_at``: one instant per transaction (``recording_at``; the events one ``Ledger.handle``
  commits together share it), never earlier than the stream's previous event.
- ``source``: how it arrived (``otlp``, ``hook:claude-code``, ``api``, ``import:<tool>``).
- ``project``, ``external_id``: the stream's address, so each event is self-describing in the log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any, ClassVar, NamedTuple, TypeVar
from uuid import UUID, uuid5

import orjson
from eventsourcing.domain import DomainEvent, OriginatorVersionError, Snapshot
from eventsourcing.utils import get_topic

from domain.errors import IdempotencyConflictError

#: Namespace of every stream id (fixed forever: ids derived from it are in the log).
NAMESPACE = UUID("6f1c6b52-5a1e-4f0e-9c84-3b1d2a7e9d10")

#: The stream kinds of DESIGN.md §2.
KINDS = ("session", "trace", "approval", "chain")

DEFAULT_PROJECT = "default"
#: A project name (regular expression, to ``fullmatch``): 1-64 of ``[A-Za-z0-9_.-]``, starting
#: alphanumeric.
PROJECT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"


@lru_cache(maxsize=65536)
def stream_id(project: str, kind: str, external_id: str) -> UUID:
    """Deterministic id of a stream.

    Args:
        project: the tenant (``default`` unless given).
        kind: one of ``KINDS``.
        external_id: the upstream tool's own id (Claude Code ``session_id``, OTLP ``trace_id``, ...).

    Returns:
        ``uuid5(NAMESPACE, f"{project}/{kind}/{external_id}")``.
    """
    return uuid5(NAMESPACE, f"{project}/{kind}/{external_id}")


def dumps_json(value: Any, option: int, default: Callable[[Any], Any] | None = None) -> bytes:
    """``orjson.dumps(value, default=default, option=option | orjson.OPT_NON_STR_KEYS)``: the
    same bytes, tried with string keys only first (orjson's non-string keys cost ~25 % more on
    every dict, and parsed JSON has none), with them only when a dict has another key.

    Raises:
        TypeError: what orjson raises with ``OPT_NON_STR_KEYS`` (e.g. an integer beyond 64 bits).
    """
    try:
        return orjson.dumps(value, default=default, option=option & ~orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return orjson.dumps(value, default=default, option=option | orjson.OPT_NON_STR_KEYS)


def canonical_json(value: Any) -> bytes:
    """Sorted-key compact UTF-8 JSON: the bytes a content hash is taken over.

    orjson with sorted keys (``dumps_json``); values orjson cannot encode (integers beyond 64
    bits) fall back to the standard library's encoder with the same layout, deterministically
    per input. (The API refuses NaN and infinities, which orjson would write as ``null``.)
    """
    try:
        return dumps_json(value, orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
        ).encode()


#: Digits and the minus sign kept (as ``0``), every other byte blanked: ``may_hold_big_int``.
_NUMBER_BYTES = bytes(0x30 if 0x30 <= i <= 0x39 or i == 0x2D else 0x20 for i in range(256))
_LONG_NUMBER = b"0" * 20


def may_hold_big_int(data: bytes) -> bool:
    """Whether the JSON ``data`` may hold an integer beyond orjson's range (below -2**63 or above
    2**64 - 1): it has a run of 20 digits, or of a minus sign and 19 (such an integer's only
    form; a string can match too, which only costs the caller the slower exact path).

    orjson reads such integers as floats, rounded (2**70 + 1 comes back as 1.1805916207174113e21),
    so whoever reads with orjson reads these documents with the standard library instead.
    About 2 µs per kilobyte.
    """
    return _LONG_NUMBER in data.translate(_NUMBER_BYTES)


def content_sha256(value: Any) -> str:
    """sha256 hex of ``canonical_json(value)``."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def utcnow() -> datetime:
    """The current time, tz-aware UTC."""
    return datetime.now(UTC)


class _RecordingClock(threading.local):
    #: ``recorded_at`` of the events triggered on this thread (None: each its own ``utcnow``).
    now: datetime | None = None


_CLOCK = _RecordingClock()


@contextmanager
def recording_at(now: datetime | None = None) -> Iterator[datetime]:
    """Within the block, events triggered on this thread are recorded at ``now`` (tz-aware UTC;
    default ``utcnow()`` on entry; a stream whose last event is later keeps that one's instant:
    ``recorded_at`` never goes back within a stream). ``Ledger.handle`` takes one instant per
    transaction: the events committed together carry the same ``recorded_at``, which is what a
    reader can tell of them (none of them is visible before the others), and the stored form of
    that instant is made once per transaction instead of once per event (``infra.codec``).

    Yields:
        The instant (``now``).
    """
    if now is None:
        now = utcnow()
    previous, _CLOCK.now = _CLOCK.now, now
    try:
        yield now
    finally:
        _CLOCK.now = previous


class EventMeta(NamedTuple):
    """What every command carries besides its payload (see module docstring).

    Immutable; a ``NamedTuple`` rather than a frozen dataclass because one is built per event
    on the ingest path (0.24 instead of 0.53 us, timeit).
    """

    event_id: str
    content_sha256: str
    occurred_at: datetime
    source: str


class LedgerEvent(DomainEvent):
    """Base of every runledger event: a frozen dataclass (eventsourcing ``DomainEvent``).

    Subclasses are named in the past tense, declare their payload fields and implement
    ``apply(aggregate)``, which only records (it runs again on every replay).
    """

    class_version = 1

    project: str
    external_id: str
    event_id: str
    content_sha256: str
    occurred_at: datetime
    source: str

    #: The aggregate class whose stream this event belongs to (set by ``LedgerAggregate``).
    aggregate_class: ClassVar[type[LedgerAggregate]]

    def mutate(self, aggregate: Any) -> Any:
        """Evolve ``aggregate`` (``None`` for a stream's first event) by this event."""
        if aggregate is None:
            aggregate = type(self).aggregate_class(self.originator_id)
            aggregate.project = self.project
            aggregate.external_id = self.external_id
            aggregate._created_on = self.timestamp
        next_version = aggregate._version + 1
        if self.originator_version != next_version:
            raise OriginatorVersionError(self.originator_version, next_version)
        self.apply(aggregate)
        aggregate._version = self.originator_version
        aggregate._modified_on = self.timestamp
        if aggregate.event_ids is not None:
            aggregate.event_ids[self.event_id] = [self.originator_version, self.content_sha256]
        aggregate.last_event_id = self.event_id
        return aggregate

    def apply(self, aggregate: Any) -> None:
        """Record this event's facts on the aggregate. Never checks, never does I/O."""


TEvent = TypeVar("TEvent", bound=LedgerEvent)


class LedgerAggregate:
    """Base of the four aggregates: id, version, pending events and the idempotency index.

    Not eventsourcing's ``Aggregate`` (whose "created" event must come first): any event may open
    a stream here. Satisfies what ``Application.save`` and the repository need (``id``,
    ``version``, ``collect_events``) and snapshots (all state is JSON-transcodable).
    """

    KIND: ClassVar[str]
    EVENT_BASE: ClassVar[type[LedgerEvent]]
    #: Public command methods the Ledger may dispatch to, by name.
    COMMANDS: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "EVENT_BASE" in cls.__dict__:
            cls.EVENT_BASE.aggregate_class = cls

    def __init__(self, id: UUID) -> None:
        self._id = id
        self._version = 0
        self._created_on: datetime | None = None
        self._modified_on: datetime | None = None
        self._pending_events: list[LedgerEvent] = []
        self.project = ""
        self.external_id = ""
        #: event_id -> [version, content_sha256]; the idempotency index of this stream. None in
        #: a stream restored from a snapshot for reading (snapshots leave it out). A writer's
        #: stream restored from a snapshot holds only the events after it, plus what it fetched
        #: from the store's key index (``keys_stored_through``).
        self.event_ids: dict[str, list[Any]] | None = {}
        #: Versions up to this one have their write-side keys (``unstored_keys``) in the store's
        #: key index (0: none stored yet).
        self.keys_stored_through = 0
        #: Restored from a snapshot for writing: keys up to ``keys_stored_through`` are in the
        #: key index only, and a command's keys not in memory must be asked for there.
        self.keys_partial = False
        #: ``event_id`` of the stream's last event (what ``occurrence`` compares with).
        self.last_event_id: str | None = None

    @property
    def id(self) -> UUID:
        """The stream id (``stream_id(project, KIND, external_id)``)."""
        return self._id

    @property
    def version(self) -> int:
        """Number of events in the stream (0 for a stream not yet written)."""
        return self._version

    @property
    def created_on(self) -> datetime | None:
        """``recorded_at`` of the stream's first event."""
        return self._created_on

    @property
    def modified_on(self) -> datetime | None:
        """``recorded_at`` of the stream's last event."""
        return self._modified_on

    @classmethod
    def blank(cls, project: str, external_id: str) -> LedgerAggregate:
        """A stream that has no event yet, addressed by its project and external id."""
        agg = cls(stream_id(project, cls.KIND, external_id))
        agg.project = project
        agg.external_id = external_id
        return agg

    def seen(self, meta: EventMeta) -> int | None:
        """The version an ``event_id`` was recorded at, if it was, with the same content.

        Raises:
            IdempotencyConflictError: recorded before with a different ``content_sha256``.
        """
        if self.event_ids is None:
            raise RuntimeError("a stream restored from a snapshot has no idempotency index")
        prior = self.event_ids.get(meta.event_id)
        if prior is None:
            return None
        if prior[1] != meta.content_sha256:
            raise IdempotencyConflictError(
                event_id=meta.event_id, stream_id=str(self.id), version=int(prior[0])
            )
        return int(prior[0])

    def occurrence(self, meta: EventMeta) -> tuple[int | None, EventMeta]:
        """Idempotency for an event whose ``event_id`` is made of its content alone (a
        ``Command`` marked ``repeatable``): the same content may rightly come again (Claude
        Code sends the same ``Stop`` payload at the end of every turn), and nothing in it tells
        a retry from the next occurrence. A retry is taken to come before anything else is
        recorded on the stream: the command is a duplicate when the stream's last event is an
        occurrence of it; otherwise it is recorded, under ``meta.event_id`` the first time and
        ``<event_id>@<version>`` (its own version, so unique) after that.

        Returns:
            ``(version, meta)``: the version of the occurrence it duplicates (None: it is to be
            recorded) and the meta to record it with.

        Raises:
            IdempotencyConflictError: as ``seen``, for an explicit id that collides.
        """
        if self.event_ids is None:
            raise RuntimeError("a stream restored from a snapshot has no idempotency index")
        base = meta.event_id
        last = getattr(self, "last_event_id", None)  # None in snapshots from before it existed
        if last is not None and (last == base or last.startswith(base + "@")):
            return self.version, meta
        if base in self.event_ids:
            meta = meta._replace(event_id=f"{base}@{self.version + 1}")
        return self.seen(meta), meta

    # -- write-side keys ---------------------------------------------------------------------
    # What a writer must know of a stream's whole history grows with it: the idempotency index,
    # and for sessions the tool calls that ended. Snapshots leave these out, so a writer that
    # restores a stream from a snapshot fetches the keys a batch asks about from the store's key
    # index (``Ledger``'s ``key_index``), which holds them up to ``keys_stored_through``.

    def restored_for_writing(self) -> bool:
        """Make a stream restored from a snapshot writable, if that snapshot was taken after its
        keys were stored (``LedgerSnapshot.take``'s ``keys_stored_through`` is its version).

        Returns:
            False for a snapshot without that mark (taken before the key index existed): the
            writer then replays the stream from its first event.
        """
        if self.event_ids is not None or getattr(self, "keys_stored_through", 0) != self.version:
            return False
        self.event_ids = {}
        self.keys_partial = True
        return True

    def missing_keys(self, action: str, meta: EventMeta, args: Mapping[str, Any]) -> list[str]:
        """The key-index keys that command would read and memory does not hold (none unless
        ``keys_partial``: a stream replayed whole holds all its keys). Keys are
        ``"event:<event_id>"`` and, for sessions, ``"tool_call:<tool_use_id>"``."""
        if not self.keys_partial or self.event_ids is None:
            return []
        key = meta.event_id
        return [] if key in self.event_ids else [f"event:{key}"]

    def absorb_key(self, key: str, value: Any) -> None:
        """Put a key fetched from the key index (``missing_keys``) back in memory."""
        kind, _, name = key.partition(":")
        if kind == "event" and self.event_ids is not None:
            self.event_ids.setdefault(name, value)

    def unstored_keys(self) -> list[tuple[str, Any]]:
        """The keys of versions after ``keys_stored_through``, as ``(key, JSON value)``: what
        the key index must receive before a snapshot at this version can be marked."""
        floor = self.keys_stored_through
        return [
            (f"event:{event_id}", entry)
            for event_id, entry in (self.event_ids or {}).items()
            if entry[0] > floor
        ]

    def trigger(self, event_class: type[LedgerEvent], meta: EventMeta, **payload: Any) -> None:
        """Construct the next event of this stream, apply it and queue it for saving."""
        now = _CLOCK.now or utcnow()
        if self._modified_on is not None and now < self._modified_on:
            now = self._modified_on  # recorded_at never goes back within a stream
        fields: dict[str, Any] = {
            "originator_id": self._id,
            "originator_version": self._version + 1,
            "timestamp": now,
            "project": self.project,
            "external_id": self.external_id,
            "event_id": meta.event_id,
            "content_sha256": meta.content_sha256,
            "occurred_at": meta.occurred_at,
            "source": meta.source,
            **payload,
        }
        event = _new_event(event_class, fields)
        event.mutate(self)
        self._pending_events.append(event)

    def collect_events(self) -> list[LedgerEvent]:
        """Take the events triggered since the last save (eventsourcing protocol)."""
        collected, self._pending_events = self._pending_events, []
        return collected

    def snapshot_state(self) -> dict[str, Any]:
        """What a snapshot keeps: everything a reader needs, not the write-side indexes.

        The idempotency index grows with every event; keeping it out keeps snapshots (and so
        the state at any version) small. Writers replay streams from their events instead.
        """
        state = dict(vars(self))
        for name in ("_id", "_version", "_pending_events", "keys_partial"):
            state.pop(name, None)
        state["event_ids"] = None
        return state

    def state(self) -> dict[str, Any]:
        """The stream's state as plain JSON-able data (what ``/state`` answers)."""
        return {
            "kind": self.KIND,
            "project": self.project,
            "external_id": self.external_id,
            "stream_id": str(self.id),
            "version": self.version,
        }


@cache
def _event_layout(
    event_class: type[LedgerEvent],
) -> tuple[frozenset[str], dict[str, Callable[[], Any]]]:
    """The field names of an event class, and a default maker for each field that has one."""
    names: list[str] = []
    defaults: dict[str, Callable[[], Any]] = {}
    for f in dataclasses.fields(event_class):
        names.append(f.name)
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = _returning(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory
    return frozenset(names), defaults


def _returning(value: Any) -> Callable[[], Any]:
    """A default maker for a plain default: the same object every time, as ``__init__`` does."""
    return lambda: value


def _new_event(event_class: type[TEvent], fields: dict[str, Any]) -> TEvent:
    """``event_class(**fields)`` without the frozen dataclass's per-field ``__setattr__``.

    Builds the event the way eventsourcing's ``Mapper.to_domain_event`` does (its ``__dict__``
    set at once). The same fields must be given as the constructor takes: a missing field with a
    default gets it; anything else (unknown or missing fields, a non-UUID ``originator_id``)
    goes through the real constructor, which raises its ``TypeError``.
    """
    names, defaults = _event_layout(event_class)
    if fields.keys() != names:
        missing = names - fields.keys()
        if fields.keys() - names or missing - defaults.keys():
            return event_class(**fields)
        for name in missing:
            fields[name] = defaults[name]()
    if type(fields.get("originator_id")) is not UUID:
        return event_class(**fields)
    event = object.__new__(event_class)
    object.__setattr__(event, "__dict__", fields)
    return event


class LedgerSnapshot(Snapshot):
    """A snapshot of ``LedgerAggregate.snapshot_state()`` (eventsourcing ``Snapshot``)."""

    @classmethod
    def take(cls, aggregate: Any, *, keys_stored: bool = False) -> LedgerSnapshot:
        """Snapshot ``aggregate`` at its current version.

        Args:
            keys_stored: the store's key index holds the stream's keys up to this version;
                the snapshot is then marked (``keys_stored_through``) and writers may restore
                from it (``LedgerAggregate.restored_for_writing``).
        """
        state = aggregate.snapshot_state()
        state["keys_stored_through"] = aggregate.version if keys_stored else 0
        return cls(
            originator_id=aggregate.id,
            originator_version=aggregate.version,
            timestamp=cls.create_timestamp(),
            topic=get_topic(type(aggregate)),
            state=state,
        )
