"""The read queries the HTTP API answers from: plain SQL over the read models.

Consumes no events: reads the tables the projections wrote (``projections.schema``). Every
method is scoped to one ``project`` and returns plain JSON-able values: datetimes as ISO 8601 UTC
strings (``2026-05-01T12:00:00.000000+00:00``), ``*_unix_nano`` as integer nanoseconds since the
Unix epoch, ``duration_ms``/``latency_ms`` as milliseconds, ``cost_usd`` in USD, JSON columns as
their values.

Lists are pages ``{"items": [...], "next_cursor": str | None}`` with keyset pagination: the
cursor is an opaque URL-safe base64 string holding the last item's sort key; pass it back to get
the next page (None: no more items). ``limit`` is clamped to 1..1000. A cursor that was not made
by the same listing raises ``InvalidCursorError`` (a ``ValueError``; the API answers 400).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from projections.criteria import record_of
from projections.db import Database, render
from projections.schema import (
    APPROVALS,
    CHAIN_STAGES,
    CHAIN_SUMMARIES,
    CRITERION_STATES,
    INT64_MAX,
    INT64_MIN,
    PHASE_BLOCKS,
    SESSIONS,
    SPANS,
    TOOL_CALLS,
    TRACE_SUMMARIES,
    Table,
    clean_text,
    decoders,
    iso,
)

MAX_LIMIT = 1000

Page = dict[str, Any]


class InvalidCursorError(ValueError):
    """A pagination cursor that cannot be decoded, or belongs to another listing."""


def clamp_limit(limit: int) -> int:
    """``limit`` limited to 1..``MAX_LIMIT``."""
    return max(1, min(int(limit), MAX_LIMIT))


def encode_cursor(listing: str, values: Sequence[Any]) -> str:
    """An opaque cursor for ``listing`` after the item whose sort key is ``values``."""
    raw = json.dumps({"k": listing, "v": list(values)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, listing: str, types: Sequence[type]) -> list[Any]:
    """The sort key a cursor holds, every value checked to be one a query can bind.

    Args:
        cursor: what ``encode_cursor`` made.
        listing: the listing it must belong to.
        types: the expected type of each sort-key value (``int`` or ``str``).

    Returns:
        The values, each of its type: an ``int`` within signed 64 bits (both stores' integer
        columns), a ``str`` encodable as UTF-8 (no lone surrogate).

    Raises:
        InvalidCursorError: not base64/JSON (or JSON too deeply nested to parse), another
            listing's, or a key of the wrong shape or out of those ranges.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        decoded = json.loads(raw)
    except (binascii.Error, ValueError, TypeError, RecursionError) as error:
        # RecursionError: JSON nested deeper than the interpreter's recursion limit.
        raise InvalidCursorError(f"malformed cursor: {error}") from None
    if not isinstance(decoded, dict) or decoded.get("k") != listing:
        raise InvalidCursorError(f"the cursor does not belong to the {listing} listing")
    values = decoded.get("v")
    if (
        not isinstance(values, list)
        or len(values) != len(types)
        or not all(_bindable(v, t) for v, t in zip(values, types, strict=True))
    ):
        raise InvalidCursorError(f"the cursor does not hold a {listing} sort key")
    return values


def _bindable(value: Any, expected: type) -> bool:
    """Whether ``value`` is exactly of type ``expected`` and a value SQLite and PostgreSQL
    accept as a parameter: an int within signed 64 bits (SQLite raises ``OverflowError`` on a
    larger one), a str without lone surrogates (both drivers encode text as UTF-8)."""
    if type(value) is not expected:  # exactly: a bool is no int here
        return False
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
    return True


