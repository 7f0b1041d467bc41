"""The ``session`` stream: one agent session (Claude Code ``session_id``, Moat ``run_id``, ...).

Events: ``SessionStarted``, ``SessionStatusChanged``, ``MessageRecorded``, ``ToolCallStarted``,
``ToolCallEnded``, ``CommandExecuted``, ``NetworkRequestRecorded``, ``SecretResolved``,
``WorkspaceBaselineCaptured``, ``EvidenceRecorded``, ``FileSnapshotRecorded``, ``SessionEnded``,
and ``HookEventRecorded`` (a hook the ledger has no mapping for: kept, not dropped).

Rules:

- a tool call ends once (``ToolCallAlreadyEndedError``); an end is paired with its start by
  ``tool_use_id`` (``pairing="tool_use_id"``); without one, with the latest unfinished call of the
  same tool (``pairing="latest_unfinished"``, the AILANG/HumanLayer fallback for 2025-era Claude
  Code hooks); an end with no start is recorded with ``pairing="orphan"``;
- status values and moves are HumanLayer's (``hld/store`` ``sessions.status``), see
  ``STATUS_TRANSITIONS``; any other move is ``InvalidTransitionError``;
- ``SessionEnded`` once per run (a ``SessionStarted`` with source ``resume`` reopens it).

Large values (tool input/response, message content, file contents) may arrive as blob references
``{"sha256", "size_bytes", "media_type"}``; the domain stores whatever JSON it is given.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from domain import evidence
from domain.base import EventMeta, LedgerAggregate, LedgerEvent
from domain.errors import (
    InvalidTransitionError,
    SessionEndedError,
    ToolCallAlreadyEndedError,
    ToolCallAlreadyStartedError,
)

#: HumanLayer session statuses (``hld/store/sqlite.go``) and the moves between them.
#: ``None`` is a stream whose first event was activity, not a start.
STATUS_TRANSITIONS: dict[str | None, tuple[str, ...]] = {
    None: ("starting", "running", "waiting_input", "completed", "failed", "discarded"),
    "draft": ("starting", "discarded"),
    "starting": ("running", "completed", "failed"),
    "running": ("waiting_input", "interrupting", "completed", "failed"),
    "waiting_input": ("running", "interrupting", "completed", "failed"),
    "interrupting": ("interrupted", "completed", "failed"),
    "interrupted": ("running", "completed", "failed"),
    "completed": ("running",),
    "failed": ("running",),
    "discarded": (),
}
STATUSES = tuple(s for s in STATUS_TRANSITIONS if s is not None)

#: Statuses from which activity (a prompt, a tool call) implies the session is running again.
_IMPLICITLY_RESUMABLE = (None, "starting", "waiting_input", "interrupted")


class SessionEvent(LedgerEvent):
    """Base of the session stream's events."""


class SessionStarted(SessionEvent):
    """Claude Code ``SessionStart`` (``source`` startup|resume|compact|clear) or an API start."""

    agent: str | None
    model: str | None
    cwd: str | None
    start_source: str | None
    permission_mode: str | None
    transcript_path: str | None
    attributes: dict[str, Any]

    def apply(self, aggregate: Session) -> None:
        aggregate.status = "running"
        aggregate.ended = False
        aggregate.ended_at = None  # a resume reopens the session: no end until the next one
        aggregate.agent = self.agent or aggregate.agent
        aggregate.model = self.model or aggregate.model
        aggregate.cwd = self.cwd or aggregate.cwd
        if aggregate.started_at is None:
            aggregate.started_at = self.occurred_at


class SessionStatusChanged(SessionEvent):
    """A move of the HumanLayer status machine."""

    status: str
    previous_status: str | None
    reason: str | None
    attributes: dict[str, Any]

    def apply(self, aggregate: Session) -> None:
        aggregate.status = self.status


