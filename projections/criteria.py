"""The ``criterion_states`` and ``phase_blocks`` read models: scafld ``Replay`` (DESIGN.md §4).

Consumes ``EvidenceRecorded`` (one scafld ``Entry``).

Semantics are exactly scafld's (``internal/core/session/model.go``, SOURCES.md §4.3), through the
very function the ``Session`` aggregate uses, ``domain.evidence.apply_entry``: every entry yields
a ``StateRecord`` (``status`` = the entry's status, or its ``type`` when it has none;
``source_id`` = its ``id``, or its ``type``; ``updated_at`` = its ``recorded_at`` string,
verbatim); the record replaces ``criterion_states[criterion_id]`` when the entry names a
criterion (last writer wins), and ``phase_blocks[phase_id]`` only when ``type == "phase"``.
A record field the entry leaves empty is NULL (scafld omits it). ``position`` is the position of
the entry that wrote the row.

Two projections, one per table, so that each can be rebuilt on its own.
"""

from __future__ import annotations

from domain.base import LedgerEvent
from domain.evidence import apply_entry
from domain.session import EvidenceRecorded
from projections.base import LastResult, Projection, Rows
from projections.schema import CRITERION_STATES, PHASE_BLOCKS, Table

#: The ``StateRecord`` fields (scafld ``model.go``); a record holds those that are non-empty.
RECORD_FIELDS = (
    "status",
    "source_id",
    "reason",
    "updated_at",
    "command",
    "expected_kind",
    "criterion_type",
    "phase_id",
    "evidence_digest",
    "evidence_actor",
)


def _entry_records(
    event: EvidenceRecorded,
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    criterion_states: dict[str, dict[str, str]] = {}
    phase_blocks: dict[str, dict[str, str]] = {}
    entry = event.entry if isinstance(event.entry, dict) else {}
    apply_entry(criterion_states, phase_blocks, entry)
    return criterion_states, phase_blocks


#: Both projections fold each entry in turn: they share one ``apply_entry`` (read-only results).
_records = LastResult(_entry_records)


def _put(
    table: Table,
    event: EvidenceRecorded,
    position: int,
    rows: Rows,
    found: dict[str, dict[str, str]],
) -> None:
    fields = _FIELDS[table.name]
    for natural_id, record in found.items():
        key = (event.project, event.external_id, natural_id)
        row = table.blank(key)
        row.update(zip(fields, map(record.get, fields), strict=True))
        row["position"] = position
        rows.put(table.name, key, row)


def fold_criterion_states(event: LedgerEvent, position: int, rows: Rows) -> None:
    """Replace ``criterion_states[criterion_id]`` with the entry's record (last writer wins)."""
    if isinstance(event, EvidenceRecorded):
        _put(CRITERION_STATES, event, position, rows, _records(event)[0])


def fold_phase_blocks(event: LedgerEvent, position: int, rows: Rows) -> None:
    """Replace ``phase_blocks[phase_id]`` with the record of a ``type == "phase"`` entry."""
    if isinstance(event, EvidenceRecorded):
        _put(PHASE_BLOCKS, event, position, rows, _records(event)[1])


def record_of(row: dict[str, object]) -> dict[str, str]:
    """The scafld ``StateRecord`` a row holds (empty fields omitted, as scafld's ``omitempty``).

    Args:
        row: a ``criterion_states`` or ``phase_blocks`` row.

    Returns:
        ``{"status", "source_id", "reason"?, "updated_at"?, ...}``: equal to what
        ``domain.evidence.replay`` gives for the same entries.
    """
    return {name: str(row[name]) for name in RECORD_FIELDS if row.get(name)}


#: The record fields each table has a column for (its key columns aside).
_FIELDS = {
    table.name: tuple(n for n in RECORD_FIELDS if n in table.by_name and n not in table.key)
    for table in (CRITERION_STATES, PHASE_BLOCKS)
}

CRITERION_STATES_PROJECTION = Projection(
    name="criterion_states",
    table=CRITERION_STATES,
    consumes=(EvidenceRecorded,),
    fold=fold_criterion_states,
)

PHASE_BLOCKS_PROJECTION = Projection(
    name="phase_blocks",
    table=PHASE_BLOCKS,
    consumes=(EvidenceRecorded,),
    fold=fold_phase_blocks,
)
