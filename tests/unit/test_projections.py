"""Projections: pure folds without a database, and the catch-up runner and views on SQLite.

Events are made by the real domain (a ``Ledger`` on in-memory or SQLite persistence) and read
back from its notification log, so the folds see exactly what the projector sees. Expectations
are written out by hand, or come from another path (the domain's own scafld replay, the
aggregates' state, a rebuild from zero, an in-memory fold without the database).
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from domain.base import EventMeta, LedgerEvent, content_sha256
from domain.evidence import replay
from domain.ledger import Command, Ledger, Outcome
from domain.trace import SPAN_FIELDS
from projections import chains, criteria, sessions, tool_calls, traces, workspace_baselines
from projections.base import MemoryRows, Projection, Rows, fold_events
from projections.catalog import NAMES, PROJECTIONS
from projections.db import Database, SQLiteDatabase
from projections.runner import Projector, ProjectorBusyError
from projections.schema import TABLES, decoders
from projections.views import InvalidCursorError, Views, span_tree

pytestmark = pytest.mark.unit

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TRACE_1 = "0af7651916cd43dd8448eb211c80319c"
TRACE_2 = "4bf92f3577b34da6a3ce929d0e0e4736"

# -- helpers shared with tests/integration/test_projections_postgres.py -------------------------


class Writer:
    """Queues commands with deterministic event ids and clocks, and hands them to a ``Ledger``.

    ``at`` is the command's ``occurred_at`` in seconds after ``T0`` (default: its sequence number
    ``n``, plus ``123 * n`` microseconds).
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.count = 0
        self.pending: list[Command] = []

    def add(
        self,
        kind: str,
        external_id: str,
        action: str,
        *,
        at: float | None = None,
        project: str = "default",
        **args: Any,
    ) -> None:
        self.count += 1
        # sub-second clocks by default, so that a lost microsecond shows
        default = timedelta(seconds=self.count, microseconds=123 * self.count)
        occurred = T0 + (timedelta(seconds=at) if at is not None else default)
        meta = EventMeta(
            event_id=f"ev-{self.count}",
            content_sha256=content_sha256([kind, external_id, action, self.count]),
            occurred_at=occurred,
            source="api",
        )
        self.pending.append(Command(kind, external_id, action, meta, args, project))

    def flush(self) -> list[Outcome]:
        outcomes = self.ledger.handle(self.pending)
        self.pending = []
        refused = [(o.command.action, o.error) for o in outcomes if o.status != "created"]
        assert not refused, refused
        return outcomes


def span(
    span_id: str,
    parent_span_id: str | None,
    name: str,
    start: int,
    end: int,
    *,
    status_code: str = "STATUS_CODE_OK",
    attributes: dict[str, Any] | None = None,
    service: str = "claude-code",
) -> dict[str, Any]:
    """A span as the OTLP decoder hands it to the domain (every ``SPAN_FIELDS`` name)."""
    record: dict[str, Any] = dict.fromkeys(SPAN_FIELDS)
    record.update(
        span_id=span_id,
        parent_span_id=parent_span_id,
        trace_state="",
        flags=1,
        name=name,
        kind="SPAN_KIND_INTERNAL",
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        status_code=status_code,
        status_message="",
        attributes=attributes or {},
        resource_attributes={"service.name": service},
        events=[],
        links=[],
        scope={"name": "test", "version": "1", "attributes": {}},
        dropped_attributes_count=0,
        dropped_events_count=0,
        dropped_links_count=0,
        resource_schema_url="",
        scope_schema_url="",
    )
    return record


def log_events(ledger: Ledger, *, after: int = 0) -> list[tuple[int, LedgerEvent]]:
    """Every ``(position, event)`` of the log after ``after``, in log order."""
    found: list[tuple[int, LedgerEvent]] = []
    start = after + 1
    while True:
        page = ledger.recorder.select_notifications(start=start, limit=500)
        if not page:
            return found
        for notification in page:
            event = ledger.mapper.to_domain_event(notification)
            assert isinstance(event, LedgerEvent)
            found.append((notification.id, event))
        start = page[-1].id + 1


def with_sessions_fold(fold: Any) -> list[Any]:
    """The catalog's projections with the ``sessions`` fold replaced (e.g. by one that lets
    another projector interfere mid-page)."""
    return [dataclasses.replace(p, fold=fold) if p.name == "sessions" else p for p in PROJECTIONS]


def dump_tables(db: Database) -> dict[str, list[dict[str, Any]]]:
    """Every row of every read-model table, decoded, sorted by key."""
    dumped: dict[str, list[dict[str, Any]]] = {}
    with db.transaction(readonly=True) as conn:
        for table in TABLES.values():
            cursor = conn.cursor()
            cursor.execute(
                f"SELECT {', '.join(table.column_names)} FROM {table.name} "
                f"ORDER BY {', '.join(table.key)}"
            )
            decode = decoders(table, db.dialect)
            dumped[table.name] = [
                {n: fn(v) for n, fn, v in zip(table.column_names, decode, record, strict=True)}
                for record in cursor.fetchall()
            ]
    return dumped


def positions(db: Database) -> dict[str, int]:
    """``{projection name: tracking position}``."""
    with db.transaction(readonly=True) as conn:
        cursor = conn.cursor()
        cursor.execute("SELECT name, position FROM projection_tracking")
        return {name: int(position) for name, position in cursor.fetchall()}


