"""The read models' tables, declared once and rendered as DDL for SQLite and PostgreSQL.

Every read-model table is keyed by ``project`` + its natural id and has exactly one owning
projection (same name as the table). ``projection_tracking`` holds each projection's position
in the application log (the ``notification_id`` of the last event folded).

Column types are logical and map per dialect:

======== ===================================== =====================
logical   SQLite                                PostgreSQL
======== ===================================== =====================
TEXT      TEXT                                  TEXT
BIGINT    INTEGER                               BIGINT
DOUBLE    REAL                                  DOUBLE PRECISION
BOOL      INTEGER (0/1)                         BOOLEAN
TIMESTAMP TEXT, ISO 8601 UTC, microseconds      TIMESTAMPTZ
JSON      TEXT                                  JSONB
======== ===================================== =====================

In memory (what folds see and produce) a TIMESTAMP is a tz-aware UTC ``datetime``, a JSON value
a plain Python value. ``encode``/``decode`` convert at the database boundary.

The DDL is idempotent (``CREATE TABLE IF NOT EXISTS``, ``CREATE INDEX IF NOT EXISTS``); it does
not migrate existing tables to new columns. This module consumes no events.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from functools import partial
from operator import attrgetter, is_not, itemgetter
from typing import Any

import orjson

from projections.db import placeholder


class ColumnType(Enum):
    """Logical column types (see the module docstring for the per-dialect mapping)."""

    TEXT = "text"
    BIGINT = "bigint"
    DOUBLE = "double"
    BOOL = "bool"
    TIMESTAMP = "timestamp"
    JSON = "json"


TEXT = ColumnType.TEXT
BIGINT = ColumnType.BIGINT
DOUBLE = ColumnType.DOUBLE
BOOL = ColumnType.BOOL
TIMESTAMP = ColumnType.TIMESTAMP
JSON = ColumnType.JSON

_SQL_TYPES: dict[str, dict[ColumnType, str]] = {
    "sqlite": {
        TEXT: "TEXT",
        BIGINT: "INTEGER",
        DOUBLE: "REAL",
        BOOL: "INTEGER",
        TIMESTAMP: "TEXT",
        JSON: "TEXT",
    },
    "postgresql": {
        TEXT: "TEXT",
        BIGINT: "BIGINT",
        DOUBLE: "DOUBLE PRECISION",
        BOOL: "BOOLEAN",
        TIMESTAMP: "TIMESTAMPTZ",
        JSON: "JSONB",
    },
}

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Column:
    """One column.

    Attributes:
        name: column name.
        type: logical type.
        default: the value of a fresh row (``Table.blank``); counters start at 0.
        internal: bookkeeping of the owning fold, not shown by the views.
    """

    name: str
    type: ColumnType
    default: Any = None
    internal: bool = False


@dataclass(frozen=True)
class Table:
    """One read-model table.

    Attributes:
        name: table name (also the name of its owning projection).
        columns: every column, key columns first.
        key: the primary key, ``("project", <natural id>...)``; all key columns are TEXT.
        indexes: ``(suffix, columns)``; rendered as ``CREATE INDEX {name}_{suffix}``.
    """

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    by_name: dict[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {c.name: c for c in self.columns})
        object.__setattr__(self, "_template", {c.name: c.default for c in self.columns})
        mutable = tuple(c.name for c in self.columns if isinstance(c.default, dict | list))
        object.__setattr__(self, "_mutable", mutable)
        missing = [k for k in self.key if k not in self.by_name]
        if missing or self.key[0] != "project":
            raise ValueError(f"table {self.name}: bad key {self.key}")

    @property
    def column_names(self) -> tuple[str, ...]:
        """Every column name, in declaration order."""
        return tuple(c.name for c in self.columns)

    @property
    def public_columns(self) -> tuple[str, ...]:
        """The columns the views show (all but ``internal`` ones)."""
        return tuple(c.name for c in self.columns if not c.internal)

    def blank(self, key: tuple[str, ...]) -> dict[str, Any]:
        """A fresh row: the key's values plus every column's default.

        Mutable defaults (JSON lists/dicts) are copied, so rows never share them.
        """
        row: dict[str, Any] = dict(self._template)  # type: ignore[attr-defined]
        for name in self._mutable:  # type: ignore[attr-defined]
            row[name] = _fresh(row[name])
        row.update(zip(self.key, key, strict=True))
        return row

    def key_of(self, row: dict[str, Any]) -> tuple[str, ...]:
        """The key tuple of a row."""
        return tuple(row[k] for k in self.key)

    def ddl(self, dialect: str) -> list[str]:
        """``CREATE TABLE IF NOT EXISTS`` and its ``CREATE INDEX IF NOT EXISTS`` statements."""
        types = _SQL_TYPES[dialect]
        lines = []
        for column in self.columns:
            not_null = " NOT NULL" if column.name in self.key or column.default is not None else ""
            lines.append(f"    {column.name} {types[column.type]}{not_null}")
        lines.append(f"    PRIMARY KEY ({', '.join(self.key)})")
        body = ",\n".join(lines)
        statements = [f"CREATE TABLE IF NOT EXISTS {self.name} (\n{body}\n)"]
        for suffix, columns in self.indexes:
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {self.name}_{suffix} ON {self.name} ({', '.join(columns)})"
            )
        return statements


def _fresh(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return list(value)
    return value


def _columns(*specs: tuple[Any, ...]) -> tuple[Column, ...]:
    return tuple(Column(*spec) for spec in specs)


# -- the read models (DESIGN.md §4) -----------------------------------------------------------

SESSIONS = Table(
    "sessions",
    _columns(
        ("project", TEXT),
        ("session_id", TEXT),
        ("status", TEXT),
        ("agent", TEXT),
        ("model", TEXT),
        ("workspace", TEXT),
        ("started_at", TIMESTAMP),
        ("ended_at", TIMESTAMP),
        ("end_reason", TEXT),
        ("event_count", BIGINT, 0),
        ("message_count", BIGINT, 0),
        ("tool_call_count", BIGINT, 0),
        ("tool_error_count", BIGINT, 0),
        ("cost_usd", DOUBLE, 0.0),
        ("input_tokens", BIGINT, 0),
        ("output_tokens", BIGINT, 0),
        ("first_position", BIGINT, 0),
        ("last_position", BIGINT, 0),
        ("last_event_at", TIMESTAMP),
    ),
    key=("project", "session_id"),
    indexes=(
        ("by_position", ("project", "first_position", "session_id")),
        ("by_status", ("project", "status", "first_position", "session_id")),
    ),
)

TOOL_CALLS = Table(
    "tool_calls",
    _columns(
        ("project", TEXT),
        ("session_id", TEXT),
        ("tool_use_id", TEXT),
        ("tool_name", TEXT),
        ("tool_input_sha256", TEXT),
        ("agent_id", TEXT),
        ("started_at", TIMESTAMP),
        ("ended_at", TIMESTAMP),
        ("duration_ms", DOUBLE),
        ("success", BOOL),
        ("pairing", TEXT),
        ("error", TEXT),
        ("start_position", BIGINT),
        ("end_position", BIGINT),
        ("first_position", BIGINT, 0),
    ),
    key=("project", "session_id", "tool_use_id"),
    indexes=(("by_position", ("project", "session_id", "first_position", "tool_use_id")),),
)

APPROVALS = Table(
    "approvals",
    _columns(
        ("project", TEXT),
        ("approval_id", TEXT),
        ("status", TEXT),
        ("approval_type", TEXT),
        ("session_id", TEXT),
        ("tool_use_id", TEXT),
        ("tool_name", TEXT),
        ("tool_input_sha256", TEXT),
        ("chain_id", TEXT),
        ("stage_id", TEXT),
        ("requested_by", TEXT),
        ("requested_at", TIMESTAMP),
        ("decided_at", TIMESTAMP),
        ("decision", TEXT),
        ("source_decision", TEXT),
        ("scope", TEXT),
        ("decided_by", TEXT),
        ("comment", TEXT),
        ("latency_ms", DOUBLE),
        ("first_position", BIGINT, 0),
        ("last_position", BIGINT, 0),
    ),
    key=("project", "approval_id"),
    indexes=(
        ("by_position", ("project", "first_position", "approval_id")),
        ("by_status", ("project", "status", "first_position", "approval_id")),
        ("by_session", ("project", "session_id", "first_position", "approval_id")),
    ),
)

WORKSPACE_BASELINES = Table(
    "workspace_baselines",
    _columns(
        ("project", TEXT),
        ("session_id", TEXT),
        ("captured_at", TIMESTAMP),
        ("file_count", BIGINT, 0),
        ("files", JSON, []),
        ("reason", TEXT),
        ("archive_sha256", TEXT),
        ("position", BIGINT, 0),
    ),
    key=("project", "session_id"),
)

#: scafld ``StateRecord`` fields besides ``phase_id`` (model.go), as columns.
_STATE_RECORD = (
    ("status", TEXT, ""),
    ("source_id", TEXT, ""),
    ("reason", TEXT),
    ("updated_at", TEXT),  # the entry's own recorded_at string (scafld RFC 3339), verbatim
    ("command", TEXT),
    ("expected_kind", TEXT),
    ("criterion_type", TEXT),
)
_STATE_RECORD_TAIL = (
    ("evidence_digest", TEXT),
    ("evidence_actor", TEXT),
    ("position", BIGINT, 0),
)

CRITERION_STATES = Table(
    "criterion_states",
    _columns(
        ("project", TEXT),
        ("session_id", TEXT),
        ("criterion_id", TEXT),
        *_STATE_RECORD,
        ("phase_id", TEXT),
        *_STATE_RECORD_TAIL,
    ),
    key=("project", "session_id", "criterion_id"),
)

PHASE_BLOCKS = Table(
    "phase_blocks",
    _columns(
        ("project", TEXT),
        ("session_id", TEXT),
        ("phase_id", TEXT),
        *_STATE_RECORD,
        *_STATE_RECORD_TAIL,
    ),
    key=("project", "session_id", "phase_id"),
)

_STAGE_METRICS = (
    ("cost_usd", DOUBLE, 0.0),
    ("tokens_in", BIGINT, 0),
    ("tokens_out", BIGINT, 0),
    ("turns", BIGINT, 0),
    ("tool_calls", BIGINT, 0),
    ("duration_ms", DOUBLE, 0.0),
)

CHAIN_SUMMARIES = Table(
    "chain_summaries",
    _columns(
        ("project", TEXT),
        ("chain_id", TEXT),
        ("title", TEXT),
        ("source_type", TEXT),
        ("source_ref", TEXT),
        ("github_repo", TEXT),
        ("github_issue_number", BIGINT),
        ("workspace", TEXT),
        ("status", TEXT),
        ("current_stage_id", TEXT),
        ("current_agent_id", TEXT),
        ("stage_count", BIGINT, 0),
        ("stages_completed", BIGINT, 0),
        *_STAGE_METRICS,
        ("agent_flow", TEXT, ""),
        ("pending_approvals", BIGINT, 0),
        ("created_at", TIMESTAMP),
        ("updated_at", TIMESTAMP),
        ("completed_at", TIMESTAMP),
        ("first_position", BIGINT, 0),
        ("last_position", BIGINT, 0),
        # {stage_id: {stage_number, agent_id, status, approval_status}}: this projection's own
        # view of the stages, so that it rebuilds without reading chain_stages.
        ("stage_index", JSON, {}, True),
    ),
    key=("project", "chain_id"),
    indexes=(
        ("by_position", ("project", "first_position", "chain_id")),
        ("by_status", ("project", "status", "first_position", "chain_id")),
    ),
)

CHAIN_STAGES = Table(
    "chain_stages",
    _columns(
        ("project", TEXT),
        ("chain_id", TEXT),
        ("stage_id", TEXT),
        ("stage_number", BIGINT),
        ("agent_id", TEXT),
        ("provider", TEXT),
        ("handoff_to", TEXT),
        ("status", TEXT),
        ("session_id", TEXT),
        ("approval_id", TEXT),
        ("approval_status", TEXT),
        ("approval_type", TEXT),
        ("human_feedback", TEXT),
        ("iteration", BIGINT),
        ("started_at", TIMESTAMP),
        ("completed_at", TIMESTAMP),
        ("error_message", TEXT),
        ("model", TEXT),
        ("cost_provenance", TEXT),
        *_STAGE_METRICS,
        ("first_position", BIGINT, 0),
        ("last_position", BIGINT, 0),
    ),
    key=("project", "chain_id", "stage_id"),
    indexes=(("by_number", ("project", "chain_id", "stage_number", "stage_id")),),
)

SPANS = Table(
    "spans",
    _columns(
        ("project", TEXT),
        ("trace_id", TEXT),
        ("span_id", TEXT),
        ("parent_span_id", TEXT),
        ("name", TEXT),
        ("kind", TEXT),
        ("start_time_unix_nano", BIGINT),
        ("end_time_unix_nano", BIGINT),
        ("duration_ms", DOUBLE),
        ("status_code", TEXT),
        ("status_message", TEXT),
        ("trace_state", TEXT),
        ("flags", BIGINT),
        ("attributes", JSON, {}),
        ("resource_attributes", JSON, {}),
        ("events", JSON, []),
        ("links", JSON, []),
        ("scope", JSON, {}),
        ("service_name", TEXT),
        ("session_id", TEXT),
        ("chain_id", TEXT),
        ("stage_id", TEXT),
        ("model", TEXT),
        ("input_tokens", BIGINT),
        ("output_tokens", BIGINT),
        ("cost_usd", DOUBLE),
        ("position", BIGINT, 0),
    ),
    key=("project", "trace_id", "span_id"),
    indexes=(
        ("by_position", ("project", "position")),
        ("by_session", ("project", "session_id", "position")),
        ("by_trace_start", ("project", "trace_id", "start_time_unix_nano", "span_id")),
    ),
)

TRACE_SUMMARIES = Table(
    "trace_summaries",
    _columns(
        ("project", TEXT),
        ("trace_id", TEXT),
        ("root_span_id", TEXT),
        ("root_name", TEXT),
        ("service_name", TEXT),
        ("session_id", TEXT),
        ("span_count", BIGINT, 0),
        ("error_count", BIGINT, 0),
        ("start_time_unix_nano", BIGINT),
        ("end_time_unix_nano", BIGINT),
        ("duration_ms", DOUBLE),
        ("first_position", BIGINT, 0),
        ("last_position", BIGINT, 0),
    ),
    key=("project", "trace_id"),
    indexes=(("by_position", ("project", "first_position", "trace_id")),),
)

#: Every read-model table by name, in the order of the projections.
TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        SESSIONS,
        TOOL_CALLS,
        APPROVALS,
        WORKSPACE_BASELINES,
        CRITERION_STATES,
        PHASE_BLOCKS,
        CHAIN_SUMMARIES,
        CHAIN_STAGES,
        SPANS,
        TRACE_SUMMARIES,
    )
}

TRACKING_TABLE = "projection_tracking"


def tracking_ddl(dialect: str) -> str:
    """DDL of ``projection_tracking(name, position, updated_at)``: one row per projection."""
    updated = _SQL_TYPES[dialect][TIMESTAMP]
    return (
        f"CREATE TABLE IF NOT EXISTS {TRACKING_TABLE} (\n"
        "    name TEXT PRIMARY KEY,\n"
        "    position BIGINT NOT NULL,\n"
        f"    updated_at {updated}\n"
        ")"
    )


def ddl(dialect: str, tables: list[Table] | None = None) -> list[str]:
    """Every DDL statement for ``dialect``: the tracking table, then each read-model table.

    Raises:
        KeyError: unknown dialect.
    """
    statements = [tracking_ddl(dialect)]
    for table in tables if tables is not None else list(TABLES.values()):
        statements.extend(table.ddl(dialect))
    return statements


def upsert_sql(table: Table, dialect: str) -> str:
    """``INSERT ... ON CONFLICT (key) DO UPDATE SET`` every non-key column, for executemany."""
    marker = placeholder(dialect)
    values = ", ".join(
        f"{marker}::jsonb" if dialect == "postgresql" and c.type is JSON else marker
        for c in table.columns
    )
    updates = ", ".join(f"{c} = excluded.{c}" for c in table.column_names if c not in table.key)
    return (
        f"INSERT INTO {table.name} ({', '.join(table.column_names)}) VALUES ({values}) "
        f"ON CONFLICT ({', '.join(table.key)}) DO UPDATE SET {updates}"
    )


# -- values at the database boundary ------------------------------------------------------------


def to_utc(value: datetime) -> datetime:
    """``value`` as tz-aware UTC (a naive datetime is taken to be UTC already)."""
    tzinfo = value.tzinfo
    if tzinfo is UTC:
        return value  # what astimezone(UTC) returns for it
    if tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # An instant outside datetime's range in UTC (e.g. 0001-01-01T00:00:00+14:00), which the
        # API has refused since 2026-11-22 but an older log may hold: the nearest representable
        # one, so that one such event cannot stop the projections for good.
        return (datetime.min if value.year == 1 else datetime.max).replace(tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    """ISO 8601 UTC with microseconds, e.g. ``2026-05-01T12:00:00.000000+00:00`` (fixed width,
    so that text order is time order)."""
    if value is None:
        return None
    return to_utc(value).isoformat(timespec="microseconds")


def clamp_int64(value: int) -> int:
    """``value`` limited to the BIGINT range (OTLP fixed64 nanoseconds may exceed it)."""
    return INT64_MAX if value > INT64_MAX else INT64_MIN if value < INT64_MIN else value


def clean_text(value: str) -> str:
    """``value`` without NUL characters (PostgreSQL TEXT and JSONB refuse them): U+FFFD instead."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def _clean_json(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v) for v in value]
    return value


