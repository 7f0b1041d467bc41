"""Claude Code hook payloads to ledger commands (``POST /v1/hooks/claude-code``).

Claude Code's HTTP hooks POST one JSON object per hook event. ``map_hook`` checks it and turns it
into domain ``Command``s, one per hook:

==================== ======================================================================
hook_event_name      command (stream ``session``/``session_id`` unless said otherwise)
==================== ======================================================================
SessionStart         ``start`` (``source`` -> ``start_source``)
UserPromptSubmit     ``record_message`` role ``user``, kind ``prompt``
PreToolUse           ``start_tool_call``
PostToolUse          ``end_tool_call`` ``success=True``
PostToolUseFailure   ``end_tool_call`` ``success=False`` with ``error``, ``is_interrupt``
PermissionRequest    ``request`` on stream ``approval``/``"cc-perm-" + sha256[:32]``
Notification         ``record_message`` role ``system``, kind ``notification``
SubagentStart        ``start_tool_call`` of tool ``Subagent:<agent_type>``, id ``agent_id``
SubagentStop         ``end_tool_call`` of tool ``Subagent:<agent_type>``, id ``agent_id``
PreCompact           ``record_message`` role ``system``, kind ``pre_compact``
Stop                 ``stop_turn``
SessionEnd           ``end``
anything else        ``record_hook_event`` (kept verbatim, never dropped)
==================== ======================================================================

Fields a command has no parameter for go to its ``attributes``, so nothing the hook said is lost
(Claude Code adds fields over versions: ``prompt_id``, ``effort``, ``scratchpad_dir``, ...).

Idempotency (DESIGN.md §2): ``event_id`` is ``cc:<session_id>:<hook_event_name>:<tool_use_id>``,
for subagent hooks ``cc:<session_id>:<hook_event_name>:<agent_id>:sha256:<content_sha256>``,
with a ``prompt_id`` (newer Claude Code)
``cc:<session_id>:<hook_event_name>:<prompt_id>:sha256:<content_sha256>``, else
``cc:<session_id>:<hook_event_name>:sha256:<content_sha256>``; ``content_sha256`` is taken over
the whole payload. A retried payload is a duplicate; a different one under the same
``tool_use_id`` is a conflict. A payload named by its content alone (``Stop``, ``Notification``,
a repeated prompt, 2025-era tool hooks without ``tool_use_id``: Claude Code sends the same
``Stop`` payload at the end of every turn) or by its content and ``agent_id`` (subagent hooks:
Claude Code fires ``SubagentStart`` again when a subagent resumes, and its ``SubagentStop``
then comes again) is a ``repeatable`` command: a duplicate only while it is the session's last
event, otherwise a new occurrence (``LedgerAggregate.occurrence``). The subagent's tool call is
the one its first start opened; a later start or stop of it is kept as ``HookEventRecorded``.

Sources:
    - Claude Code hooks reference, "Hook input": https://code.claude.com/docs/en/hooks
    - SOURCES.md §6 "Claude Code as the common upstream" (fields observed in real captures,
      including 2025-era payloads without ``tool_use_id`` or ``permission_mode``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.offload import Offload, json_and_sha256
from domain.base import EventMeta, content_sha256
from domain.ledger import Command

__all__ = [
    "AGENT",
    "HOOK_EVENTS",
    "SOURCE",
    "HookPayloadError",
    "Offload",
    "map_hook",
]

SOURCE: Final = "hook:claude-code"
"""``EventMeta.source`` of every event that arrived as a Claude Code hook."""

AGENT: Final = "claude-code"
"""The ``agent`` of sessions started by a hook, and ``requested_by`` of their approvals."""

HOOK_EVENTS: Final[tuple[str, ...]] = (
    "SessionStart",
    "UserPromptSubmit",
    "PreToolUse",
    "PostToolUse",
    "PostToolUseFailure",
    "PermissionRequest",
    "Notification",
    "SubagentStart",
    "SubagentStop",
    "PreCompact",
    "Stop",
    "SessionEnd",
)
"""The ``hook_event_name`` values with a mapping of their own; any other is kept verbatim."""

"""``(value, media_type) -> value or a blob reference {sha256, size_bytes, media_type}``.