def check_idle_while_another_holds_the_lock(
    projector: Projector, other: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``other`` (another process's view of the same store) holding ``projector``'s lock,
    a run does no work and says so and a rebuild refuses (``ProjectorBusyError``); once it is
    let go, a run catches up to the log's head."""
    with other.advisory_lock(projector.lock_name) as held:
        assert held
        with caplog.at_level(logging.INFO, logger="runledger.projections"):
            assert projector.run_once() == 0
        assert "another projector holds the lock" in caplog.text
        assert set(positions(projector.db).values()) == {0}
        with pytest.raises(ProjectorBusyError):
            projector.rebuild(["sessions"])
    assert projector.run_once() == projector.application.recorder.max_notification_id()


def write_realistic(writer: Writer, after_batch: Callable[[], None]) -> None:
    """A realistic mix in four batches; ``after_batch`` runs after each one is saved.

    Sessions with tool calls (paired by id, ``latest_unfinished``, orphan), messages, status
    changes, evidence, two baselines; approvals requested and decided; a chain of three stages;
    spans of two traces (a child before its root, an error span, spans linked to sessions by
    different attribute keys); a second project reusing the same ids.
    """
    w = writer
    # batch 1: session s1 starts, calls tools, captures baselines and evidence
    w.add("session", "s1", "start", agent="claude-code", model="claude-opus", cwd="/work/repo")
    w.add("session", "s1", "record_message", role="user", message_kind="prompt", content="hi")
    w.add("session", "s1", "start_tool_call", tool_use_id="tu-1", tool_name="Bash",
          tool_input={"command": "ls"}, tool_input_sha256="aa" * 32)  # fmt: skip
    w.add("session", "s1", "end_tool_call", tool_use_id="tu-1", tool_name="Bash", success=True,
          duration_ms=12.5)  # fmt: skip
    w.add("session", "s1", "start_tool_call", tool_name="Read", tool_input={"p": "a"},
          tool_input_sha256="bb" * 32)  # fmt: skip
    w.add("session", "s1", "start_tool_call", tool_name="Read", tool_input={"p": "b"},
          tool_input_sha256="cc" * 32)  # fmt: skip
    w.add("session", "s1", "capture_workspace_baseline", files=["M  " + "d" * 64 + " a.py"])
    w.add("session", "s1", "record_evidence",
          entry={"id": "e1", "type": "criterion", "criterion_id": "ac1", "status": "fail",
                 "recorded_at": "2026-05-01T12:00:08Z"})  # fmt: skip
    w.add("approval", "ap-1", "request", session_id="s1", tool_use_id="tu-9", tool_name="Bash",
          tool_input={"command": "rm -rf build"}, tool_input_sha256="ee" * 32)  # fmt: skip
    w.flush()
    after_batch()
    # batch 2: pairing without ids, an orphan, a second baseline, a trace (child first), a chain
    w.add("session", "s1", "end_tool_call", tool_name="Read", success=False, error="denied")
    w.add("session", "s1", "end_tool_call", tool_name="Grep", success=True)
    w.add("session", "s1", "capture_workspace_baseline", files=["?? " + "f" * 64 + " b.py"])
    w.add("trace", TRACE_1, "record_span", span=span(
        "b7ad6b7169203331", "00f067aa0ba902b7", "tool Bash", 2_000, 5_000,
        attributes={"session.id": "s1", "gen_ai.usage.input_tokens": 120,
                    "gen_ai.usage.output_tokens": 30, "gen_ai.usage.cost_usd": 0.25}))  # fmt: skip
    w.add("trace", TRACE_1, "record_span", span=span(
        "00f067aa0ba902b7", None, "session", 1_000, 9_000,
        attributes={"runledger.session_id": "s1", "runledger.chain_id": "ch-1",
                    "runledger.stage_id": "st-a", "gen_ai.request.model": "claude-opus"}))  # fmt: skip
    w.add("chain", "ch-1", "create", title="Issue 42", source_type="github_issue")
    w.add("chain", "ch-1", "add_stage", stage_id="st-c", agent_id="sprint-executor", stage_number=3)
    w.add(
        "chain", "ch-1", "add_stage", stage_id="st-a", agent_id="design-doc-creator", stage_number=1
    )
    w.add("chain", "ch-1", "add_stage", stage_id="st-b", agent_id="sprint-planner", stage_number=2)
    w.add("chain", "ch-1", "transition_stage", stage_id="st-a", to_status="running")
    w.add("chain", "ch-1", "link_stage_session", stage_id="st-a", session_id="s1")
    w.add("chain", "ch-1", "record_stage_metrics", stage_id="st-a",
          metrics={"cost_usd": 1.5, "tokens_in": 1000, "tokens_out": 200, "turns": 3,
                   "tool_calls": 4, "duration_ms": 60_000.0})  # fmt: skip
    w.flush()
    after_batch()
    # batch 3: decisions, stage handoff under approval, second session and trace, more evidence
    w.add("approval", "ap-1", "decide", decision="denied", source_decision="deny",
          scope="once", decided_by="reviewer@example.com", comment="not in CI")  # fmt: skip
    w.add("approval", "ap-2", "request", approval_type="handoff", chain_id="ch-1", stage_id="st-a")
    w.add("chain", "ch-1", "transition_stage", stage_id="st-a", to_status="awaiting_approval")
    w.add("chain", "ch-1", "record_stage_approval", stage_id="st-a", approval_status="pending",
          approval_id="ap-2", approval_type="handoff", iteration=1)  # fmt: skip
    w.add("session", "s1", "record_evidence",
          entry={"id": "e2", "type": "criterion", "criterion_id": "ac1", "status": "pass",
                 "recorded_at": "2026-05-01T12:01:00Z", "command": "pytest"})  # fmt: skip
    w.add(
        "session",
        "s1",
        "record_evidence",
        entry={"type": "phase", "phase_id": "build", "recorded_at": "2026-05-01T12:01:01Z"},
    )
    w.add("session", "s2", "start", agent="codex", cwd="/work/other")
    w.add("trace", TRACE_2, "record_span", span=span(
        "53995c3f42cd8ad8", None, "llm call", 10_000, 40_000, status_code="STATUS_CODE_ERROR",
        attributes={"gen_ai.conversation.id": "s2", "gen_ai.usage.input_tokens": 7,
                    "cost_usd": 0.01, "gen_ai.response.model": "gpt-5"}))  # fmt: skip
    w.flush()
    after_batch()
    # batch 4: approval, stage completion, session end, another project with the same ids
    w.add("approval", "ap-2", "decide", decision="approved", source_decision="approved")
    w.add("chain", "ch-1", "record_stage_approval", stage_id="st-a", approval_status="approved")
    w.add("chain", "ch-1", "transition_stage", stage_id="st-a", to_status="completed")
    w.add("chain", "ch-1", "transition_stage", stage_id="st-b", to_status="running")
    w.add("chain", "ch-1", "record_stage_metrics", stage_id="st-b",
          metrics={"cost_usd": 0.5, "tokens_in": 10, "turns": 1})  # fmt: skip
    w.add("session", "s1", "end", reason="prompt_input_exit")
    w.add("session", "s1", "start", project="other", agent="claude-code")
    w.add("trace", TRACE_1, "record_span", project="other",
          span=span("00f067aa0ba902b7", None, "other root", 1, 2))  # fmt: skip
    w.flush()
    after_batch()


# -- folds without a database ------------------------------------------------------------------


@pytest.fixture()
def ledger() -> Ledger:
    return Ledger({"PERSISTENCE_MODULE": "eventsourcing.popo"})


@pytest.fixture()
def writer(ledger: Ledger) -> Writer:
    return Writer(ledger)


def fold(ledger: Ledger, *projections: Projection) -> dict[str, list[dict[str, Any]]]:
    return fold_events(projections, log_events(ledger))


def test_a_criterion_record_takes_its_status_from_the_entry_type_when_it_has_none(
    ledger: Ledger, writer: Writer
) -> None:
    writer.add("session", "s1", "record_evidence",
               entry={"type": "manual_evidence", "criterion_id": "ac1",
                      "recorded_at": "2026-05-01T12:00:00Z", "reason": "screenshot"})  # fmt: skip
    writer.flush()
    (row,) = fold(ledger, criteria.CRITERION_STATES_PROJECTION)["criterion_states"]
    assert criteria.record_of(row) == {
        "status": "manual_evidence",
        "source_id": "manual_evidence",
        "reason": "screenshot",
        "updated_at": "2026-05-01T12:00:00Z",
    }


def test_the_last_entry_per_criterion_wins_and_phase_blocks_come_only_from_phase_entries(
    ledger: Ledger, writer: Writer
) -> None:
    entries = [
        {"id": "1", "type": "criterion", "criterion_id": "ac1", "status": "fail",
         "recorded_at": "2026-05-01T12:00:00Z", "phase_id": "build"},
        {"id": "2", "type": "criterion", "criterion_id": "ac2", "status": "pass",
         "recorded_at": "2026-05-01T12:00:01Z"},
        {"id": "3", "type": "command", "criterion_id": "ac1", "status": "pass", "command": "make",
         "recorded_at": "2026-05-01T12:00:02Z", "exit_code": 0},
        {"id": "4", "type": "phase", "phase_id": "build", "status": "completed",
         "recorded_at": "2026-05-01T12:00:03Z"},
        {"id": "5", "type": "phase", "phase_id": "review", "recorded_at": "2026-05-01T12:00:04Z",
         "criterion_id": "ac3"},
        {"id": "6", "type": "phase", "phase_id": "build", "status": "failed",
         "recorded_at": "2026-05-01T12:00:05Z"},
    ]  # fmt: skip
    for entry in entries:
        writer.add("session", "s1", "record_evidence", entry=entry)
    writer.flush()
    tables = fold(ledger, criteria.CRITERION_STATES_PROJECTION, criteria.PHASE_BLOCKS_PROJECTION)
    states = {r["criterion_id"]: criteria.record_of(r) for r in tables["criterion_states"]}
    blocks = {r["phase_id"]: criteria.record_of(r) for r in tables["phase_blocks"]}

    assert states == {
        "ac1": {"status": "pass", "source_id": "3", "command": "make",
                "updated_at": "2026-05-01T12:00:02Z"},
        "ac2": {"status": "pass", "source_id": "2", "updated_at": "2026-05-01T12:00:01Z"},
        "ac3": {"status": "phase", "source_id": "5", "phase_id": "review",
                "updated_at": "2026-05-01T12:00:04Z"},
    }  # fmt: skip
    # entry 1 names phase "build" but is not a phase entry: no block from it
    assert blocks == {
        "build": {"status": "failed", "source_id": "6", "phase_id": "build",
                  "updated_at": "2026-05-01T12:00:05Z"},
        "review": {"status": "phase", "source_id": "5", "phase_id": "review",
                   "updated_at": "2026-05-01T12:00:04Z"},
    }  # fmt: skip
    # and exactly what scafld's Replay (the domain's port of it) derives from the same entries
    assert (states, blocks) == replay(entries)
    assert {r["criterion_id"]: r["position"] for r in tables["criterion_states"]}["ac1"] == 3


def test_tool_calls_pair_by_id_by_latest_unfinished_and_record_orphans(
    ledger: Ledger, writer: Writer
) -> None:
    writer.add("session", "s1", "start_tool_call", at=10, tool_use_id="tu-1", tool_name="Bash",
               tool_input={}, tool_input_sha256="a" * 64, agent_id="sub-1")  # fmt: skip
    writer.add("session", "s1", "start_tool_call", at=11, tool_name="Read", tool_input={"f": 1},
               tool_input_sha256="b" * 64)  # fmt: skip
    writer.add("session", "s1", "start_tool_call", at=12, tool_name="Read", tool_input={"f": 2},
               tool_input_sha256="c" * 64)  # fmt: skip
    writer.add("session", "s1", "end_tool_call", at=13.5, tool_use_id="tu-1", tool_name="Bash",
               success=True)  # fmt: skip
    writer.add("session", "s1", "end_tool_call", at=20, tool_name="Read", success=False,
               error="EACCES", duration_ms=250.0)  # fmt: skip
    writer.add("session", "s1", "end_tool_call", at=21, tool_name="Grep", success=True)
    writer.flush()
    rows = fold(ledger, tool_calls.PROJECTION)["tool_calls"]
    by_input = {r["tool_input_sha256"]: r for r in rows}
    assert len(rows) == 4

    bash = by_input["a" * 64]
    assert (bash["tool_use_id"], bash["pairing"], bash["success"]) == ("tu-1", "tool_use_id", True)
    assert bash["duration_ms"] == 3500.0  # ended 13.5 s - started 10 s
    assert bash["agent_id"] == "sub-1"
    assert (bash["start_position"], bash["end_position"]) == (2, 5)  # position 1: status change

    # the end without tool_use_id went to the LATEST unfinished Read (input f=2), not the first
    latest = by_input["c" * 64]
    assert latest["pairing"] == "latest_unfinished"
    assert (latest["success"], latest["error"]) == (False, "EACCES")
    assert latest["duration_ms"] == 250.0  # the event's own duration wins over 20 s - 12 s
    first_read = by_input["b" * 64]
    assert first_read["ended_at"] is None and first_read["pairing"] is None
    assert first_read["duration_ms"] is None

    (orphan,) = [r for r in rows if r["pairing"] == "orphan"]
    assert orphan["tool_name"] == "Grep"
    assert orphan["started_at"] is None and orphan["start_position"] is None
    assert orphan["ended_at"] == T0 + timedelta(seconds=21)
    assert orphan["duration_ms"] is None
    assert orphan["first_position"] == orphan["end_position"] == 7


def test_the_first_workspace_baseline_of_a_session_wins(ledger: Ledger, writer: Writer) -> None:
    first = ["M  " + "1" * 64 + " a.py", "?? deleted b.py"]
    writer.add("session", "s1", "capture_workspace_baseline", at=5, files=first,
               archive={"sha256": "9" * 64, "size_bytes": 10, "media_type": "application/gzip"})  # fmt: skip
    writer.add("session", "s1", "capture_workspace_baseline", at=6, files=["M  x c.py"])
    writer.add("session", "s2", "capture_workspace_baseline", at=7, files=[])
    writer.flush()
    rows = fold(ledger, workspace_baselines.PROJECTION)["workspace_baselines"]
    assert [(r["session_id"], r["file_count"], r["position"]) for r in rows] == [
        ("s1", 2, 1),
        ("s2", 0, 3),
    ]
    assert rows[0]["files"] == first
    assert rows[0]["archive_sha256"] == "9" * 64
    assert rows[0]["captured_at"] == T0 + timedelta(seconds=5)


def test_a_chain_summary_orders_its_agent_flow_by_stage_number_and_sums_stage_metrics(
    ledger: Ledger, writer: Writer
) -> None:
    w = writer
    w.add("chain", "ch", "create", at=1, title="Issue 7")
    w.add(
        "chain", "ch", "add_stage", at=2, stage_id="x", agent_id="sprint-executor", stage_number=3
    )
    w.add(
        "chain",
        "ch",
        "add_stage",
        at=3,
        stage_id="y",
        agent_id="design-doc-creator",
        stage_number=1,
    )
    w.add("chain", "ch", "add_stage", at=4, stage_id="z", agent_id="sprint-planner", stage_number=2)
    w.add("chain", "ch", "transition_stage", at=5, stage_id="y", to_status="running")
    w.add("chain", "ch", "record_stage_metrics", at=6, stage_id="y",
          metrics={"cost_usd": 0.75, "tokens_in": 100, "tokens_out": 10, "turns": 2})  # fmt: skip
    w.add("chain", "ch", "transition_stage", at=7, stage_id="y", to_status="awaiting_approval")
    w.add("chain", "ch", "record_stage_approval", at=8, stage_id="y", approval_status="pending",
          approval_type="handoff", human_feedback="tighten scope", iteration=1)  # fmt: skip
    w.add("chain", "ch", "record_stage_approval", at=9, stage_id="y", approval_status="approved")
    w.add("chain", "ch", "transition_stage", at=10, stage_id="y", to_status="completed")
    w.add("chain", "ch", "transition_stage", at=11, stage_id="z", to_status="running")
    w.add("chain", "ch", "record_stage_metrics", at=12, stage_id="z",
          metrics={"cost_usd": 0.5, "tokens_in": 50, "tool_calls": 3, "duration_ms": 1500.5})  # fmt: skip
    w.add("chain", "ch", "record_stage_approval", at=13, stage_id="z", approval_status="pending")
    w.flush()
    tables = fold(ledger, chains.CHAIN_SUMMARIES_PROJECTION, chains.CHAIN_STAGES_PROJECTION)
    (summary,) = tables["chain_summaries"]
    assert summary["agent_flow"] == "design-doc-creator -> sprint-planner -> sprint-executor"
    assert (summary["stage_count"], summary["stages_completed"]) == (3, 1)
    assert (summary["current_stage_id"], summary["current_agent_id"]) == ("z", "sprint-planner")
    assert summary["pending_approvals"] == 1
    assert summary["cost_usd"] == 1.25
    assert (summary["tokens_in"], summary["tokens_out"], summary["turns"]) == (150, 10, 2)
    assert (summary["tool_calls"], summary["duration_ms"]) == (3, 1500.5)
    # awaiting_approval moved the chain to pending_approval, leaving it moved it back
    assert summary["status"] == "active"
    assert summary["created_at"] == T0 + timedelta(seconds=1)
    assert summary["updated_at"] == T0 + timedelta(seconds=13)

    stages = {r["stage_id"]: r for r in tables["chain_stages"]}
    y = stages["y"]
    assert (y["stage_number"], y["status"], y["approval_status"]) == (1, "completed", "approved")
    # a later approval record without type/feedback keeps the earlier ones
    assert (y["approval_type"], y["human_feedback"], y["iteration"]) == (
        "handoff",
        "tighten scope",
        1,
    )
    assert y["started_at"] == T0 + timedelta(seconds=5)
    assert y["completed_at"] == T0 + timedelta(seconds=10)
    assert (y["cost_usd"], y["tokens_in"], y["turns"]) == (0.75, 100, 2)
    assert stages["x"]["status"] == "pending" and stages["x"]["started_at"] is None


def test_a_chain_summarys_derived_fields_are_those_of_its_stage_index_after_every_event(
    ledger: Ledger, writer: Writer
) -> None:
    """The fold recomputes the fields derived from the stage index only after the events that
    can change them; after every event they equal a recomputation from the row itself."""
    w = writer
    write_realistic(w, lambda: None)
    w.add("chain", "ch", "create", title="Issue 8")
    w.add("chain", "ch", "add_stage", stage_id="b", agent_id="sprint-executor", stage_number=2)
    w.add("chain", "ch", "add_stage", stage_id="a", agent_id="design-doc-creator", stage_number=1)
    w.add("chain", "ch", "transition_stage", stage_id="a", to_status="running")
    w.add("chain", "ch", "record_stage_metrics", stage_id="a", metrics={"cost_usd": 0.5})
    w.add("chain", "ch", "link_stage_session", stage_id="a", session_id="s-a")
    w.add("chain", "ch", "transition_stage", stage_id="a", to_status="awaiting_approval")
    w.add("chain", "ch", "record_stage_approval", stage_id="a", approval_status="pending")
    w.add("chain", "ch", "record_stage_approval", stage_id="a", approval_status="approved")
    w.add("chain", "ch", "transition_stage", stage_id="a", to_status="completed")
    w.add("chain", "ch", "transition_stage", stage_id="b", to_status="running")
    w.add("chain", "ch", "change_status", status="failed")
    w.flush()
    rows = MemoryRows()
    folded = 0
    for position, event in log_events(ledger):
        chains.fold_summaries(event, position, rows)
        for row in rows.rows("chain_summaries"):
            rederived = {**row, "stage_index": dict(row["stage_index"])}
            chains._derive(rederived)
            assert rederived == row, (position, type(event).__name__)
        folded += isinstance(event, chains.ChainEvent)
    assert folded >= 12
    summary = rows.get("chain_summaries", ("default", "ch"))
    assert summary is not None
    assert summary["agent_flow"] == "design-doc-creator -> sprint-executor"
    assert (summary["stages_completed"], summary["pending_approvals"]) == (1, 0)
    assert (summary["current_stage_id"], summary["current_agent_id"]) == ("b", "sprint-executor")


def test_a_trace_summary_takes_its_root_when_the_root_arrives_after_a_child(
    ledger: Ledger, writer: Writer
) -> None:
    child = span("b" * 16, "a" * 16, "child", 2_000_000, 3_000_000, status_code="STATUS_CODE_ERROR",
                 service="worker")  # fmt: skip
    writer.add("trace", TRACE_1, "record_span", span=child)
    writer.flush()
    (summary,) = fold(ledger, traces.TRACE_SUMMARIES_PROJECTION)["trace_summaries"]
    assert summary["root_span_id"] is None and summary["root_name"] is None
    assert summary["service_name"] == "worker"

    writer.add("trace", TRACE_1, "record_span",
               span=span("a" * 16, None, "root", 1_000_000, 9_500_000, service="api"))  # fmt: skip
    writer.add("trace", TRACE_1, "record_span",
               span=span("c" * 16, "a" * 16, "late child", 4_000_000, 12_000_000))  # fmt: skip
    writer.flush()
    tables = fold(ledger, traces.TRACE_SUMMARIES_PROJECTION, traces.SPANS_PROJECTION)
    (summary,) = tables["trace_summaries"]
    assert (summary["root_span_id"], summary["root_name"]) == ("a" * 16, "root")
    assert summary["service_name"] == "api"
    assert (summary["span_count"], summary["error_count"]) == (3, 1)
    assert (summary["start_time_unix_nano"], summary["end_time_unix_nano"]) == (
        1_000_000,
        12_000_000,
    )
    assert summary["duration_ms"] == 11.0
    assert (summary["first_position"], summary["last_position"]) == (1, 3)
    spans = {r["span_id"]: r for r in tables["spans"]}
    assert spans["b" * 16]["duration_ms"] == 1.0
    assert spans["a" * 16]["parent_span_id"] is None


def test_sessions_count_events_and_sum_usage_of_linked_spans_even_before_the_session_starts(
    ledger: Ledger, writer: Writer
) -> None:
    w = writer
    w.add("trace", TRACE_1, "record_span", at=1, span=span(
        "1" * 16, None, "llm", 1, 2, attributes={"session.id": "s1",
        "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 5,
        "gen_ai.usage.cost_usd": 0.5}))  # fmt: skip
    w.flush()
    (early,) = fold(ledger, sessions.PROJECTION)["sessions"]
    assert (early["session_id"], early["status"], early["event_count"]) == ("s1", None, 0)
    assert (early["input_tokens"], early["cost_usd"], early["first_position"]) == (100, 0.5, 1)

    w.add("session", "s1", "start", at=2, agent="claude-code", model="opus", cwd="/repo")
    w.add("session", "s1", "record_message", at=3, role="user", message_kind="prompt", content="x")
    w.add("session", "s1", "start_tool_call", at=4, tool_name="Bash", tool_input={},
          tool_input_sha256="0" * 64)  # fmt: skip
    w.add("session", "s1", "end_tool_call", at=5, tool_name="Bash", success=False)
    w.add("session", "s1", "end_tool_call", at=6, tool_name="Edit", success=True)  # orphan
    w.add("session", "s1", "change_status", at=7, status="waiting_input")
    w.add("session", "s1", "end", at=8, reason="other")
    w.add("trace", TRACE_2, "record_span", at=9, span=span(
        "2" * 16, None, "llm", 1, 2, attributes={"gen_ai.usage.input_tokens": "7",
        "gen_ai.usage.output_tokens": 1.0, "cost_usd": 0.25, "gen_ai.usage.cost_usd": None}) |
        {"resource_attributes": {"gen_ai.conversation.id": "s1"}})  # fmt: skip
    w.add("trace", TRACE_2, "record_span", at=10, span=span(
        "3" * 16, None, "unlinked", 1, 2, attributes={"gen_ai.usage.input_tokens": 1000}))  # fmt: skip
    w.flush()
    (row,) = fold(ledger, sessions.PROJECTION)["sessions"]
    assert (row["status"], row["agent"], row["model"], row["workspace"]) == (
        "completed",
        "claude-code",
        "opus",
        "/repo",
    )
    # start, message, tool start, tool end, orphan end, status change, end
    assert row["event_count"] == 7
    assert (row["message_count"], row["tool_call_count"], row["tool_error_count"]) == (1, 2, 1)
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == (107, 6, 0.75)
    assert row["started_at"] == T0 + timedelta(seconds=2)
    assert (row["ended_at"], row["end_reason"]) == (T0 + timedelta(seconds=8), "other")
    assert (row["first_position"], row["last_position"]) == (1, 9)
    assert row["last_event_at"] == T0 + timedelta(seconds=9)


def test_a_resumed_session_is_running_without_an_end_until_it_ends_again(
    ledger: Ledger, writer: Writer
) -> None:
    # Claude Code `claude --resume`: SessionStart (source resume) on a session that had ended.
    w = writer
    w.add("session", "s1", "start", at=1, start_source="startup")
    w.add("session", "s1", "end", at=2, reason="prompt_input_exit")
    w.flush()
    (ended,) = fold(ledger, sessions.PROJECTION)["sessions"]
    assert (ended["status"], ended["ended_at"]) == ("completed", T0 + timedelta(seconds=2))

    w.add("session", "s1", "start", at=3, start_source="resume")
    w.flush()
    (resumed,) = fold(ledger, sessions.PROJECTION)["sessions"]
    assert (resumed["status"], resumed["ended_at"], resumed["end_reason"]) == (
        "running",
        None,
        None,
    )
    assert resumed["started_at"] == T0 + timedelta(seconds=1)  # the first start
    stream = ledger.load("session", "s1").state()
    assert (stream["status"], stream["ended_at"]) == ("running", None)

    w.add("session", "s1", "end", at=4, reason="other")
    w.flush()
    (again,) = fold(ledger, sessions.PROJECTION)["sessions"]
    assert (again["status"], again["ended_at"], again["end_reason"]) == (
        "completed",
        T0 + timedelta(seconds=4),
        "other",
    )


def test_an_approval_moves_from_pending_to_its_decision_with_its_latency(
    ledger: Ledger, writer: Writer
) -> None:
    from projections import approvals

    writer.add("approval", "ap", "request", at=10, session_id="s1", tool_use_id="tu-1",
               tool_name="Bash", tool_input={"c": "x"}, tool_input_sha256="f" * 64)  # fmt: skip
    writer.flush()
    (pending,) = fold(ledger, approvals.PROJECTION)["approvals"]
    assert (pending["status"], pending["decided_at"], pending["latency_ms"]) == (
        "pending",
        None,
        None,
    )
    writer.add("approval", "ap", "decide", at=12.25, decision="approved", source_decision="allow",
               scope="always", decided_by="ops", comment="fine")  # fmt: skip
    writer.flush()
    (row,) = fold(ledger, approvals.PROJECTION)["approvals"]
    assert (row["status"], row["decision"], row["source_decision"]) == (
        "approved",
        "approved",
        "allow",
    )
    assert (row["scope"], row["decided_by"], row["comment"]) == ("always", "ops", "fine")
    assert row["latency_ms"] == 2250.0
    assert (row["tool_use_id"], row["tool_input_sha256"]) == ("tu-1", "f" * 64)


def test_folds_never_mutate_the_rows_they_read(ledger: Ledger, writer: Writer) -> None:
    write_realistic(writer, lambda: None)
    events = log_events(ledger)

    class FrozenRows(MemoryRows):
        def get(self, table: str, key: tuple[str, ...]) -> dict[str, Any] | None:
            row = super().get(table, key)
            return None if row is None else _ReadOnlyDict(row)

    rows: Rows = FrozenRows()
    for position, event in events:
        for projection in PROJECTIONS:
            if isinstance(event, projection.consumes):
                projection.fold(event, position, rows)


class _ReadOnlyDict(dict[str, Any]):
    def __init__(self, source: dict[str, Any]) -> None:
        super().__init__(
            {k: _ReadOnlyDict(v) if isinstance(v, dict) else v for k, v in source.items()}
        )

    def __setitem__(self, key: str, value: Any) -> None:
        raise AssertionError(f"fold mutated a row it read ({key})")

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("fold mutated a row it read")


def test_a_span_whose_parent_is_missing_or_in_a_cycle_is_a_root_of_the_tree() -> None:
    nodes = [
        {"span_id": "r", "parent_span_id": None, "start_time_unix_nano": 5},
        {"span_id": "c2", "parent_span_id": "r", "start_time_unix_nano": 9},
        {"span_id": "c1", "parent_span_id": "r", "start_time_unix_nano": 7},
        {"span_id": "lost", "parent_span_id": "gone", "start_time_unix_nano": 1},
        {"span_id": "x", "parent_span_id": "y", "start_time_unix_nano": 20},
        {"span_id": "y", "parent_span_id": "x", "start_time_unix_nano": 21},
    ]
    tree = span_tree(nodes)
    assert [n["span_id"] for n in tree] == ["lost", "r", "x"]
    assert [c["span_id"] for c in tree[1]["children"]] == ["c1", "c2"]
    assert [c["span_id"] for c in tree[2]["children"]] == ["y"]
    assert tree[2]["children"][0]["children"] == []


# -- the runner and the views on SQLite ----------------------------------------------------------


@pytest.fixture()
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "runledger.sqlite"


@pytest.fixture()
def sqlite_ledger(sqlite_path: Path) -> Ledger:
    return Ledger({"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(sqlite_path)})


@pytest.fixture()
def sqlite_db(sqlite_path: Path) -> Iterator[SQLiteDatabase]:
    db = SQLiteDatabase(sqlite_path)
    yield db
    db.close()


def test_incremental_projection_equals_a_rebuild_row_for_row_on_sqlite(
    sqlite_ledger: Ledger, sqlite_db: SQLiteDatabase
) -> None:
    projector = Projector(sqlite_ledger, sqlite_db, page_size=4)
    projector.create_tables()
    projector.create_tables()  # idempotent
    processed: list[int] = []
    write_realistic(Writer(sqlite_ledger), lambda: processed.append(projector.run_once()))
    head = sqlite_ledger.recorder.max_notification_id()
    assert sum(processed) == head and all(processed)
    incremental = dump_tables(sqlite_db)
    assert all(incremental[name] for name in TABLES), "the scenario fills every table"

    assert projector.rebuild(progress=None) == head
    rebuilt = dump_tables(sqlite_db)
    assert rebuilt == incremental
    # and both equal folding the whole log in memory, without the database in between
    in_memory = fold_events(PROJECTIONS, log_events(sqlite_ledger))
    assert incremental == in_memory
    assert positions(sqlite_db) == dict.fromkeys(NAMES, head)


def test_an_event_whose_occurred_at_has_no_utc_instant_is_folded_at_the_nearest_one(
    sqlite_ledger: Ledger, sqlite_db: SQLiteDatabase
) -> None:
    # The API refuses such timestamps now; a log written before may hold them, and one of them
    # once stopped every projection for good (OverflowError on the way to UTC, on each retry).
    projector = Projector(sqlite_ledger, sqlite_db)
    projector.create_tables()
    early = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))
    late = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14)))
    for number, occurred in enumerate((early, late)):
        meta = EventMeta(f"ev-{number}", content_sha256(number), occurred, "api")
        (outcome,) = sqlite_ledger.handle([Command("session", f"s{number}", "start", meta, {})])
        assert outcome.status == "created", outcome.error

    assert projector.run_once() == 2
    views = Views(sqlite_db)
    first, second = views.get_session("default", "s0"), views.get_session("default", "s1")
    assert first is not None and second is not None
    assert first["started_at"].startswith("0001-01-01T00:00:00")
    assert second["started_at"].startswith("9999-12-31T23:59:59.999999")