#: The stdlib encoder ``dump_json`` falls back to (built once: ``json.dumps`` with options builds
#: a new encoder on every call).
_JSON_ENCODER = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str
)
_JSON_CLEAN_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)
#: orjson hands datetimes, dataclasses and subclasses of builtins to ``default`` (which refuses
#: them, so that the stdlib encoder and its ``default=str`` take such values).
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def _refuse(value: Any) -> Any:
    raise TypeError(type(value).__name__)


def dump_json(value: Any) -> str:
    """Compact JSON text of a Python value, storable in JSONB.

    JSON has no NaN or infinities and JSONB no ``\\u0000``: those become the strings ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"`` and U+FFFD (the log keeps the original value).

    JSON-native values (what events decoded from the log hold) are written by orjson; anything
    it refuses or may have written differently (a ``null``, which may stand for a NaN; a NUL;
    ints beyond 64 bits; other types) by the stdlib encoder, as before. Both give the same value.
    """
    try:
        data = orjson.dumps(value, default=_refuse, option=_ORJSON_OPTIONS)
    except TypeError:
        pass
    else:
        if b"null" not in data and b"\\u0000" not in data:
            return data.decode()
    try:
        text = _JSON_ENCODER.encode(value)
    except ValueError:
        return _JSON_CLEAN_ENCODER.encode(_clean_json(value))
    if "\\u0000" in text:
        return _JSON_CLEAN_ENCODER.encode(_clean_json(value))
    return text


