"""Which company a call acts for (issue 17 item 1, issue 16 item 8), on the production wiring.

The shim is the one ``python -m regtask_shim`` builds (:func:`build_app`): Firebase ID tokens
through firebase-admin against the Firebase Auth emulator (claims set with the Admin SDK), the
presence registry read from the Firestore emulator (``listeners_registry/{uid}``), the unified
registry in the real Redis, tasks as RegistryTasks on the test cluster. Each rung of the ladder
(:mod:`regtask_shim.companies`) is shown by the company of the task it creates.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import pytest
import redis.asyncio as aioredis
from kubernetes import client

from regtask_dev.firebase_auth import FirebaseAuthEmulator, SignedIn
from regtask_dev.firestore_emulator import FirestoreEmulator
from regtask_dev.kind import KindCluster
from regtask_dev.redis_server import RedisServer
from regtask_shim.__main__ import build_app
from regtask_shim.settings import ShimSettings
from tests.fixtures.shim import SERVICE_TOKEN
from tests.shim.helpers import ok, read_task_cr, refused
from tests.shim.test_firebase_auth_emulator import admin_app, sign_up

pytestmark = [pytest.mark.kube, pytest.mark.firestore, pytest.mark.firebase_auth]

ACME, BETA, EVIL, GAMMA = "acme", "beta", "evil_corp", "gamma"


@dataclass
class ResolvingShim:
    http: httpx.AsyncClient
    settings: ShimSettings
    firestore: Any
    kube_api: client.ApiClient
    namespace: str

    async def rpc(
        self,
        method: str,
        args: list[Any],
        kwargs: dict[str, Any] | None = None,
        *,
        token: str = SERVICE_TOKEN,
    ) -> httpx.Response:
        """Exactly what the web app's ``rpc_call(method, args=[...])`` posts."""
        body: dict[str, Any] = {"method": method, "args": args}
        if kwargs is not None:
            body["kwargs"] = kwargs
        headers = {"Authorization": f"Bearer {token}"}
        return await self.http.post("/rpc", json=body, headers=headers)

    def presence(self, uid: str, companies: list[str]) -> None:
        """What the existing app keeps in its presence registry."""
        self.firestore.collection("listeners_registry").document(uid).set(
            {"status": "online", "ttl_seconds": 90, "authorized_companies_ids": companies}
        )

    async def analyse(self, user_id: str, job_id: str, token: str = SERVICE_TOKEN) -> str:
        """The design's call, ``document_data = {"text": ...}``; the company its task got."""
        answer = ok(
            await self.rpc(
                "TASK.start_document_analysis",
                [user_id, {"text": "Invoice 42, total 1200 EUR"}, job_id],
                token=token,
            )
        )
        assert answer == {"success": True, "task_id": f"doc_analysis_{job_id}", "status": "queued"}
        cr = read_task_cr(self.kube_api, self.namespace, f"doc_analysis_{job_id}")
        assert cr is not None
        company: str = cr["spec"]["companyId"]
        return company


class ResolvingShimFactory(Protocol):
    async def __call__(self, *, unified: bool = True) -> ResolvingShim: ...


@pytest.fixture
async def make_resolving_shim(
    redis_server: RedisServer,
    redis_async: aioredis.Redis,
    cluster: KindCluster,
    kube_api: client.ApiClient,
    shim_namespace: str,
    auth_emulator: FirebaseAuthEmulator,
    firestore_clean: FirestoreEmulator,
) -> AsyncIterator[ResolvingShimFactory]:
    async with contextlib.AsyncExitStack() as stack:
        firestore = firestore_clean.client()
        stack.callback(firestore.close)

        async def make(*, unified: bool = True) -> ResolvingShim:
            settings = ShimSettings(
                REDIS_URL=redis_server.url,
                REGTASK_NAMESPACE=shim_namespace,
                KUBECONFIG=cluster.kubeconfig_path,
                SHIM_SERVICE_TOKEN=SERVICE_TOKEN,
                FIREBASE_PROJECT_ID=auth_emulator.project_id,
                FIRESTORE_PROJECT_ID=firestore_clean.project_id,
                SHIM_ALLOW_AUTH_EMULATOR=True,
                UNIFIED_REGISTRY_ENABLED=unified,
                SHIM_TASK_STARTS_PER_MINUTE=0,
            )
            app = build_app(settings)
            await stack.enter_async_context(app.router.lifespan_context(app))
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shim")
            )
            return ResolvingShim(http, settings, firestore, kube_api, shim_namespace)

        yield make


