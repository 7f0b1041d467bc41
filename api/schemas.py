"""Request bodies of ``POST /v1/events``: typed events discriminated by ``type``.

Each model maps to one command of one stream (``to_command``). Field names are the domain's, which
are the upstream tools' (SOURCES.md): ``tool_use_id`` (Claude Code), ``criterion_id``/``phase_id``
(scafld), approval ``decision`` (neutral) with the source's own word kept, AILANG chain and stage
statuses. Unknown fields are refused (422), so a typo is never silently dropped.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from keyword import iskeyword
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from api.offload import Offload, inline, json_and_sha256
from domain.approval import APPROVAL_TYPES
from domain.base import DEFAULT_PROJECT, EventMeta, content_sha256, utcnow
from domain.chain import CHAIN_TRANSITIONS, STAGE_METRICS, STAGE_TRANSITIONS
from domain.evidence import ENTRY_FIELDS
from domain.ledger import Command
from domain.session import STATUSES
from projections.schema import INT64_MAX, INT64_MIN

#: Source words for a decision, mapped to the neutral ``approved`` / ``denied``
#: (HumanLayer approve/deny, AILANG approved/rejected, cc-broker allow/deny, Claude Code OTel accept/reject).
DECISION_WORDS = {
    "approved": "approved", "approve": "approved", "allow": "approved", "accept": "approved",
    "allowed": "approved", "accepted": "approved",
    "denied": "denied", "deny": "denied", "rejected": "denied", "reject": "denied",
}  # fmt: skip

#: ``DECISION_WORDS`` in any case, as OpenAPI's ``pattern`` (ECMA-262 has no case-insensitive
#: flag inside a pattern, so each letter is a class of its two cases). The same language as
#: ``ApprovalDecidedBody``'s ``str.lower()`` check: no character but an ASCII letter lowercases
#: into one of the words' letters.
DECISION_PATTERN = (
    "^(?:" + "|".join("".join(f"[{c}{c.upper()}]" for c in word) for word in DECISION_WORDS) + ")$"
)

#: scafld workspace baseline line: ``"<XY> <sha256|deleted|unreadable> <path>"``.
BASELINE_LINE = re.compile(r"^[ MADRCU?!T]{2} ([0-9a-f]{64}|deleted|unreadable) \S.*$")

#: How deeply a JSON body may nest objects and arrays (the body itself is level 1; a typed
#: event of a batch is level 3, its ``attributes`` level 4). RFC 8259 section 9 lets a parser
#: limit it; ours is far below what every later step handles (pydantic's serializer, orjson's
#: 254 levels, the standard library's recursion limit), so that a body the API takes is never
#: one the content hash, the stored event or the projector cannot encode. OTLP/JSON has its own
#: bound (``api.otlp``, 64 levels of ``AnyValue``). Checked by ``api.routes.ingest._parse_json``
#: and ``api.fast_events``.
MAX_JSON_DEPTH = 64


def nests_too_deep(value: Any, level: int = 1) -> bool:
    """Whether ``value``, at nesting level ``level`` of a JSON body (the body itself is level 1),
    nests objects and arrays deeper than ``MAX_JSON_DEPTH``. Iterative (no recursion limit);
    ~1 µs per event of a typed-event batch."""
    if type(value) is not dict and type(value) is not list:
        return False
    stack = [(value, level)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > MAX_JSON_DEPTH:
            return True
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                push((child, depth + 1))
    return False


Id = Annotated[str, Field(min_length=1, max_length=512)]

#: Integers are signed 64-bit, as the read models (BIGINT, SQLite INTEGER) and JSON parsers
#: other than Python's hold them: a larger one is a 422, not a value the read models clamp.
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]

#: RFC 3339 ``date-time`` (§5.6): full date, ``T`` (or ``t`` or a space, as §5.6's NOTE allows),
#: time with seconds and optional fraction, and an offset (``Z`` or ``±hh:mm``).
RFC3339_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})"
)


def _rfc3339(value: Any) -> Any:
    """Let only RFC 3339 date-time strings (and ``datetime`` objects, from Python callers) on to
    ``AwareDatetime``, which alone would also read a number, or a string of digits, as Unix
    seconds or milliseconds: a client's epoch nanoseconds or a misplaced counter would become a
    plausible instant instead of a 422."""
    if isinstance(value, datetime) or (
        isinstance(value, str) and RFC3339_DATE_TIME.fullmatch(value)
    ):
        return value
    raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-11-22T09:30:00Z")


def _in_range(value: datetime) -> datetime:
    """Let only instants that exist in UTC through: ``0001-01-01T00:00:00+14:00`` is well-formed
    but before ``datetime.min`` once in UTC, and every comparison or conversion of it (the
    projections store UTC) would raise ``OverflowError``."""
    if 1 < value.year < 9999:  # an offset moves an instant by less than a day
        return value
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            "must be an RFC 3339 date-time between 0001-01-01T00:00:00Z and "
            "9999-12-31T23:59:59.999999Z once in UTC"
        ) from None
    return value


#: A timestamp as an RFC 3339 ``date-time`` string with an offset; read as an aware ``datetime``
#: whose instant lies within ``datetime``'s range in UTC (years 1-9999).
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_in_range)]
_TIMESTAMP: TypeAdapter[datetime] = TypeAdapter(Timestamp)


def member_of(values: Iterable[str]) -> AfterValidator:
    """A validator letting only ``values`` through (a 422 names them)."""
    allowed = list(values)

    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {allowed}")
        return value

    return AfterValidator(check)


def enum_of(values: Iterable[str]) -> Any:
    """A ``Field`` showing ``values`` as the OpenAPI ``enum`` of a ``str``."""
    return Field(json_schema_extra={"enum": list(values)})


# ``str`` limited to the domain's status machine keys.
StageStatus = Annotated[str, member_of(STAGE_TRANSITIONS), enum_of(STAGE_TRANSITIONS)]
ChainStatus = Annotated[str, member_of(CHAIN_TRANSITIONS), enum_of(CHAIN_TRANSITIONS)]
SessionStatus = Annotated[str, member_of(STATUSES), enum_of(STATUSES)]


class EventBody(BaseModel):
    """Fields every typed event may carry."""

    model_config = ConfigDict(extra="forbid")

    KIND: ClassVar[str]
    ACTION: ClassVar[str]

    event_id: Id | None = Field(
        default=None,
        description="Idempotency key. Omitted: derived from the sha256 of the event body, so a retried body is a duplicate.",
    )
    occurred_at: Timestamp | None = Field(
        default=None, description="Writer's clock (RFC 3339 with offset). Omitted: now."
    )
    source: str = Field(
        default="api",
        pattern=r"^(api|otlp|hook:[A-Za-z0-9_.-]+|import:[A-Za-z0-9_.-]+)$",
        description="How it arrived: api, import:<tool>, ...",
    )

    def external_id(self) -> str:
        """The stream's upstream id."""
        raise NotImplementedError

    def args(self, offload: Offload) -> dict[str, Any]:
        """Keyword arguments of the aggregate command."""
        raise NotImplementedError

    def to_command(self, project: str = DEFAULT_PROJECT, offload: Offload = inline) -> Command:
        """The domain command this event asks for (``to_commands`` maps a batch)."""
        return self._command(self.model_dump(mode="json", exclude_none=True), project, offload)

    def _command(self, body: dict[str, Any], project: str, offload: Offload) -> Command:
        """The command, given ``body``: this event as JSON values without its nulls (what
        ``content_sha256`` hashes, and what a derived ``event_id`` is made of)."""
        digest = content_sha256(body)
        meta = EventMeta(  # event_id, content_sha256, occurred_at, source
            self.event_id or f"api:sha256:{digest}",
            digest,
            self.occurred_at or utcnow(),
            self.source,
        )
        return Command(
            self.KIND, self.external_id(), self.ACTION, meta, self.args(offload), project
        )


