"""Derived Kubernetes names and who may act for a task (pure functions)."""

from __future__ import annotations

import base64
import json
import re

import pytest

from regtask import naming, tokens
from regtask.crmodels import RegistryTaskSpec
from regtask.tasktypes import TaskType

pytestmark = pytest.mark.unit

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(
    ("user", "company"),
    [
        ("user123", "company_abc"),
        ("Jean.Dupont@example.com", "ACME Corp"),
        ("x" * 128, "y" * 128),
        ("___", "---"),
    ],
)
def test_tenant_namespace_is_a_dns_label(user: str, company: str) -> None:
    name = naming.tenant_namespace(user, company)
    assert DNS_LABEL.match(name) and len(name) <= 63
    assert name == naming.tenant_namespace(user, company)  # stable


def test_names_do_not_collide_where_the_seed_did() -> None:
    # The seed's f"{user}_{company}" maps both pairs to "a_b_c".
    assert naming.tenant_namespace("a_b", "c") != naming.tenant_namespace("a", "b_c")
    assert naming.tenant_namespace("User", "c") != naming.tenant_namespace("user", "c")
    assert naming.job_name("doc_analysis_job1") != naming.job_name("doc-analysis-job1")


def test_task_names_are_labels() -> None:
    for task_id in ["doc_analysis_job456", "llm_conv_" + "z" * 119]:
        for name in (naming.task_resource_name(task_id), naming.job_name(task_id)):
            assert DNS_LABEL.match(name) and len(name) <= 63


def test_job_names_leave_room_for_pod_names() -> None:
    """Pods are "<job>-<5 characters>": the Job name fits the API server's 58-character base."""
    for task_id in ["doc_analysis_job456", "llm_conv_" + "z" * 119, "x" * 128]:
        job = naming.job_name(task_id)
        assert len(job) <= naming.JOB_NAME_MAX
        pod = f"{job}-ab12c"
        assert len(pod) <= 63 and naming.pod_job_name(pod) == job


SPEC = RegistryTaskSpec(
    task_id="doc_analysis_job456",
    task_type=TaskType.DOCUMENT_ANALYSIS,
    user_id="user123",
    company_id="company_abc",
)


def identity(**overrides: str) -> tokens.PodIdentity:
    base = {
        "task_id": SPEC.task_id,
        "namespace": naming.tenant_namespace(SPEC.user_id, SPEC.company_id),
        "service_account": naming.RUNNER_SERVICE_ACCOUNT,
        "pod_name": naming.job_name(SPEC.task_id) + "-x7k2p",
    }
    return tokens.PodIdentity.model_validate({**base, **overrides})


def test_a_pod_of_the_tasks_job_acts_for_the_task() -> None:
    claims = tokens.authorize(identity(), SPEC)
    assert (claims.task_id, claims.user_id, claims.company_id) == (
        SPEC.task_id,
        SPEC.user_id,
        SPEC.company_id,
    )
    assert claims.namespace == naming.tenant_namespace(SPEC.user_id, SPEC.company_id)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"task_id": "doc_analysis_other"}, "another task"),
        ({"namespace": naming.tenant_namespace("mallory", "company_abc")}, "another tenant"),
        ({"service_account": "default"}, "not a runner"),
        ({"pod_name": naming.job_name("doc_analysis_other") + "-x7k2p"}, "another Job"),
        ({"pod_name": naming.job_name(SPEC.task_id)}, "another Job"),
        ({"pod_name": "x7k2p"}, "another Job"),
    ],
)
def test_any_other_pod_is_refused(overrides: dict[str, str], error: str) -> None:
    with pytest.raises(tokens.TokenError, match=error):
        tokens.authorize(identity(**overrides), SPEC)


def _unsigned(payload: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(payload)}.c2ln"


def test_the_audience_names_the_task() -> None:
    assert tokens.audience("t1") == "regtask-gateway:t1"
    assert tokens.claimed_task_id(_unsigned({"aud": ["regtask-gateway:t1"]})) == "t1"
    assert tokens.claimed_task_id(_unsigned({"aud": "regtask-gateway:t2"})) == "t2"
    for bad in (
        "not-a-jwt",
        _unsigned({"sub": "x"}),
        _unsigned({"aud": ["https://kubernetes.default.svc"]}),
        _unsigned({"aud": ["regtask-gateway:"]}),
        _unsigned({"aud": ["regtask-gateway:a", "regtask-gateway:b"]}),
    ):
        with pytest.raises(tokens.TokenError):
            tokens.claimed_task_id(bad)


def test_token_lifetime_outlives_the_deadline() -> None:
    assert tokens.token_lifetime(60) == 660
    assert tokens.token_lifetime(7200) == 7800