def test_a_start_arriving_after_its_orphan_end_pairs_the_call_live_and_after_a_rebuild(
    sqlite_ledger: Ledger, sqlite_db: SQLiteDatabase
) -> None:
    projector = Projector(sqlite_ledger, sqlite_db)
    projector.create_tables()
    writer = Writer(sqlite_ledger)
    writer.add("session", "s1", "start", at=0, agent="claude-code")
    writer.add("session", "s1", "end_tool_call", at=12, tool_use_id="tu1", tool_name="Bash",
               success=True)  # fmt: skip
    writer.flush()
    projector.run_once()  # the live projector sees the end alone: an orphan, for now
    [orphan] = Views(sqlite_db).list_tool_calls("default", "s1")["items"]
    assert (orphan["pairing"], orphan["start_position"]) == ("orphan", None)
    writer.add("session", "s1", "start_tool_call", at=10, tool_use_id="tu1", tool_name="Bash",
               tool_input={}, tool_input_sha256="a" * 64)  # fmt: skip
    writer.flush()
    projector.run_once()
    for when in ("live", "rebuilt"):
        views = Views(sqlite_db)
        [call] = views.list_tool_calls("default", "s1")["items"]
        assert call["pairing"] == "tool_use_id", when
        assert (call["start_position"], call["end_position"]) == (3, 2), when
        assert call["duration_ms"] == 2000.0, when  # ended 12 s - started 10 s
        # one call, as the aggregate counts it
        session = sqlite_ledger.load("session", "s1")
        assert views.get_session("default", "s1")["tool_call_count"] == 1, when  # type: ignore[index]
        assert session.state()["tool_call_count"] == 1
        projector.rebuild()


