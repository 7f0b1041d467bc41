"""The OpenAPI document at /docs describes every ingest body."""

from __future__ import annotations

import pytest

from api.app import create_app
from infra.settings import Settings

pytestmark = pytest.mark.unit


def test_typed_event_bodies_are_documented_for_post_events() -> None:
    document = create_app(Settings()).openapi()
    body = document["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]
    single, batch = body["anyOf"]
    assert batch["$ref"] == "#/components/schemas/EventBatch"
    mapping = single["discriminator"]["mapping"]
    assert mapping["approval.decided"] == "#/components/schemas/ApprovalDecidedBody"
    assert len(mapping) == 21
    schemas = document["components"]["schemas"]
    for name in (
        "ApprovalDecidedBody",
        "StageTransitionedBody",
        "EvidenceRecordedBody",
        "WorkspaceBaselineCapturedBody",
    ):
        assert name in schemas
    assert set(schemas["StageTransitionedBody"]["required"]) >= {
        "type",
        "chain_id",
        "stage_id",
        "to_status",
    }
    for path in (
        "/v1/traces",
        "/v1/hooks/claude-code",
        "/v1/streams/{kind}/{external_id}/state",
        "/v1/log",
    ):
        assert path in document["paths"]
