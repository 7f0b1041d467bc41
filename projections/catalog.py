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

#: The order in which ``split`` cuts the projections into parts, and each one's weight: the
#: seconds it took to rebuild alone over ``bench.rebuild``'s 300,000-event log (SQLite, 2 cores,
#: 2026-11-21). Neighbours fold the same events (sessions, tool calls and spans read span and
#: session events; the evidence, approval and chain projections theirs), so a part decodes
#: only the events its projections consume, and a cut between neighbours costs least.
REBUILD_WEIGHTS: dict[str, float] = {
    "sessions": 2.34,
    "tool_calls": 3.26,
    "spans": 0.81,
    "trace_summaries": 0.79,
    "criterion_states": 1.22,
    "phase_blocks": 1.04,
    "approvals": 1.20,
    "workspace_baselines": 0.73,
    "chain_summaries": 1.86,
    "chain_stages": 1.59,
}

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


def split(projections: Iterable[Projection], parts: int) -> list[list[Projection]]:
    """Cut ``projections`` into at most ``parts`` groups for a rebuild in parallel: contiguous
    runs of ``REBUILD_WEIGHTS``' order (unknown names last, weight 1.0) whose largest total
    weight is the smallest possible.

    Args:
        projections: the projections to rebuild (each at most once).
        parts: how many groups at most (>= 1); fewer when there are fewer projections.

    Returns:
        Non-empty groups, each in ``REBUILD_WEIGHTS``' order; together, every projection once.

    Raises:
        ValueError: ``parts < 1``.
    """
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    order = list(REBUILD_WEIGHTS)
    chosen = sorted(
        projections, key=lambda p: order.index(p.name) if p.name in order else len(order)
    )
    weights = [REBUILD_WEIGHTS.get(p.name, 1.0) for p in chosen]
    count = min(parts, len(chosen))
    if count <= 1:
        return [chosen] if chosen else []
    # best[k][i]: the smallest largest-part weight of chosen[:i] in k parts; cut[k][i]: where
    # the last of those parts starts (the linear partition problem; a few dozen cells).
    prefix = [0.0]
    for weight in weights:
        prefix.append(prefix[-1] + weight)
    n = len(chosen)
    best = [[float("inf")] * (n + 1) for _ in range(count + 1)]
    cut = [[0] * (n + 1) for _ in range(count + 1)]
    best[0][0] = 0.0
    for k in range(1, count + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                cost = max(best[k - 1][j], prefix[i] - prefix[j])
                if cost < best[k][i]:
                    best[k][i], cut[k][i] = cost, j
    groups: list[list[Projection]] = []
    end = n
    for k in range(count, 0, -1):
        start = cut[k][end]
        groups.append(chosen[start:end])
        end = start
    return groups[::-1]