def test_the_realistic_mix_projects_to_the_expected_rows(
    sqlite_ledger: Ledger, sqlite_db: SQLiteDatabase
) -> None:
    projector = Projector(sqlite_ledger, sqlite_db, page_size=3)
    projector.create_tables()
    write_realistic(Writer(sqlite_ledger), lambda: None)
    projector.run_once()
    views = Views(sqlite_db)

    s1 = views.get_session("default", "s1")
    assert s1 is not None
    session_events = sqlite_ledger.history("session", "s1")
    assert s1["event_count"] == len(session_events)
    assert (s1["status"], s1["end_reason"]) == ("completed", "prompt_input_exit")
    # tu-1, two Reads, the Grep orphan
    assert (s1["tool_call_count"], s1["tool_error_count"], s1["message_count"]) == (4, 1, 1)
    assert (s1["input_tokens"], s1["output_tokens"], s1["cost_usd"]) == (120, 30, 0.25)
    assert s1["started_at"] == "2026-05-01T12:00:01.000123+00:00"
    s2 = views.get_session("default", "s2")
    assert s2 is not None and (s2["input_tokens"], s2["cost_usd"]) == (7, 0.01)
    assert views.get_session("other", "s1")["event_count"] == 1  # type: ignore[index]
    assert views.get_session("default", "nope") is None

    criteria_view = views.get_criteria("default", "s1")
    state = sqlite_ledger.load("session", "s1").state()
    assert criteria_view == {
        "criterion_states": state["criterion_states"],
        "phase_blocks": state["phase_blocks"],
    }
    assert criteria_view["criterion_states"]["ac1"]["status"] == "pass"

    chain = views.get_chain("default", "ch-1")
    assert chain is not None
    assert chain["agent_flow"] == "design-doc-creator -> sprint-planner -> sprint-executor"
    assert [s["stage_id"] for s in chain["stages"]] == ["st-a", "st-b", "st-c"]
    assert (chain["cost_usd"], chain["tokens_in"], chain["turns"]) == (2.0, 1010, 4)
    assert (chain["stages_completed"], chain["pending_approvals"]) == (1, 0)
    assert (chain["current_stage_id"], chain["current_agent_id"]) == ("st-b", "sprint-planner")
    assert "stage_index" not in chain

    approvals = views.list_approvals("default")["items"]
    assert [(a["approval_id"], a["status"]) for a in approvals] == [
        ("ap-2", "approved"),
        ("ap-1", "denied"),
    ]
    assert views.list_approvals("default", status="pending")["items"] == []
    assert [
        a["approval_id"] for a in views.list_approvals("default", session_id="s1")["items"]
    ] == ["ap-1"]

    trace = views.get_trace("default", TRACE_1)
    assert trace is not None
    assert (trace["root_span_id"], trace["span_count"]) == ("00f067aa0ba902b7", 2)
    (root,) = trace["spans"]
    assert [c["span_id"] for c in root["children"]] == ["b7ad6b7169203331"]
    assert (root["chain_id"], root["stage_id"], root["model"]) == ("ch-1", "st-a", "claude-opus")
    assert [t["trace_id"] for t in views.list_traces("default", session_id="s2")["items"]] == [
        TRACE_2
    ]
    assert [t["trace_id"] for t in views.list_traces("default")["items"]] == [TRACE_2, TRACE_1]
    spans = views.list_spans("default", session_id="s1")["items"]
    assert [s["span_id"] for s in spans] == ["b7ad6b7169203331", "00f067aa0ba902b7"]

    calls = views.list_tool_calls("default", "s1")["items"]
    assert [c["pairing"] for c in calls] == ["tool_use_id", None, "latest_unfinished", "orphan"]
    assert views.list_chains("default", status="active")["items"][0]["chain_id"] == "ch-1"
    baseline = dump_tables(sqlite_db)["workspace_baselines"]
    assert [(b["project"], b["session_id"], b["files"][0][:3]) for b in baseline] == [
        ("default", "s1", "M  ")
    ]


