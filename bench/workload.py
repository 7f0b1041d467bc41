"""Realistic mixed typed events for the benchmarks, deterministic from a seed.

One *agent run* is what an orchestrator, Claude Code's hooks and scafld post for one sprint
stage set: a session (start, user/assistant messages, tool calls started/ended with realistic
inputs and outputs, scafld criterion and phase evidence, the end), two tool approvals (requested,
decided), and a chain (created, three stages added, moved through their status machine, one of
them via ``awaiting_approval``, a session link and stage metrics). Sizes follow the real Claude
Code captures in ``tests/fixtures/claude-code-hooks`` (tool input ~140 bytes, tool response
~1.1 kB median, a few kB at most).

Runs are interleaved into batches (each stream's events keep their order; a stream never spans
two batches, so batches may be posted concurrently). ``Batch.log_events`` counts the events the
log gains when the whole batch is created: the typed events plus the status changes the domain
implies (a stage entering and leaving ``awaiting_approval`` moves the chain to
``pending_approval`` and back).
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import TypeAdapter

from api.schemas import TypedEvent
from domain.ledger import Command

_WORDS = (
    "the test suite passes after the refactor of module parser and the fixture loader now reads "
    "every case from disk config value returned error retry request session tool call file line "
    "function class import build deploy check review approve merge branch commit diff patch "
    "update create delete list read write edit grep search result output status pending done"
).split()
_TOOLS = ("Bash", "Read", "Edit", "Grep", "Write", "Glob")
_AGENTS = ("design-doc-creator", "sprint-planner", "sprint-executor")
_START = datetime(2026, 2, 14, 9, 0, tzinfo=UTC)

_typed_event: TypeAdapter[Any] = TypeAdapter(TypedEvent)


@dataclass
class Batch:
    """Events to post together.

    Attributes:
        events: typed event bodies (JSON-ready dicts), each with an explicit ``event_id``.
        log_events: events the log gains when all of them are created (implied ones included).
    """

    events: list[dict[str, Any]]
    log_events: int

    def body(self) -> bytes:
        """The ``POST /v1/events`` body ``{"events": [...]}``."""
        return orjson.dumps({"events": self.events})


class _Run:
    """Builds the streams of one agent run; ``streams`` maps a stream to its [(event, implied)]."""

    def __init__(self, rng: random.Random, run_id: str) -> None:
        self.rng = rng
        self.run_id = run_id
        self.clock = _START + timedelta(seconds=rng.randrange(0, 86_400 * 30))
        self.streams: dict[str, list[tuple[dict[str, Any], int]]] = {}
        self.counter = 0

    def text(self, low: int, high: int) -> str:
        size = self.rng.randint(low, high)
        words: list[str] = []
        length = 0
        while length < size:
            word = self.rng.choice(_WORDS)
            words.append(word)
            length += len(word) + 1
        return " ".join(words)[:size]

    def token(self, size: int) -> str:
        return "".join(self.rng.choices(string.ascii_letters + string.digits, k=size))

    def add(self, stream: str, event: dict[str, Any], implied: int = 0) -> None:
        self.counter += 1
        self.clock += timedelta(milliseconds=self.rng.randint(20, 4000))
        event["event_id"] = f"{self.run_id}-{self.counter}"
        event["occurred_at"] = self.clock.isoformat().replace("+00:00", "Z")
        self.streams.setdefault(stream, []).append((event, implied))


def _tool_input(run: _Run, tool: str, cwd: str) -> dict[str, Any]:
    if tool == "Bash":
        return {"command": f"cd {cwd} && {run.text(30, 140)}", "description": run.text(10, 50)}
    if tool in ("Read", "Write"):
        path = f"{cwd}/src/{run.token(8)}.py"
        return (
            {"file_path": path}
            if tool == "Read"
            else {"file_path": path, "content": run.text(80, 600)}
        )
    if tool == "Edit":
        return {
            "file_path": f"{cwd}/src/{run.token(8)}.py",
            "old_string": run.text(20, 120),
            "new_string": run.text(20, 160),
        }
    return {"pattern": run.text(5, 30), "path": cwd}


def _tool_response(run: _Run, tool: str) -> dict[str, Any]:
    if tool == "Bash":
        return {
            "stdout": run.text(200, 3000),
            "stderr": "",
            "interrupted": False,
            "isImage": False,
        }
    if tool == "Read":
        return {"type": "text", "file": {"content": run.text(300, 3500), "numLines": 80}}
    return {"success": True, "message": run.text(40, 400)}


def agent_run(rng: random.Random, run_id: str, *, tool_calls: int = 10) -> _Run:
    """One agent run's streams (see the module docstring): ~50 events over 4 streams."""
    run = _Run(rng, run_id)
    session_id = f"{run_id}-session"
    chain_id = f"{run_id}-chain"
    session = f"session:{session_id}"
    chain = f"chain:{chain_id}"
    cwd = f"/home/dev/work/{run.token(6)}"
    model = rng.choice(("claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5"))

    run.add(session, {
        "type": "session.started", "session_id": session_id, "agent": "claude-code",
        "model": model, "cwd": cwd, "start_source": "startup",
        "attributes": {"permission_mode": "acceptEdits",
                       "transcript_path": f"/home/dev/.claude/projects/{session_id}.jsonl"},
    })  # fmt: skip
    run.add(chain, {
        "type": "chain.created", "chain_id": chain_id, "title": run.text(20, 80),
        "source_type": "github_issue", "github_repo": "acme/runledger",
        "github_issue_number": rng.randint(1, 5000), "workspace": cwd,
    })  # fmt: skip
    for number, (stage, agent) in enumerate(
        zip(("design", "plan", "execute"), _AGENTS, strict=True), 1
    ):
        run.add(chain, {
            "type": "chain.stage_added", "chain_id": chain_id, "stage_id": stage,
            "agent_id": agent, "stage_number": number, "provider": "anthropic",
        })  # fmt: skip
    run.add(chain, {"type": "chain.stage_transitioned", "chain_id": chain_id,
                    "stage_id": "design", "to_status": "running"})  # fmt: skip
    run.add(chain, {"type": "chain.stage_session_linked", "chain_id": chain_id,
                    "stage_id": "design", "session_id": session_id})  # fmt: skip
    run.add(session, {"type": "session.message_recorded", "session_id": session_id,
                      "role": "user", "content": run.text(80, 600)})  # fmt: skip

    approvals_at = set(rng.sample(range(tool_calls), 2))
    for call in range(tool_calls):
        tool = rng.choice(_TOOLS)
        tool_use_id = f"toolu_01{run.token(22)}"
        tool_input = _tool_input(run, tool, cwd)
        run.add(session, {
            "type": "session.tool_call_started", "session_id": session_id, "tool_name": tool,
            "tool_use_id": tool_use_id, "tool_input": tool_input,
        })  # fmt: skip
        if call in approvals_at:
            approval_id = f"{run_id}-approval-{call}"
            run.add(f"approval:{approval_id}", {
                "type": "approval.requested", "approval_id": approval_id, "session_id": session_id,
                "tool_use_id": tool_use_id, "tool_name": tool, "tool_input": tool_input,
                "requested_by": "claude-code",
            })  # fmt: skip
            run.add(f"approval:{approval_id}", {
                "type": "approval.decided", "approval_id": approval_id,
                "decision": rng.choice(("approve", "allow", "deny")), "decided_by": "alice",
                "comment": run.text(0, 60) or None,
            })  # fmt: skip
        run.add(session, {
            "type": "session.tool_call_ended", "session_id": session_id, "tool_name": tool,
            "tool_use_id": tool_use_id, "success": rng.random() > 0.05,
            "tool_response": _tool_response(run, tool),
            "duration_ms": round(rng.uniform(5, 9000), 1),
        })  # fmt: skip
        if call % 3 == 2:
            run.add(session, {"type": "session.message_recorded", "session_id": session_id,
                              "role": "assistant", "content": run.text(100, 1500)})  # fmt: skip

    for index in range(4):
        recorded = (run.clock + timedelta(seconds=index)).isoformat().replace("+00:00", "Z")
        entry: dict[str, Any] = {"id": f"e{index}", "recorded_at": recorded}
        if index == 3:
            entry.update(type="phase", phase_id="phase1", status="pass", reason=run.text(10, 60))
        else:
            entry.update(
                type="criterion", criterion_id=f"ac{index + 1}",
                status=rng.choice(("pass", "pass", "fail")), command="pytest -q",
                expected_kind="exit_code_zero", exit_code=0, output=run.text(50, 400),
            )  # fmt: skip
        run.add(session, {"type": "session.evidence_recorded", "session_id": session_id,
                          "entry": entry})  # fmt: skip

    run.add(chain, {
        "type": "chain.stage_metrics_recorded", "chain_id": chain_id, "stage_id": "design",
        "metrics": {"cost_usd": round(rng.uniform(0.01, 2.0), 4), "tokens_in": rng.randint(500, 90_000),
                    "tokens_out": rng.randint(100, 9000), "turns": rng.randint(1, 40),
                    "tool_calls": tool_calls, "duration_ms": rng.randint(1000, 900_000)},
        "model": model, "cost_provenance": "metered",
    })  # fmt: skip
    moves = [("design", "completed", 0), ("plan", "running", 0), ("plan", "awaiting_approval", 1),
             ("plan", "completed", 1), ("execute", "running", 0), ("execute", "completed", 0)]  # fmt: skip
    for stage, status, implied in moves:
        run.add(chain, {"type": "chain.stage_transitioned", "chain_id": chain_id,
                        "stage_id": stage, "to_status": status}, implied)  # fmt: skip
    run.add(session, {"type": "session.ended", "session_id": session_id, "reason": "other"})
    return run


