"""The ``approval`` stream: one approval (HumanLayer ``approvals.id``, cc-broker ``permission_id``, ...).

Events: ``ApprovalRequested``, ``ApprovalDecided``.

Rules: requested once (a different second request is ``ApprovalAlreadyRequestedError``); decided
once (a second decision is ``ApprovalAlreadyDecidedError``, HumanLayer ``ErrAlreadyDecided``); a
decision needs a request (``ApprovalNotFoundError``). ``decision`` is neutral (``approved`` |
``denied``); ``source_decision`` keeps the source's own word (HumanLayer ``approve``/``deny``,
AILANG ``approved``/``rejected``, cc-broker ``allow``/``deny``).
"""

from __future__ import annotations

from typing import Any

from domain.base import EventMeta, LedgerAggregate, LedgerEvent
from domain.errors import (
    ApprovalAlreadyDecidedError,
    ApprovalAlreadyRequestedError,
    ApprovalNotFoundError,
    RuleViolationError,
)

APPROVAL_TYPES = ("tool", "merge", "handoff", "merge_handoff")
DECISIONS = ("approved", "denied")


class ApprovalEvent(LedgerEvent):
    """Base of the approval stream's events."""


class ApprovalRequested(ApprovalEvent):
    """Someone asked for permission: a tool call (``tool_input`` + its sha256) or a chain handoff."""

    approval_type: str
    session_id: str | None
    tool_use_id: str | None
    tool_name: str | None
    tool_input: Any
    tool_input_sha256: str | None
    chain_id: str | None
    stage_id: str | None
    requested_by: str | None
    attributes: dict[str, Any]

    def apply(self, aggregate: Approval) -> None:
        aggregate.status = "pending"
        aggregate.requested_at = self.occurred_at
        aggregate.requested = {
            "approval_type": self.approval_type,
            "session_id": self.session_id,
            "tool_use_id": self.tool_use_id,
            "tool_name": self.tool_name,
            "tool_input_sha256": self.tool_input_sha256,
            "chain_id": self.chain_id,
            "stage_id": self.stage_id,
        }


class ApprovalDecided(ApprovalEvent):
    """The decision (``approved`` | ``denied``), its scope, who made it and why."""

    decision: str
    source_decision: str | None
    scope: str | None
    decided_by: str | None
    comment: str | None

    def apply(self, aggregate: Approval) -> None:
        aggregate.status = self.decision
        aggregate.decided_at = self.occurred_at
        aggregate.decision = {
            "decision": self.decision,
            "source_decision": self.source_decision,
            "scope": self.scope,
            "decided_by": self.decided_by,
            "comment": self.comment,
        }


class Approval(LedgerAggregate):
    """One approval's stream."""

    KIND = "approval"
    EVENT_BASE = ApprovalEvent
    COMMANDS = ("request", "decide")

    def __init__(self, id: Any) -> None:
        super().__init__(id)
        self.status: str | None = None
        self.requested: dict[str, Any] | None = None
        self.decision: dict[str, Any] | None = None
        self.requested_at: Any = None
        self.decided_at: Any = None

    def request(
        self,
        meta: EventMeta,
        *,
        approval_type: str = "tool",
        session_id: str | None = None,
        tool_use_id: str | None = None,
        tool_name: str | None = None,
        tool_input: Any = None,
        tool_input_sha256: str | None = None,
        chain_id: str | None = None,
        stage_id: str | None = None,
        requested_by: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Record the request.

        Raises:
            RuleViolationError: ``approval_type`` is not one of ``APPROVAL_TYPES``.
            ApprovalAlreadyRequestedError: this approval id was requested before.
        """
        if approval_type not in APPROVAL_TYPES:
            raise RuleViolationError(
                f"approval_type must be one of {list(APPROVAL_TYPES)}", approval_type=approval_type
            )
        if self.status is not None:
            raise ApprovalAlreadyRequestedError(approval_id=self.external_id)
        self.trigger(
            ApprovalRequested,
            meta,
            approval_type=approval_type,
            session_id=session_id,
            tool_use_id=tool_use_id,
            tool_name=tool_name,
            tool_input=tool_input,
            tool_input_sha256=tool_input_sha256,
            chain_id=chain_id,
            stage_id=stage_id,
            requested_by=requested_by,
            attributes=attributes or {},
        )

    def decide(
        self,
        meta: EventMeta,
        *,
        decision: str,
        source_decision: str | None = None,
        scope: str | None = None,
        decided_by: str | None = None,
        comment: str | None = None,
    ) -> None:
        """Record the decision.

        Raises:
            RuleViolationError: ``decision`` is not ``approved`` or ``denied``.
            ApprovalNotFoundError: never requested.
            ApprovalAlreadyDecidedError: already decided.
        """
        if decision not in DECISIONS:
            raise RuleViolationError(
                f"decision must be one of {list(DECISIONS)}", decision=decision
            )
        if self.status is None:
            raise ApprovalNotFoundError(approval_id=self.external_id)
        if self.status != "pending":
            raise ApprovalAlreadyDecidedError(approval_id=self.external_id, decision=self.status)
        self.trigger(
            ApprovalDecided,
            meta,
            decision=decision,
            source_decision=source_decision,
            scope=scope,
            decided_by=decided_by,
            comment=comment,
        )

    def state(self) -> dict[str, Any]:
        """Status, the request and the decision."""
        return {
            **super().state(),
            "status": self.status,
            "request": self.requested,
            "decision": self.decision,
            "requested_at": self.requested_at,
            "decided_at": self.decided_at,
        }
