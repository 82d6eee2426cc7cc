"""Derived Kubernetes names and per-task tokens (pure functions)."""

from __future__ import annotations

import re
import time

import pytest

from regtask import naming, tokens

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SECRET = "s" * 32


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


def claims(**overrides: object) -> tokens.TaskClaims:
    base: dict[str, object] = {
        "task_id": "doc_analysis_job456",
        "task_type": "document_analysis",
        "user_id": "user123",
        "company_id": "company_abc",
        "namespace": "rt-user123-company-abc-0123456789",
        "expires_at": int(time.time()) + 60,
    }
    return tokens.TaskClaims.model_validate({**base, **overrides})


def test_token_round_trip() -> None:
    token = tokens.mint(claims(), SECRET)
    assert tokens.verify(token, SECRET) == claims()


def test_forged_or_expired_tokens_are_refused() -> None:
    token = tokens.mint(claims(), SECRET)
    with pytest.raises(tokens.TokenError, match="Signature verification failed"):
        tokens.verify(token, "t" * 32)
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(tokens.TokenError):
        tokens.verify(tampered, SECRET)
    expired = tokens.mint(claims(expires_at=int(time.time()) - 5), SECRET)
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(expired, SECRET)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        tokens.mint(claims(), "short")