def test_cursor_pages_walk_every_item_once_newest_first(
    sqlite_ledger: Ledger, sqlite_db: SQLiteDatabase
) -> None:
    writer = Writer(sqlite_ledger)
    for i in range(7):
        writer.add("session", f"s{i}", "start", agent="a")
        writer.flush()  # one save each: positions follow i
    projector = Projector(sqlite_ledger, sqlite_db)
    projector.create_tables()
    projector.run_once()
    views = Views(sqlite_db)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = views.list_sessions("default", limit=3, cursor=cursor)
        seen += [item["session_id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"s{i}" for i in reversed(range(7))]
    assert pages == 3
    assert len(views.list_sessions("default", limit=0)["items"]) == 1  # clamped to 1
    assert len(views.list_sessions("default", limit=10**9)["items"]) == 7
    assert views.list_sessions("default", status="completed")["items"] == []


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64 !",
        base64.urlsafe_b64encode(b"not json").decode(),
        base64.urlsafe_b64encode(json.dumps({"k": "chains", "v": [1, "x"]}).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps({"k": "sessions", "v": ["1", "x"]}).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps({"k": "sessions", "v": [1]}).encode()).decode(),
        base64.urlsafe_b64encode(json.dumps([1, "x"]).encode()).decode(),
        # values no store can bind: beyond signed 64 bits, a lone surrogate; and JSON nested
        # beyond the recursion limit
        base64.urlsafe_b64encode(
            json.dumps({"k": "sessions", "v": [2**63, "x"]}).encode()
        ).decode(),
        base64.urlsafe_b64encode(
            json.dumps({"k": "sessions", "v": [-(2**63) - 1, "x"]}).encode()
        ).decode(),
        base64.urlsafe_b64encode(b'{"k":"sessions","v":[1,"\\ud800"]}').decode(),
        base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode(),
    ],
)
def test_a_malformed_or_foreign_cursor_is_an_invalid_cursor_error(
    sqlite_db: SQLiteDatabase, sqlite_ledger: Ledger, cursor: str
) -> None:
    Projector(sqlite_ledger, sqlite_db).create_tables()
    with pytest.raises(InvalidCursorError):
        Views(sqlite_db).list_sessions("default", cursor=cursor)
    assert issubclass(InvalidCursorError, ValueError)