def long_session(session_id: str, events: int, *, seed: int = 5) -> list[dict[str, Any]]:
    """One session stream of exactly ``events`` typed events, each appending exactly one event.

    A start, then tool calls (started/ended), assistant messages every third call and a scafld
    criterion entry every fifth; ``event_id`` ``<session_id>-<n>``.
    """
    rng = random.Random(seed)
    run = _Run(rng, session_id)
    stream = f"session:{session_id}"
    cwd = "/home/dev/work/long"
    run.add(stream, {"type": "session.started", "session_id": session_id, "agent": "claude-code",
                     "model": "claude-sonnet-4-5", "cwd": cwd})  # fmt: skip
    call = 0
    while run.counter < events:  # bounded: each pass adds at least one event
        call += 1
        tool = rng.choice(_TOOLS)
        tool_use_id = f"toolu_01{run.token(22)}"
        run.add(stream, {"type": "session.tool_call_started", "session_id": session_id,
                         "tool_name": tool, "tool_use_id": tool_use_id,
                         "tool_input": _tool_input(run, tool, cwd)})  # fmt: skip
        run.add(stream, {"type": "session.tool_call_ended", "session_id": session_id,
                         "tool_name": tool, "tool_use_id": tool_use_id, "success": True,
                         "tool_response": _tool_response(run, tool),
                         "duration_ms": round(rng.uniform(5, 9000), 1)})  # fmt: skip
        if call % 3 == 0:
            run.add(stream, {"type": "session.message_recorded", "session_id": session_id,
                             "role": "assistant", "content": run.text(100, 1500)})  # fmt: skip
        if call % 5 == 0:
            recorded = run.clock.isoformat().replace("+00:00", "Z")
            run.add(stream, {"type": "session.evidence_recorded", "session_id": session_id,
                             "entry": {"id": f"e{call}", "type": "criterion",
                                       "criterion_id": f"ac{call % 7}", "status": "pass",
                                       "recorded_at": recorded, "command": "pytest -q"}})  # fmt: skip
    return [event for event, _ in run.streams[stream][:events]]