The route passes one that moves values above the blob threshold to the blob store; the default
keeps every value inline.
"""

_JSON: Final = "application/json"
_TEXT: Final = "text/plain"

#: Never offloaded: they address the stream and name the event.
_ENVELOPE: Final = frozenset({"session_id", "hook_event_name"})

_SUBAGENT_HOOKS: Final = frozenset({"SubagentStart", "SubagentStop"})

# RFC 3339 date-time (section 5.6); the offset may be missing because some loggers write naive
# local stamps, which are read as UTC.
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})?"
)


def _identity(value: Any, _media_type: str) -> Any:
    return value


class HookPayloadError(ValueError):
    """The body is not a Claude Code hook payload (HTTP 422; nothing is appended).

    Attributes:
        errors: one entry per problem, in pydantic's shape: ``loc`` (tuple of keys and indexes
            into the payload; empty for the payload itself), ``msg`` (human-readable) and
            ``type`` (a pydantic error type such as ``missing``, ``string_type``, ``dict_type``).
    """

    def __init__(self, errors: Sequence[Mapping[str, Any]]) -> None:
        """Build the error from its problem list.

        Args:
            errors: entries with at least ``loc`` and ``msg``.
        """
        self.errors: list[dict[str, Any]] = [dict(error) for error in errors]
        summary = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(body)'}: {error['msg']}"
            for error in self.errors
        )
        super().__init__(f"not a Claude Code hook payload: {summary}")


# -- validation models ------------------------------------------------------------------------
# Only the fields a command takes as typed arguments are declared; everything else passes through
# untouched (extra="allow"). strict=True because a hook never sends "1" for a number or "true" for
# a boolean, and coercing would hide a malformed sender.

_NonEmptyStr = Annotated[str, Field(min_length=1)]


class _Hook(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    session_id: _NonEmptyStr
    hook_event_name: _NonEmptyStr
    # Part of every event_id when present.
    tool_use_id: _NonEmptyStr | None = None


class _SessionStart(_Hook):
    model: str | None = None
    source: str | None = None
    cwd: str | None = None
    permission_mode: str | None = None
    transcript_path: str | None = None


class _UserPromptSubmit(_Hook):
    prompt: str


class _ToolHook(_Hook):
    tool_name: _NonEmptyStr


class _PreToolUse(_ToolHook):
    tool_input: dict[str, Any]
    agent_id: _NonEmptyStr | None = None


class _PostToolUseFailure(_ToolHook):
    error: str | None = None
    is_interrupt: bool | None = None


class _PermissionRequest(_ToolHook):
    tool_input: dict[str, Any]


class _Notification(_Hook):
    message: str
    notification_type: str | None = None


class _Subagent(_Hook):
    agent_id: _NonEmptyStr | None = None
    agent_type: str | None = None


class _PreCompact(_Hook):
    trigger: str | None = None
    custom_instructions: str | None = None


class _SessionEnd(_Hook):
    reason: str | None = None


_MODELS: Final[dict[str, type[_Hook]]] = {
    "SessionStart": _SessionStart,
    "UserPromptSubmit": _UserPromptSubmit,
    "PreToolUse": _PreToolUse,
    "PostToolUse": _ToolHook,
    "PostToolUseFailure": _PostToolUseFailure,
    "PermissionRequest": _PermissionRequest,
    "Notification": _Notification,
    "SubagentStart": _Subagent,
    "SubagentStop": _Subagent,
    "PreCompact": _PreCompact,
    "SessionEnd": _SessionEnd,
}


# -- mapping ----------------------------------------------------------------------------------


def map_hook(
    payload: object,
    *,
    project: str,
    received_at: datetime,
    offload: Offload = _identity,
    idempotency_key: str | None = None,
) -> list[Command]:
    """Map one Claude Code hook payload to the ledger commands that record it.

    Args:
        payload: the parsed request body; must be a JSON object with a non-empty string
            ``session_id`` and ``hook_event_name`` (Claude Code hooks reference, "Common input
            fields"). Unknown fields are kept.
        project: the tenant every command is addressed to.
        received_at: when the ledger received the body; the events' ``occurred_at`` unless the
            payload carries an RFC 3339 ``timestamp`` of its own. Naive values are read as UTC.
        offload: applied to values that may be large (tool input and response, prompt, message
            content, attribute values that are strings, objects or arrays) with their media type
            (``application/json`` or ``text/plain``); what it returns is stored instead. Never
            applied to ``session_id`` or ``hook_event_name``.
        idempotency_key: the sender's name for this occurrence (HTTP ``Idempotency-Key``): the
            event id is then ``cc:<session_id>:<hook_event_name>:key:<idempotency_key>``, a
            natural key (not ``repeatable``) whatever the payload.

    Returns:
        The commands recording the hook (one per hook event), in the order to handle them; see
        the module docstring for the action per ``hook_event_name``. Every ``args`` value is
        plain JSON data.

    Raises:
        HookPayloadError: the payload is not a JSON object, lacks ``session_id`` or
            ``hook_event_name``, or a field the mapping uses has the wrong type (e.g. a
            non-string ``tool_name``); ``errors`` lists every problem found.
    """
    plain = _validated(payload)
    sha = content_sha256(plain)
    event_id, repeatable = _event_id(plain, sha, idempotency_key)
    meta = EventMeta(
        event_id=event_id,
        content_sha256=sha,
        occurred_at=_occurred_at(plain.get("timestamp"), received_at),
        source=SOURCE,
    )
    name: str = plain["hook_event_name"]
    if name == "PermissionRequest":
        # PermissionRequest carries no tool_use_id (SOURCES.md §6): one approval per distinct
        # payload, so a retry lands on the same stream and is a duplicate there.
        kind, external_id = "approval", "cc-perm-" + sha[:32]
        action, args = _approval_request(plain, offload)
        repeatable = False  # its stream is its content: a repeat is that approval again
    else:
        kind, external_id = "session", plain["session_id"]
        action, args = _session_command(name, plain, offload)
    return [
        Command(
            kind=kind,
            external_id=external_id,
            action=action,
            meta=meta,
            args=args,
            project=project,
            repeatable=repeatable,
        )
    ]


def _call(action: str, **args: Any) -> tuple[str, dict[str, Any]]:
    return action, args


def _tool_input(offload: Offload, value: Any) -> dict[str, Any]:
    """``tool_input`` (inline or its blob reference) and ``tool_input_sha256``."""
    tool_input, digest = json_and_sha256(offload, value)
    return {"tool_input": tool_input, "tool_input_sha256": digest}


def _attributes(plain: Mapping[str, Any], offload: Offload, *mapped: str) -> dict[str, Any]:
    """What the hook said that no command parameter holds (never the envelope fields)."""
    return _offloaded(plain, offload, drop=_ENVELOPE.union(mapped))


def _approval_request(plain: dict[str, Any], offload: Offload) -> tuple[str, dict[str, Any]]:
    return _call(
        "request",
        approval_type="tool",
        session_id=plain["session_id"],
        tool_use_id=plain.get("tool_use_id"),
        tool_name=plain["tool_name"],
        **_tool_input(offload, plain["tool_input"]),
        requested_by=AGENT,
        attributes=_attributes(plain, offload, "tool_name", "tool_input", "tool_use_id"),
    )


def _session_command(
    name: str, plain: dict[str, Any], offload: Offload
) -> tuple[str, dict[str, Any]]:
    """``(action, args)`` of a hook recorded on the session stream."""
    get = plain.get
    match name:
        case "SessionStart":
            return _call(
                "start",
                agent=AGENT,
                model=get("model"),
                cwd=get("cwd"),
                start_source=get("source"),
                permission_mode=get("permission_mode"),
                transcript_path=get("transcript_path"),
                attributes=_attributes(
                    plain, offload, "model", "cwd", "source", "permission_mode", "transcript_path"
                ),
            )
        case "UserPromptSubmit":
            return _call(
                "record_message",
                role="user",
                message_kind="prompt",
                content=offload(plain["prompt"], _TEXT),
                attributes=_attributes(plain, offload, "prompt"),
            )
        case "PreToolUse":
            return _call(
                "start_tool_call",
                tool_name=plain["tool_name"],
                **_tool_input(offload, plain["tool_input"]),
                # None on 2025-era payloads: the session then pairs the end by tool name.
                tool_use_id=get("tool_use_id"),
                agent_id=get("agent_id"),
                attributes=_attributes(
                    plain, offload, "tool_name", "tool_input", "tool_use_id", "agent_id"
                ),
            )
        case "PostToolUse":
            return _call(
                "end_tool_call",
                tool_name=plain["tool_name"],
                success=True,
                tool_use_id=get("tool_use_id"),
                tool_response=_offload_value(get("tool_response"), offload),
                attributes=_attributes(plain, offload, "tool_name", "tool_use_id", "tool_response"),
            )
        case "PostToolUseFailure":
            return _call(
                "end_tool_call",
                tool_name=plain["tool_name"],
                success=False,
                tool_use_id=get("tool_use_id"),
                error=get("error"),
                is_interrupt=get("is_interrupt"),
                attributes=_attributes(
                    plain, offload, "tool_name", "tool_use_id", "error", "is_interrupt"
                ),
            )
        case "Notification":
            return _call(
                "record_message",
                role="system",
                message_kind="notification",
                content=offload(plain["message"], _TEXT),
                attributes=_attributes(plain, offload, "message"),
            )
        case "SubagentStart":
            # AILANG's mapping: a subagent run is a tool call whose id is its agent_id.
            tool_input = {"agent_type": get("agent_type")}
            return _call(
                "start_tool_call",
                tool_name=_subagent_tool_name(plain),
                tool_input=tool_input,
                tool_input_sha256=content_sha256(tool_input),
                tool_use_id=get("agent_id"),
                attributes=_attributes(plain, offload, "agent_id", "agent_type"),
                repeat_hook="SubagentStart",
            )
        case "SubagentStop":
            # 2025-era SubagentStop has no agent_id: the session pairs it with the latest
            # unfinished "Subagent" call, or records it as an orphan.
            return _call(
                "end_tool_call",
                tool_name=_subagent_tool_name(plain),
                success=True,
                tool_use_id=get("agent_id"),
                attributes=_attributes(plain, offload, "agent_id", "agent_type"),
                repeat_hook="SubagentStop",
            )
        case "PreCompact":
            return _call(
                "record_message",
                role="system",
                message_kind="pre_compact",
                content=_offload_value(get("custom_instructions"), offload),
                attributes=_attributes(plain, offload, "custom_instructions"),
            )
        case "Stop":
            return _call("stop_turn", payload=_attributes(plain, offload))
        case "SessionEnd":
            # Claude Code logs SessionEnd more than once: a repeat is kept, not refused.
            return _call(
                "end",
                reason=get("reason"),
                attributes=_attributes(plain, offload, "reason"),
                repeat_hook="SessionEnd",
            )
        case _:
            # A hook this version does not know (e.g. TaskCompleted, PermissionDenied, Setup):
            # kept whole, so a later mapping can be replayed from the log.
            return _call(
                "record_hook_event",
                hook_event_name=name,
                payload=_offloaded(plain, offload, keep=_ENVELOPE),
            )


# -- helpers ----------------------------------------------------------------------------------


def _validated(payload: Any) -> dict[str, Any]:
    """The payload as plain JSON data, checked against the model of its hook event."""
    if not isinstance(payload, Mapping):
        raise HookPayloadError(
            [
                {
                    "loc": (),
                    "msg": f"a hook payload is a JSON object, got {_json_type(payload)}",
                    "type": "dict_type",
                }
            ]
        )
    errors: list[dict[str, Any]] = []
    try:
        plain = _plain(payload, (), errors)
    except RecursionError:
        raise HookPayloadError(
            [{"loc": (), "msg": "the payload is nested too deeply", "type": "recursion_loop"}]
        ) from None
    if errors:
        raise HookPayloadError(errors)
    assert isinstance(plain, dict)
    name = plain.get("hook_event_name")
    model = _MODELS.get(name, _Hook) if isinstance(name, str) else _Hook
    try:
        model.model_validate(plain)
    except ValidationError as error:
        raise HookPayloadError(
            [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in error.errors()]
        ) from None
    return plain


def _plain(value: Any, loc: tuple[str | int, ...], errors: list[dict[str, Any]]) -> Any:
    """A copy of ``value`` made of dict/list/str/int/float/bool/None, or errors naming the rest."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            errors.append(
                {"loc": loc, "msg": "JSON has no NaN or Infinity", "type": "finite_number"}
            )
        return value
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                errors.append(
                    {
                        "loc": (*loc, str(key)),
                        "msg": "object keys must be strings",
                        "type": "string_type",
                    }
                )
                continue
            result[key] = _plain(item, (*loc, key), errors)
        return result
    if isinstance(value, list | tuple):
        return [_plain(item, (*loc, index), errors) for index, item in enumerate(value)]
    errors.append(
        {"loc": loc, "msg": f"not JSON data: {type(value).__name__}", "type": "json_type"}
    )
    return None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return type(value).__name__


