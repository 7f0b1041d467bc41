"""A faster way through ``POST /v1/events`` for well-formed bodies: msgspec structs made from the
``TypedEvent`` models, with the models' own checks, and the full pydantic path for the rest.

The typed-event models in ``api.schemas`` stay the one definition of what the route takes, of its
422 errors and of its OpenAPI. From them this module makes, once at import, a msgspec ``Struct``
per model (the same fields, defaults, length and range constraints, literals, and the field
``type`` as the tag) and decoders of ``{"events": [...]}`` and of one event into them.
``event_commands`` decodes the body bytes straight into those structs (no intermediate ``dict``
document, no model instances, no separate dump), runs the checks msgspec cannot express (the
models' ``AfterValidator``\\ s and ``field_validator``\\ s, patterns, timestamps, nesting depth)
and builds the same ``Command``\\ s as ``api.schemas.to_commands``: the same JSON body hashed
into ``content_sha256``, the same ``EventMeta``, the same arguments (each model's own ``args``
and ``external_id``, called on the struct).

It only ever says yes, or "take the full path" (``None``): a body the structs refuse for any
reason (malformed JSON or events, a value pydantic's lax mode would convert, such as ``"5"``
for an integer, a failed check, an integer field beyond 64 bits, a ``\\u`` surrogate escape,
nesting past ``MAX_JSON_DEPTH``, more than ``max_batch_events`` events, the one model with a
``model_validator``) goes through orjson and pydantic as before, which accept it or answer
the error. What is accepted, and how, is decided by the models: ``tests/unit/test_fast_events.py``
checks on thousands of generated bodies that whatever this path accepts, the full path accepts
with identical commands. (An integer beyond 64 bits in a free-form value, which orjson would
round, msgspec reads exactly, as the full path's exact parser does.)

Measured on the batched-ingest benchmark's mix (1,000-event batches, in process): parsing,
validation, the dump and the content hash took 18-19 µs per event through orjson and pydantic,
7-8 µs here; the whole in-process write path 265,241 -> 224,665 instructions per event
(callgrind, ``bench.instructions``). msgspec: https://jcristharif.com/msgspec/.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec
from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import AfterValidator, AwareDatetime, TypeAdapter
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from api.offload import Offload
from api.schemas import EventBody, Timestamp, TypedEvent, nests_too_deep
from domain.ledger import Command

#: A check run on a field's value when it is not None: returns the value (possibly changed, as
#: a ``field_validator`` may), raises ``ValueError``/``AssertionError``/``ValidationError``.
Check = Callable[[Any], Any]


class _Layout(typing.NamedTuple):
    """What ``event_commands`` needs of one event type besides its struct."""

    model: type[EventBody]
    names: tuple[str, ...]  # the struct's fields, in order (the models' field names)
    checks: tuple[tuple[int, Check], ...]  # (index in ``names``, check)
    containers: tuple[int, ...]  # indexes of fields that may hold a dict or a list
    tag: str
    body: Callable[[list[Any]], dict[str, Any]]  # the hashed body of the values (``_body``)


def _pattern_check(pattern: str) -> Check:
    """A pydantic ``pattern`` as a check. Not msgspec's ``Meta(pattern=...)``: that one searches
    with Python's ``re``, whose ``$`` also matches before a final newline (pydantic's Rust regex
    does not), so ``fullmatch`` instead. The patterns here use ASCII classes only, which both
    engines read alike."""
    compiled = re.compile(pattern)
    matched: set[str] = set()  # values seen to match (a batch repeats its source ~1,000 times)

    def check(value: str) -> str:
        if value in matched:
            return value
        if compiled.fullmatch(value) is None:
            raise ValueError(f"does not match {pattern}")
        if len(matched) < 1024:
            matched.add(value)
        return value

    return check


def _takes_one(func: Callable[..., Any]) -> bool:
    """Whether a validator takes the value alone (pydantic passes a second, ``info``, to one
    that takes two)."""
    return len(inspect.signature(func).parameters) == 1


#: annotated_types' bounds, by the name msgspec's ``Meta`` and they both give the bound.
_BOUNDS = {MinLen: "min_length", MaxLen: "max_length", Ge: "ge", Le: "le", Gt: "gt", Lt: "lt"}


def _convert(annotation: Any, metadata: Sequence[Any] = ()) -> tuple[Any, list[Check]]:
    """The msgspec type of a pydantic field annotation, and the checks msgspec cannot make.

    Raises:
        TypeError: an annotation or constraint this module does not know how to mirror
            (a model using one must be taught here; the import fails until then).
    """
    constraints: dict[str, Any] = {}
    checks: list[Check] = []

    def absorb(item: Any) -> None:
        if isinstance(item, FieldInfo):
            for inner in item.metadata:
                absorb(inner)
        elif type(item) in _BOUNDS:
            name = _BOUNDS[type(item)]
            constraints[name] = getattr(item, name)
        elif isinstance(item, AfterValidator) and _takes_one(item.func):
            checks.append(typing.cast(Check, item.func))
        elif type(item).__name__ == "_PydanticGeneralMetadata" and set(vars(item)) == {"pattern"}:
            checks.append(_pattern_check(item.pattern))
        else:
            raise TypeError(f"no fast path for the constraint {item!r}")

    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):  # X | None: constraints and checks are X's
        others = [m for m in get_args(annotation) if m is not type(None)]
        if len(others) != 1:
            raise TypeError(f"no fast path for {annotation!r}")
        converted, checks = _convert(others[0], metadata)
        return converted | None, checks
    for item in metadata:
        absorb(item)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        if get_origin(base) is Annotated or base is AwareDatetime:
            raise TypeError(f"no fast path for {annotation!r}")
        for item in extra:
            absorb(item)
        converted, inner = _convert(base)
        checks = inner + checks
    elif origin in (dict, list):
        parts = []
        for argument in get_args(annotation):
            part, inner = _convert(argument)
            if inner:
                raise TypeError(f"no fast path for checks inside {annotation!r}")
            parts.append(part)
        converted = dict[parts[0], parts[1]] if origin is dict else list[parts[0]]  # type: ignore[valid-type]
    elif origin is Literal or annotation in (str, int, float, bool, Any):
        converted = annotation
    else:
        raise TypeError(f"no fast path for {annotation!r}")
    if constraints:
        converted = Annotated[converted, msgspec.Meta(**constraints)]
    return converted, checks


def _may_contain(annotation: Any) -> bool:
    """Whether a value of this (pydantic) annotation may be a dict or a list."""
    origin = get_origin(annotation)
    if annotation is Any or origin in (dict, list):
        return True
    if origin is Annotated:
        return _may_contain(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_may_contain(member) for member in get_args(annotation))
    return False


#: Methods of the models that build a command, called on the struct (``EventBody._command``
#: reads ``KIND``, ``ACTION``, ``event_id``, ``occurred_at`` and ``source``).
_METHODS = ("_command", "external_id", "args")


def _struct(model: type[EventBody]) -> tuple[type[msgspec.Struct], _Layout] | None:
    """The struct mirroring ``model``, or None for a model with a ``model_validator`` (it needs
    the model itself: such events take the full path)."""
    decorators = model.__pydantic_decorators__
    if decorators.model_validators or decorators.root_validators:
        return None
    tag = get_args(model.model_fields["type"].annotation)[0]
    field_checks: dict[str, list[Check]] = {}
    fields: list[tuple[str, Any, Any]] = []
    containers: list[int] = []
    checks: list[Check]
    for name, info in model.model_fields.items():
        if name == "type":
            continue
        if name == "occurred_at":  # an RFC 3339 string, made a datetime as pydantic does
            if info.annotation != Timestamp | None:
                raise TypeError(f"no fast path for {model.__name__}.occurred_at")
            converted, checks = str | None, []
        else:
            converted, checks = _convert(info.annotation, info.metadata)
        if info.default_factory is not None:
            factory = typing.cast(Callable[[], Any], info.default_factory)
            default = msgspec.field(default_factory=factory, name=info.alias)
        elif info.default is PydanticUndefined:
            default = msgspec.NODEFAULT if info.alias is None else msgspec.field(name=info.alias)
        else:
            default = msgspec.field(default=info.default, name=info.alias)
        if _may_contain(info.annotation):
            containers.append(len(fields))
        fields.append((name, converted, default))
        field_checks[name] = checks
    for decorator in decorators.field_validators.values():
        if decorator.info.mode != "after":
            raise TypeError(f"no fast path for the {decorator.info.mode} validator of {model}")
        if not _takes_one(decorator.func):
            raise TypeError(f"no fast path for the validator {decorator.func} taking info")
        for name in decorator.info.fields:
            field_checks[name].append(decorator.func)
    names = tuple(name for name, _, _ in fields)
    namespace: dict[str, Any] = {"KIND": model.KIND, "ACTION": model.ACTION}
    namespace.update((method, getattr(model, method)) for method in _METHODS)
    struct = msgspec.defstruct(
        f"{model.__name__}Struct",
        fields,
        namespace=namespace,
        module=__name__,
        tag_field="type",
        tag=tag,
        forbid_unknown_fields=True,
        kw_only=True,
        gc=False,  # holds no reference cycles; not tracked by the collector
    )
    indexed = tuple((names.index(n), c) for n, cs in field_checks.items() for c in cs)
    return struct, _Layout(model, names, indexed, tuple(containers), tag, _body(names, tag))


def _body(names: tuple[str, ...], tag: str) -> Callable[[list[Any]], dict[str, Any]]:
    """A function of a struct's values (in ``names``' order) returning the hashed body:
    ``{name: value}`` of the values that are not None, then ``"type": tag`` (what
    ``model_dump(mode="json", exclude_none=True)`` gives once the values are JSON's). Compiled
    once per event type (as ``dataclasses`` make their methods): one test and one store per
    field, instead of a comprehension over ``zip`` (callgrind: 211,223 -> 204,776 instructions
    per event of the batched path)."""
    lines = [f"def body(values):\n    {''.join(f'v{i}, ' for i in range(len(names)))}= values"]
    lines.append("    d = {}")
    lines += [f"    if v{i} is not None:\n        d[{n!r}] = v{i}" for i, n in enumerate(names)]
    lines.append(f"    d['type'] = {tag!r}\n    return d")
    namespace: dict[str, Any] = {}
    exec("\n".join(lines), namespace)  # names and tag are repr()ed: no code comes from them
    body: Callable[[list[Any]], dict[str, Any]] = namespace["body"]
    return body


def _decoders() -> tuple[msgspec.json.Decoder[Any], msgspec.json.Decoder[Any], dict[type, _Layout]]:
    """Decoders of a batch and of one event, and the layout of each struct."""
    models = get_args(get_args(TypedEvent)[0])
    made = [made for model in models if (made := _struct(model)) is not None]
    layouts = {struct: layout for struct, layout in made}
    union = typing.Union[tuple(layouts)]  # type: ignore[valid-type]  # noqa: UP007
    batch = msgspec.defstruct(
        "EventBatchStruct",
        [("events", Annotated[list[union], msgspec.Meta(min_length=1)])],  # type: ignore[valid-type]
        module=__name__,
        forbid_unknown_fields=True,
    )
    return msgspec.json.Decoder(batch), msgspec.json.Decoder(union), layouts


_BATCH, _EVENT, _LAYOUTS = _decoders()

#: The JSON ``\\u`` escapes of surrogates (``\\ud800``-``\\udfff``, either case): such a body
#: takes the full path, which refuses an unpaired one (msgspec would refuse it too, but the
#: pair of an escaped emoji is valid JSON, decoded alike by both).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


#: ``Timestamp`` of a whole batch's ``occurred_at`` values at once (``_timestamps``).
_STAMPS: TypeAdapter[list[Any]] = TypeAdapter(list[Timestamp])

#: The form most clients write (UTC, ``T`` and ``Z``, at most microseconds), read by
#: ``datetime.fromisoformat`` instead of pydantic: 0.4 instead of 1.5 µs per event.
_UTC_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?Z")


def event_commands(
    body: bytes, project: str, offload: Offload, max_events: int
) -> tuple[list[Command], bool] | None:
    """The commands of a ``{"events": [...]}`` or a single typed event's body, as
    ``api.schemas.to_commands`` would make them from the validated body, and whether it was a
    single event; or None: take the full path (orjson, pydantic), which accepts the body or
    answers its error.

    Args:
        body: the request body (decoded from its ``Content-Encoding``), JSON bytes.
        project: the tenant.
        offload: moves large values to the blob store (``api.offload``).
        max_events: most events a batch may hold (``Settings.max_batch_events``).

    Returns:
        ``(commands, single)``: one ``Command`` per event, in order; or None.

    Raises:
        Exception: what ``offload`` raises (the blob store unreachable), as the full path would.
    """
    if _SURROGATE_ESCAPE.search(body):
        return None
    try:
        events: list[Any] = _BATCH.decode(body).events
        single, depth = False, 4  # {"events": [{field: value}]}: a value is level 4
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        try:
            events = [_EVENT.decode(body)]
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None
        single, depth = True, 2  # {field: value}: a value is level 2
    if len(events) > max_events:
        return None
    layouts = _LAYOUTS
    stamps: list[tuple[Any, dict[str, Any]]] = []
    bodies: list[dict[str, Any]] = []
    try:
        for event in events:
            layout = layouts[type(event)]
            values = list(msgspec.structs.astuple(event))
            for index, check in layout.checks:
                value = values[index]
                if value is not None:
                    changed = check(value)
                    if changed is not value:
                        values[index] = changed
                        setattr(event, layout.names[index], changed)
            for index in layout.containers:
                if nests_too_deep(values[index], depth):
                    return None
            fields = layout.body(values)
            if event.occurred_at is not None:
                stamps.append((event, fields))
            bodies.append(fields)
        if stamps:
            _timestamps(stamps)
        commands = [
            event._command(fields, project, offload)
            for event, fields in zip(events, bodies, strict=True)
        ]
    except (ValueError, AssertionError):  # a check refused a value (pydantic's ValidationError too)
        return None
    return commands, single


def _timestamps(stamps: list[tuple[Any, dict[str, Any]]]) -> None:
    """Read every event's ``occurred_at`` as the models do (``Timestamp``: an RFC 3339 string,
    an aware ``datetime`` in range), put the ``datetime`` on the struct and pydantic's JSON form
    of it (``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``, the fraction only when not zero) in the hashed
    body. ``_UTC_STAMP``'s form by ``datetime.fromisoformat``, whatever else by one pydantic
    call each way for the whole batch.

    Raises:
        ValueError: a timestamp the models refuse (pydantic's ``ValidationError`` is one).
    """
    others: list[tuple[Any, dict[str, Any]]] = []
    for event, fields in stamps:
        text = event.occurred_at
        if _UTC_STAMP.fullmatch(text) is None:
            others.append((event, fields))
            continue
        instant = datetime.fromisoformat(text)  # ValueError: no such date or time
        micro = instant.microsecond
        if not micro or len(text) != 27:  # 27: six digits of fraction, the text is the form
            fields["occurred_at"] = f"{text[:19]}.{micro:06d}Z" if micro else f"{text[:19]}Z"
        event.occurred_at = instant
    if others:
        instants = _STAMPS.validate_python([event.occurred_at for event, _ in others])
        texts = _STAMPS.dump_python(instants, mode="json")
        for (event, fields), instant, text in zip(others, instants, texts, strict=True):
            event.occurred_at = instant
            fields["occurred_at"] = text