def mixed_batches(
    batches: int, *, batch_size: int = 1000, seed: int = 3, prefix: str = "b"
) -> Iterator[Batch]:
    """``batches`` batches of exactly ``batch_size`` interleaved agent-run events.

    Each batch holds whole runs (~20 per 1,000 events, ~80 streams) plus a prefix of one more
    (a prefix of a stream is a valid stream). Ids start with ``prefix``: use a fresh prefix per
    round so that no two rounds share a stream.
    """
    rng = random.Random(seed)
    for number in range(batches):
        runs: list[_Run] = []
        total = 0
        while total < batch_size:
            run = agent_run(rng, f"{prefix}{number}r{len(runs)}")
            runs.append(run)
            total += run.counter
        queues = [list(reversed(q)) for run in runs for q in run.streams.values()]
        picked: list[tuple[dict[str, Any], int]] = []
        while len(picked) < batch_size:  # bounded: total >= batch_size events are queued
            queue = rng.choice([q for q in queues if q])
            picked.append(queue.pop())
        yield Batch(
            events=[event for event, _ in picked],
            log_events=sum(1 + implied for _, implied in picked),
        )


def to_commands(events: list[dict[str, Any]], project: str = "default") -> list[Command]:
    """Validate typed events as the API does and map them to domain commands."""
    return [_typed_event.validate_python(event).to_command(project) for event in events]


def copy_rows(events: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """``(event_id, stream, type, payload JSON)`` rows of ``events`` for the COPY reference."""
    rows = []
    for event in events:
        kind = event["type"].split(".", 1)[0]
        key = {"session": "session_id", "chain": "chain_id", "approval": "approval_id"}[kind]
        rows.append(
            (event["event_id"], f"{kind}:{event[key]}", event["type"], orjson.dumps(event).decode())
        )
    return rows
