"""scafld evidence replay: the pure fold of ``Entry`` records into criterion states and phase blocks.

Source: nilstate/scafld ``internal/core/session/model.go`` (``ReplayWithOptions`` /
``AppendEntryWithOptions``), SOURCES.md §4.3. Exactly:

- every entry yields a ``StateRecord`` whose ``status`` is the entry's status, or its ``type``
  when the entry has no status; ``source_id`` is the entry's ``id``, or its ``type`` when it has none;
  ``updated_at`` is the entry's ``recorded_at``;
- the record is stored under ``criterion_states[criterion_id]`` when the entry has a criterion id
  (the last entry per ``criterion_id`` wins);
- and under ``phase_blocks[phase_id]`` only when ``type == "phase"`` and it has a phase id.

Used both by the ``Session`` aggregate (state at a version) and the ``criterion_states`` /
``phase_blocks`` projections, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: scafld ``Entry`` JSON tags, in ``model.go`` order.
ENTRY_FIELDS = (
    "id", "type", "recorded_at", "criterion_id", "phase_id", "status", "reason", "provider",
    "command", "expected_kind", "criterion_type", "exit_code", "output", "path", "receipt_digest",
    "ledger_head", "trust_status", "trust_reason", "review_packet", "canonical_response_sha256",
    "provider_model", "provider_session", "attempt_id", "lease_expires_at", "review_mode",
    "review_pass_count", "evidence_digest", "evidence_actor", "reviewed_head", "reviewed_dirty",
    "reviewed_diff", "reviewed_spec", "reviewed_scope", "reviewed_material_digest",
)  # fmt: skip

#: ``StateRecord`` fields besides ``status`` (omitted when empty, like Go's ``omitempty``).
_RECORD_FROM_ENTRY = (
    ("reason", "reason"),
    ("updated_at", "recorded_at"),
    ("command", "command"),
    ("expected_kind", "expected_kind"),
    ("criterion_type", "criterion_type"),
    ("phase_id", "phase_id"),
    ("evidence_digest", "evidence_digest"),
    ("evidence_actor", "evidence_actor"),
)


def state_record(entry: Mapping[str, Any]) -> dict[str, str]:
    """The scafld ``StateRecord`` one entry yields.

    Args:
        entry: a scafld ``Entry`` (JSON field names); missing fields count as empty.

    Returns:
        ``{"status", "source_id", "reason"?, "updated_at"?, "command"?, "expected_kind"?,
        "criterion_type"?, "phase_id"?, "evidence_digest"?, "evidence_actor"?}`` (empty
        strings omitted).
    """
    entry_type = str(entry.get("type") or "")
    record: dict[str, str] = {"status": str(entry.get("status") or "") or entry_type}
    for record_key, entry_key in _RECORD_FROM_ENTRY:
        value = entry.get(entry_key)
        if value:
            record[record_key] = str(value)
    record["source_id"] = str(entry.get("id") or "") or entry_type
    return record


def apply_entry(
    criterion_states: dict[str, dict[str, str]],
    phase_blocks: dict[str, dict[str, str]],
    entry: Mapping[str, Any],
) -> None:
    """Fold one entry into the two maps in place (scafld ``AppendEntryWithOptions``)."""
    record = state_record(entry)
    criterion_id = entry.get("criterion_id")
    if criterion_id:
        criterion_states[str(criterion_id)] = record
    phase_id = entry.get("phase_id")
    if entry.get("type") == "phase" and phase_id:
        phase_blocks[str(phase_id)] = dict(record)


def replay(
    entries: Iterable[Mapping[str, Any]],
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """scafld ``Replay``: fold entries from scratch.

    Returns:
        ``(criterion_states, phase_blocks)``, each ``{id: StateRecord}``.
    """
    criterion_states: dict[str, dict[str, str]] = {}
    phase_blocks: dict[str, dict[str, str]] = {}
    for entry in entries:
        apply_entry(criterion_states, phase_blocks, entry)
    return criterion_states, phase_blocks