class MessageRecorded(SessionEvent):
    """A prompt, notification or other message (``role`` user|assistant|system)."""

    role: str
    message_kind: str
    content: Any
    attributes: dict[str, Any]

    def apply(self, aggregate: Session) -> None:
        aggregate.message_count += 1


class ToolCallStarted(SessionEvent):
    """Claude Code ``PreToolUse`` (or ``SubagentStart``, as tool ``Subagent:<agent_type>``)."""

    tool_use_id: str
    tool_use_id_generated: bool
    tool_name: str
    tool_input: Any
    tool_input_sha256: str
    agent_id: str | None
    attributes: dict[str, Any]
    #: The call's end was recorded first (as an orphan); this start arrived late.
    late: bool

    def apply(self, aggregate: Session) -> None:
        call = aggregate.tool_calls.get(self.tool_use_id)
        version = self.originator_version
        if call is None:
            if self.late:  # restored from a snapshot, which left out the ended call
                aggregate.tool_calls[self.tool_use_id] = {
                    "tool_name": self.tool_name,
                    "ended": True,
                    "started_version": version,
                    "changed_version": version,
                }
                return
            aggregate.tool_call_count += 1
            aggregate.tool_calls[self.tool_use_id] = {
                "tool_name": self.tool_name,
                "ended": False,
                "started_version": version,
                "changed_version": version,
            }
        else:  # the end arrived first (recorded as an orphan); this is its late start
            call["started_version"] = version
            call["changed_version"] = version


class ToolCallEnded(SessionEvent):
    """Claude Code ``PostToolUse`` / ``PostToolUseFailure`` (or ``SubagentStop``).

    ``pairing`` says how the end was matched to its start: ``tool_use_id``,
    ``latest_unfinished`` or ``orphan``.
    """

    tool_use_id: str
    tool_name: str
    pairing: str
    success: bool
    tool_response: Any
    error: str | None
    is_interrupt: bool | None
    duration_ms: float | None
    attributes: dict[str, Any]

    def apply(self, aggregate: Session) -> None:
        call = aggregate.tool_calls.get(self.tool_use_id)
        if call is None:
            if self.pairing == "orphan":
                aggregate.tool_call_count += 1
            call = aggregate.tool_calls[self.tool_use_id] = {
                "tool_name": self.tool_name,
                "started_version": None,
            }
        call["ended"] = True
        call["changed_version"] = self.originator_version


class CommandExecuted(SessionEvent):
    """A process run in the sandbox (Moat ``ExecEvent``; ``duration_ms`` from Go nanoseconds)."""

    command: str
    args: list[str]
    exit_code: int | None
    duration_ms: float | None
    working_dir: str | None
    pid: int | None
    output: Any


class NetworkRequestRecorded(SessionEvent):
    """An HTTP request through the sandbox proxy (Moat ``NetworkRequest``)."""

    method: str
    url: str
    status_code: int | None
    duration_ms: float | None
    error: str | None
    attributes: dict[str, Any]


class SecretResolved(SessionEvent):
    """A secret was resolved for the run: its name and backend, never the value (Moat)."""

    name: str
    backend: str


class WorkspaceBaselineCaptured(SessionEvent):
    """scafld ``workspace_baseline``: ``files`` in the line format ``"<XY> <sha256|deleted|unreadable> <path>"``.

    ``archive`` is an optional blob reference to a tar.gz of the changed files.
    """

    files: list[str]
    reason: str | None
    archive: dict[str, Any] | None

    def apply(self, aggregate: Session) -> None:
        if aggregate.workspace_baseline_version is None:
            aggregate.workspace_baseline_version = self.originator_version


class EvidenceRecorded(SessionEvent):
    """One scafld ``Entry`` (field names as in ``model.go``, empty fields omitted)."""

    entry: dict[str, Any]

    def apply(self, aggregate: Session) -> None:
        evidence.apply_entry(aggregate.criterion_states, aggregate.phase_blocks, self.entry)


