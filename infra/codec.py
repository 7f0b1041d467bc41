"""Faster persistence codecs, wire-compatible with eventsourcing's defaults.

- ``OrjsonTranscoder``: eventsourcing's ``JSONTranscoder`` format (custom types as
  ``{"_type_": name, "_data_": value}``, e.g. ``datetime_iso``) written and read with orjson.
  Events written by either transcoder are read by both. Decoding looks for type tags in the top
  two levels of dicts only, and walks everything only if the bytes hold more tags than it found
  there (events carry their datetimes at the top, snapshots in their ``state``).
  orjson writes a ``UUID`` natively as a string, so UUIDs are tagged only at the top level of the
  encoded object; runledger's events and snapshots hold none deeper (stream ids are strings there).
- ``OrjsonMapper``: eventsourcing's ``Mapper`` writing the same bytes as ``Mapper`` with
  ``OrjsonTranscoder`` in one pass over the event's attributes (the registered transcodings of
  top-level values applied inline, not through orjson's per-value callback); anything else
  (a compressor, a cipher, another transcoder, a value orjson refuses) takes the library's path.
  Reading, its ``to_domain_event`` builds the library's objects (upcasts included) with the class
  and its ``class_version`` looked up by topic in a dict: 4.1 -> 3.7 µs per event in a
  micro-benchmark.
- ``FastPostgresApplicationRecorder``: eventsourcing's PostgreSQL application recorder with the
  insert sent as four binary scalar arrays (``unnest(uuid[], int8[], text[], bytea[])``) instead of
  one text-encoded composite array, whose per-row escaping dominated the write path's CPU, and
  the library's transaction (``EXCLUSIVE`` table lock, ``NOTIFY``, insert ``RETURNING
  notification_id``) run by one PL/pgSQL function call, one round trip in autocommit
  (DESIGN.md §3: the lock keeps notification ids gap-safe for tailing readers).
- Reads (``select_events``, ``select_notifications``; also ``FastPostgresAggregateRecorder``, the
  snapshots' recorder): the library's statements, each shape rendered once, with results in
  PostgreSQL's binary format. The library reads them as text, in which a ``bytea`` is sent as hex:
  twice the bytes of the event, hex-encoded by the server and decoded by psycopg. Over TCP the
  doubled result of a stream's load also stalled in the kernel for 20-80 ms on about one load in
  thirty (seen in ``bench.stream_state``: not over a Unix socket; gone with the binary format).
- Snapshots are inserted as the library does (an array of its composite type
  ``stored_event_uuid``), its psycopg adapter registered again before an insert while missing:
  a process started before ``runledger migrate`` created the type could never snapshot.
- ``PostgresFactory``: eventsourcing's PostgreSQL factory making those two recorders
  (``PERSISTENCE_MODULE=infra.codec:PostgresFactory``), on a ``RecoveringPostgresDatastore``:
  after a connection fails, every idle connection of the pool is checked and the dead ones
  replaced, so that one PostgreSQL restart fails one operation, not one per pooled connection.
- ``SQLiteFactory``: eventsourcing's SQLite factory whose recorders turn the stored text of a
  stream id into its ``UUID`` through a cache (a stream's events come many at a time; the
  library parses the text for every row read: about a twentieth of a SQLite rebuild), and whose
  log recorder's ``select_notifications`` reads plain tuples.
- ``StoredEvent`` and ``Notification`` objects read are made without their frozen dataclass
  ``__init__`` (see ``_stored_events``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from itertools import starmap
from operator import attrgetter
from typing import Any, cast
from uuid import UUID

import orjson
import psycopg
from eventsourcing.persistence import (
    DatetimeAsISO,
    InterfaceError,
    JSONTranscoder,
    Mapper,
    Notification,
    OperationalError,
    ProgrammingError,
    StoredEvent,
    UUIDAsHex,
    find_id_convertor,
)
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
)
from eventsourcing.postgres import PostgresFactory as _LibraryPostgresFactory
from eventsourcing.sqlite import (
    SQLiteAggregateRecorder,
    SQLiteApplicationRecorder,
    SQLiteDatastore,
)
from eventsourcing.sqlite import SQLiteFactory as _LibrarySQLiteFactory
from eventsourcing.utils import get_topic, resolve_topic, retry
from psycopg import Connection, Cursor
from psycopg.errors import UndefinedFunction
from psycopg.rows import DictRow, tuple_row
from psycopg.sql import SQL, Composable, Composed, Identifier
from psycopg_pool import PoolTimeout

from domain.base import dumps_json, may_hold_big_int

log = logging.getLogger("runledger.codec")
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS
_TAG = b'"_type_"'
#: The top-level keys of a runledger event holding tagged values (``LedgerEvent``'s datetimes).
_EVENT_TAGGED = ("timestamp", "occurred_at")
#: Event and snapshot classes, and their ``class_version``, by topic (``OrjsonMapper.to_domain_event``).
_CLASSES: dict[str, tuple[type, int]] = {}
#: Above every stream version (PostgreSQL ``int8``): ``lte`` of a read with no upper bound.
_MAX_VERSION = 2**63 - 1


class OrjsonTranscoder(JSONTranscoder):
    """``JSONTranscoder``'s format, encoded and decoded with orjson."""

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj`` (registered transcodings for datetimes and the like)."""
        if isinstance(obj, dict) and UUID in map(type, obj.values()):
            obj = {k: self._encode_obj(v) if isinstance(v, UUID) else v for k, v in obj.items()}
        try:
            return dumps_json(obj, _OPTIONS, self._encode_obj)
        except TypeError:  # e.g. an int beyond 64 bits: the stdlib encoder takes it
            return super().encode(obj)

    def decode(self, data: bytes) -> Any:
        """Decode bytes written by this transcoder or by ``JSONTranscoder``. A state that may hold
        an integer beyond 64 bits (written by the library's encoder: orjson cannot write one) is
        decoded by the library's transcoder, which keeps it exact (``may_hold_big_int``)."""
        if may_hold_big_int(data):
            return super().decode(data)
        obj = orjson.loads(data)
        tags = data.count(_TAG)
        if not tags:
            return obj
        # Events carry their tagged values (datetimes) at the top level, snapshots one level
        # down (in "state"): look at the top level, then one level down (values decoded at the
        # top are not dicts any more, so none is counted twice), and walk everything only if
        # tags remain.
        if type(obj) is dict:
            found = 0
            for key in _EVENT_TAGGED:  # where runledger's events keep theirs: checked first
                value = obj.get(key)
                if type(value) is dict and len(value) == 2 and "_type_" in value:
                    obj[key] = self._decode_tagged(value)
                    found += 1
            if found == tags:
                return obj
            found += self._shallow(obj, 1)
            if found == tags or found + self._shallow(obj, 2) == tags:
                return obj
        # Tagged values already decoded above are not dicts any more: walking on is safe.
        return self._walk(obj)

    def _decode_tagged(self, value: dict[str, Any]) -> Any:
        """``_decode_obj`` with the library's ``datetime_iso`` transcoding done inline."""
        if (
            value["_type_"] == "datetime_iso"
            and type(self.names.get("datetime_iso")) is DatetimeAsISO
        ):
            return datetime.fromisoformat(value["_data_"])
        return self._decode_obj(value)

    def _shallow(self, obj: dict[str, Any], depth: int) -> int:
        found = 0
        for key, value in obj.items():
            if isinstance(value, dict):
                if "_type_" in value and len(value) == 2:
                    obj[key] = self._decode_tagged(value)
                    found += 1
                elif depth > 1:
                    found += self._shallow(value, depth - 1)
        return found

    def _walk(self, obj: Any) -> Any:
        if isinstance(obj, dict):
            decoded = {k: self._walk(v) for k, v in obj.items()}
            return self._decode_obj(decoded)
        if isinstance(obj, list):
            return [self._walk(v) for v in obj]
        return obj


class OrjsonMapper(Mapper[UUID]):
    """``Mapper`` with a one-pass ``to_stored_event`` and a lean ``to_domain_event`` for
    ``OrjsonTranscoder`` (see module docstring)."""

    _encoders: dict[type, tuple[str, Callable[[Any], Any]]] | None = None
    #: The last ``timestamp`` tagged by ``to_stored_event`` and its tagged form (never mutated).
    _last_stamp: tuple[Any, dict[str, Any]] | None = None

    def _orjson(self) -> OrjsonTranscoder | None:
        """The transcoder when the one-pass paths apply (no compressor, no cipher, an
        ``OrjsonTranscoder``); None when the library's own path is needed."""
        transcoder = self.transcoder
        if self.compressor or self.cipher or type(transcoder) is not OrjsonTranscoder:
            return None
        return transcoder

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        """The domain event or snapshot of a stored event: ``Mapper.to_domain_event``'s object
        (upcast to its ``class_version``), with the class and its version looked up by topic in
        a dict. What the transcoder cannot decode takes the library's path, which raises its
        ``MapperDeserialisationError``."""
        transcoder = self._orjson()
        if transcoder is None:
            return super().to_domain_event(stored_event)
        found = _CLASSES.get(stored_event.topic)
        if found is None:
            cls = resolve_topic(stored_event.topic)
            found = _CLASSES[stored_event.topic] = (cls, getattr(cls, "class_version", 1))
        cls, class_version = found
        try:
            state: dict[str, Any] = transcoder.decode(stored_event.state)
        except Exception:  # the library's path raises its own error for it
            return super().to_domain_event(stored_event)
        originator_id = stored_event.originator_id
        if type(originator_id) is not UUID:  # a UUID is passed through, as the library does
            originator_id = find_id_convertor(cls, cast(Hashable, type(originator_id)))(
                originator_id
            )
        state["originator_id"] = originator_id
        state["originator_version"] = stored_event.originator_version
        from_version = state.pop("class_version", 1)
        while from_version < class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
            from_version += 1
        domain_event: Any = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", state)
        return domain_event

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        """The stored form of a domain event or snapshot; the same bytes as ``Mapper``'s."""
        transcoder = self._orjson()
        if transcoder is None:
            return super().to_stored_event(domain_event)
        encoders = self._encoders
        if encoders is None or len(encoders) != len(transcoder.types):
            encoders = self._encoders = _encoders(transcoder)
        # A copy (in C), then only the values that need a transcoding: an event's two datetimes
        # at their known keys, then any other top-level value of a registered type (a C-level
        # check finds none in an event from the API; orjson's ``default`` would transcode a
        # datetime anywhere, but it writes a UUID itself, untagged). The events of one
        # transaction share their ``timestamp`` (``domain.base.recording_at``): its tagged form
        # is made once and reused while the same object comes.
        state: dict[str, Any] = vars(domain_event).copy()
        del state["originator_id"], state["originator_version"]
        stamp = state.get("timestamp")
        if type(stamp) in encoders:
            last = self._last_stamp
            if last is not None and last[0] is stamp:
                state["timestamp"] = last[1]
            else:
                state["timestamp"] = tagged = _tagged(encoders, stamp)
                self._last_stamp = (stamp, tagged)
        if type(state.get("occurred_at")) in encoders:
            state["occurred_at"] = _tagged(encoders, state["occurred_at"])
        if not encoders.keys().isdisjoint(map(type, state.values())):
            for key, value in list(state.items()):
                if type(value) in encoders:
                    state[key] = _tagged(encoders, value)
        cls = type(domain_event)
        class_version = getattr(cls, "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        try:
            data = dumps_json(state, _OPTIONS, transcoder._encode_obj)
        except TypeError:  # e.g. an int beyond 64 bits: the library's path takes it
            return super().to_stored_event(domain_event)
        return _stored_event(
            domain_event.originator_id, domain_event.originator_version, get_topic(cls), data
        )


def _tagged(encoders: dict[type, tuple[str, Callable[[Any], Any]]], value: Any) -> dict[str, Any]:
    """``value`` as ``JSONTranscoder`` writes a registered type: ``{"_type_", "_data_"}``."""
    name, encode = encoders[type(value)]
    return {"_type_": name, "_data_": encode(value)}


_MINUTE = timedelta(minutes=1)


def _isoformat(value: datetime) -> str | orjson.Fragment:
    """``value.isoformat()`` (the library's ``DatetimeAsISO``), as the JSON string orjson writes
    for it when the two are the same text: no offset, or a whole-minute one (orjson drops an
    offset's seconds). 0.28 instead of 0.94 us per datetime (timeit); an event has two.
    """
    zone = value.tzinfo
    if zone is not UTC and zone is not None:
        offset = value.utcoffset()
        if offset is not None and offset % _MINUTE:
            return value.isoformat()
    return orjson.Fragment(orjson.dumps(value))


def _encoders(transcoder: JSONTranscoder) -> dict[type, tuple[str, Callable[[Any], Any]]]:
    """``{type: (transcoding name, encode)}``; the library's own datetime and UUID transcodings
    replaced by faster calls giving the same JSON (``_isoformat``, ``UUID.hex``)."""
    encoders: dict[type, tuple[str, Callable[[Any], Any]]] = {}
    for cls, transcoding in transcoder.types.items():
        encode: Callable[[Any], Any] = transcoding.encode
        if type(transcoding) is DatetimeAsISO:
            encode = _isoformat
        elif type(transcoding) is UUIDAsHex:
            encode = attrgetter("hex")
        encoders[cls] = (transcoding.name, encode)
    return encoders


def _rendered(statement: Composable) -> Composed:
    """A composed statement rendered once (identifiers quoted without a connection), so that
    executing it does not compose it again."""
    return Composed([SQL(statement.as_string(None))])


#: ``select_events_after_snapshot``'s statement (``{snapshots}``, ``{events}``: the tables).
_AFTER_SNAPSHOT_SQL = (
    "WITH snapshot AS (SELECT originator_version, topic, state FROM {snapshots}"
    " WHERE originator_id = %(id)s AND originator_version <= %(lte)s"
    " ORDER BY originator_version DESC LIMIT 1)"
    " SELECT true, originator_version, topic, state FROM snapshot"
    " UNION ALL"
    " SELECT false, originator_version, topic, state FROM {events}"
    " WHERE originator_id = %(id)s AND originator_version <= %(lte)s"
    " AND originator_version > coalesce((SELECT originator_version FROM snapshot), 0)"
    " ORDER BY 1 DESC, 2"
)

#: ``select_after_newest_snapshots``'s statement. Both tables are searched by ``= ANY`` on their
#: primary keys: joined to the ids as a set, a generic plan scanned the whole events table (15
#: instead of 0.7 ms a batch of 80 new streams); this costs what ``select_events_many`` does
#: (0.43-0.66 ms).
_AFTER_NEWEST_SNAPSHOTS_SQL = (
    "WITH newest AS (SELECT DISTINCT ON (originator_id) originator_id AS id,"
    " originator_version, topic, state FROM {snapshots}"
    " WHERE originator_id = ANY(%(ids)b::uuid[]) AND originator_version > %(above)b"
    " ORDER BY originator_id, originator_version DESC)"
    " SELECT true, id, originator_version, topic, state FROM newest"
    " UNION ALL"
    " SELECT false, e.originator_id, e.originator_version, e.topic, e.state"
    " FROM {events} AS e LEFT JOIN newest AS n ON n.id = e.originator_id"
    " WHERE e.originator_id = ANY(%(ids)b::uuid[])"
    " AND e.originator_version > coalesce(n.originator_version, 0)"
    " ORDER BY 2, 1 DESC, 3"
)


class FastPostgresAggregateRecorder(PostgresAggregateRecorder):
    """``PostgresAggregateRecorder`` whose ``select_events`` reads binary results (see the module
    docstring): the same statement, order and ``StoredEvent`` objects as the library's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._statements: dict[tuple[Any, ...], Composed] = {}

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Append ``stored_events`` (the snapshots' table): the library's ``insert_events``,
        which sends them as an array of the composite type ``stored_event_<id type>``, after
        ``ensure_type_adapters``.

        Raises:
            ProgrammingError: the composite type is not in the schema (``runledger migrate``
                has not run), or another statement error.
            IntegrityError: a stream already has one of the versions.
        """
        if stored_events:
            self.ensure_type_adapters()
        return cast("Sequence[int] | None", super().insert_events(stored_events, **kwargs))

    def ensure_type_adapters(self) -> None:
        """Register the composite type's psycopg adapter when the datastore has none yet.

        The library registers it when the recorder is made, and only if the type exists then:
        in a process started with table creation off before ``runledger migrate`` created the
        type, every later snapshot insert failed ("Composite type 'stored_event_uuid' not
        found"). A dict lookup when registered; else one catalog query per insert until the
        type exists.
        """
        if self.stored_event_type_name not in self.datastore.psycopg_python_types:
            self.datastore.register_type_adapters()

    def _table_sql(self, text: str) -> Composed:
        """``text`` with ``{schema}.{table}`` naming this recorder's table, rendered once."""
        return _rendered(
            SQL(text).format(
                schema=Identifier(self.datastore.schema), table=Identifier(self.events_table_name)
            )
        )

    def _statement(self, key: tuple[Any, ...], build: Callable[..., Composed]) -> Composed:
        """The statement ``build(*key[1:])``, built once per ``key``."""
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statements[key] = build(*key[1:])
        return statement

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[StoredEvent]:
        """A stream's events with ``gt < originator_version <= lte``, in version order (``desc``:
        newest first), at most ``limit``: eventsourcing's ``select_events``, binary results."""
        statement = self._statement(
            ("events", gt is not None, lte is not None, desc, limit is not None),
            self._select_events_sql,
        )
        params: list[Any] = [originator_id]
        params.extend(p for p in (gt, lte, limit) if p is not None)
        return _stored_events(self._fetch_binary(statement, params))

    def _fetch_binary(
        self, statement: Composed, params: Sequence[Any] | Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """The rows of ``statement`` (prepared), results in binary format, as tuples."""
        with (
            self.datastore.get_connection() as conn,
            conn.cursor(binary=True, row_factory=tuple_row) as curs,
        ):
            curs.execute(statement, params, prepare=True)
            return curs.fetchall()

    def _select_events_sql(self, gt: bool, lte: bool, desc: bool, limit: bool) -> Composed:
        """The library's statement of that shape (its clauses, in its order), rendered once."""
        clauses = [
            "SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
            "WHERE originator_id = %s"
        ]
        if gt:
            clauses.append(" AND originator_version > %s")
        if lte:
            clauses.append(" AND originator_version <= %s")
        clauses.append(
            " ORDER BY originator_version DESC" if desc else " ORDER BY originator_version ASC"
        )
        if limit:
            clauses.append(" LIMIT %s")
        return self._table_sql("".join(clauses))


class FastPostgresApplicationRecorder(FastPostgresAggregateRecorder, PostgresApplicationRecorder):
    """``PostgresApplicationRecorder`` inserting binary scalar arrays and reading binary results
    (see the module docstring), and reading in one round trip the events of many streams
    (``select_events_many``), a stream's snapshot with the events after it
    (``select_events_after_snapshot``) and the version a stream had at a time
    (``select_version_recorded_by``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.select_events_many_statement = self._table_sql(
            "SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
            "WHERE originator_id = ANY(%b::uuid[]) ORDER BY originator_id, originator_version"
        )
        # A binary search over a stream's versions by ``recorded_at`` (the ``timestamp`` of an
        # event's JSON state), run by the database: one index probe per step (see
        # ``select_version_recorded_by``).
        self.select_version_recorded_by_statement = self._table_sql(
            "WITH RECURSIVE search(low, high, last) AS ("
            " SELECT 0::int8, v, v FROM (SELECT max(originator_version) AS v FROM {schema}.{table}"
            " WHERE originator_id = %(id)s) AS newest"
            " UNION ALL"
            " SELECT CASE WHEN probe.at <= %(as_of)s THEN probe.version ELSE s.low END,"
            " CASE WHEN probe.at <= %(as_of)s THEN s.high ELSE probe.version - 1 END, s.last"
            " FROM search AS s CROSS JOIN LATERAL ("
            " SELECT e.originator_version AS version, (convert_from(e.state, 'UTF8')::json"
            " -> 'timestamp' ->> '_data_')::timestamptz AS at FROM {schema}.{table} AS e"
            " WHERE e.originator_id = %(id)s AND e.originator_version = (s.low + s.high + 1) / 2"
            " ) AS probe WHERE s.low < s.high)"
            " SELECT coalesce(last, 0), low FROM search WHERE last IS NULL OR low >= high"
        )
        self.insert_events_statement = self._table_sql(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%b::uuid[], %b::int8[], %b::text[], %b::bytea[]) "
            "RETURNING notification_id"
        )
        # One call appends a batch: lock, notify and insert inside the function, in the implicit
        # transaction of a single statement (see ``insert_events``).
        self.insert_function = Identifier(
            self.datastore.schema, f"runledger_insert_{self.events_table_name}"
        )
        self.sql_create_statements.append(
            SQL(
                "CREATE OR REPLACE FUNCTION {function}("
                "ids uuid[], versions int8[], topics text[], states bytea[]) "
                "RETURNS SETOF bigint LANGUAGE plpgsql AS $runledger$ BEGIN "
                "SET LOCAL lock_timeout = '{lock_timeout}s'; "
                "LOCK TABLE {schema}.{table} IN EXCLUSIVE MODE; "
                "NOTIFY {channel}; "
                "RETURN QUERY INSERT INTO {schema}.{table} "
                "(originator_id, originator_version, topic, state) "
                "SELECT * FROM unnest(ids, versions, topics, states) "
                "RETURNING notification_id; "
                "END $runledger$"
            ).format(
                function=self.insert_function,
                lock_timeout=SQL(str(int(self.datastore.lock_timeout))),
                schema=Identifier(self.datastore.schema),
                table=Identifier(self.events_table_name),
                channel=Identifier(self.channel_name),
            )
        )
        self.insert_function_call = _rendered(
            SQL("SELECT * FROM {0}(%b::uuid[], %b::int8[], %b::text[], %b::bytea[])").format(
                self.insert_function
            )
        )
        self._insert_function_missing = False
        # The library composes these per transaction; render them once.
        self.lock_table_statements = [
            _rendered(s) if isinstance(s, Composable) else s for s in self.lock_table_statements
        ]
        self._notify_statement = _rendered(SQL("NOTIFY {0}").format(Identifier(self.channel_name)))

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Append ``stored_events`` in one statement; their ``notification_id``s, in order.

        The library's transaction (table lock, ``NOTIFY``, insert) moved into a PL/pgSQL function
        that ``create_table`` (``runledger migrate``) installs: one round trip in autocommit
        instead of the library's pipelined ``BEGIN``/``LOCK``/``NOTIFY``/``INSERT``, a sync and a
        ``COMMIT``. The ``EXCLUSIVE`` lock is held until the statement's implicit transaction
        commits, so notification ids still commit in order. Measured with ``bench.single_event``'s
        load (64 connections, A/B in one run): the writer thread held the interpreter lock for
        22 % -> 11 % of the server's samples (py-spy ``--gil``), 3,500 -> 4,000 requests/s.

        A database migrated before the function existed gets the library's path, once warned.

        Raises:
            IntegrityError: a stream already has one of the versions (another writer won).
            OperationalError: the table lock was not granted within ``lock_timeout``.
        """
        if not stored_events:
            return []
        if self._insert_function_missing:
            return self._library_insert_events(stored_events, **kwargs)
        try:
            with (
                self.datastore.get_connection() as conn,
                conn.cursor(row_factory=tuple_row) as curs,
            ):
                curs.execute(self.insert_function_call, _columns(stored_events), prepare=True)
                return _notification_ids(curs, stored_events)
        except ProgrammingError as error:
            if not isinstance(error.__cause__, UndefinedFunction):
                raise
            log.warning(
                "%s is missing (database migrated by an older runledger): appending with the "
                "library's transaction until `runledger migrate` installs it",
                self.insert_function.as_string(None),
            )
            self._insert_function_missing = True
            return self._library_insert_events(stored_events, **kwargs)

    def _library_insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """The library's ``insert_events`` (its pipelined transaction, our statements)."""
        return super().insert_events(stored_events, **kwargs)

    def _notify_channel(self, curs: Cursor[DictRow]) -> None:
        curs.execute(self._notify_statement)

    def _insert_stored_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        self._lock_table(curs)
        self._notify_channel(curs)
        curs.row_factory = tuple_row  # type: ignore[assignment]  # ids as tuples, not dicts
        curs.execute(self.insert_events_statement, _columns(stored_events))

    def _fetch_ids_after_insert_events(
        self, curs: Cursor[Any], stored_events: Sequence[StoredEvent], **_: Any
    ) -> Sequence[int] | None:
        return _notification_ids(curs, stored_events)

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> list[Notification]:
        """Events in log order from position ``start`` (``inclusive_of_start``) up to ``stop``, of
        the given ``topics`` (all if empty), at most ``limit``: eventsourcing's
        ``select_notifications``, binary results."""
        statement = self._statement(
            (
                "notifications",
                start is not None,
                inclusive_of_start,
                stop is not None,
                bool(topics),
            ),
            self._select_notifications_sql,
        )
        params: list[Any] = [p for p in (start, stop) if p is not None]
        if topics:
            params.append(list(topics))
        params.append(limit)
        return _notifications(self._fetch_binary(statement, params))

    def _select_notifications_sql(
        self, start: bool, inclusive: bool, stop: bool, topics: bool
    ) -> Composed:
        """The library's statement of that shape, rendered once."""
        conditions = []
        if start:
            conditions.append("notification_id >= %s" if inclusive else "notification_id > %s")
        if stop:
            conditions.append("notification_id <= %s")
        if topics:
            conditions.append("topic = ANY(%s)")
        where = " WHERE " + " AND ".join(conditions) if conditions else ""
        return self._table_sql(
            "SELECT notification_id, originator_id, originator_version, topic, state "
            "FROM {schema}.{table}" + where + " ORDER BY notification_id LIMIT %s"
        )

    def select_version_recorded_by(self, originator_id: UUID, as_of: datetime) -> tuple[int, int]:
        """``(last, found)``: the stream's last version (0: it has no event) and the last version
        whose event was recorded at or before ``as_of`` (0: none), in one round trip.

        The database runs the binary search: ``1 + ceil(log2(last))`` index probes (15 for a
        10,000-event stream), each reading the ``timestamp`` of one event's state. Valid only
        for states written as plain JSON by eventsourcing's ``JSONTranscoder`` format (this
        module's ``OrjsonTranscoder``; no compressor, no cipher), where ``timestamp`` is
        ``{"_type_": "datetime_iso", "_data_": <ISO 8601 with offset>}``; ``Ledger`` checks
        that before it calls this. ``timestamp`` never decreases within a stream
        (``LedgerAggregate.trigger``), so the answer is exact.
        """
        rows = self._fetch_binary(
            self.select_version_recorded_by_statement, {"id": originator_id, "as_of": as_of}
        )
        last, found = rows[0]
        return int(last), int(found)

    def select_events_after_snapshot(
        self,
        originator_id: UUID,
        snapshots: PostgresAggregateRecorder,
        lte: int | None = None,
    ) -> tuple[StoredEvent | None, list[StoredEvent]]:
        """The stream's newest snapshot at or before version ``lte`` (None: none) and the
        stream's events after it up to ``lte`` (``None``: all), in version order: what
        eventsourcing's ``Repository.get`` reads in two queries, in one round trip.

        Args:
            snapshots: the application's snapshot recorder (a table in the same database).
        """
        statement = self._statement(
            ("after_snapshot", snapshots.datastore.schema, snapshots.events_table_name),
            partial(self._with_snapshots_sql, _AFTER_SNAPSHOT_SQL),
        )
        rows = self._fetch_binary(
            statement, {"id": originator_id, "lte": _MAX_VERSION if lte is None else lte}
        )
        snapshot = None
        if rows and rows[0][0]:  # the snapshot's row comes first
            snapshot = _stored_events([(originator_id, *rows[0][1:])])[0]
            rows = rows[1:]
        return snapshot, _stored_events((originator_id, *row[1:]) for row in rows)

    def _with_snapshots_sql(
        self, text: str, snapshots_schema: str, snapshots_table: str
    ) -> Composed:
        """``text`` with ``{snapshots}`` naming a snapshot table and ``{events}`` this recorder's
        table, rendered once (``_AFTER_SNAPSHOT_SQL``, ``_AFTER_NEWEST_SNAPSHOTS_SQL``)."""
        return _rendered(
            SQL(text).format(
                snapshots=Identifier(snapshots_schema, snapshots_table),
                events=Identifier(self.datastore.schema, self.events_table_name),
            )
        )

    def select_after_newest_snapshots(
        self, originator_ids: Sequence[UUID], snapshots: PostgresAggregateRecorder, above: int = 0
    ) -> tuple[dict[UUID, StoredEvent], list[StoredEvent]]:
        """The newest snapshot of each stream (of a version above ``above``), and each stream's
        events after it (all of them for a stream with none), ordered by stream then version,
        in one round trip: what a writer loads (``Ledger._load_bounded``).

        Args:
            snapshots: the application's snapshot recorder (a table in the same database).
        """
        statement = self._statement(
            ("after_newest", snapshots.datastore.schema, snapshots.events_table_name),
            partial(self._with_snapshots_sql, _AFTER_NEWEST_SNAPSHOTS_SQL),
        )
        rows = self._fetch_binary(statement, {"ids": list(originator_ids), "above": above})
        newest = {row[1]: _stored_events([row[1:]])[0] for row in rows if row[0]}
        return newest, _stored_events(row[1:] for row in rows if not row[0])

    def select_events_many(self, originator_ids: Sequence[UUID]) -> list[StoredEvent]:
        """Every event of the given streams, ordered by stream then version (one round trip)."""
        return _stored_events(
            self._fetch_binary(self.select_events_many_statement, (list(originator_ids),))
        )


def _columns(stored_events: Sequence[StoredEvent]) -> tuple[list[Any], ...]:
    """The four insert parameters: ``(originator_ids, originator_versions, topics, states)``,
    each a list in the events' order (sent as binary scalar arrays)."""
    return (
        [e.originator_id for e in stored_events],
        [e.originator_version for e in stored_events],
        [e.topic for e in stored_events],
        [e.state for e in stored_events],
    )


def _notification_ids(curs: Cursor[Any], stored_events: Sequence[StoredEvent]) -> list[int]:
    """The ``notification_id`` of each appended event (the insert's ``RETURNING`` rows, tuples).

    Raises:
        ProgrammingError: not one id per event (the library's check and message).
    """
    ids = [row[0] for row in curs.fetchall()]
    if len(ids) != len(stored_events):
        msg = f"Couldn't get all notification IDs (got {len(ids)}, expected {len(stored_events)})"
        raise ProgrammingError(msg)
    return ids


# The library's ``StoredEvent`` and ``Notification`` are frozen dataclasses, whose ``__init__``
# sets each field through ``object.__setattr__``: 0.84 us per object. Made here by setting their
# ``__dict__`` at once (the same fields, equality and repr): 0.36 us. A rebuild makes a million.
_new = object.__new__
_set = object.__setattr__


def _stored_event(
    originator_id: Any, originator_version: int, topic: str, state: bytes
) -> StoredEvent:
    """A ``StoredEvent`` of its four fields, its ``__dict__`` set at once (see above)."""
    event = _new(StoredEvent)
    _set(
        event,
        "__dict__",
        {
            "originator_id": originator_id,
            "originator_version": originator_version,
            "topic": topic,
            "state": state,
        },
    )
    return event


def _stored_events(rows: Iterable[tuple[Any, ...]]) -> list[StoredEvent]:
    """``StoredEvent`` objects of ``(originator_id, originator_version, topic, state)`` rows
    (``starmap`` of ``_stored_event``: 330 ns a row, against 460 for a loop making them inline)."""
    return list(starmap(_stored_event, rows))


def _notifications(rows: Iterable[tuple[Any, ...]]) -> list[Notification]:
    """``Notification`` objects of ``(id, originator_id, originator_version, topic, state)``
    rows."""
    made: list[Notification] = []
    append = made.append
    for notification_id, originator_id, originator_version, topic, state in rows:
        notification = _new(Notification)
        _set(
            notification,
            "__dict__",
            {
                "originator_id": originator_id,
                "originator_version": originator_version,
                "topic": topic,
                "state": state,
                "id": notification_id,
            },
        )
        append(notification)
    return made


class RecoveringPostgresDatastore(PostgresDatastore):
    """eventsourcing's ``PostgresDatastore`` that sweeps its pool after a failed connection.

    The pool hands out idle connections unchecked (psycopg_pool: a check costs a round trip
    per use), and discards a connection only when it fails. After PostgreSQL restarted, or ended
    the server's sessions (``pg_terminate_backend``, a failover, an idle-session timeout), each
    pooled connection would fail one operation in turn: six 503s in a row were measured after
    ``pg_terminate_backend``. The library's ``pre_ping`` checks every connection taken instead,
    but psycopg_pool backs off 1, 2, 4 s between failed checks, so the first request after a
    restart waited out the 10 s timeout and failed all the same.

    Here the operation that meets a dead connection still fails (``OperationalError`` or
    ``InterfaceError``, the library's, that ``connection_lost`` recognises); before it is raised, ``ConnectionPool.check()`` tests
    every idle connection (one empty query each) and replaces the dead ones, so the next
    operation, or a retry of this one (``infra.writer``), gets a live connection.
    """

    @contextmanager
    def get_connection(self) -> Iterator[Connection[DictRow]]:
        """The library's ``get_connection``; after an ``OperationalError`` or ``InterfaceError``
        saying the connection was lost (``connection_lost``; not a lock timeout, say) the pool
        is swept (see the class) and the error raised as it was."""
        try:
            with super().get_connection() as conn:
                yield conn
        except (OperationalError, InterfaceError) as error:
            if connection_lost(error):
                self.sweep_pool()
            raise

    def sweep_pool(self) -> None:
        """Replace the pool's dead idle connections (``psycopg_pool.ConnectionPool.check``)."""
        try:
            self.pool.check()
        except Exception:  # the database may be down altogether: the pool reconnects itself
            log.warning("checking the pooled connections failed", exc_info=True)


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` (the library's ``OperationalError`` or ``InterfaceError``) says that
    PostgreSQL closed or lost the connection it ran on: a client-side connection failure
    (``sqlstate`` None: "server closed the connection unexpectedly", "the connection is closed"),
    SQLSTATE class 08 (connection exception) or 57P01-57P03 (shutdown, crash, cannot connect
    now). Not a lock or statement timeout, and not the pool's own timeout (``PoolTimeout``: a
    retry would wait as long again)."""
    cause = error.__cause__
    if isinstance(cause, PoolTimeout):
        return False
    if isinstance(cause, psycopg.InterfaceError):
        return True
    if not isinstance(cause, psycopg.OperationalError):
        return False
    state = cause.sqlstate
    return state is None or state.startswith("08") or state in ("57P01", "57P02", "57P03")


class PostgresFactory(_LibraryPostgresFactory):
    """eventsourcing's PostgreSQL factory making ``FastPostgresAggregateRecorder`` (snapshots)
    and ``FastPostgresApplicationRecorder`` (the log) on a ``RecoveringPostgresDatastore``."""

    aggregate_recorder_class = FastPostgresAggregateRecorder
    application_recorder_class = FastPostgresApplicationRecorder

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        # The library builds its ``PostgresDatastore`` itself (no hook for the class); the
        # subclass adds methods only, and its pool is not open yet.
        self.datastore.__class__ = RecoveringPostgresDatastore


#: ``UUID(text)`` of recently read stream ids.
_uuid_of: Callable[[str], UUID] = lru_cache(maxsize=65536)(UUID)


class _CachedIdSQLite:
    """``convert_originator_id`` of eventsourcing's SQLite recorders, through ``_uuid_of``."""

    datastore: SQLiteDatastore

    def convert_originator_id(self, originator_id: str) -> UUID | str:
        """The stored text of a stream id as the ``UUID`` it is (or the text, for text ids)."""
        if self.datastore.originator_id_type == "uuid":
            return _uuid_of(originator_id)
        return originator_id


class CachedIdSQLiteAggregateRecorder(_CachedIdSQLite, SQLiteAggregateRecorder):
    """``SQLiteAggregateRecorder`` (snapshots) with cached stream id parsing."""


class CachedIdSQLiteApplicationRecorder(_CachedIdSQLite, SQLiteApplicationRecorder):
    """``SQLiteApplicationRecorder`` (the log) with cached stream id parsing, and
    ``select_notifications`` reading plain tuples."""

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> list[Notification]:
        """Events in log order from position ``start`` (``inclusive_of_start``) up to ``stop``, of
        the given ``topics`` (all if empty), at most ``limit``: eventsourcing's
        ``select_notifications`` (the same conditions and order), its rows read as tuples
        instead of ``sqlite3.Row`` objects looked up by column name, and made into
        ``Notification`` objects as ``_notifications`` does. Reading the log was a fifth of a
        SQLite rebuild (``bench.rebuild``), half of it per-row Python work."""
        conditions: list[str] = []
        params: list[Any] = []
        if start is not None:
            conditions.append("rowid>=?" if inclusive_of_start else "rowid>?")
            params.append(start)
        if stop is not None:
            conditions.append("rowid<=?")
            params.append(stop)
        if topics:
            conditions.append(f"topic IN ({','.join('?' * len(topics))})")
            params.extend(topics)
        params.append(limit)
        statement = (
            "SELECT rowid, originator_id, originator_version, topic, state "
            f"FROM {self.events_table_name}"
            + (" WHERE " + " AND ".join(conditions) if conditions else "")
            + " ORDER BY rowid LIMIT ?"
        )
        with self.datastore.transaction(commit=False) as entered:
            cursor = cast(sqlite3.Cursor, entered)  # what the library's transaction yields
            cursor.row_factory = None
            cursor.execute(statement, params)
            rows = cursor.fetchall()
        convert = self.convert_originator_id
        return _notifications(
            (rowid, convert(oid), version, topic, state)
            for rowid, oid, version, topic, state in rows
        )


class SQLiteFactory(_LibrarySQLiteFactory):
    """eventsourcing's SQLite factory making the recorders above."""

    aggregate_recorder_class = CachedIdSQLiteAggregateRecorder
    application_recorder_class = CachedIdSQLiteApplicationRecorder
