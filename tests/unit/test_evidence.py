"""scafld Replay semantics (nilstate/scafld internal/core/session/model.go), record by record."""

from __future__ import annotations

import pytest

from domain.evidence import replay

pytestmark = pytest.mark.unit


def test_last_entry_per_criterion_wins() -> None:
    states, _ = replay(
        [
            {
                "id": "1",
                "type": "criterion",
                "criterion_id": "ac1",
                "status": "fail",
                "recorded_at": "t1",
            },
            {
                "id": "2",
                "type": "criterion",
                "criterion_id": "ac2",
                "status": "pass",
                "recorded_at": "t2",
            },
            {
                "id": "3",
                "type": "criterion",
                "criterion_id": "ac1",
                "status": "pass",
                "recorded_at": "t3",
            },
        ]
    )
    assert states["ac1"] == {"status": "pass", "updated_at": "t3", "source_id": "3"}
    assert states["ac2"]["status"] == "pass"


def test_status_is_the_entry_type_when_the_entry_has_none() -> None:
    states, _ = replay(
        [
            {
                "type": "manual_evidence",
                "criterion_id": "ac1",
                "recorded_at": "t",
                "evidence_actor": "me",
            }
        ]
    )
    assert states["ac1"]["status"] == "manual_evidence"
    # no id: source_id is the type, as in model.go
    assert states["ac1"]["source_id"] == "manual_evidence"
    assert states["ac1"]["evidence_actor"] == "me"


def test_phase_blocks_only_from_phase_entries() -> None:
    states, phases = replay(
        [
            {
                "type": "criterion",
                "criterion_id": "ac1",
                "phase_id": "p1",
                "status": "pass",
                "recorded_at": "t1",
            },
            {"type": "phase", "phase_id": "p1", "status": "completed", "recorded_at": "t2"},
            {"type": "phase", "recorded_at": "t3"},
        ]
    )
    assert list(phases) == ["p1"]
    assert phases["p1"]["status"] == "completed" and phases["p1"]["updated_at"] == "t2"
    assert states["ac1"]["phase_id"] == "p1"


def test_a_phase_entry_with_a_criterion_id_lands_in_both_maps() -> None:
    states, phases = replay(
        [{"type": "phase", "phase_id": "p1", "criterion_id": "ac9", "recorded_at": "t"}]
    )
    assert states["ac9"]["status"] == "phase" and phases["p1"]["status"] == "phase"
