"""Domain errors of the ledger.

A small tree: ``LedgerError`` -> ``NotFoundError`` / ``ConflictError`` / ``RuleViolationError`` ->
leaves with keyword fields naming the ids involved. They are raised by aggregate command methods
*before* anything is recorded, never inside event ``apply`` bodies (those run again on replay).
The HTTP layer maps each class to a status and an RFC 9457 problem type in one table (``api/problems.py``).
"""

from __future__ import annotations

from typing import Any


class LedgerError(Exception):
    """Base class of every domain error.

    Attributes:
        fields: the ids and values involved, as keyword fields (rendered as problem+json extensions).
    """

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields


class NotFoundError(LedgerError):
    """Something addressed by id does not exist (HTTP 404)."""


class ConflictError(LedgerError):
    """The request contradicts what the ledger already holds (HTTP 409)."""


class RuleViolationError(LedgerError):
    """The request is well formed but breaks a domain rule (HTTP 422)."""


class StreamNotFoundError(NotFoundError):
    """No stream of that kind with that external id in that project."""

    def __init__(self, *, kind: str, external_id: str, project: str) -> None:
        super().__init__(
            f"no {kind} stream {external_id!r} in project {project!r}",
            kind=kind,
            external_id=external_id,
            project=project,
        )


class VersionNotFoundError(NotFoundError):
    """A stream exists but has no event at (or before) the requested version or time."""

    def __init__(self, *, kind: str, external_id: str, detail: str) -> None:
        super().__init__(detail, kind=kind, external_id=external_id)


class IdempotencyConflictError(ConflictError):
    """The same ``event_id`` was sent before with different content."""

    def __init__(self, *, event_id: str, stream_id: str, version: int) -> None:
        super().__init__(
            f"event_id {event_id!r} was already recorded with different content "
            f"(stream {stream_id}, version {version})",
            event_id=event_id,
            stream_id=stream_id,
            version=version,
        )


class ApprovalNotFoundError(NotFoundError):
    """A decision names an approval that was never requested."""

    def __init__(self, *, approval_id: str) -> None:
        super().__init__(f"approval {approval_id!r} was never requested", approval_id=approval_id)


class ApprovalAlreadyRequestedError(ConflictError):
    """A second, different request under an existing approval id."""

    def __init__(self, *, approval_id: str) -> None:
        super().__init__(f"approval {approval_id!r} was already requested", approval_id=approval_id)


class ApprovalAlreadyDecidedError(ConflictError):
    """An approval is decided once; a second decision is refused (HumanLayer ``ErrAlreadyDecided``)."""

    def __init__(self, *, approval_id: str, decision: str) -> None:
        super().__init__(
            f"approval {approval_id!r} was already decided: {decision}",
            approval_id=approval_id,
            decision=decision,
        )


class ToolCallAlreadyEndedError(ConflictError):
    """A tool call ends once."""

    def __init__(self, *, session_id: str, tool_use_id: str) -> None:
        super().__init__(
            f"tool call {tool_use_id!r} of session {session_id!r} has already ended",
            session_id=session_id,
            tool_use_id=tool_use_id,
        )


class ToolCallAlreadyStartedError(ConflictError):
    """A second, different start under an existing ``tool_use_id``."""

    def __init__(self, *, session_id: str, tool_use_id: str) -> None:
        super().__init__(
            f"tool call {tool_use_id!r} of session {session_id!r} has already started",
            session_id=session_id,
            tool_use_id=tool_use_id,
        )


class InvalidTransitionError(ConflictError):
    """A status change the state machine does not allow; names the allowed targets."""

    def __init__(
        self, *, subject: str, current: str | None, requested: str, allowed: list[str], **ids: Any
    ) -> None:
        allowed_text = ", ".join(allowed) if allowed else "none (terminal)"
        super().__init__(
            f"{subject} cannot go from {current!r} to {requested!r}; allowed: {allowed_text}",
            current=current,
            requested=requested,
            allowed=allowed,
            **ids,
        )


class StageNotFoundError(NotFoundError):
    """A chain has no stage with that id."""

    def __init__(self, *, chain_id: str, stage_id: str) -> None:
        super().__init__(
            f"chain {chain_id!r} has no stage {stage_id!r}", chain_id=chain_id, stage_id=stage_id
        )


class StageAlreadyExistsError(ConflictError):
    """A stage id or stage number is already taken in the chain."""

    def __init__(self, *, chain_id: str, stage_id: str, stage_number: int) -> None:
        super().__init__(
            f"chain {chain_id!r} already has stage {stage_id!r} or stage number {stage_number}",
            chain_id=chain_id,
            stage_id=stage_id,
            stage_number=stage_number,
        )


class ChainNotFoundError(NotFoundError):
    """A stage command names a chain that was never created."""

    def __init__(self, *, chain_id: str) -> None:
        super().__init__(f"chain {chain_id!r} was never created", chain_id=chain_id)


class ChainAlreadyCreatedError(ConflictError):
    """A second, different creation of an existing chain."""

    def __init__(self, *, chain_id: str) -> None:
        super().__init__(f"chain {chain_id!r} was already created", chain_id=chain_id)


class SpanConflictError(ConflictError):
    """A ``span_id`` recorded once per trace arrived again with different content."""

    def __init__(self, *, trace_id: str, span_id: str) -> None:
        super().__init__(
            f"span {span_id} of trace {trace_id} was already recorded with different content",
            trace_id=trace_id,
            span_id=span_id,
        )


class SessionEndedError(ConflictError):
    """Activity was posted to a session that has ended (e.g. a second ``SessionEnded``)."""

    def __init__(self, *, session_id: str) -> None:
        super().__init__(f"session {session_id!r} has already ended", session_id=session_id)