def _event_id(plain: Mapping[str, Any], sha: str, idempotency_key: str | None) -> tuple[str, bool]:
    """``(event_id, repeatable)``: repeatable when only the content names the hook."""
    prefix = f"cc:{plain['session_id']}:{plain['hook_event_name']}"
    if idempotency_key is not None:
        return f"{prefix}:key:{idempotency_key}", False
    if plain.get("tool_use_id") is not None:
        return f"{prefix}:{plain['tool_use_id']}", False
    if plain["hook_event_name"] in _SUBAGENT_HOOKS and plain.get("agent_id") is not None:
        # Claude Code fires SubagentStart again when a subagent resumes: the agent_id names
        # the subagent, not the occurrence.
        return f"{prefix}:{plain['agent_id']}:sha256:{sha}", True
    prompt_id = plain.get("prompt_id")
    if isinstance(prompt_id, str) and prompt_id:
        return f"{prefix}:{prompt_id}:sha256:{sha}", False
    return f"{prefix}:sha256:{sha}", True


def _occurred_at(timestamp: Any, received_at: datetime) -> datetime:
    """The payload's own RFC 3339 ``timestamp`` when it has a usable one, else ``received_at``."""
    parsed: datetime | None = None
    if isinstance(timestamp, str) and _RFC3339.fullmatch(timestamp):
        try:
            parsed = datetime.fromisoformat(timestamp.upper())
        except ValueError:  # e.g. a leap second or month 13: well-formed but not a datetime
            parsed = None
    if parsed is not None:
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            return parsed.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00: no such instant in UTC
            pass
    if received_at.tzinfo is None:
        return received_at.replace(tzinfo=UTC)
    return received_at.astimezone(UTC)


def _subagent_tool_name(plain: Mapping[str, Any]) -> str:
    agent_type = plain.get("agent_type")
    return f"Subagent:{agent_type}" if agent_type else "Subagent"


def _offload_value(value: Any, offload: Offload) -> Any:
    if isinstance(value, str):
        return offload(value, _TEXT)
    if isinstance(value, dict | list):
        return offload(value, _JSON)
    # Numbers, booleans and null are never large.
    return value


def _offloaded(
    fields: Mapping[str, Any],
    offload: Offload,
    *,
    drop: frozenset[str] = frozenset(),
    keep: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """``fields`` in their order, without ``drop``, values offloaded except those in ``keep``."""
    return {
        key: value if key in keep else _offload_value(value, offload)
        for key, value in fields.items()
        if key not in drop
    }
