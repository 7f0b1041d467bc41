"""The ``chain`` stream: one execution chain of agent stages (AILANG observatory ``execution_chains``).

Events: ``ChainCreated``, ``StageAdded``, ``StageTransitioned``, ``StageSessionLinked``,
``StageApprovalRecorded``, ``StageMetricsRecorded``, ``ChainStatusChanged``.

Rules:

- the chain is created once; stage commands need it (``ChainNotFoundError``);
- stage ids and stage numbers are unique in the chain (``StageAlreadyExistsError``);
- stage status machine (AILANG ``chain_stages.status``): ``pending -> running``,
  ``running -> awaiting_approval | completed | failed``,
  ``awaiting_approval -> running | completed | failed``; anything else is
  ``InvalidTransitionError`` naming the allowed targets;
- chain status (AILANG ``active | pending_approval | completed | failed``) moves by
  ``CHAIN_TRANSITIONS``; a stage entering ``awaiting_approval`` moves an active chain to
  ``pending_approval``, and the last such stage leaving it moves it back to ``active``.
"""

from __future__ import annotations

from typing import Any

from domain.base import EventMeta, LedgerAggregate, LedgerEvent
from domain.errors import (
    ChainAlreadyCreatedError,
    ChainNotFoundError,
    InvalidTransitionError,
    StageAlreadyExistsError,
    StageNotFoundError,
)

STAGE_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "pending": ("running",),
    "running": ("awaiting_approval", "completed", "failed"),
    "awaiting_approval": ("running", "completed", "failed"),
    "completed": (),
    "failed": (),
}
CHAIN_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "active": ("pending_approval", "completed", "failed"),
    "pending_approval": ("active", "completed", "failed"),
    "completed": (),
    "failed": (),
}
#: Metrics a stage accumulates (AILANG ``chain_stages`` columns; cost in USD, duration in ms).
STAGE_METRICS = ("cost_usd", "tokens_in", "tokens_out", "turns", "tool_calls", "duration_ms")


class ChainEvent(LedgerEvent):
    """Base of the chain stream's events."""


class ChainCreated(ChainEvent):
    """A chain begins (``source_type`` github_issue|message|manual|eval_suite)."""

    title: str | None
    source_type: str | None
    source_ref: str | None
    github_repo: str | None
    github_issue_number: int | None
    workspace: str | None
    attributes: dict[str, Any]

    def apply(self, aggregate: Chain) -> None:
        aggregate.created = True
        aggregate.status = "active"


class StageAdded(ChainEvent):
    """A stage is planned (status ``pending``); ``agent_id`` e.g. ``design-doc-creator``."""

    stage_id: str
    stage_number: int
    agent_id: str
    provider: str | None
    handoff_to: str | None

    def apply(self, aggregate: Chain) -> None:
        aggregate.stages[self.stage_id] = {
            "stage_number": self.stage_number,
            "agent_id": self.agent_id,
            "status": "pending",
            "session_id": None,
            "approval_status": None,
        }


class StageTransitioned(ChainEvent):
    """A stage moved along ``STAGE_TRANSITIONS``."""

    stage_id: str
    from_status: str
    to_status: str
    reason: str | None
    error_message: str | None

    def apply(self, aggregate: Chain) -> None:
        aggregate.stages[self.stage_id]["status"] = self.to_status
        if self.to_status in ("running", "awaiting_approval"):
            aggregate.current_stage_id = self.stage_id


class StageSessionLinked(ChainEvent):
    """The agent session that ran a stage."""

    stage_id: str
    session_id: str

    def apply(self, aggregate: Chain) -> None:
        aggregate.stages[self.stage_id]["session_id"] = self.session_id


class StageApprovalRecorded(ChainEvent):
    """A stage's approval state (AILANG ``approval_status`` pending|approved|rejected)."""

    stage_id: str
    approval_id: str | None
    approval_type: str | None
    approval_status: str
    human_feedback: str | None
    iteration: int | None

    def apply(self, aggregate: Chain) -> None:
        aggregate.stages[self.stage_id]["approval_status"] = self.approval_status


