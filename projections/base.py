"""The fold API shared by every projection, and value helpers the folds use.

A projection owns one table and is a pure function ``fold(event, position, rows)``: given one
domain event and its position in the log (``notification_id``), it reads the rows it needs with
``rows.get(table, key)`` and writes whole rows back with ``rows.put(table, key, row)``. It does no
I/O. The catch-up runner (``projections.runner``) gives it an accessor backed by the database
(rows read in bulk once per run and kept in memory, written back in batches); unit tests give it
a ``MemoryRows``. Several projections fold the same event in turn: ``span_facts`` and
``LastResult`` let them share what they read off it.

Rules for folds: never mutate a dict returned by ``get`` (copy it, change the copy, ``put`` it),
a row once ``put`` (the runner writes it later, maybe on another thread) or an event (other
projections fold it too); be deterministic (the same events in the same order give the same rows: a rebuild must equal the
incrementally maintained table); tolerate any event the domain accepted (missing optional
fields are ``None``).

Consumes no events itself; see each projection module for the events it folds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from domain.base import LedgerEvent
from domain.trace import SpanRecorded
from projections.schema import Table, clamp_int64, to_utc

Key = tuple[str, ...]
Row = dict[str, Any]


class Rows(Protocol):
    """In-memory access to read-model rows, by table name and key tuple."""

    def get(self, table: str, key: Key) -> Row | None:
        """The row, or None when there is none. The caller must not mutate it."""
        ...

    def put(self, table: str, key: Key, row: Row) -> None:
        """Store ``row`` (every column of the table) under ``key``."""
        ...


class MemoryRows:
    """A ``Rows`` held in dicts: what unit tests fold into, and the runner's page cache base.

    Attributes:
        tables: ``{table: {key: row}}``.
    """

    def __init__(self) -> None:
        self.tables: dict[str, dict[Key, Row]] = {}

    def get(self, table: str, key: Key) -> Row | None:
        """The row under ``key`` in ``table``, or None."""
        return self.tables.get(table, {}).get(key)

    def put(self, table: str, key: Key, row: Row) -> None:
        """Store ``row`` under ``key`` in ``table``."""
        self.tables.setdefault(table, {})[key] = row

    def rows(self, table: str) -> list[Row]:
        """Every row of ``table``, sorted by key."""
        found = self.tables.get(table, {})
        return [found[k] for k in sorted(found)]


Fold = Callable[[LedgerEvent, int, Rows], None]
Reads = Callable[[LedgerEvent], Iterable[Key]]


def no_reads(event: LedgerEvent) -> Iterable[Key]:
    """For folds that only overwrite rows: nothing to prefetch."""
    return ()


@dataclass(frozen=True)
class Projection:
    """One read model: its table, the events it folds and how.

    Attributes:
        name: the projection's name (= its table's name; the tracking row's name).
        table: the one table it owns.
        consumes: the event classes ``fold`` is called with (others are skipped).
        fold: ``fold(event, position, rows)``: pure, see the module docstring.
        reads: ``reads(event)``: the keys of ``table`` the fold may ``get`` for that event, so the
            runner can fetch a page's rows in bulk (a key missed here is still fetched on demand).
    """

    name: str
    table: Table
    consumes: tuple[type[LedgerEvent], ...]
    fold: Fold
    reads: Reads = no_reads


# -- value helpers ------------------------------------------------------------------------------


def utc(value: datetime | None) -> datetime | None:
    """``value`` as tz-aware UTC, or None."""
    return None if value is None else to_utc(value)


def ms_between(start: datetime | None, end: datetime | None) -> float | None:
    """``end - start`` in milliseconds (negative when the writers' clocks disagree); None if
    either is missing."""
    if start is None or end is None:
        return None
    return (to_utc(end) - to_utc(start)).total_seconds() * 1000.0


def later(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later of two optional datetimes."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


def as_number(value: Any) -> float | None:
    """A finite number from an attribute value (int, float or numeric string); else None.

    Booleans are not numbers here (``True`` is not one dollar).
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def as_count(value: Any) -> int | None:
    """A whole count from an attribute or metric value (rounded, clamped to BIGINT); else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return clamp_int64(value)
    number = as_number(value)
    if number is None:
        return None
    return clamp_int64(round(number))


def as_id(value: Any) -> str | None:
    """A non-empty id string from an attribute value (ints are accepted and stringified)."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def as_nano(value: Any) -> int | None:
    """An ``*_unix_nano`` integer (ns since the Unix epoch), clamped to BIGINT; else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return clamp_int64(value)
    return None


# -- OpenTelemetry links (span attributes -> ledger streams) -----------------------------------

#: Attribute keys naming the agent session a span belongs to, most specific first:
#: runledger's own, Claude Code's OTel key, OTel GenAI semantic conventions.
SESSION_KEYS = ("runledger.session_id", "session.id", "gen_ai.conversation.id")
#: Attribute keys naming the execution chain / stage of a span.
CHAIN_KEYS = ("runledger.chain_id", "chain.id")
STAGE_KEYS = ("runledger.stage_id", "stage.id")
#: OTel GenAI semantic conventions: model and token usage.
MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model")
INPUT_TOKENS_KEY = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS_KEY = "gen_ai.usage.output_tokens"
COST_KEYS = ("gen_ai.usage.cost_usd", "cost_usd")


def _mappings(span: SpanRecorded) -> tuple[Mapping[str, Any], ...]:
    attributes = span.attributes if isinstance(span.attributes, Mapping) else {}
    resource = span.resource_attributes if isinstance(span.resource_attributes, Mapping) else {}
    return attributes, resource


def span_link(span: SpanRecorded, keys: tuple[str, ...]) -> str | None:
    """The first id found under ``keys`` in the span's ``attributes``, then its
    ``resource_attributes`` (span-level attributes win)."""
    for mapping in _mappings(span):
        for key in keys:
            found = as_id(mapping.get(key))
            if found is not None:
                return found
    return None


def span_session_id(span: SpanRecorded) -> str | None:
    """The agent session a span belongs to (``SESSION_KEYS``), or None."""
    return span_facts(span).session_id


def span_model(span: SpanRecorded) -> str | None:
    """``gen_ai.response.model``, else ``gen_ai.request.model`` (attributes, then resource)."""
    return span_facts(span).model


def span_usage(span: SpanRecorded) -> tuple[int | None, int | None, float | None]:
    """``(input_tokens, output_tokens, cost_usd)`` from the span's own attributes (None when
    absent or not a number)."""
    facts = span_facts(span)
    return facts.input_tokens, facts.output_tokens, facts.cost_usd


@dataclass(frozen=True, slots=True)
class SpanFacts:
    """What the projections read off a span's attributes (see the ``span_*`` helpers)."""

    session_id: str | None
    chain_id: str | None
    stage_id: str | None
    model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    service_name: str | None