def _fields(model: Any, *names: str) -> dict[str, Any]:
    """``{name: model.<name>}`` of the named fields. ``model`` is the event's model, or its
    struct (``api.fast_events``: the models' ``args`` run on both). Read by a function made once
    per tuple of names (``_reader``)."""
    return _reader(names)(model)


@cache
def _reader(names: tuple[str, ...]) -> Callable[[Any], dict[str, Any]]:
    """``lambda m: {"a": m.a, "b": m.b, ...}`` for ``names``, compiled once (as ``dataclasses``
    and ``namedtuple`` make their methods): a dict display of attribute reads builds the dict in
    ~40 % of the time of ``dict(zip(names, attrgetter(*names)(m)))`` (timeit, 3-8 names).

    Raises:
        ValueError: a name that is not an identifier, or none.
    """
    if not names or not all(name.isidentifier() and not iskeyword(name) for name in names):
        raise ValueError(f"_fields reads fields by their identifiers, not {names!r}")
    items = ", ".join(f"{name!r}: m.{name}" for name in names)
    reader: Callable[[Any], dict[str, Any]] = eval(f"lambda m: {{{items}}}")
    return reader


# -- approvals ---------------------------------------------------------------------------------


class ApprovalRequestedBody(EventBody):
    """Ask for an approval (HumanLayer ``approvals`` row; AILANG stage approval; cc-broker ``permission_request``)."""

    KIND = "approval"
    ACTION = "request"
    type: Literal["approval.requested"]
    approval_id: Id
    approval_type: Literal["tool", "merge", "handoff", "merge_handoff"] = "tool"
    session_id: Id | None = None
    tool_use_id: Id | None = None
    tool_name: str | None = None
    tool_input: Any = None
    chain_id: Id | None = None
    stage_id: Id | None = None
    requested_by: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    def external_id(self) -> str:
        return self.approval_id

    def args(self, offload: Offload) -> dict[str, Any]:
        assert self.approval_type in APPROVAL_TYPES
        tool_input, tool_input_sha256 = json_and_sha256(offload, self.tool_input)
        return {
            **_fields(
                self,
                "approval_type",
                "session_id",
                "tool_use_id",
                "tool_name",
                "chain_id",
                "stage_id",
                "requested_by",
                "attributes",
            ),
            "tool_input": tool_input,
            "tool_input_sha256": tool_input_sha256 if self.tool_input is not None else None,
        }