def _json_value(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


class Views:
    """The read models, as the HTTP API shows them.

    Args:
        db: the database the projector writes (same dialect rules).
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- sessions ------------------------------------------------------------------------------

    def list_sessions(
        self, project: str, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """Sessions, newest first (by the position of their first event).

        Args:
            project: the tenant.
            status: only sessions in this status (``projections.sessions.STATUSES``, HumanLayer
                vocabulary: ``running``, ``waiting_input``, ``completed``...).
            limit: page size (clamped to 1..1000).
            cursor: ``next_cursor`` of the previous page.

        Returns:
            ``{"items": [session...], "next_cursor"}``; a session is ``get_session``'s dict.

        Raises:
            InvalidCursorError: a malformed cursor.
        """
        where, params = _equalities(project=project, status=status)
        return self._page(
            SESSIONS, "sessions", where, params, ("first_position", "session_id"), (int, str),
            descending=True, limit=limit, cursor=cursor,
        )  # fmt: skip

    def get_session(self, project: str, session_id: str) -> dict[str, Any] | None:
        """One session's row, or None.

        Returns:
            ``{"project", "session_id", "status", "agent", "model", "workspace", "started_at",
            "ended_at", "end_reason", "event_count", "message_count", "tool_call_count",
            "tool_error_count", "cost_usd", "input_tokens", "output_tokens", "first_position",
            "last_position", "last_event_at"}`` (see ``projections.sessions``).
        """
        return self._one(SESSIONS, (project, session_id))

    def list_tool_calls(
        self, project: str, session_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> Page:
        """A session's tool calls in start order (an orphan end, which has no start, at the
        position of its end).

        Returns:
            ``{"items": [{"tool_use_id", "tool_name", "started_at", "ended_at", "duration_ms",
            "success", "pairing", "error", "agent_id", "start_position", "end_position", ...}],
            "next_cursor"}``.

        Raises:
            InvalidCursorError: a malformed cursor.
        """
        return self._page(
            TOOL_CALLS, "tool_calls", ["project = ?", "session_id = ?"], [project, session_id],
            ("first_position", "tool_use_id"), (int, str), descending=False, limit=limit, cursor=cursor,
        )  # fmt: skip

    def get_criteria(self, project: str, session_id: str) -> dict[str, dict[str, dict[str, str]]]:
        """A session's scafld acceptance state (scafld ``Replay``, ``model.go``).

        Returns:
            ``{"criterion_states": {criterion_id: record}, "phase_blocks": {phase_id: record}}``,
            each record a scafld ``StateRecord`` (``status``, ``source_id``, and whichever of
            ``reason``, ``updated_at``, ``command``, ``expected_kind``, ``criterion_type``,
            ``phase_id``, ``evidence_digest``, ``evidence_actor`` are non-empty). Both maps are
            empty for an unknown session.
        """
        result: dict[str, dict[str, dict[str, str]]] = {}
        with self.db.transaction(readonly=True) as conn:
            for table, id_column in (
                (CRITERION_STATES, "criterion_id"),
                (PHASE_BLOCKS, "phase_id"),
            ):
                rows = self._select(
                    conn, table, ["project = ?", "session_id = ?"], [project, session_id], id_column
                )
                result[table.name] = {str(row[id_column]): record_of(row) for row in rows}
        return result

    # -- approvals -----------------------------------------------------------------------------

    def list_approvals(
        self,
        project: str,
        *,
        status: str | None = None,
        session_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Approvals, newest request first.

        Args:
            status: ``pending`` (the queue), ``approved`` or ``denied``.
            session_id: only approvals requested for this session.

        Returns:
            ``{"items": [{"approval_id", "status", "approval_type", "session_id", "tool_use_id",
            "tool_name", "tool_input_sha256", "chain_id", "stage_id", "requested_by",
            "requested_at", "decided_at", "decision", "source_decision", "scope", "decided_by",
            "comment", "latency_ms", ...}], "next_cursor"}``.

        Raises:
            InvalidCursorError: a malformed cursor.
        """
        where, params = _equalities(project=project, status=status, session_id=session_id)
        return self._page(
            APPROVALS, "approvals", where, params, ("first_position", "approval_id"), (int, str),
            descending=True, limit=limit, cursor=cursor,
        )  # fmt: skip

    # -- chains --------------------------------------------------------------------------------

    def list_chains(
        self, project: str, *, status: str | None = None, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """Execution chains' summaries, newest first.

        Args:
            status: ``active``, ``pending_approval``, ``completed`` or ``failed`` (AILANG;
                ``projections.chains.STATUSES``).

        Returns:
            ``{"items": [summary...], "next_cursor"}``; a summary is ``get_chain``'s dict without
            ``stages``.

        Raises:
            InvalidCursorError: a malformed cursor.
        """
        where, params = _equalities(project=project, status=status)
        return self._page(
            CHAIN_SUMMARIES, "chains", where, params, ("first_position", "chain_id"), (int, str),
            descending=True, limit=limit, cursor=cursor,
        )  # fmt: skip

    def get_chain(self, project: str, chain_id: str) -> dict[str, Any] | None:
        """A chain's summary and its stages, or None.

        Returns:
            ``{"chain_id", "title", "status", "current_stage_id", "current_agent_id",
            "stage_count", "stages_completed", "cost_usd", "tokens_in", "tokens_out", "turns",
            "tool_calls", "duration_ms", "agent_flow", "pending_approvals", "created_at",
            "updated_at", ..., "stages": [stage...]}`` with stages in ``stage_number`` order
            (see ``projections.chains``).
        """
        with self.db.transaction(readonly=True) as conn:
            found = self._select(
                conn,
                CHAIN_SUMMARIES,
                ["project = ?", "chain_id = ?"],
                [project, chain_id],
                "chain_id",
            )
            if not found:
                return None
            stages = self._select(
                conn, CHAIN_STAGES, ["project = ?", "chain_id = ?"], [project, chain_id],
                "stage_number, stage_id",
            )  # fmt: skip
        chain = found[0]
        chain["stages"] = stages
        return chain

    # -- traces --------------------------------------------------------------------------------

    def list_traces(
        self,
        project: str,
        *,
        limit: int = 50,
        cursor: str | None = None,
        session_id: str | None = None,
    ) -> Page:
        """Trace summaries, newest first (by the position of their first span).

        Args:
            session_id: only traces with at least one span linked to this session.

        Returns:
            ``{"items": [{"trace_id", "root_span_id", "root_name", "service_name", "session_id",
            "span_count", "error_count", "start_time_unix_nano", "end_time_unix_nano",
            "duration_ms", ...}], "next_cursor"}``.

        Raises:
            InvalidCursorError: a malformed cursor.
        """
        where, params = _equalities(project=project)
        if session_id is not None:
            where.append(
                "EXISTS (SELECT 1 FROM spans s WHERE s.project = trace_summaries.project "
                "AND s.session_id = ? AND s.trace_id = trace_summaries.trace_id)"
            )
            params.append(session_id)
        return self._page(
            TRACE_SUMMARIES, "traces", where, params, ("first_position", "trace_id"), (int, str),
            descending=True, limit=limit, cursor=cursor,
        )  # fmt: skip

    def get_trace(self, project: str, trace_id: str) -> dict[str, Any] | None:
        """A trace's summary and its span tree, or None.

        Returns:
            The summary (as in ``list_traces``) plus ``"spans"``: the root spans, each span a
            dict of its OTel columns (``span_id``, ``parent_span_id``, ``name``, ``kind``,
            ``start_time_unix_nano``, ``end_time_unix_nano``, ``duration_ms``, ``status_code``,
            ``attributes``, ``resource_attributes``, ``events``, ``links``, ``scope``...) with
            ``"children"``: its child spans, all lists sorted by start time. A span whose parent
            was not recorded is a root too (so is a span caught in a parent cycle).
        """
        with self.db.transaction(readonly=True) as conn:
            found = self._select(
                conn,
                TRACE_SUMMARIES,
                ["project = ?", "trace_id = ?"],
                [project, trace_id],
                "trace_id",
            )
            if not found:
                return None
            spans = self._select(
                conn, SPANS, ["project = ?", "trace_id = ?"], [project, trace_id],
                "start_time_unix_nano, span_id",
            )  # fmt: skip
        trace = found[0]
        trace["spans"] = span_tree(spans)
        return trace

    def list_spans(
        self,
        project: str,
        *,
        trace_id: str | None = None,
        session_id: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page:
        """Spans in log order (the position of each span's event), flat.

        Args:
            trace_id: only this trace's spans.
            session_id: only spans linked to this session.

        Returns:
            ``{"items": [span...], "next_cursor"}`` (spans as in ``get_trace``, without
            ``children``).

        Raises:
            InvalidCursorError: a malformed cursor.
        """
        where, params = _equalities(project=project, trace_id=trace_id, session_id=session_id)
        return self._page(
            SPANS, "spans", where, params, ("position",), (int,),
            descending=False, limit=limit, cursor=cursor,
        )  # fmt: skip

    # -- helpers -------------------------------------------------------------------------------

    def _one(self, table: Table, key: tuple[str, ...]) -> dict[str, Any] | None:
        where = [f"{column} = ?" for column in table.key]
        with self.db.transaction(readonly=True) as conn:
            found = self._select(conn, table, where, list(key), ", ".join(table.key))
        return found[0] if found else None

    def _select(
        self,
        conn: Any,
        table: Table,
        where: list[str],
        params: list[Any],
        order_by: str,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        columns = table.public_columns
        sql = f"SELECT {', '.join(columns)} FROM {table.name} WHERE {' AND '.join(where)} ORDER BY {order_by}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        # Text is stored without NUL characters (``clean_text``); a value holding one is looked
        # up as it was stored (PostgreSQL would refuse it as a parameter).
        params = [clean_text(p) if isinstance(p, str) else p for p in params]
        cursor = conn.cursor()
        cursor.execute(render(sql, self.db.dialect), params)
        decode = decoders(table, self.db.dialect, columns)
        return [
            {
                name: _json_value(fn(value))
                for name, fn, value in zip(columns, decode, record, strict=True)
            }
            for record in cursor.fetchall()
        ]

    def _page(
        self,
        table: Table,
        listing: str,
        where: list[str],
        params: list[Any],
        sort: tuple[str, ...],
        types: tuple[type, ...],
        *,
        descending: bool,
        limit: int,
        cursor: str | None,
    ) -> Page:
        size = clamp_limit(limit)
        where, params = list(where), list(params)
        if cursor:  # None or "" (an empty ?cursor=): the first page
            after = decode_cursor(cursor, listing, types)
            where.append(
                f"({', '.join(sort)}) {'<' if descending else '>'} ({', '.join('?' * len(sort))})"
            )
            params.extend(after)
        direction = " DESC" if descending else ""
        order_by = ", ".join(f"{column}{direction}" for column in sort)
        with self.db.transaction(readonly=True) as conn:
            items = self._select(conn, table, where, params, order_by, limit=size + 1)
        next_cursor = None
        if len(items) > size:
            items = items[:size]
            next_cursor = encode_cursor(listing, [items[-1][column] for column in sort])
        return {"items": items, "next_cursor": next_cursor}


def span_tree(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nest spans under their parents.

    Args:
        spans: span dicts (``span_id``, ``parent_span_id``, ``start_time_unix_nano``), in any order.

    Returns:
        The roots, each span with ``"children"``; every list sorted by ``start_time_unix_nano``
        (then ``span_id``). Roots are spans without a parent, spans whose parent is not among
        ``spans``, and, to break a parent cycle, the earliest span of each cycle. Built without
        recursion (traces may be deep).
    """
    nodes = {span["span_id"]: {**span, "children": []} for span in spans}

    def order(node: dict[str, Any]) -> tuple[bool, int, str]:
        start = node.get("start_time_unix_nano")
        return (start is None, start if isinstance(start, int) else 0, str(node["span_id"]))

    roots: list[dict[str, Any]] = []
    for node in nodes.values():
        parent_id = node.get("parent_span_id")
        parent = nodes.get(parent_id) if parent_id and parent_id != node["span_id"] else None
        if parent is None:
            roots.append(node)
        else:
            parent["children"].append(node)
    # Spans in a parent cycle are reachable from no root: promote the earliest of each cycle.
    reached: set[str] = set()
    stack = list(roots)
    while True:
        while stack:
            node = stack.pop()
            reached.add(node["span_id"])
            stack.extend(node["children"])
        stranded = [n for n in nodes.values() if n["span_id"] not in reached]
        if not stranded:
            break
        first = min(stranded, key=order)
        parent = nodes[first["parent_span_id"]]
        parent["children"] = [c for c in parent["children"] if c is not first]
        roots.append(first)
        stack.append(first)
    for node in nodes.values():
        node["children"].sort(key=order)
    roots.sort(key=order)
    return roots


def _equalities(**columns: Any) -> tuple[list[str], list[Any]]:
    """``["<column> = ?", ...]`` and their parameters, for the columns given a value (not None).

    Column names are the keyword names (code, never input).
    """
    given = {column: value for column, value in columns.items() if value is not None}
    return [f"{column} = ?" for column in given], list(given.values())
