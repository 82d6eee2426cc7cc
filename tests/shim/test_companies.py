"""The company rules without servers: who may act for what, and each rung's pure decision."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from regtask.identifiers import Identifier
from regtask_shim.auth import Principal
from regtask_shim.companies import (
    default_company_id,
    from_claim,
    from_current,
    from_presence,
    may_act_for,
)
from regtask_shim.presence import companies_from_document

pytestmark = pytest.mark.unit

SERVICE = Principal(kind="service")
NO_CLAIM = Principal(kind="firebase", uid="alice")
ONE = Principal(kind="firebase", uid="alice", token_companies=("acme",))
TWO = Principal(kind="firebase", uid="alice", token_companies=("acme", "beta"))


def test_a_firebase_caller_may_act_only_for_its_claim_and_its_default_tenant() -> None:
    assert may_act_for(TWO, "beta") and not may_act_for(TWO, "evil")
    assert not may_act_for(NO_CLAIM, "acme")
    assert may_act_for(NO_CLAIM, "default.alice") and not may_act_for(NO_CLAIM, "default.bob")
    assert may_act_for(SERVICE, "anything")


def test_the_claim_rung_needs_exactly_one_company() -> None:
    assert from_claim(ONE) == "acme"
    assert from_claim(TWO) is None and from_claim(NO_CLAIM) is None and from_claim(SERVICE) is None


def test_the_current_company_rung_stays_within_the_callers_companies() -> None:
    assert from_current(TWO, "beta") == "beta"
    assert from_current(TWO, "evil") is None
    assert from_current(NO_CLAIM, "acme") is None
    assert from_current(SERVICE, "evil") == "evil"
    assert from_current(SERVICE, None) is None


def test_the_presence_rung_takes_the_one_company_left_within_the_callers() -> None:
    assert from_presence(TWO, ("beta", "evil")) == "beta"
    assert from_presence(TWO, ("acme", "beta")) is None
    assert from_presence(NO_CLAIM, ("acme",)) is None
    assert from_presence(SERVICE, ("gamma",)) == "gamma"
    assert from_presence(SERVICE, ("gamma", "delta")) is None
    assert from_presence(SERVICE, None) is None


def test_the_default_tenant_is_a_valid_id_even_for_the_longest_user_id() -> None:
    ids = TypeAdapter(Identifier)
    assert default_company_id("user123") == "default.user123"
    long_uid = "u" * 128
    tenant = default_company_id(long_uid)
    assert ids.validate_python(tenant) == tenant and tenant.startswith("default.")
    assert default_company_id("v" * 128) != tenant


def test_a_presence_document_without_a_usable_list_says_nothing() -> None:
    assert companies_from_document("u", {"authorized_companies_ids": ["a", "b"]}) == ("a", "b")
    assert companies_from_document("u", None) is None
    assert companies_from_document("u", {"status": "online"}) is None
    assert companies_from_document("u", {"authorized_companies_ids": "acme"}) is None
    assert companies_from_document("u", {"authorized_companies_ids": ["a:b"]}) is None
