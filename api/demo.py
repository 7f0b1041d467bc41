"""``runledger demo``: post a real recorded agent run to a running server.

What it posts, in order (all through the public HTTP API):

1. the Claude Code hook captures of one real session (``94692e6b``, Claude Code 2.1.x, Feb 2026,
   from abujiletsgo/claude-agentic-framework: SessionStart, 11 prompts, 79 PreToolUse, 74 PostToolUse,
   9 subagent start/stop pairs, Stop) to ``/v1/hooks/claude-code``;
2. the official OTLP/JSON trace example (opentelemetry-proto ``examples/trace.json``) to ``/v1/traces``;
3. an approval for the session's first Bash call, and its decision;
4. an AILANG-style chain ``design-doc-creator -> sprint-planner -> sprint-executor`` with stage
   transitions, a merge-handoff approval, metrics and the session linked to the last stage;
5. a scafld workspace baseline and criterion/phase evidence entries;

then waits for the projections and returns the chain summary and the criterion states.
"""

from __future__ import annotations

import hashlib
import json
import time
from importlib import resources
from typing import Any

import httpx

CHAIN_ID = "demo-chain-issue-127"


def _data(name: str) -> Any:
    return json.loads(resources.files("api").joinpath("demo_data", name).read_text())


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def demo_requests() -> tuple[str, list[tuple[str, Any]]]:
    """``(session_id, [(path, json_body), ...])`` in posting order."""
    hooks = _data("claude-code-session-94692e6b.json")
    session_id = hooks[0]["session_id"]
    first_bash = next(
        h for h in hooks if h["hook_event_name"] == "PreToolUse" and h["tool_name"] == "Bash"
    )
    requests: list[tuple[str, Any]] = [("/v1/hooks/claude-code", h) for h in hooks]
    requests.append(("/v1/traces", _data("otlp-trace.json")))
    t0 = "2026-02-14T10:00:00Z"
    stage = {"chain_id": CHAIN_ID}
    events: list[dict[str, Any]] = [
        {"type": "approval.requested", "approval_id": f"demo-approval-{first_bash['tool_use_id']}",
         "approval_type": "tool", "session_id": session_id, "tool_use_id": first_bash["tool_use_id"],
         "tool_name": "Bash", "tool_input": first_bash["tool_input"], "requested_by": "claude-code"},
        {"type": "approval.decided", "approval_id": f"demo-approval-{first_bash['tool_use_id']}",
         "decision": "approve", "decided_by": "reviewer@example.com", "comment": "read-only command"},
        {"type": "chain.created", "chain_id": CHAIN_ID, "title": "Full chains integration verification",
         "source_type": "github_issue", "github_repo": "sunholo-data/ailang", "github_issue_number": 127},
        {"type": "chain.stage_added", **stage, "stage_id": "design", "agent_id": "design-doc-creator"},
        {"type": "chain.stage_added", **stage, "stage_id": "plan", "agent_id": "sprint-planner"},
        {"type": "chain.stage_added", **stage, "stage_id": "execute", "agent_id": "sprint-executor"},
        {"type": "chain.stage_transitioned", **stage, "stage_id": "design", "to_status": "running"},
        {"type": "chain.stage_metrics_recorded", **stage, "stage_id": "design",
         "metrics": {"cost_usd": 0.42, "tokens_in": 18000, "tokens_out": 3200, "turns": 6}, "cost_provenance": "metered"},
        {"type": "chain.stage_transitioned", **stage, "stage_id": "design", "to_status": "awaiting_approval"},
        {"type": "chain.stage_approval_recorded", **stage, "stage_id": "design", "approval_status": "pending",
         "approval_type": "merge_handoff", "iteration": 1},
        {"type": "chain.stage_approval_recorded", **stage, "stage_id": "design", "approval_status": "approved",
         "approval_type": "merge_handoff", "human_feedback": "design accepted", "iteration": 1},
        {"type": "chain.stage_transitioned", **stage, "stage_id": "design", "to_status": "completed"},
        {"type": "chain.stage_transitioned", **stage, "stage_id": "plan", "to_status": "running"},
        {"type": "chain.stage_metrics_recorded", **stage, "stage_id": "plan",
         "metrics": {"cost_usd": 0.18, "tokens_in": 9000, "tokens_out": 1500, "turns": 3}, "cost_provenance": "metered"},
        {"type": "chain.stage_transitioned", **stage, "stage_id": "plan", "to_status": "completed"},
        {"type": "chain.stage_transitioned", **stage, "stage_id": "execute", "to_status": "running"},
        {"type": "chain.stage_session_linked", **stage, "stage_id": "execute", "session_id": session_id},
        {"type": "session.workspace_baseline_captured", "session_id": session_id,
         "reason": "workspace baseline captured before approval: 2 changed path(s)",
         "files": [f" M {_sha('README.md v2')} README.md", "?? deleted docs/old.md"]},
        {"type": "session.evidence_recorded", "session_id": session_id,
         "entry": {"id": "e1", "type": "criterion", "recorded_at": t0, "criterion_id": "ac1",
                   "phase_id": "phase1", "status": "fail", "reason": "tests red", "command": "go test ./..."}},
        {"type": "session.evidence_recorded", "session_id": session_id,
         "entry": {"id": "e2", "type": "criterion", "recorded_at": "2026-02-14T10:05:00Z", "criterion_id": "ac1",
                   "phase_id": "phase1", "status": "pass", "command": "go test ./..."}},
        {"type": "session.evidence_recorded", "session_id": session_id,
         "entry": {"id": "e3", "type": "manual_evidence", "recorded_at": "2026-02-14T10:06:00Z",
                   "criterion_id": "ac2", "evidence_actor": "reviewer@example.com", "evidence_digest": _sha("screenshot")}},
        {"type": "session.evidence_recorded", "session_id": session_id,
         "entry": {"id": "e4", "type": "phase", "recorded_at": "2026-02-14T10:07:00Z", "phase_id": "phase1",
                   "status": "completed"}},
        {"type": "chain.stage_metrics_recorded", **stage, "stage_id": "execute",
         "metrics": {"cost_usd": 1.25, "tokens_in": 52000, "tokens_out": 8800, "turns": 14, "tool_calls": 79},
         "cost_provenance": "metered"},
        {"type": "chain.stage_transitioned", **stage, "stage_id": "execute", "to_status": "completed"},
        {"type": "chain.status_changed", **stage, "status": "completed", "reason": "all stages completed"},
    ]  # fmt: skip
    requests.append(("/v1/events", {"events": events}))
    return session_id, requests


