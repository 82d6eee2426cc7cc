"""Models at the boundaries: clear validation errors, and CRDs that match the models."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from regtask import crdgen
from regtask.crmodels import RegistryTaskSpec, TaskInput
from regtask.documents import ConversationDoc, TaskProgress, UnifiedUserDoc
from regtask.events import parse_event

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

VALID_SPEC = {
    "taskId": "doc_analysis_job456",
    "taskType": "document_analysis",
    "userId": "user123",
    "companyId": "company_abc",
    "inputs": [{"name": "document", "value": "Invoice 42"}],
}


def test_committed_crds_match_the_models() -> None:
    assert crdgen.main(["--root", str(ROOT), "--check"]) == 0, "run `make crds` and commit"


def test_crd_schema_is_structural() -> None:
    for spec in crdgen.CRDS:
        text = crdgen.render(spec)
        assert "$ref" not in text and "anyOf" not in text and "propertyNames" not in text
        schema = crdgen.build_crd(spec)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert schema["properties"]["spec"]["type"] == "object"


def test_valid_spec_round_trips_in_camel_case() -> None:
    spec = RegistryTaskSpec.model_validate(VALID_SPEC)
    wire = spec.to_wire()
    assert wire["taskId"] == "doc_analysis_job456"
    assert wire["priority"] == "normal" and wire["cancel"] is False
    assert RegistryTaskSpec.model_validate(wire) == spec


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"userId": None}, "userId"),
        ({"taskType": "mining_bitcoin"}, "taskType"),
        ({"maxDurationSeconds": -5}, "maxDurationSeconds"),
        ({"companyId": "acme:corp"}, "companyId"),
        ({"inputs": [{"name": "document", "value": "x" * 70_000}]}, "inputs.0.value"),
        ({"inputs": [{"name": "document"}]}, "exactly one of value or ref"),
        ({"parameters": {"model": "m" * 5000}}, "parameters.model"),
    ],
)
def test_invalid_spec_names_the_field(change: dict[str, object], field: str) -> None:
    data = {**VALID_SPEC, **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ValidationError) as info:
        RegistryTaskSpec.model_validate(data)
    assert field in str(info.value)


def test_input_by_reference() -> None:
    ref = TaskInput.model_validate(
        {"name": "document", "ref": {"uri": "s3://bucket/invoice.pdf", "sizeBytes": 1234}}
    )
    assert ref.ref is not None and ref.ref.size_bytes == 1234
    with pytest.raises(ValidationError, match=r"ref\.uri"):
        TaskInput.model_validate({"name": "document", "ref": {"uri": "ftp://x"}})


def test_documents_reject_bad_values_with_field_names() -> None:
    with pytest.raises(ValidationError, match="progress_percent"):
        TaskProgress(progress_percent=150)
    with pytest.raises(ValidationError, match="tokens_used"):
        ConversationDoc.model_validate(
            {
                "conversation_id": "c",
                "user_id": "u",
                "company_id": "c",
                "prompt": "p",
                "response": "r",
                "model": "m",
                "temperature": 0.1,
                "tokens_used": -1,
            }
        )
    with pytest.raises(ValidationError, match="user_info"):
        UnifiedUserDoc.model_validate({"companies": {}})


def test_events_parse_by_type() -> None:
    event = parse_event(
        '{"type": "llm.conversation_complete", "uid": "user123",'
        ' "timestamp": "2025-09-24T15:32:00Z", "payload": {"conversation_id": "conv_abc123",'
        ' "response": "...", "tokens_used": 150}}'
    )
    assert event.payload.tokens_used == 150
    with pytest.raises(ValidationError):
        parse_event('{"type": "unknown.event", "uid": "u", "payload": {}}')