# ------------------------------------------------------------------ the design's calls


@pytest.mark.parametrize("unified", [False, True])
async def test_the_designs_call_sequence_as_written_is_queued(
    make_resolving_shim: ResolvingShimFactory, unified: bool
) -> None:
    """Before: 400 "company_id unknown". The web app's two calls, unchanged, service credential."""
    shim = await make_resolving_shim(unified=unified)
    user_id, session_id, backend_route = "user123", "session456", "/api/v1"
    registered = ok(await shim.rpc("REGISTRY.register_user", [user_id, session_id, backend_route]))
    assert registered == {"success": True, "user_id": user_id, "session_id": session_id}
    job = f"job123u{int(unified)}"
    assert await shim.analyse(user_id, job) == "default.user123"


async def test_a_signed_in_user_without_any_company_gets_its_default_tenant(
    make_resolving_shim: ResolvingShimFactory, auth_emulator: FirebaseAuthEmulator
) -> None:
    shim = await make_resolving_shim()
    carol = sign_up(auth_emulator, "carol")
    token = carol.id_token
    ok(await shim.rpc("REGISTRY.register_user", [carol.uid, "s-carol", "/"], token=token))
    assert await shim.analyse(carol.uid, "carol1", token) == f"default.{carol.uid}"
    # Its own default tenant may be named; another user's may not.
    ok(
        await shim.rpc(
            "TASK.start_llm_conversation", [carol.uid, f"default.{carol.uid}", "hi"], token=token
        )
    )
    other = [carol.uid, "default.bob", "hi"]
    refused(
        await shim.rpc("TASK.start_llm_conversation", other, token=token),
        403,
        "not authorized for company 'default.bob'",
    )


# ------------------------------------------------------------------ each rung


async def test_rung_1_a_token_claim_with_one_company(
    make_resolving_shim: ResolvingShimFactory, auth_emulator: FirebaseAuthEmulator
) -> None:
    shim = await make_resolving_shim()
    alice = sign_up(auth_emulator, "alice", companies=[ACME])
    # The claim wins over what the registry and the presence registry say.
    ok(await shim.rpc("REGISTRY.register_user", [alice.uid, "s1", "/"], {"company_id": BETA}))
    shim.presence(alice.uid, [GAMMA])
    assert await shim.analyse(alice.uid, "r1", alice.id_token) == ACME


async def two_company_user(auth_emulator: FirebaseAuthEmulator, name: str) -> SignedIn:
    return sign_up(auth_emulator, name, companies=[ACME, BETA])


async def test_rung_2_the_current_company_within_the_claim(
    make_resolving_shim: ResolvingShimFactory, auth_emulator: FirebaseAuthEmulator
) -> None:
    shim = await make_resolving_shim()
    dave = await two_company_user(auth_emulator, "dave")
    ok(await shim.rpc("REGISTRY.register_user", [dave.uid, "s1", "/"], {"company_id": BETA}))
    shim.presence(dave.uid, [ACME])
    assert await shim.analyse(dave.uid, "r2", dave.id_token) == BETA
    # A current company outside the claim is passed over (here: down to the presence rung).
    ok(await shim.rpc("REGISTRY.register_user", [dave.uid, "s1", "/"], {"company_id": EVIL}))
    assert await shim.analyse(dave.uid, "r2b", dave.id_token) == ACME
    # The service credential takes the current company as it set it.
    ok(await shim.rpc("REGISTRY.register_user", ["svc_user", "s2", "/"], {"company_id": GAMMA}))
    assert await shim.analyse("svc_user", "r2c") == GAMMA


