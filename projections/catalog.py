"""Every projection of runledger, by name (DESIGN.md §4).

Names (each owns the table of the same name and can be rebuilt on its own): ``sessions``,
``tool_calls``, ``approvals``, ``workspace_baselines``, ``criterion_states``, ``phase_blocks``,
``chain_summaries``, ``chain_stages``, ``spans``, ``trace_summaries``.

Consumes no events itself; see each projection's module.
"""

from __future__ import annotations

from collections.abc import Iterable

from projections import (
    approvals,
    chains,
    criteria,
    sessions,
    tool_calls,
    traces,
    workspace_baselines,
)
from projections.base import Projection

#: Every projection, in a fixed order.
PROJECTIONS: tuple[Projection, ...] = (
    sessions.PROJECTION,
    tool_calls.PROJECTION,
    approvals.PROJECTION,
    workspace_baselines.PROJECTION,
    criteria.CRITERION_STATES_PROJECTION,
    criteria.PHASE_BLOCKS_PROJECTION,
    chains.CHAIN_SUMMARIES_PROJECTION,
    chains.CHAIN_STAGES_PROJECTION,
    traces.SPANS_PROJECTION,
    traces.TRACE_SUMMARIES_PROJECTION,
)

#: Projection names, in ``PROJECTIONS`` order.
NAMES: tuple[str, ...] = tuple(p.name for p in PROJECTIONS)

_BY_NAME = {p.name: p for p in PROJECTIONS}


class UnknownProjectionError(KeyError):
    """A projection name that is not one of ``NAMES``."""

    def __init__(self, name: str, known: Iterable[str] = NAMES) -> None:
        super().__init__(f"unknown projection {name!r}; one of {', '.join(known)}")
        self.name = name

    def __str__(self) -> str:
        return str(self.args[0])


def select(names: Iterable[str] | None = None) -> list[Projection]:
    """The projections named (all when ``names`` is None), in ``PROJECTIONS`` order.

    Raises:
        UnknownProjectionError: a name is not a projection's.
    """
    if names is None:
        return list(PROJECTIONS)
    wanted = list(names)
    for name in wanted:
        if name not in _BY_NAME:
            raise UnknownProjectionError(name)
    return [p for p in PROJECTIONS if p.name in wanted]