def _first_id(mappings: tuple[Mapping[str, Any], ...], keys: tuple[str, ...]) -> str | None:
    # span_link, without the calls for absent keys
    for mapping in mappings:
        for key in keys:
            value = mapping.get(key)
            if value is not None:
                found = as_id(value)
                if found is not None:
                    return found
    return None


def _span_facts(span: SpanRecorded) -> SpanFacts:
    mappings = _mappings(span)
    attributes, resource = mappings
    cost = None
    for key in COST_KEYS:
        cost = as_number(attributes.get(key))
        if cost is not None:
            break
    input_tokens = attributes.get(INPUT_TOKENS_KEY)
    output_tokens = attributes.get(OUTPUT_TOKENS_KEY)
    return SpanFacts(
        session_id=_first_id(mappings, SESSION_KEYS),
        chain_id=_first_id(mappings, CHAIN_KEYS),
        stage_id=_first_id(mappings, STAGE_KEYS),
        model=_first_id(mappings, MODEL_KEYS),
        input_tokens=None if input_tokens is None else as_count(input_tokens),
        output_tokens=None if output_tokens is None else as_count(output_tokens),
        cost_usd=cost,
        service_name=as_id(resource.get("service.name")),
    )


class LastResult:
    """A one-entry memo of ``fn(event)``, by event identity.

    The runner folds each event into every projection in turn, so projections that read the
    same facts off an event share one reading. The entry is one tuple (replaced atomically:
    threads may share a memo) and holds the event (its identity stays valid). Only for pure
    functions of immutable events.
    """

    __slots__ = ("_fn", "_last")

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self._fn = fn
        self._last: tuple[object, Any] = (None, None)

    def __call__(self, event: Any) -> Any:
        """``fn(event)``, from the memo when ``event`` is the last one asked about."""
        last, result = self._last
        if last is event and last is not None:
            return result
        result = self._fn(event)
        self._last = (event, result)
        return result


_span_facts_memo = LastResult(_span_facts)


def span_facts(span: SpanRecorded) -> SpanFacts:
    """The ``SpanFacts`` of a span (read once for consecutive calls with the same span)."""
    facts: SpanFacts = _span_facts_memo(span)
    return facts


def fold_events(
    projections: Iterable[Projection], events: Iterable[tuple[int, LedgerEvent]]
) -> dict[str, list[Row]]:
    """Fold ``(position, event)`` pairs, in order, into fresh in-memory tables (no database).

    Returns:
        ``{table name: rows sorted by key}`` for each projection's table.
    """
    rows = MemoryRows()
    chosen = list(projections)
    for position, event in events:
        for projection in chosen:
            if isinstance(event, projection.consumes):
                projection.fold(event, position, rows)
    return {p.table.name: rows.rows(p.table.name) for p in chosen}