async def test_rung_3_the_presence_registry_within_the_claim(
    make_resolving_shim: ResolvingShimFactory, auth_emulator: FirebaseAuthEmulator
) -> None:
    shim = await make_resolving_shim()
    erin = await two_company_user(auth_emulator, "erin")
    ok(await shim.rpc("REGISTRY.register_user", [erin.uid, "s1", "/"], token=erin.id_token))
    # Two companies listed, one of them outside the claim: the one inside it is taken.
    shim.presence(erin.uid, [BETA, EVIL])
    assert await shim.analyse(erin.uid, "r3", erin.id_token) == BETA
    # Two companies both inside the claim: ambiguous, so the default tenant.
    shim.presence(erin.uid, [ACME, BETA])
    assert await shim.analyse(erin.uid, "r3b", erin.id_token) == f"default.{erin.uid}"
    # The service credential, nothing in the registry: the presence registry's one company.
    shim.presence("svc_user3", [GAMMA])
    assert await shim.analyse("svc_user3", "r3c") == GAMMA


async def test_rung_4_the_default_tenant(
    make_resolving_shim: ResolvingShimFactory, auth_emulator: FirebaseAuthEmulator
) -> None:
    shim = await make_resolving_shim()
    frank = await two_company_user(auth_emulator, "frank")
    ok(await shim.rpc("REGISTRY.register_user", [frank.uid, "s1", "/"], token=frank.id_token))
    assert await shim.analyse(frank.uid, "r4", frank.id_token) == f"default.{frank.uid}"
    # A company named in document_data is taken when authorised, refused otherwise.
    named = [frank.uid, {"text": "x", "company_id": BETA}, "r4b"]
    ok(await shim.rpc("TASK.start_document_analysis", named, token=frank.id_token))
    cr = read_task_cr(shim.kube_api, shim.namespace, "doc_analysis_r4b")
    assert cr is not None and cr["spec"]["companyId"] == BETA
    evil = [frank.uid, {"text": "x", "company_id": EVIL}, "r4c"]
    refused(
        await shim.rpc("TASK.start_document_analysis", evil, token=frank.id_token),
        403,
        "not authorized for company 'evil_corp'",
    )
    assert read_task_cr(shim.kube_api, shim.namespace, "doc_analysis_r4c") is None


# ------------------------------------------------------------------ issue 16, item 8


async def test_a_removed_claim_is_not_revived_by_the_registry_copy(
    make_resolving_shim: ResolvingShimFactory, auth_emulator: FirebaseAuthEmulator
) -> None:
    """The stale-claim attack: the admin removes the claim; the registry still lists ACME."""
    from firebase_admin import auth

    shim = await make_resolving_shim()
    alice = sign_up(auth_emulator, "alice", companies=[ACME])
    # Her own register_user copies the claim into the registry; the service records it too.
    ok(await shim.rpc("REGISTRY.register_user", [alice.uid, "s1", "/"], token=alice.id_token))
    ok(
        await shim.rpc(
            "REGISTRY.register_user",
            [alice.uid, "s1", "/"],
            {"company_id": ACME, "authorized_companies_ids": [ACME]},
        )
    )
    shim.presence(alice.uid, [ACME])
    ok(await shim.rpc("TASK.start_llm_conversation", [alice.uid, ACME, "p"], token=alice.id_token))

    auth.set_custom_user_claims(alice.uid, None, app=admin_app(auth_emulator.project_id))
    stale = auth_emulator.sign_in("alice@example.com", "pw-alice-123456").id_token
    ok(await shim.rpc("REGISTRY.register_user", [alice.uid, "s1", "/"], token=stale))
    registry = ok(await shim.rpc("UNIFIED_REGISTRY.get_user_registry", [alice.uid], token=stale))
    assert registry["registry"]["companies"]["authorized_companies_ids"] == [ACME]

    refused(
        await shim.rpc("TASK.start_llm_conversation", [alice.uid, ACME, "p"], token=stale),
        403,
        "not authorized for company 'acme'",
    )
    named = [alice.uid, {"text": "x", "company_id": ACME}, "stale1"]
    refused(await shim.rpc("TASK.start_document_analysis", named, token=stale), 403, "acme")
    refused(await shim.rpc("UNIFIED_REGISTRY.get_company_active_users", [ACME], token=stale), 403)
    # Naming no company, neither the registry's current company nor the presence registry's
    # ACME is taken: the call goes to her own default tenant.
    assert await shim.analyse(alice.uid, "stale2", stale) == f"default.{alice.uid}"
