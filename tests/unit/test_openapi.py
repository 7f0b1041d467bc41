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
        "/v1/log/tail",
    ):
        assert path in document["paths"]


def test_status_fields_list_the_domains_states_and_refuse_others() -> None:
    from pydantic import ValidationError

    from api.schemas import ChainStatusChangedBody, SessionStatusChangedBody, StageTransitionedBody
    from domain.chain import CHAIN_TRANSITIONS, STAGE_TRANSITIONS
    from domain.session import STATUSES

    schemas = create_app(Settings()).openapi()["components"]["schemas"]
    for model, field, states in (
        (StageTransitionedBody, "to_status", STAGE_TRANSITIONS),
        (ChainStatusChangedBody, "status", CHAIN_TRANSITIONS),
        (SessionStatusChangedBody, "status", STATUSES),
    ):
        assert schemas[model.__name__]["properties"][field]["enum"] == list(states)
        with pytest.raises(ValidationError, match="must be one of"):
            model.model_validate({field: "no-such-state"})