Codec = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def _encode_text(value: Any) -> Any:
    if value is None:
        return None
    return clean_text(value if isinstance(value, str) else str(value))


def _encode_bigint(value: Any) -> Any:
    return None if value is None else clamp_int64(int(value))


def _encode_double(value: Any) -> Any:
    return None if value is None else float(value)


def _encode_bool_sqlite(value: Any) -> Any:
    return None if value is None else int(bool(value))


def _encode_bool_pg(value: Any) -> Any:
    return None if value is None else bool(value)


def _encode_ts_sqlite(value: Any) -> Any:
    return iso(value)


def _encode_ts_pg(value: Any) -> Any:
    return None if value is None else to_utc(value)


def _encode_json(value: Any) -> Any:
    return None if value is None else dump_json(value)


def _decode_bool(value: Any) -> Any:
    return None if value is None else bool(value)


def _decode_double(value: Any) -> Any:
    return None if value is None else float(value)


def _decode_ts_sqlite(value: Any) -> Any:
    return None if value is None else to_utc(datetime.fromisoformat(value))


def _decode_ts_pg(value: Any) -> Any:
    return None if value is None else to_utc(value)


def _decode_json_sqlite(value: Any) -> Any:
    return None if value is None else json.loads(value)


_ENCODERS: dict[str, dict[ColumnType, Codec]] = {
    "sqlite": {
        TEXT: _encode_text,
        BIGINT: _encode_bigint,
        DOUBLE: _encode_double,
        BOOL: _encode_bool_sqlite,
        TIMESTAMP: _encode_ts_sqlite,
        JSON: _encode_json,
    },
    "postgresql": {
        TEXT: _encode_text,
        BIGINT: _encode_bigint,
        DOUBLE: _encode_double,
        BOOL: _encode_bool_pg,
        TIMESTAMP: _encode_ts_pg,
        JSON: _encode_json,
    },
}

