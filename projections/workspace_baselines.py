"""The ``workspace_baselines`` read model: each session's first workspace baseline (DESIGN.md §4).

Consumes ``WorkspaceBaselineCaptured``.

scafld ``FirstWorkspaceBaseline`` semantics (``model.go``, SOURCES.md §4.2): the first baseline
of a session wins, later ones are ignored (review uses it to ignore pre-existing dirt).
``files`` keeps scafld's line format ``"<XY> <sha256|deleted|unreadable> <path>"`` (JSON list);
``archive_sha256`` is the sha256 of the optional tar.gz blob; ``captured_at`` is the writer's
``occurred_at`` (UTC); ``position`` the event's position in the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from domain.base import LedgerEvent
from domain.session import WorkspaceBaselineCaptured
from projections.base import Key, Projection, Rows, as_id, utc
from projections.schema import WORKSPACE_BASELINES


def reads(event: LedgerEvent) -> Iterable[Key]:
    """The session's baseline row (to see whether one is already there)."""
    if isinstance(event, WorkspaceBaselineCaptured):
        return ((event.project, event.external_id),)
    return ()


def fold(event: LedgerEvent, position: int, rows: Rows) -> None:
    """Record a session's first baseline; ignore any later one."""
    if not isinstance(event, WorkspaceBaselineCaptured):
        return
    key = (event.project, event.external_id)
    if rows.get(WORKSPACE_BASELINES.name, key) is not None:
        return
    files = [str(line) for line in event.files or []]
    archive = event.archive if isinstance(event.archive, Mapping) else {}
    row = WORKSPACE_BASELINES.blank(key)
    row.update(
        captured_at=utc(event.occurred_at),
        file_count=len(files),
        files=files,
        reason=event.reason,
        archive_sha256=as_id(archive.get("sha256")),
        position=position,
    )
    rows.put(WORKSPACE_BASELINES.name, key, row)


PROJECTION = Projection(
    name="workspace_baselines",
    table=WORKSPACE_BASELINES,
    consumes=(WorkspaceBaselineCaptured,),
    fold=fold,
    reads=reads,
)