class FileSnapshotRecorded(SessionEvent):
    """File content at read time (HumanLayer ``file_snapshots``; Claude Code ``Read`` response)."""

    file_path: str
    content: Any
    tool_use_id: str | None


class SessionEnded(SessionEvent):
    """Claude Code ``SessionEnd`` (``reason`` e.g. ``prompt_input_exit``, ``clear``, ``other``)."""

    reason: str | None
    attributes: dict[str, Any]

    def apply(self, aggregate: Session) -> None:
        aggregate.status = "completed"
        aggregate.ended = True
        aggregate.ended_at = self.occurred_at


class HookEventRecorded(SessionEvent):
    """A hook event kept verbatim because the ledger has no finer mapping for it."""

    hook_event_name: str
    payload: dict[str, Any]


class Session(LedgerAggregate):
    """One agent session's stream."""

    KIND = "session"
    EVENT_BASE = SessionEvent
    COMMANDS = (
        "start",
        "change_status",
        "record_message",
        "start_tool_call",
        "end_tool_call",
        "stop_turn",
        "record_command",
        "record_network_request",
        "resolve_secret",
        "capture_workspace_baseline",
        "record_evidence",
        "record_file_snapshot",
        "end",
        "record_hook_event",
    )

    def __init__(self, id: Any) -> None:
        super().__init__(id)
        self.status: str | None = None
        self.ended = False
        self.agent: str | None = None
        self.model: str | None = None
        self.cwd: str | None = None
        self.started_at: Any = None
        self.ended_at: Any = None
        self.message_count = 0
        #: tool_use_id -> {"tool_name", "ended", "started_version"}, in start order. Snapshots
        #: keep only the unfinished ones (see ``snapshot_state``).
        self.tool_calls: dict[str, dict[str, Any]] = {}
        self.tool_call_count = 0
        self.criterion_states: dict[str, dict[str, str]] = {}
        self.phase_blocks: dict[str, dict[str, str]] = {}
        self.workspace_baseline_version: int | None = None

    # -- commands -------------------------------------------------------------------------

    def start(
        self,
        meta: EventMeta,
        *,
        agent: str | None = None,
        model: str | None = None,
        cwd: str | None = None,
        start_source: str | None = None,
        permission_mode: str | None = None,
        transcript_path: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Record a start (or resume/compact/clear); the session is running afterwards."""
        self.trigger(
            SessionStarted,
            meta,
            agent=agent,
            model=model,
            cwd=cwd,
            start_source=start_source,
            permission_mode=permission_mode,
            transcript_path=transcript_path,
            attributes=attributes or {},
        )

    def change_status(self, meta: EventMeta, *, status: str, reason: str | None = None) -> None:
        """Move the status machine.

        Raises:
            InvalidTransitionError: the move is not in ``STATUS_TRANSITIONS``.
        """
        self._check_transition(status)
        self.trigger(
            SessionStatusChanged,
            meta,
            status=status,
            previous_status=self.status,
            reason=reason,
            attributes={},
        )

    def record_message(
        self,
        meta: EventMeta,
        *,
        role: str,
        message_kind: str,
        content: Any,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Record a message; a user prompt also marks an idle session running."""
        if role == "user":
            self._resume_on_activity(meta, "prompt submitted")
        self.trigger(
            MessageRecorded,
            meta,
            role=role,
            message_kind=message_kind,
            content=content,
            attributes=attributes or {},
        )

    def start_tool_call(
        self,
        meta: EventMeta,
        *,
        tool_name: str,
        tool_input: Any,
        tool_input_sha256: str,
        tool_use_id: str | None = None,
        agent_id: str | None = None,
        attributes: dict[str, Any] | None = None,
        repeat_hook: str | None = None,
    ) -> None:
        """Record a tool call's start. Without ``tool_use_id`` one is derived from ``event_id``.

        ``repeat_hook``: the Claude Code hook event name (``SubagentStart``) under which a second
        start of an already started call is kept verbatim as ``HookEventRecorded`` (payload:
        ``tool_use_id``, ``tool_name``, ``tool_input`` and the attributes) instead of refused:
        Claude Code fires ``SubagentStart`` again, same ``agent_id``, when a subagent resumes.
        The call stays the one its first start opened.

        Raises:
            ToolCallAlreadyStartedError: ``tool_use_id`` was already started in this session
                (and no ``repeat_hook``).
        """
        generated = tool_use_id is None
        resolved = tool_use_id if tool_use_id is not None else _generated_tool_use_id(meta)
        known = self.tool_calls.get(resolved)
        # A start after its (orphan) end is recorded late; a second start is refused or kept.
        if known is not None and known["started_version"] is not None:
            if repeat_hook is None:
                raise ToolCallAlreadyStartedError(session_id=self.external_id, tool_use_id=resolved)
            self._resume_on_activity(meta, "tool call started")
            payload = {"tool_use_id": resolved, "tool_name": tool_name, "tool_input": tool_input}
            self.record_hook_event(
                meta, hook_event_name=repeat_hook, payload={**payload, **(attributes or {})}
            )
            return
        self._resume_on_activity(meta, "tool call started")
        self.trigger(
            ToolCallStarted,
            meta,
            tool_use_id=resolved,
            tool_use_id_generated=generated,
            tool_name=tool_name,
            tool_input=tool_input,
            tool_input_sha256=tool_input_sha256,
            agent_id=agent_id,
            attributes=attributes or {},
            late=known is not None,
        )

    def end_tool_call(
        self,
        meta: EventMeta,
        *,
        tool_name: str,
        success: bool,
        tool_use_id: str | None = None,
        tool_response: Any = None,
        error: str | None = None,
        is_interrupt: bool | None = None,
        duration_ms: float | None = None,
        attributes: dict[str, Any] | None = None,
        repeat_hook: str | None = None,
    ) -> None:
        """Record a tool call's end, paired as the module docstring says.

        ``repeat_hook``: the Claude Code hook event name (``SubagentStop``) under which a
        second end of an already ended call is kept verbatim as ``HookEventRecorded`` (payload:
        ``tool_use_id``, ``tool_name``, ``success``, the other values given and the attributes)
        instead of refused (a resumed subagent stops again).

        Raises:
            ToolCallAlreadyEndedError: that call has already ended (and no ``repeat_hook``).
        """
        if tool_use_id is not None:
            call = self.tool_calls.get(tool_use_id)
            if call is not None and call["ended"]:
                if repeat_hook is None:
                    raise ToolCallAlreadyEndedError(
                        session_id=self.external_id, tool_use_id=tool_use_id
                    )
                given = {
                    "tool_response": tool_response,
                    "error": error,
                    "is_interrupt": is_interrupt,
                    "duration_ms": duration_ms,
                }
                payload = {
                    "tool_use_id": tool_use_id,
                    "tool_name": tool_name,
                    "success": success,
                    **{key: value for key, value in given.items() if value is not None},
                    **(attributes or {}),
                }
                self.record_hook_event(meta, hook_event_name=repeat_hook, payload=payload)
                return
            pairing = "tool_use_id" if call is not None else "orphan"
            resolved = tool_use_id
        else:
            latest = self.latest_unfinished(tool_name)
            if latest is not None:
                pairing, resolved = "latest_unfinished", latest
            else:
                pairing, resolved = "orphan", _generated_tool_use_id(meta)
        self.trigger(
            ToolCallEnded,
            meta,
            tool_use_id=resolved,
            tool_name=tool_name,
            pairing=pairing,
            success=success,
            tool_response=tool_response,
            error=error,
            is_interrupt=is_interrupt,
            duration_ms=duration_ms,
            attributes=attributes or {},
        )

    def stop_turn(self, meta: EventMeta, *, payload: dict[str, Any]) -> None:
        """Claude Code ``Stop``: the agent finished its turn and waits for input.

        A running session moves to ``waiting_input`` (the payload kept as the change's
        ``attributes``); otherwise the hook is kept verbatim as ``HookEventRecorded``.
        """
        if self.status == "running":
            self.trigger(
                SessionStatusChanged,
                meta,
                status="waiting_input",
                previous_status=self.status,
                reason="Stop",
                attributes=payload,
            )
        else:
            self.trigger(HookEventRecorded, meta, hook_event_name="Stop", payload=payload)

    def record_command(
        self,
        meta: EventMeta,
        *,
        command: str,
        args: list[str] | None = None,
        exit_code: int | None = None,
        duration_ms: float | None = None,
        working_dir: str | None = None,
        pid: int | None = None,
        output: Any = None,
    ) -> None:
        """Record a process the agent ran (``exit_code`` absent is not 0)."""
        self.trigger(
            CommandExecuted,
            meta,
            command=command,
            args=args or [],
            exit_code=exit_code,
            duration_ms=duration_ms,
            working_dir=working_dir,
            pid=pid,
            output=output,
        )

    def record_network_request(
        self,
        meta: EventMeta,
        *,
        method: str,
        url: str,
        status_code: int | None = None,
        duration_ms: float | None = None,
        error: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Record an HTTP request made through the sandbox proxy."""
        self.trigger(
            NetworkRequestRecorded,
            meta,
            method=method,
            url=url,
            status_code=status_code,
            duration_ms=duration_ms,
            error=error,
            attributes=attributes or {},
        )

    def resolve_secret(self, meta: EventMeta, *, name: str, backend: str) -> None:
        """Record that a secret was resolved (name and backend only)."""
        self.trigger(SecretResolved, meta, name=name, backend=backend)

    def capture_workspace_baseline(
        self,
        meta: EventMeta,
        *,
        files: list[str],
        reason: str | None = None,
        archive: dict[str, Any] | None = None,
    ) -> None:
        """Record a workspace baseline (the first per session is the one that counts)."""
        self.trigger(WorkspaceBaselineCaptured, meta, files=files, reason=reason, archive=archive)

    def record_evidence(self, meta: EventMeta, *, entry: dict[str, Any]) -> None:
        """Record one scafld evidence ``Entry``."""
        self.trigger(EvidenceRecorded, meta, entry=entry)

    def record_file_snapshot(
        self, meta: EventMeta, *, file_path: str, content: Any, tool_use_id: str | None = None
    ) -> None:
        """Record a file's content as the agent saw it."""
        self.trigger(
            FileSnapshotRecorded,
            meta,
            file_path=file_path,
            content=content,
            tool_use_id=tool_use_id,
        )

    def end(
        self,
        meta: EventMeta,
        *,
        reason: str | None = None,
        attributes: dict[str, Any] | None = None,
        repeat_hook: str | None = None,
    ) -> None:
        """Record the end of the session.

        ``repeat_hook``: the Claude Code hook event name (``SessionEnd``, which Claude Code logs
        more than once) under which a second end is kept verbatim as ``HookEventRecorded``
        (payload: ``reason`` and the attributes) instead of refused.

        Raises:
            SessionEndedError: it already ended and was not started again since (and no
                ``repeat_hook``).
        """
        if self.ended:
            if repeat_hook is None:
                raise SessionEndedError(session_id=self.external_id)
            payload = {"reason": reason, **(attributes or {})}
            self.record_hook_event(meta, hook_event_name=repeat_hook, payload=payload)
            return
        self.trigger(SessionEnded, meta, reason=reason, attributes=attributes or {})

    def record_hook_event(
        self, meta: EventMeta, *, hook_event_name: str, payload: dict[str, Any]
    ) -> None:
        """Keep a hook event the ledger has no finer mapping for."""
        self.trigger(HookEventRecorded, meta, hook_event_name=hook_event_name, payload=payload)

    # -- queries ---------------------------------------------------------------------------

    def latest_unfinished(self, tool_name: str) -> str | None:
        """The ``tool_use_id`` of the latest started, not ended call of ``tool_name``."""
        for tool_use_id, call in reversed(self.tool_calls.items()):
            if call["tool_name"] == tool_name and not call["ended"]:
                return tool_use_id
        return None

    def state(self) -> dict[str, Any]:
        """Status, counts, open tool calls, criterion states and phase blocks."""
        return {
            **super().state(),
            "status": self.status,
            "agent": self.agent,
            "model": self.model,
            "cwd": self.cwd,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "message_count": self.message_count,
            "tool_call_count": self.tool_call_count,
            "open_tool_calls": [
                {"tool_use_id": k, "tool_name": v["tool_name"]}
                for k, v in self.tool_calls.items()
                if not v["ended"]
            ],
            "criterion_states": self.criterion_states,
            "phase_blocks": self.phase_blocks,
        }

    def missing_keys(self, action: str, meta: EventMeta, args: Mapping[str, Any]) -> list[str]:
        """Besides the base's ``event:`` key, a tool call's start or end with a ``tool_use_id``
        (given, or derived from ``event_id``) reads that call, which a snapshot leaves out once
        it ended: ``tool_call:<tool_use_id>``."""
        missing = super().missing_keys(action, meta, args)
        if not self.keys_partial:
            return missing
        tool_use_id = args.get("tool_use_id")
        if tool_use_id is None and action == "start_tool_call":
            tool_use_id = _generated_tool_use_id(meta)
        if (
            action in ("start_tool_call", "end_tool_call")
            and tool_use_id is not None
            and tool_use_id not in self.tool_calls
        ):
            missing.append(f"tool_call:{tool_use_id}")
        return missing

    def absorb_key(self, key: str, value: Any) -> None:
        """Besides event ids, an ended tool call's entry goes back into ``tool_calls``."""
        kind, _, name = key.partition(":")
        if kind == "tool_call":
            self.tool_calls.setdefault(name, dict(value))
        else:
            super().absorb_key(key, value)

    def unstored_keys(self) -> list[tuple[str, Any]]:
        """Besides event ids, the tool calls that ended and changed after ``keys_stored_through``
        (an orphan end's late start changes its call again)."""
        floor = self.keys_stored_through
        return super().unstored_keys() + [
            (f"tool_call:{tool_use_id}", call)
            for tool_use_id, call in self.tool_calls.items()
            if call["ended"] and call.get("changed_version", 0) > floor
        ]

    def snapshot_state(self) -> dict[str, Any]:
        """Besides the base's omissions, only the unfinished tool calls are kept."""
        state = super().snapshot_state()
        state["tool_calls"] = {k: dict(v) for k, v in self.tool_calls.items() if not v["ended"]}
        return state

    # -- helpers ---------------------------------------------------------------------------

    def _check_transition(self, status: str) -> None:
        allowed = STATUS_TRANSITIONS.get(self.status, ())
        if status not in allowed:
            raise InvalidTransitionError(
                subject=f"session {self.external_id!r}",
                current=self.status,
                requested=status,
                allowed=list(allowed),
                session_id=self.external_id,
            )

    def _resume_on_activity(self, meta: EventMeta, reason: str) -> None:
        if self.status in _IMPLICITLY_RESUMABLE and not self.ended:
            self.trigger(
                SessionStatusChanged,
                EventMeta(
                    event_id=f"{meta.event_id}#status",
                    content_sha256=meta.content_sha256,
                    occurred_at=meta.occurred_at,
                    source=meta.source,
                ),
                status="running",
                previous_status=self.status,
                reason=reason,
                attributes={},
            )


def _generated_tool_use_id(meta: EventMeta) -> str:
    """A deterministic stand-in for a missing ``tool_use_id`` (same event -> same id)."""
    return "rl_" + hashlib.sha256(meta.event_id.encode()).hexdigest()[:24]