_DECODERS: dict[str, dict[ColumnType, Codec]] = {
    "sqlite": {
        TEXT: _identity,
        BIGINT: _identity,
        DOUBLE: _decode_double,
        BOOL: _decode_bool,
        TIMESTAMP: _decode_ts_sqlite,
        JSON: _decode_json_sqlite,
    },
    "postgresql": {
        TEXT: _identity,
        BIGINT: _identity,
        DOUBLE: _decode_double,
        BOOL: _decode_bool,
        TIMESTAMP: _decode_ts_pg,
        JSON: _identity,  # psycopg loads json/jsonb itself
    },
}


def encoders(table: Table, dialect: str) -> list[Codec]:
    """One encoder per column (in-memory value -> DB-API parameter), in column order."""
    return [_ENCODERS[dialect][c.type] for c in table.columns]


def decoders(table: Table, dialect: str, columns: tuple[str, ...] | None = None) -> list[Codec]:
    """One decoder per column (DB value -> in-memory value), for ``columns`` (default: all)."""
    names = columns if columns is not None else table.column_names
    return [_DECODERS[dialect][table.by_name[n].type] for n in names]


# -- whole rows at the database boundary --------------------------------------------------------

_NONE = type(None)
_not_none = partial(is_not, None)
_tzinfo = attrgetter("tzinfo")
Column_ = Sequence[Any]