def test_rebuilding_one_projection_leaves_the_others_positions_and_rows_alone(
    sqlite_ledger: Ledger, sqlite_db: SQLiteDatabase
) -> None:
    projector = Projector(sqlite_ledger, sqlite_db, page_size=5)
    projector.create_tables()
    writer = Writer(sqlite_ledger)
    write_realistic(writer, lambda: None)
    projector.run_once()
    before = dump_tables(sqlite_db)
    head = sqlite_ledger.recorder.max_notification_id()
    # new events that only the rebuilt projection will see during the rebuild
    writer.add("session", "s9", "start", agent="late")
    writer.flush()
    seen: list[tuple[int, int]] = []
    assert (
        projector.rebuild(["sessions"], progress=lambda done, total: seen.append((done, total)))
        == head + 1
    )
    after = dump_tables(sqlite_db)
    tracked = positions(sqlite_db)
    assert tracked["sessions"] == head + 1
    assert all(tracked[name] == head for name in NAMES if name != "sessions")
    assert {name: rows for name, rows in after.items() if name != "sessions"} == {
        name: rows for name, rows in before.items() if name != "sessions"
    }
    assert [r["session_id"] for r in after["sessions"] if r["project"] == "default"] == [
        "s1",
        "s2",
        "s9",
    ]
    assert seen[0] == (0, head + 1) and seen[-1] == (head + 1, head + 1)
    status = {s["name"]: s for s in projector.status()}
    assert status["sessions"]["lag"] == 0
    assert (status["spans"]["position"], status["spans"]["head"], status["spans"]["lag"]) == (
        head,
        head + 1,
        1,
    )
    with pytest.raises(KeyError, match="unknown projection 'nope'"):
        projector.rebuild(["nope"])


@pytest.mark.parametrize(
    ("batch_size", "boundary"),
    [
        (5, 20),  # one write per page: the fourth page is the last committed
        (10, 20),  # two pages per write
        (15, 15),  # three pages per write: pages four and five were not written yet
        (20_000, 0),  # the whole log in one write: nothing was committed
    ],
)
def test_a_failing_fold_leaves_rows_and_positions_at_the_last_write_boundary(
    sqlite_ledger: Ledger, sqlite_db: SQLiteDatabase, batch_size: int, boundary: int
) -> None:
    write_realistic(Writer(sqlite_ledger), lambda: None)
    head = sqlite_ledger.recorder.max_notification_id()
    page_size = 5
    fail_at = 4 * page_size + 3  # the third event of the fifth page
    assert head > fail_at + page_size
    calls: list[int] = []

    def exploding(event: LedgerEvent, position: int, rows: Rows) -> None:
        calls.append(position)
        if position == fail_at:
            raise RuntimeError("fold bug")
        sessions.fold(event, position, rows)

    broken = [
        dataclasses.replace(p, fold=exploding, consumes=(LedgerEvent,))
        if p.name == "sessions"
        else p
        for p in PROJECTIONS
    ]
    crashing = Projector(
        sqlite_ledger, sqlite_db, projections=broken, page_size=page_size, batch_size=batch_size
    )
    crashing.create_tables()
    with pytest.raises(RuntimeError, match="fold bug"):
        crashing.run_once()
    assert positions(sqlite_db) == dict.fromkeys(NAMES, boundary)
    expected = fold_events(PROJECTIONS, log_events(sqlite_ledger)[:boundary])
    assert dump_tables(sqlite_db) == {name: expected.get(name, []) for name in TABLES}

    restarted = Projector(sqlite_ledger, sqlite_db, page_size=page_size, batch_size=batch_size)
    assert restarted.run_once() == head - boundary
    incremental = dump_tables(sqlite_db)
    assert incremental == fold_events(PROJECTIONS, log_events(sqlite_ledger))
    restarted.rebuild()
    assert dump_tables(sqlite_db) == incremental


def test_a_page_another_projector_committed_first_is_not_folded_twice(
    sqlite_ledger: Ledger, sqlite_path: Path
) -> None:
    write_realistic(Writer(sqlite_ledger), lambda: None)
    first_db, second_db = SQLiteDatabase(sqlite_path), SQLiteDatabase(sqlite_path)
    # a lock of another name: the tracking check alone keeps the page from being doubled
    second = Projector(sqlite_ledger, second_db, page_size=1000, lock_name="elsewhere")
    interfered: list[bool] = []

    def interfering(event: LedgerEvent, position: int, rows: Rows) -> None:
        if not interfered:  # mid-page, the other projector folds and commits the same events
            interfered.append(True)
            assert second.run_once() > 0
        sessions.fold(event, position, rows)

    first = Projector(
        sqlite_ledger,
        first_db,
        projections=with_sessions_fold(interfering),
        page_size=1000,
    )
    first.create_tables()
    assert first.run_once() == 0  # its page was refused, read again, and found folded
    incremental = dump_tables(first_db)
    first.rebuild()
    assert dump_tables(first_db) == incremental
    s1 = next(
        r for r in incremental["sessions"] if r["session_id"] == "s1" and r["project"] == "default"
    )
    assert s1["event_count"] == len(sqlite_ledger.history("session", "s1"))
    first_db.close()
    second_db.close()


def test_run_forever_catches_up_and_stops_when_told(
    sqlite_ledger: Ledger, sqlite_db: SQLiteDatabase
) -> None:
    projector = Projector(sqlite_ledger, sqlite_db, page_size=2)
    projector.create_tables()
    stop = threading.Event()
    thread = threading.Thread(target=projector.run_forever, args=(stop, 0.01))
    thread.start()
    try:
        write_realistic(Writer(sqlite_ledger), lambda: None)
        head = sqlite_ledger.recorder.max_notification_id()
        deadline = datetime.now(UTC) + timedelta(seconds=20)
        while any(s["lag"] for s in projector.status()) and datetime.now(UTC) < deadline:
            stop.wait(0.02)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert [s["position"] for s in projector.status()] == [head] * len(NAMES)
    assert projector.last_error is None


