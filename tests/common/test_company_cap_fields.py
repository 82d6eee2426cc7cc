"""maxTasksPerCompany on the wire (issue 18, item 3): optional in the CompanyQuota, an addition
to the contract's company document only when set (CONTRACT.md: existing fields unchanged)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from regtask import registry_ops
from regtask.crmodels import CompanyQuotaSpec
from regtask.documents import Quotas

pytestmark = pytest.mark.unit

CONTRACT_QUOTAS = {
    "max_tasks_per_user": 10,
    "max_llm_requests_per_hour": 1000,
    "storage_limit_mb": 5000,
}


def test_the_company_quota_takes_an_optional_company_cap() -> None:
    assert CompanyQuotaSpec.model_validate({"companyId": "acme"}).max_tasks_per_company is None
    spec = CompanyQuotaSpec.model_validate({"companyId": "acme", "maxTasksPerCompany": 10})
    assert spec.max_tasks_per_company == 10
    assert spec.to_wire()["maxTasksPerCompany"] == 10
    with pytest.raises(ValidationError, match=r"max_tasks_per_company|maxTasksPerCompany"):
        CompanyQuotaSpec.model_validate({"companyId": "acme", "maxTasksPerCompany": -1})


def test_the_contracts_company_document_keeps_its_fields_and_adds_the_cap_only_when_set() -> None:
    assert registry_ops.new_company_doc("acme")["quotas"] == CONTRACT_QUOTAS
    [update] = [registry_ops.company_quotas("acme", Quotas())]
    assert update.ops[0]["value"] == CONTRACT_QUOTAS
    capped = registry_ops.company_quotas("acme", Quotas(max_tasks_per_company=12)).ops[0]
    assert capped["value"] == {**CONTRACT_QUOTAS, "max_tasks_per_company": 12}
    # the enforced limits key (quota:limits:*) round-trips it
    assert Quotas.model_validate_json(Quotas(max_tasks_per_company=3).model_dump_json()) == Quotas(
        max_tasks_per_company=3
    )