def _plain(column: Column_, kinds: set[type]) -> list[Any] | None:
    """The column's non-None values when every one is of a type in ``kinds``; else None."""
    types = set(map(type, column))
    has_none = _NONE in types
    types.discard(_NONE)
    if not types <= kinds:
        return None
    return list(filter(_not_none, column)) if has_none else list(column)


def _text_column(column: Column_, encode: Codec) -> Column_:
    values = _plain(column, {str})
    if values is not None and "\x00" not in "".join(values):
        return column
    return list(map(encode, column))


def _bigint_column(column: Column_, encode: Codec) -> Column_:
    values = _plain(column, {int})
    if values is not None and (not values or INT64_MIN <= min(values) <= max(values) <= INT64_MAX):
        return column
    return list(map(encode, column))


def _double_column(column: Column_, encode: Codec) -> Column_:
    return column if _plain(column, {float}) is not None else list(map(encode, column))


def _bool_column(column: Column_, encode: Codec) -> Column_:
    # sqlite3 binds a bool as the integer 1 or 0, which is what the SQLite encoder gives
    return column if _plain(column, {bool}) is not None else list(map(encode, column))


def _ts_sqlite_column(column: Column_, encode: Codec) -> Column_:
    values = _plain(column, {datetime})
    if values is not None and set(map(_tzinfo, values)) <= {UTC}:
        return [None if v is None else v.isoformat(timespec="microseconds") for v in column]
    return list(map(encode, column))