class _HandWake:
    """A ``Wake`` the test signals itself (what a writer's commit does in a deployment)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def signal(self) -> None:
        self._event.set()

    def wait(self, timeout_s: float) -> bool:
        woken = self._event.wait(timeout_s)
        self._event.clear()
        return woken


def test_run_forever_under_load_folds_at_most_every_min_interval_and_at_once_after_idle(
    sqlite_ledger: Ledger, sqlite_db: SQLiteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    min_interval_s = 0.6
    projector = Projector(sqlite_ledger, sqlite_db)
    projector.create_tables()
    runs: list[tuple[float, int]] = []  # (started, events folded)
    run_locked = projector._run_locked

    def recorded(chosen: Any, *, max_pages: int | None) -> int | None:
        started = time.monotonic()
        processed = run_locked(chosen, max_pages=max_pages)
        runs.append((started, processed or 0))
        return processed

    monkeypatch.setattr(projector, "_run_locked", recorded)
    wake, stop, writer = _HandWake(), threading.Event(), Writer(sqlite_ledger)

    def commit(number: int) -> None:
        writer.add("session", "s-load", "record_message", role="user", message_kind="prompt",
                   content=f"m{number}")  # fmt: skip
        writer.flush()
        wake.signal()

    def projected() -> bool:
        return not any(s["lag"] for s in projector.status())

    thread = threading.Thread(
        target=projector.run_forever,
        args=(stop, 30.0, wake),
        kwargs={"min_interval_s": min_interval_s},
    )
    thread.start()
    try:
        writer.add("session", "s-load", "start", agent="claude-code")
        writer.flush()
        wake.signal()
        time.sleep(min_interval_s + 0.3)  # folded, and idle since
        assert projected()
        # after an idle spell, a commit is folded at once, not a min_interval later
        committed = time.monotonic()
        commit(0)
        while not projected() and time.monotonic() - committed < 5:
            time.sleep(0.005)
        assert time.monotonic() - committed < min_interval_s * 2 / 3
        # a commit every 20 ms for 2 s: runs start at most every min_interval
        loaded = time.monotonic()
        for number in range(1, 101):
            commit(number)
            time.sleep(0.02)
        load_runs = [(t, n) for t, n in runs if t >= loaded]
        deadline = time.monotonic() + 10
        while not projected() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        wake.signal()
        thread.join(10)
    assert not thread.is_alive() and projector.last_error is None
    assert projected()
    busy = [(t, n) for t, n in load_runs if n]
    assert len(busy) >= 2, load_runs
    for (started, folded), (after, _) in itertools.pairwise(runs):
        if folded and started >= loaded:
            assert after - started >= min_interval_s - 0.01, (started, after)
    # 101 commits folded by few runs (a run per commit would be ~100)
    assert len(busy) <= 2 / min_interval_s + 2, busy


# -- batches, the row cache and the write path ---------------------------------------------------


@pytest.mark.parametrize(
    ("page_size", "batch_size", "cache_rows"),
    [
        (1, 1, 0),  # one write per event, nothing kept between writes
        (3, 7, 2),  # several pages per write, the cache trimmed after every write
        (4, 20_000, 200_000),  # the defaults, small pages
        (1000, 20_000, 200_000),  # the defaults
    ],
)
def test_batches_and_the_row_cache_project_the_rows_an_in_memory_fold_gives(
    sqlite_ledger: Ledger,
    sqlite_db: SQLiteDatabase,
    page_size: int,
    batch_size: int,
    cache_rows: int,
) -> None:
    projector = Projector(
        sqlite_ledger,
        sqlite_db,
        page_size=page_size,
        batch_size=batch_size,
        cache_rows=cache_rows,
    )
    projector.create_tables()
    writer = Writer(sqlite_ledger)
    write_realistic(writer, lambda: projector.run_once() and None)
    write_many(writer)
    projector.run_once()
    expected = fold_events(PROJECTIONS, log_events(sqlite_ledger))
    assert dump_tables(sqlite_db) == expected
    head = sqlite_ledger.recorder.max_notification_id()
    seen: list[tuple[int, int]] = []
    assert projector.rebuild(progress=lambda done, total: seen.append((done, total))) == head
    assert dump_tables(sqlite_db) == expected
    assert seen[-1] == (head, head) and [done for done, _ in seen] == sorted(
        done for done, _ in seen
    )


def test_the_row_cache_reads_dropped_rows_one_by_one_until_a_page_wants_many(
    sqlite_ledger: Ledger, sqlite_db: SQLiteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from projections import runner
    from projections.schema import SESSIONS

    Projector(sqlite_ledger, sqlite_db).create_tables()
    name = SESSIONS.name
    cache = runner._RowCache(
        sqlite_db, {name: SESSIONS}, complete={name}, retain={name}, max_rows=10
    )
    keys = [("default", f"s{i:02d}") for i in range(30)]
    for key in keys:
        row = SESSIONS.blank(key)
        row["status"] = f"status of {key[1]}"
        cache.put(name, key, row)
    with sqlite_db.transaction() as conn:
        runner._write_rows(conn, sqlite_db.dialect, {name: SESSIONS}, cache.take())
    cache.written()  # trims to 7 rows: the first 23 (least recently used) are dropped
    reads: list[int] = []
    read = runner._RowCache._read
    monkeypatch.setattr(
        runner._RowCache,
        "_read",
        lambda self, wanted: reads.extend(len(keys) for _, keys, _ in wanted) or read(self, wanted),
    )
    never_written = ("default", "never")
    assert cache.get(name, never_written) is None and reads == []  # complete: no read

    cache.start_page()
    assert not cache.needs_reads(name)  # nothing dropped was wanted yet: no bulk pass
    for key in keys[:9]:  # a page wants 9 dropped rows: read one by one, as they were
        row = cache.get(name, key)
        assert row is not None and row["status"] == f"status of {key[1]}"
    assert reads == [1] * 9

    cache.start_page()
    assert cache.needs_reads(name)  # 9 > BULK_AFTER_WANTED: this page's are read in bulk
    cache.fetch({name: [*keys[9:12], keys[0], never_written]})
    assert reads[9:] == [3]  # only the dropped ones not cached; never_written has no row
    assert cache.get(name, keys[10]) is not None and reads[9:] == [3]

    cache.start_page()
    assert not cache.needs_reads(name)  # 3 wanted by the last page: one by one again


def write_many(writer: Writer, sessions_count: int = 4, calls: int = 12) -> None:
    """Sessions whose rows every page touches, tool calls that span pages, repeated evidence."""
    for i in range(calls):
        for s in range(sessions_count):
            sid = f"many-{s}"
            writer.add("session", sid, "start_tool_call", tool_use_id=f"c{i}", tool_name="Bash",
                       tool_input={"i": i}, tool_input_sha256=f"{i:064x}")  # fmt: skip
            if i:
                writer.add("session", sid, "end_tool_call", tool_use_id=f"c{i - 1}",
                           tool_name="Bash", success=i % 3 != 0)  # fmt: skip
            writer.add("session", sid, "record_evidence",
                       entry={"type": "criterion", "criterion_id": f"ac{i % 3}",
                              "status": "pass" if i % 2 else "fail",
                              "recorded_at": f"2026-05-01T12:00:{i:02d}Z"})  # fmt: skip
            writer.add("trace", f"{s + 7:032x}", "record_span", span=span(
                f"{i + 1:016x}", None if i == 0 else f"{1:016x}", f"op {i}", i, i + 5,
                attributes={"session.id": sid, "gen_ai.usage.input_tokens": i}))  # fmt: skip
        writer.flush()


def counting_fold(event: LedgerEvent, position: int, rows: Rows) -> None:
    """Counts each session's evidence entries in one ``criterion_states`` row, reading the row
    back although the projection announces no reads (``reads`` is ``no_reads``)."""
    from domain.session import EvidenceRecorded
    from projections.schema import CRITERION_STATES

    if not isinstance(event, EvidenceRecorded):
        return
    key = (event.project, event.external_id, "count")
    existing = rows.get(CRITERION_STATES.name, key)
    row = dict(existing) if existing is not None else CRITERION_STATES.blank(key)
    row["reason"] = str(int(row["reason"] or 0) + 1)
    row["command"] = f"{row['command'] or ''}{position},"
    row["position"] = position
    rows.put(CRITERION_STATES.name, key, row)


COUNTING = dataclasses.replace(criteria.CRITERION_STATES_PROJECTION, fold=counting_fold)


def test_a_fold_reading_a_table_it_does_not_announce_reads_its_latest_rows(
    sqlite_ledger: Ledger, sqlite_db: SQLiteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from projections import runner

    # rows of such tables are encoded two at a time: gets find them put, encoded, or written
    monkeypatch.setattr(runner._RowCache, "ENCODE_CHUNK", 2)
    Projector(sqlite_ledger, sqlite_db).create_tables()
    writer = Writer(sqlite_ledger)
    write_many(writer, sessions_count=2, calls=9)
    expected = fold_events([COUNTING], log_events(sqlite_ledger))["criterion_states"]
    assert [r["reason"] for r in expected] == ["9", "9"]
    projector = Projector(
        sqlite_ledger, sqlite_db, projections=[COUNTING], page_size=3, batch_size=7
    )
    projector.run_once()
    assert dump_tables(sqlite_db)["criterion_states"] == expected
    projector.rebuild()
    assert dump_tables(sqlite_db)["criterion_states"] == expected


def test_a_batch_another_projector_moved_past_is_folded_again_from_the_database(
    sqlite_ledger: Ledger, sqlite_path: Path
) -> None:
    writer = Writer(sqlite_ledger)
    write_realistic(writer, lambda: None)
    write_many(writer)
    first_db, second_db = SQLiteDatabase(sqlite_path), SQLiteDatabase(sqlite_path)
    # a lock of another name: the tracking check alone keeps the batch from being doubled
    second = Projector(sqlite_ledger, second_db, page_size=5, batch_size=5, lock_name="elsewhere")
    interfered: list[int] = []

    def interfering(event: LedgerEvent, position: int, rows: Rows) -> None:
        if position > 12 and not interfered:  # the first projector wrote 10 already
            # the other projector writes past this batch: this one's write is refused and its
            # cached rows (which miss what the other folded) must not be used again
            interfered.append(second.run_once(max_pages=4))
        sessions.fold(event, position, rows)

    first = Projector(
        sqlite_ledger,
        first_db,
        projections=with_sessions_fold(interfering),
        page_size=5,
        batch_size=10,
    )
    first.create_tables()
    head = sqlite_ledger.recorder.max_notification_id()
    assert first.run_once() == head - 20  # 10 of its own, then from the other's 20
    assert interfered == [20]
    assert dump_tables(first_db) == fold_events(PROJECTIONS, log_events(sqlite_ledger))
    first_db.close()
    second_db.close()


def test_a_run_reads_no_row_the_last_run_kept_unless_another_projector_wrote_since(
    sqlite_ledger: Ledger, sqlite_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from projections import runner
    from projections.schema import SESSIONS

    reads: list[str] = []  # the tables of the rows read from the database, one entry per read
    read = runner._RowCache._read
    monkeypatch.setattr(
        runner._RowCache,
        "_read",
        lambda self, wanted: reads.extend(t for t, _, _ in wanted) or read(self, wanted),
    )
    first_db, second_db = SQLiteDatabase(sqlite_path), SQLiteDatabase(sqlite_path)
    first, second = Projector(sqlite_ledger, first_db), Projector(sqlite_ledger, second_db)
    first.create_tables()
    writer = Writer(sqlite_ledger)

    def message_each(sessions: tuple[str, ...]) -> None:
        for sid in sessions:
            writer.add("session", sid, "record_message", role="user", message_kind="text",
                       content=f"to {sid}")  # fmt: skip
        writer.flush()

    def session_reads(projector: Projector) -> int:
        reads.clear()
        assert projector.run_once() > 0
        return reads.count(SESSIONS.name)

    message_each(("k1", "k2"))
    assert session_reads(second) == 0  # the tables were empty: nothing to read
    message_each(("k1", "k2"))
    assert session_reads(first) == 1  # its first run: the rows are in the database only
    message_each(("k1", "k2"))
    assert session_reads(first) == 0  # kept from its last run, nobody wrote since
    message_each(("k1", "k3"))
    assert session_reads(first) == 1  # k3 is not kept (and k1 is not read again)
    message_each(("k1", "k2"))
    assert session_reads(second) == 1  # the other projector folds this one
    message_each(("k1", "k2"))
    assert session_reads(first) == 1  # positions moved: what it kept is dropped, read again
    assert dump_tables(first_db) == fold_events(PROJECTIONS, log_events(sqlite_ledger))
    k1 = next(r for r in dump_tables(first_db)["sessions"] if r["session_id"] == "k1")
    assert k1["event_count"] == len(sqlite_ledger.history("session", "k1"))
    first_db.close()
    second_db.close()


def test_a_run_that_fails_leaves_nothing_kept_for_the_next_run(
    sqlite_ledger: Ledger, sqlite_db: SQLiteDatabase
) -> None:
    explode_at: list[int] = []

    def exploding(event: LedgerEvent, position: int, rows: Rows) -> None:
        sessions.fold(event, position, rows)  # folded into the cache first, then the failure
        if position in explode_at:
            raise RuntimeError("fold bug")

    projector = Projector(sqlite_ledger, sqlite_db, projections=with_sessions_fold(exploding))
    projector.create_tables()
    writer = Writer(sqlite_ledger)

    def message_each() -> None:
        for sid in ("f1", "f2", "f1"):
            writer.add("session", sid, "record_message", role="user", message_kind="text",
                       content=sid)  # fmt: skip
        writer.flush()

    message_each()
    projector.run_once()
    message_each()
    explode_at.append(sqlite_ledger.recorder.max_notification_id())  # the page's last event
    with pytest.raises(RuntimeError, match="fold bug"):
        projector.run_once()
    explode_at.clear()
    projector.run_once()  # from the last committed position, on rows read again
    assert dump_tables(sqlite_db) == fold_events(PROJECTIONS, log_events(sqlite_ledger))


def test_a_run_keeps_at_most_keep_rows_rows_for_the_next_and_reads_the_others(
    sqlite_ledger: Ledger, sqlite_db: SQLiteDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    from projections import runner
    from projections.schema import SESSIONS

    read_keys: list[tuple[str, ...]] = []
    read = runner._RowCache._read
    monkeypatch.setattr(
        runner._RowCache,
        "_read",
        lambda self, wanted: (
            read_keys.extend(k for t, keys, _ in wanted if t == SESSIONS.name for k in keys)
            or read(self, wanted)
        ),
    )
    projector = Projector(sqlite_ledger, sqlite_db, keep_rows=3)
    projector.create_tables()
    writer = Writer(sqlite_ledger)
    sessions_ = [f"n{i}" for i in range(6)]
    for round_ in range(3):
        for sid in sessions_:  # n0 first: the least recently used once a round is folded
            writer.add("session", sid, "record_message", role="user", message_kind="text",
                       content=f"round {round_}")  # fmt: skip
        writer.flush()
        read_keys.clear()
        projector.run_once()
        assert projector._kept is not None
        kept = projector._kept[1]._rows[SESSIONS.name]
        assert len(kept) <= 3
        if round_ == 2:  # only the rows not kept (the 3 least recently used) were read again
            assert sorted(key[1] for key in read_keys) == sessions_[:3]
    assert dump_tables(sqlite_db) == fold_events(PROJECTIONS, log_events(sqlite_ledger))


def _encoder_cases() -> list[tuple[str, list[Any]]]:
    from datetime import timezone

    naive = datetime(2026, 5, 1, 12, 0, 0, 5)
    plus2 = datetime(2026, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    return [
        ("text", ["a", None, "", "x\x00y", 12, "ü"]),
        ("text", ["plain", None, "strings"]),
        ("bigint", [1, None, -(2**63)]),
        ("bigint", [1, 2**63, None, True, 3.7]),
        ("double", [1.5, None, float("nan")]),
        ("double", [1.5, 2, None, True]),
        ("bool", [True, None, False]),
        ("bool", [True, 1, 0, None]),
        ("timestamp", [T0, None, T0 + timedelta(microseconds=1)]),
        ("timestamp", [T0, naive, plus2, None]),
        ("timestamp", [plus2, T0]),
        ("json", [{}, [], None, {"a": [1, 2.5, None]}, {"x": "annulled"}]),
        ("json", [{"nan": float("nan")}, {"t": "a\x00b"}, {"big": 2**70}, [1e16, -0.0]]),
        ("json", [{1: "a"}, {"d": T0}, ("a", "b")]),
    ]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_whole_rows_encode_to_what_the_per_value_encoders_give(dialect: str) -> None:
    from projections.schema import Column, ColumnType, Table, encoders, row_encoder

    for kind, values in _encoder_cases():
        table = Table(
            f"t_{kind}",
            (Column("project", ColumnType.TEXT), Column("v", ColumnType(kind))),
            key=("project",),
        )
        rows = [{"project": f"p{i}", "v": v} for i, v in enumerate(values)]
        per_value = [
            tuple(
                fn(row[name])
                for name, fn in zip(table.column_names, encoders(table, dialect), strict=True)
            )
            for row in rows
        ]
        encoded = row_encoder(table, dialect)(rows)
        if kind == "json":  # the same JSON value (orjson and the stdlib may space numbers apart)
            assert [None if v is None else json.loads(v) for _, v in encoded] == [
                None if v is None else json.loads(v) for _, v in per_value
            ]
        elif dialect == "sqlite":  # what SQLite stores (it binds a bool as the integer 1 or 0)
            assert stored_by_sqlite(encoded) == stored_by_sqlite(per_value), (kind, values)
        else:
            assert [(type(v), repr(v)) for _, v in encoded] == [
                (type(v), repr(v)) for _, v in per_value
            ], (kind, values)


def stored_by_sqlite(params: list[tuple[Any, ...]]) -> list[tuple[Any, str]]:
    import sqlite3

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k TEXT, v)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", params)
    found = conn.execute("SELECT v, typeof(v) FROM t ORDER BY rowid").fetchall()
    conn.close()
    return [(repr(v), kind) for v, kind in found]