class ApprovalDecidedBody(EventBody):
    """Decide an approval. ``decision`` in any source's words; stored neutral + verbatim."""

    KIND = "approval"
    ACTION = "decide"
    type: Literal["approval.decided"]
    approval_id: Id
    decision: str = Field(
        description="approved or denied, in any source's word, in any case: "
        f"{', '.join(DECISION_WORDS)} (HumanLayer approve/deny, AILANG approved/rejected, "
        "cc-broker allow/deny, Claude Code accept/reject); kept verbatim as source_decision",
        json_schema_extra={"pattern": DECISION_PATTERN, "examples": ["approve", "Deny"]},
    )
    scope: str | None = Field(
        default=None, description="e.g. cc-broker once|always|timeout|cancelled"
    )
    decided_by: str | None = None
    comment: str | None = None

    @field_validator("decision")
    @classmethod
    def _known_word(cls, value: str) -> str:
        if value.lower() not in DECISION_WORDS:
            raise ValueError(f"decision must be one of {sorted(DECISION_WORDS)}")
        return value

    def external_id(self) -> str:
        return self.approval_id

    def args(self, offload: Offload) -> dict[str, Any]:
        return {
            "decision": DECISION_WORDS[self.decision.lower()],
            "source_decision": self.decision,
            **_fields(self, "scope", "decided_by", "comment"),
        }


# -- chains ------------------------------------------------------------------------------------


class ChainCreatedBody(EventBody):
    """Create an execution chain (AILANG ``execution_chains``)."""

    KIND = "chain"
    ACTION = "create"
    type: Literal["chain.created"]
    chain_id: Id
    title: str | None = None
    source_type: Literal["github_issue", "message", "email", "manual", "eval_suite"] | None = None
    source_ref: str | None = None
    github_repo: str | None = None
    github_issue_number: Int64 | None = None
    workspace: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    def external_id(self) -> str:
        return self.chain_id

    def args(self, offload: Offload) -> dict[str, Any]:
        return _fields(
            self,
            "title",
            "source_type",
            "source_ref",
            "github_repo",
            "github_issue_number",
            "workspace",
            "attributes",
        )


class _StageBody(EventBody):
    KIND = "chain"
    chain_id: Id
    stage_id: Id

    def external_id(self) -> str:
        return self.chain_id


class StageAddedBody(_StageBody):
    """Add a stage (AILANG ``chain_stages``; ``agent_id`` e.g. ``sprint-planner``)."""

    ACTION = "add_stage"
    type: Literal["chain.stage_added"]
    agent_id: Id
    stage_number: int | None = Field(default=None, ge=1, le=INT64_MAX)
    provider: str | None = None
    handoff_to: str | None = None

    def args(self, offload: Offload) -> dict[str, Any]:
        return _fields(self, "stage_id", "agent_id", "stage_number", "provider", "handoff_to")


class StageTransitionedBody(_StageBody):
    """Move a stage: pending -> running -> awaiting_approval -> running/completed/failed."""

    ACTION = "transition_stage"
    type: Literal["chain.stage_transitioned"]
    to_status: StageStatus
    reason: str | None = None
    error_message: str | None = None

    def args(self, offload: Offload) -> dict[str, Any]:
        return _fields(self, "stage_id", "to_status", "reason", "error_message")