def _ts_pg_column(column: Column_, encode: Codec) -> Column_:
    values = _plain(column, {datetime})
    if values is not None and set(map(_tzinfo, values)) <= {UTC}:
        return column
    return list(map(encode, column))


def _json_column(column: Column_, encode: Codec) -> Column_:
    # dump_json, a column at a time: orjson for every value, then one look for what makes
    # dump_json fall back to the stdlib encoder (a null, which may stand for a NaN; a NUL)
    dumps = orjson.dumps
    try:
        data = [
            None if v is None else dumps(v, default=_refuse, option=_ORJSON_OPTIONS) for v in column
        ]
    except TypeError:
        return list(map(encode, column))
    joined = b"\x00".join(filter(None, data))  # no NUL in orjson's output: no false matches
    if b"null" in joined or b"\\u0000" in joined:
        return [
            None
            if d is None
            else d.decode()
            if b"null" not in d and b"\\u0000" not in d
            else encode(v)
            for v, d in zip(column, data, strict=True)
        ]
    return [None if d is None else d.decode() for d in data]


ColumnCodec = Callable[[Column_, Codec], Column_]

_COLUMN_ENCODERS: dict[str, dict[ColumnType, ColumnCodec]] = {
    "sqlite": {
        TEXT: _text_column,
        BIGINT: _bigint_column,
        DOUBLE: _double_column,
        BOOL: _bool_column,
        TIMESTAMP: _ts_sqlite_column,
        JSON: _json_column,
    },
    "postgresql": {
        TEXT: _text_column,
        BIGINT: _bigint_column,
        DOUBLE: _double_column,
        BOOL: _bool_column,
        TIMESTAMP: _ts_pg_column,
        JSON: _json_column,
    },
}