def run_demo(
    base_url: str,
    *,
    project: str = "default",
    token: str | None = None,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Post the demo run and return ``{"session_id", "events_written", "chain", "criteria", "session"}``.

    ``events_written`` counts events appended by this run (duplicates from an earlier run count 0).

    Raises:
        httpx.HTTPError: the server is unreachable or answered an unexpected error.
        TimeoutError: the projections did not catch up within ``timeout_s``.
    """
    session_id, requests = demo_requests()
    headers = {"X-Runledger-Project": project}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    with httpx.Client(base_url=base_url, headers=headers, timeout=30.0) as client:
        head_before = client.get("/readyz").raise_for_status().json()["head"]
        for index, (path, body) in enumerate(requests):
            # A recorded run resent: each hook names its occurrence, so that a second demo run
            # is a duplicate of the first (Stop payloads repeat, and alone would be recorded).
            key = {"Idempotency-Key": f"demo-{session_id}-{index}"} if "hooks" in path else {}
            response = client.post(path, json=body, headers=key)
            if response.status_code >= 400 and response.status_code != 409:
                response.raise_for_status()
        deadline = time.monotonic() + timeout_s
        while True:
            ready = client.get("/readyz").raise_for_status().json()
            if all(p["lag"] == 0 for p in ready["projections"]):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("projections did not catch up")
            time.sleep(0.1)
        log = (
            client.get("/v1/log", params={"after": head_before, "limit": 10_000})
            .raise_for_status()
            .json()
        )
        return {
            "session_id": session_id,
            "requests": len(requests),
            "events_written": len(log["items"]),
            "session": client.get(f"/v1/sessions/{session_id}").raise_for_status().json(),
            "chain": client.get(f"/v1/chains/{CHAIN_ID}").raise_for_status().json(),
            "criteria": client.get(f"/v1/sessions/{session_id}/criteria").raise_for_status().json(),
        }