class StageSessionLinkedBody(_StageBody):
    """Link the agent session that ran a stage."""

    ACTION = "link_stage_session"
    type: Literal["chain.stage_session_linked"]
    session_id: Id

    def args(self, offload: Offload) -> dict[str, Any]:
        return _fields(self, "stage_id", "session_id")


class StageApprovalRecordedBody(_StageBody):
    """A stage's approval state (AILANG ``approval_status`` pending|approved|rejected)."""

    ACTION = "record_stage_approval"
    type: Literal["chain.stage_approval_recorded"]
    approval_status: Literal["pending", "approved", "rejected"]
    approval_id: Id | None = None
    approval_type: Literal["tool", "merge", "handoff", "merge_handoff"] | None = None
    human_feedback: str | None = None
    iteration: int | None = Field(default=None, ge=1, le=INT64_MAX)

    def args(self, offload: Offload) -> dict[str, Any]:
        return _fields(
            self,
            "stage_id",
            "approval_status",
            "approval_id",
            "approval_type",
            "human_feedback",
            "iteration",
        )


class StageMetricsRecordedBody(_StageBody):
    """Cost (USD), tokens, turns, tool calls and duration (ms) of a stage, as increments."""

    ACTION = "record_stage_metrics"
    type: Literal["chain.stage_metrics_recorded"]
    metrics: dict[str, float]
    model: str | None = None
    cost_provenance: Literal["metered", "list-price-equivalent", "free-local", "unknown"] | None = (
        None
    )

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(STAGE_METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {list(STAGE_METRICS)}")
        if any(v < 0 for v in value.values()):
            raise ValueError("metrics must not be negative")
        return value

    def args(self, offload: Offload) -> dict[str, Any]:
        return _fields(self, "stage_id", "metrics", "model", "cost_provenance")


class ChainStatusChangedBody(EventBody):
    """Move the chain's status (AILANG active|pending_approval|completed|failed)."""

    KIND = "chain"
    ACTION = "change_status"
    type: Literal["chain.status_changed"]
    chain_id: Id
    status: ChainStatus
    reason: str | None = None

    def external_id(self) -> str:
        return self.chain_id

    def args(self, offload: Offload) -> dict[str, Any]:
        return _fields(self, "status", "reason")


# -- sessions ----------------------------------------------------------------------------------


class _SessionBody(EventBody):
    KIND = "session"
    session_id: Id

    def external_id(self) -> str:
        return self.session_id


class SessionStartedBody(_SessionBody):
    """A session started (for agents without Claude Code hooks: Moat run, HumanLayer session, ...)."""

    ACTION = "start"
    type: Literal["session.started"]
    agent: str | None = None
    model: str | None = None
    cwd: str | None = None
    start_source: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    def args(self, offload: Offload) -> dict[str, Any]:
        return _fields(self, "agent", "model", "cwd", "start_source", "attributes")


class SessionStatusChangedBody(_SessionBody):
    """Move the HumanLayer session status machine."""

    ACTION = "change_status"
    type: Literal["session.status_changed"]
    status: SessionStatus
    reason: str | None = None

    def args(self, offload: Offload) -> dict[str, Any]:
        return _fields(self, "status", "reason")


class MessageRecordedBody(_SessionBody):
    """A message of the conversation."""

    ACTION = "record_message"
    type: Literal["session.message_recorded"]
    role: Literal["user", "assistant", "system"]
    message_kind: str = "message"
    content: Any = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    def args(self, offload: Offload) -> dict[str, Any]:
        media = "text/plain" if isinstance(self.content, str) else "application/json"
        return {
            **_fields(self, "role", "message_kind", "attributes"),
            "content": offload(self.content, media),
        }


class ToolCallStartedBody(_SessionBody):
    """A tool call started."""

    ACTION = "start_tool_call"
    type: Literal["session.tool_call_started"]
    tool_name: Id
    tool_input: Any = None
    tool_use_id: Id | None = None
    agent_id: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    def args(self, offload: Offload) -> dict[str, Any]:
        tool_input, tool_input_sha256 = json_and_sha256(offload, self.tool_input)
        return {
            **_fields(self, "tool_name", "tool_use_id", "agent_id", "attributes"),
            "tool_input": tool_input,
            "tool_input_sha256": tool_input_sha256,
        }


class ToolCallEndedBody(_SessionBody):
    """A tool call ended."""

    ACTION = "end_tool_call"
    type: Literal["session.tool_call_ended"]
    tool_name: Id
    success: bool
    tool_use_id: Id | None = None
    tool_response: Any = None
    error: str | None = None
    is_interrupt: bool | None = None
    duration_ms: float | None = Field(default=None, ge=0)
    attributes: dict[str, Any] = Field(default_factory=dict)

    def args(self, offload: Offload) -> dict[str, Any]:
        return {
            **_fields(
                self,
                "tool_name",
                "success",
                "tool_use_id",
                "error",
                "is_interrupt",
                "duration_ms",
                "attributes",
            ),
            "tool_response": offload(self.tool_response, "application/json"),
        }


class CommandExecutedBody(_SessionBody):
    """A process run in the sandbox (Moat ``ExecEvent``: give ``duration_ns`` as Moat writes it, or ``duration_ms``)."""

    ACTION = "record_command"
    type: Literal["session.command_executed"]
    command: str
    args_: list[str] = Field(default_factory=list, alias="args")
    exit_code: Int64 | None = None
    duration_ms: float | None = Field(default=None, ge=0)
    duration_ns: int | None = Field(
        default=None, ge=0, le=INT64_MAX, description="Go time.Duration (integer nanoseconds)"
    )
    working_dir: str | None = None
    pid: Int64 | None = None
    output: Any = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def args(self, offload: Offload) -> dict[str, Any]:
        duration = self.duration_ms
        if duration is None and self.duration_ns is not None:
            duration = self.duration_ns / 1e6
        return {
            **_fields(self, "command", "exit_code", "working_dir", "pid"),
            "args": self.args_,
            "duration_ms": duration,
            "output": offload(
                self.output, "text/plain" if isinstance(self.output, str) else "application/json"
            ),
        }


class NetworkRequestRecordedBody(_SessionBody):
    """An HTTP request through the sandbox proxy (Moat ``NetworkRequest``)."""

    ACTION = "record_network_request"
    type: Literal["session.network_request_recorded"]
    method: str
    url: str
    status_code: Int64 | None = None
    duration_ms: float | None = Field(default=None, ge=0)
    error: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    def args(self, offload: Offload) -> dict[str, Any]:
        return _fields(self, "method", "url", "status_code", "duration_ms", "error", "attributes")


class SecretResolvedBody(_SessionBody):
    """A secret was resolved: name and backend only (Moat ``secrets.jsonl``). A ``value`` is refused."""

    ACTION = "resolve_secret"
    type: Literal["session.secret_resolved"]
    name: str
    backend: str

    def args(self, offload: Offload) -> dict[str, Any]:
        return _fields(self, "name", "backend")


class WorkspaceBaselineCapturedBody(_SessionBody):
    """scafld ``workspace_baseline``: ``files`` as lines, or ``output`` newline-joined as scafld stores it.

    ``archive_base64``: optional tar.gz of the changed files, stored as a blob.
    """

    ACTION = "capture_workspace_baseline"
    type: Literal["session.workspace_baseline_captured"]
    files: list[str] | None = None
    output: str | None = None
    reason: str | None = None
    archive_base64: str | None = None

    @model_validator(mode="after")
    def _lines(self) -> WorkspaceBaselineCapturedBody:
        if self.files is None and self.output is None:
            raise ValueError("give files (a list of lines) or output (newline-joined lines)")
        for line in self.lines():
            if not BASELINE_LINE.fullmatch(line):  # match: "$" lets a trailing "\n" by
                raise ValueError(
                    f'not a baseline line "<XY> <sha256|deleted|unreadable> <path>": {line!r}'
                )
        if self.archive_base64 is not None:
            try:
                base64.b64decode(self.archive_base64, validate=True)
            except binascii.Error as error:
                raise ValueError(f"archive_base64 is not base64: {error}") from None
        return self

    def lines(self) -> list[str]:
        """The baseline lines (scafld ``WorkspaceBaselineSnapshot``: blank lines dropped, ``\\r`` trimmed)."""
        if self.files is not None:
            return list(self.files)
        return [ln.rstrip("\r") for ln in (self.output or "").split("\n") if ln.strip()]

    def args(self, offload: Offload) -> dict[str, Any]:
        archive = None
        if self.archive_base64 is not None:
            archive = offload(base64.b64decode(self.archive_base64), "application/gzip")
        return {"files": self.lines(), "reason": self.reason, "archive": archive}


class EvidenceRecordedBody(_SessionBody):
    """One scafld evidence ``Entry`` (``model.go`` field names; ``type`` of the entry is ``entry.type``)."""

    ACTION = "record_evidence"
    type: Literal["session.evidence_recorded"]
    entry: dict[str, Any]

    @field_validator("entry")
    @classmethod
    def _scafld_entry(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(ENTRY_FIELDS))
        if unknown:
            raise ValueError(f"unknown scafld Entry fields {unknown}")
        if not isinstance(value.get("type"), str) or not value["type"]:
            raise ValueError(
                "entry.type is required (e.g. criterion, phase, command, workspace_baseline)"
            )
        recorded_at = value.get("recorded_at")
        if not isinstance(recorded_at, str) or not recorded_at:
            raise ValueError("entry.recorded_at is required (RFC 3339)")
        try:
            _TIMESTAMP.validate_python(recorded_at)  # kept as the string scafld wrote
        except ValidationError:
            raise ValueError(
                f"entry.recorded_at is not an RFC 3339 date-time with an offset: {recorded_at!r}"
            ) from None
        return {
            k: v
            for k, v in value.items()
            if v not in (None, "", [], 0) or k in ("type", "recorded_at")
        }

    def args(self, offload: Offload) -> dict[str, Any]:
        entry = dict(self.entry)
        if isinstance(entry.get("output"), str):
            entry["output"] = offload(entry["output"], "text/plain")
        return {"entry": entry}


class FileSnapshotRecordedBody(_SessionBody):
    """A file's content as the agent saw it (HumanLayer ``file_snapshots``)."""

    ACTION = "record_file_snapshot"
    type: Literal["session.file_snapshot_recorded"]
    file_path: str
    content: str
    tool_use_id: Id | None = None

    def args(self, offload: Offload) -> dict[str, Any]:
        return {
            **_fields(self, "file_path", "tool_use_id"),
            "content": offload(self.content, "text/plain"),
        }


class SessionEndedBody(_SessionBody):
    """The session ended."""

    ACTION = "end"
    type: Literal["session.ended"]
    reason: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    def args(self, offload: Offload) -> dict[str, Any]:
        return _fields(self, "reason", "attributes")


TypedEvent = Annotated[
    ApprovalRequestedBody
    | ApprovalDecidedBody
    | ChainCreatedBody
    | StageAddedBody
    | StageTransitionedBody
    | StageSessionLinkedBody
    | StageApprovalRecordedBody
    | StageMetricsRecordedBody
    | ChainStatusChangedBody
    | SessionStartedBody
    | SessionStatusChangedBody
    | MessageRecordedBody
    | ToolCallStartedBody
    | ToolCallEndedBody
    | CommandExecutedBody
    | NetworkRequestRecordedBody
    | SecretResolvedBody
    | WorkspaceBaselineCapturedBody
    | EvidenceRecordedBody
    | FileSnapshotRecordedBody
    | SessionEndedBody,
    Field(discriminator="type"),
]


_typed_events: TypeAdapter[Sequence[Any]] = TypeAdapter(list[TypedEvent])


def to_commands(
    events: Sequence[EventBody], project: str = DEFAULT_PROJECT, offload: Offload = inline
) -> list[Command]:
    """``[event.to_command(project, offload) for event in events]``, the bodies serialised by one
    pydantic-core call instead of one ``model_dump`` per event (the same dicts; 17 instead of
    23 thousand instructions per event of the batched-ingest benchmark's mix, callgrind)."""
    bodies = _typed_events.dump_python(events, mode="json", exclude_none=True)
    return [
        event._command(body, project, offload) for event, body in zip(events, bodies, strict=True)
    ]


class EventBatch(BaseModel):
    """A batch: ``{"events": [...]}``; results come back in the same order."""

    model_config = ConfigDict(extra="forbid")
    events: list[TypedEvent] = Field(min_length=1)


class StreamRef(BaseModel):
    """Where an event went."""

    kind: str
    external_id: str
    stream_id: str


class EventResult(BaseModel):
    """Per-event outcome: ``created`` / ``duplicate`` (with the original's version and position) / ``rejected``."""

    index: int
    event_id: str
    status: Literal["created", "duplicate", "rejected"]
    stream: StreamRef
    version: int | None = None
    position: int | None = None
    error: dict[str, Any] | None = Field(
        default=None, description="problem+json object when rejected"
    )


class EventResults(BaseModel):
    """Response of ``POST /v1/events``."""

    results: list[EventResult]
    created: int
    duplicates: int
    rejected: int