class StageMetricsRecorded(ChainEvent):
    """Cost/tokens/turns of a stage (increments; ``cost_provenance`` as AILANG names it)."""

    stage_id: str
    metrics: dict[str, float]
    model: str | None
    cost_provenance: str | None


class ChainStatusChanged(ChainEvent):
    """The chain moved along ``CHAIN_TRANSITIONS``."""

    status: str
    previous_status: str | None
    reason: str | None

    def apply(self, aggregate: Chain) -> None:
        aggregate.status = self.status


class Chain(LedgerAggregate):
    """One execution chain's stream."""

    KIND = "chain"
    EVENT_BASE = ChainEvent
    COMMANDS = (
        "create",
        "add_stage",
        "transition_stage",
        "link_stage_session",
        "record_stage_approval",
        "record_stage_metrics",
        "change_status",
    )

    def __init__(self, id: Any) -> None:
        super().__init__(id)
        self.created = False
        self.status: str | None = None
        self.current_stage_id: str | None = None
        #: stage_id -> {"stage_number", "agent_id", "status", "session_id", "approval_status"}
        self.stages: dict[str, dict[str, Any]] = {}

    def create(
        self,
        meta: EventMeta,
        *,
        title: str | None = None,
        source_type: str | None = None,
        source_ref: str | None = None,
        github_repo: str | None = None,
        github_issue_number: int | None = None,
        workspace: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Create the chain.

        Raises:
            ChainAlreadyCreatedError: it exists.
        """
        if self.created:
            raise ChainAlreadyCreatedError(chain_id=self.external_id)
        self.trigger(
            ChainCreated,
            meta,
            title=title,
            source_type=source_type,
            source_ref=source_ref,
            github_repo=github_repo,
            github_issue_number=github_issue_number,
            workspace=workspace,
            attributes=attributes or {},
        )

    def add_stage(
        self,
        meta: EventMeta,
        *,
        stage_id: str,
        agent_id: str,
        stage_number: int | None = None,
        provider: str | None = None,
        handoff_to: str | None = None,
    ) -> None:
        """Add a stage (numbered after the last one unless ``stage_number`` is given).

        Raises:
            ChainNotFoundError: the chain was never created.
            StageAlreadyExistsError: the id or number is taken.
        """
        self._require_created()
        number = stage_number if stage_number is not None else self._next_stage_number()
        taken = {s["stage_number"] for s in self.stages.values()}
        if stage_id in self.stages or number in taken:
            raise StageAlreadyExistsError(
                chain_id=self.external_id, stage_id=stage_id, stage_number=number
            )
        self.trigger(
            StageAdded,
            meta,
            stage_id=stage_id,
            stage_number=number,
            agent_id=agent_id,
            provider=provider,
            handoff_to=handoff_to,
        )

    def transition_stage(
        self,
        meta: EventMeta,
        *,
        stage_id: str,
        to_status: str,
        reason: str | None = None,
        error_message: str | None = None,
    ) -> None:
        """Move a stage along the status machine (and the chain's approval status with it).

        Raises:
            ChainNotFoundError, StageNotFoundError: unknown chain or stage.
            InvalidTransitionError: not an allowed move; names the allowed targets.
        """
        stage = self._stage(stage_id)
        current = stage["status"]
        allowed = STAGE_TRANSITIONS.get(current, ())
        if to_status not in allowed:
            raise InvalidTransitionError(
                subject=f"stage {stage_id!r} of chain {self.external_id!r}",
                current=current,
                requested=to_status,
                allowed=list(allowed),
                chain_id=self.external_id,
                stage_id=stage_id,
            )
        self.trigger(
            StageTransitioned,
            meta,
            stage_id=stage_id,
            from_status=current,
            to_status=to_status,
            reason=reason,
            error_message=error_message,
        )
        awaiting = any(s["status"] == "awaiting_approval" for s in self.stages.values())
        if awaiting and self.status == "active":
            self._follow_status(meta, "pending_approval", f"stage {stage_id} awaits approval")
        elif not awaiting and self.status == "pending_approval":
            self._follow_status(meta, "active", f"stage {stage_id} left awaiting_approval")

    def link_stage_session(self, meta: EventMeta, *, stage_id: str, session_id: str) -> None:
        """Link the session that ran a stage.

        Raises:
            ChainNotFoundError, StageNotFoundError: unknown chain or stage.
        """
        self._stage(stage_id)
        self.trigger(StageSessionLinked, meta, stage_id=stage_id, session_id=session_id)

    def record_stage_approval(
        self,
        meta: EventMeta,
        *,
        stage_id: str,
        approval_status: str,
        approval_id: str | None = None,
        approval_type: str | None = None,
        human_feedback: str | None = None,
        iteration: int | None = None,
    ) -> None:
        """Record a stage's approval status.

        Raises:
            ChainNotFoundError, StageNotFoundError: unknown chain or stage.
        """
        self._stage(stage_id)
        self.trigger(
            StageApprovalRecorded,
            meta,
            stage_id=stage_id,
            approval_id=approval_id,
            approval_type=approval_type,
            approval_status=approval_status,
            human_feedback=human_feedback,
            iteration=iteration,
        )

    def record_stage_metrics(
        self,
        meta: EventMeta,
        *,
        stage_id: str,
        metrics: dict[str, float],
        model: str | None = None,
        cost_provenance: str | None = None,
    ) -> None:
        """Add cost/token/turn increments to a stage (keys from ``STAGE_METRICS``).

        Raises:
            ChainNotFoundError, StageNotFoundError: unknown chain or stage.
        """
        self._stage(stage_id)
        self.trigger(
            StageMetricsRecorded,
            meta,
            stage_id=stage_id,
            metrics=metrics,
            model=model,
            cost_provenance=cost_provenance,
        )

    def change_status(self, meta: EventMeta, *, status: str, reason: str | None = None) -> None:
        """Move the chain's own status.

        Raises:
            ChainNotFoundError: the chain was never created.
            InvalidTransitionError: not an allowed move.
        """
        self._require_created()
        allowed = CHAIN_TRANSITIONS.get(self.status or "", ())
        if status not in allowed:
            raise InvalidTransitionError(
                subject=f"chain {self.external_id!r}",
                current=self.status,
                requested=status,
                allowed=list(allowed),
                chain_id=self.external_id,
            )
        self.trigger(
            ChainStatusChanged, meta, status=status, previous_status=self.status, reason=reason
        )

    def state(self) -> dict[str, Any]:
        """Status, current stage and the stages in stage-number order."""
        stages = sorted(
            ({"stage_id": k, **v} for k, v in self.stages.items()),
            key=lambda s: s["stage_number"],
        )
        return {
            **super().state(),
            "status": self.status,
            "current_stage_id": self.current_stage_id,
            "stages": stages,
        }

    def _require_created(self) -> None:
        if not self.created:
            raise ChainNotFoundError(chain_id=self.external_id)

    def _stage(self, stage_id: str) -> dict[str, Any]:
        self._require_created()
        try:
            return self.stages[stage_id]
        except KeyError:
            raise StageNotFoundError(chain_id=self.external_id, stage_id=stage_id) from None

    def _next_stage_number(self) -> int:
        return max((s["stage_number"] for s in self.stages.values()), default=0) + 1

    def _follow_status(self, meta: EventMeta, status: str, reason: str) -> None:
        self.trigger(
            ChainStatusChanged,
            EventMeta(
                event_id=f"{meta.event_id}#chain-status",
                content_sha256=meta.content_sha256,
                occurred_at=meta.occurred_at,
                source=meta.source,
            ),
            status=status,
            previous_status=self.status,
            reason=reason,
        )