class RowEncoder:
    """Encodes whole rows (in-memory values -> DB-API parameter tuples, in column order).

    The same values as applying ``encoders(table, dialect)`` to every value, worked out a column
    at a time: a column whose values already are what its encoder would return (strings without
    NUL, ints within BIGINT, floats, bools, UTC datetimes, ...) is checked with C-level builtins
    and passed through; any other column is encoded value by value.
    """

    def __init__(self, table: Table, dialect: str) -> None:
        self.table = table
        self._get = itemgetter(*table.column_names)
        self._columns = [
            (index, _COLUMN_ENCODERS[dialect][column.type], encode)
            for index, (column, encode) in enumerate(
                zip(table.columns, encoders(table, dialect), strict=True)
            )
        ]

    def __call__(self, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """The parameter tuples of ``rows``, in the same order."""
        values: list[tuple[Any, ...]] = list(map(self._get, rows))
        if not values:
            return values
        columns: list[Column_] = list(zip(*values, strict=True))
        changed = False
        for index, encode_column, encode in self._columns:
            column = columns[index]
            encoded = encode_column(column, encode)
            if encoded is not column:
                columns[index] = encoded
                changed = True
        return list(zip(*columns, strict=True)) if changed else values


_ROW_ENCODERS: dict[tuple[str, str], RowEncoder] = {}


def row_encoder(table: Table, dialect: str) -> RowEncoder:
    """The (shared) ``RowEncoder`` of a table in a dialect."""
    found = _ROW_ENCODERS.get((table.name, dialect))
    if found is None or found.table is not table:
        found = _ROW_ENCODERS[(table.name, dialect)] = RowEncoder(table, dialect)
    return found


class ParamDecoder:
    """A row back from its parameter tuple (``RowEncoder``'s output): the row the database
    would give back once the tuple is written."""

    def __init__(self, table: Table, dialect: str) -> None:
        self.table = table
        self._names = table.column_names
        self._decode = [
            _decode_json_sqlite if column.type is JSON else decode
            for column, decode in zip(table.columns, decoders(table, dialect), strict=True)
        ]

    def __call__(self, params: Sequence[Any]) -> dict[str, Any]:
        """The row of ``params``."""
        return {
            name: decode(value)
            for name, decode, value in zip(self._names, self._decode, params, strict=True)
        }


_PARAM_DECODERS: dict[tuple[str, str], ParamDecoder] = {}


def param_decoder(table: Table, dialect: str) -> ParamDecoder:
    """The (shared) ``ParamDecoder`` of a table in a dialect."""
    found = _PARAM_DECODERS.get((table.name, dialect))
    if found is None or found.table is not table:
        found = _PARAM_DECODERS[(table.name, dialect)] = ParamDecoder(table, dialect)
    return found
