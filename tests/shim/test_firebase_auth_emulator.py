"""The production token path (``firebase_admin.auth.verify_id_token``) against Google's emulator.

The shim under test is the one ``python -m regtask_shim`` builds (:func:`build_app`, so a
:class:`FirebaseTokenVerifier`), on the real Redis and kube-apiserver. Users sign up and sign in
through the emulator's REST API as the web app's client SDK does; their
``authorized_companies_ids`` claim is set with the Admin SDK (``set_custom_user_claims``), and
revoked, disabled and deleted with it, all against the emulator.

What the emulator cannot show: its ID tokens are unsigned, and in emulator mode firebase-admin
checks neither signatures nor expiry (it takes the payload as verified); the last test here
proves it. Signature and expiry checks are covered by ``test_security.py`` (same Firebase rules,
tokens signed by a test key) and ``test_auth.py``. That gap is also why the shim refuses to start
with ``FIREBASE_AUTH_EMULATOR_HOST`` set unless ``SHIM_ALLOW_AUTH_EMULATOR=true``.

Long (about 520 lines) for a reason: one test per token path (sign-up, claims, revocation,
disabled and deleted users) against one emulator session and one shim process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import httpx
import jwt
import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from kubernetes import client

from regtask import keys
from regtask_dev.firebase_auth import (
    EMULATOR_HOST_ENV,
    FIREBASE_TOOLS_VERSION,
    FirebaseAuthEmulator,
    SignedIn,
)
from regtask_dev.kind import KindCluster
from regtask_dev.procs import free_port
from regtask_dev.redis_server import RedisServer
from regtask_dev.stack import ServiceProcess
from regtask_shim.__main__ import build_app
from regtask_shim.auth import AUTH_EMULATOR_ENV, FIREBASE_ISSUER_PREFIX, FirebaseTokenVerifier
from regtask_shim.errors import Unauthenticated
from regtask_shim.settings import ShimSettings
from tests.fixtures.shim import SERVICE_TOKEN
from tests.shim.helpers import ok, refused, task_crs

REPO = Path(__file__).resolve().parents[2]
ACME, EVIL = "acme", "evil_corp"
ADMIN_APP = "regtask-test-auth-admin"


def admin_app(project_id: str) -> Any:
    """A firebase-admin app for what the web app's backend does (claims, revocation, ...)."""
    import firebase_admin

    try:
        return firebase_admin.get_app(ADMIN_APP)
    except ValueError:
        # No credential needed: in emulator mode firebase-admin sends the emulator's own.
        return firebase_admin.initialize_app(options={"projectId": project_id}, name=ADMIN_APP)


@dataclass
class ProdShim:
    """The production-wired shim in process, and an httpx client on it."""

    http: httpx.AsyncClient
    settings: ShimSettings

    async def rpc(self, method: str, args: list[Any], *, token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.http.post("/rpc", json={"method": method, "args": args}, headers=headers)


class ProdShimFactory(Protocol):
    async def __call__(
        self, *, check_revoked: bool | None = False, project_id: str | None = None
    ) -> ProdShim: ...


@pytest.fixture
async def make_prod_shim(
    redis_server: RedisServer,
    redis_async: aioredis.Redis,
    cluster: KindCluster,
    shim_namespace: str,
    auth_emulator: FirebaseAuthEmulator,
) -> AsyncIterator[ProdShimFactory]:
    """``build_app`` as ``python -m regtask_shim`` calls it, with the emulator allowed."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(
            *, check_revoked: bool | None = False, project_id: str | None = None
        ) -> ProdShim:
            """``check_revoked=None``: FIREBASE_CHECK_REVOKED unset (the default)."""
            values: dict[str, Any] = {
                "REDIS_URL": redis_server.url,
                "REGTASK_NAMESPACE": shim_namespace,
                "KUBECONFIG": cluster.kubeconfig_path,
                "SHIM_SERVICE_TOKEN": SERVICE_TOKEN,
                "FIREBASE_PROJECT_ID": project_id or auth_emulator.project_id,
                "SHIM_ALLOW_AUTH_EMULATOR": True,
                "UNIFIED_REGISTRY_ENABLED": False,
                "SHIM_TASK_STARTS_PER_MINUTE": 0,
            }
            if check_revoked is not None:
                values["FIREBASE_CHECK_REVOKED"] = check_revoked
            settings = ShimSettings(**values)
            app = build_app(settings)
            # The lifespan closes the Redis and Kubernetes clients build_app made.
            await stack.enter_async_context(app.router.lifespan_context(app))
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://shim")
            )
            return ProdShim(http, settings)

        yield make


def sign_up(
    emulator: FirebaseAuthEmulator, name: str, companies: list[str] | None = None
) -> SignedIn:
    """A new user through the client REST API; with ``companies`` set as a custom claim."""
    from firebase_admin import auth

    email, password = f"{name}@example.com", f"pw-{name}-123456"
    user = emulator.sign_up(email, password)
    if companies is None:
        return user
    auth.set_custom_user_claims(
        user.uid, {"authorized_companies_ids": companies}, app=admin_app(emulator.project_id)
    )
    # Claims reach ID tokens minted after they were set (the SDK's getIdToken(true)).
    return emulator.sign_in(email, password)


class AliceOnShim(NamedTuple):
    """The production shim, alice signed up with the ACME claim, and where the effects land."""

    shim: ProdShim
    alice: SignedIn
    redis_async: aioredis.Redis
    kube_api: client.ApiClient
    shim_namespace: str


@pytest.fixture
async def alice_on_shim(
    make_prod_shim: ProdShimFactory,
    auth_emulator: FirebaseAuthEmulator,
    redis_async: aioredis.Redis,
    kube_api: client.ApiClient,
    shim_namespace: str,
) -> AliceOnShim:
    shim = await make_prod_shim()
    alice = sign_up(auth_emulator, "alice", companies=[ACME])
    return AliceOnShim(shim, alice, redis_async, kube_api, shim_namespace)


def unverified_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def with_claims(token: str, **changes: Any) -> str:
    """The same token with its payload edited (header and signature part kept as they were)."""
    header, _, signature = token.split(".")
    payload = {**unverified_claims(token), **changes}
    encoded = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


# ------------------------------------------------------------------ accepted, and as whom


@pytest.mark.kube
@pytest.mark.firebase_auth
async def test_a_signed_in_user_is_accepted_and_acts_as_its_uid(
    alice_on_shim: AliceOnShim, auth_emulator: FirebaseAuthEmulator
) -> None:
    shim, alice, redis_async, kube_api, shim_namespace = alice_on_shim
    claims = unverified_claims(alice.id_token)
    # A real emulator token: unsigned, for the emulator's project, with the Admin SDK's claim.
    assert jwt.get_unverified_header(alice.id_token)["alg"] == "none"
    assert (claims["sub"], claims["aud"]) == (alice.uid, auth_emulator.project_id)
    assert claims["authorized_companies_ids"] == [ACME]

    ok(await shim.rpc("REGISTRY.register_user", [alice.uid, "s1", "/"], token=alice.id_token))
    assert await redis_async.exists(keys.legacy_user(alice.uid))
    started = ok(
        await shim.rpc(
            "TASK.start_llm_conversation", [alice.uid, ACME, "hello"], token=alice.id_token
        )
    )
    [cr] = task_crs(kube_api, shim_namespace, started["task_id"])
    assert (cr["spec"]["userId"], cr["spec"]["companyId"]) == (alice.uid, ACME)
    listed = ok(await shim.rpc("TASK.list_user_tasks", [alice.uid], token=alice.id_token))
    assert [t["task_id"] for t in listed["tasks"]] == [started["task_id"]]


@pytest.mark.kube
@pytest.mark.firebase_auth
async def test_another_users_uid_or_company_is_refused(
    alice_on_shim: AliceOnShim, auth_emulator: FirebaseAuthEmulator
) -> None:
    shim, alice, redis_async, kube_api, shim_namespace = alice_on_shim
    bob = sign_up(auth_emulator, "bob", companies=[ACME])
    ok(await shim.rpc("REGISTRY.register_user", [bob.uid, "bob-session", "/"], token=bob.id_token))

    for method, args in [
        ("REGISTRY.register_user", [bob.uid, "stolen", "/"]),
        ("TASK.list_user_tasks", [bob.uid]),
        ("TASK.start_llm_conversation", [bob.uid, ACME, "as bob"]),
        ("UNIFIED_REGISTRY.get_user_registry", [bob.uid]),
    ]:
        refused(await shim.rpc(method, args, token=alice.id_token), 403, "not authorized")
    legacy = await redis_async.hget(keys.legacy_user(bob.uid), keys.DATA_FIELD)
    assert legacy is not None and b"stolen" not in legacy and b"bob-session" in legacy

    # A company outside the token's claim; a user with no claim at all has no company.
    refused(
        await shim.rpc("TASK.start_llm_conversation", [alice.uid, EVIL, "p"], token=alice.id_token),
        403,
        "not authorized for company 'evil_corp'",
    )
    carol = sign_up(auth_emulator, "carol")
    assert "authorized_companies_ids" not in unverified_claims(carol.id_token)
    refused(
        await shim.rpc("TASK.start_llm_conversation", [carol.uid, ACME, "p"], token=carol.id_token),
        403,
        "not authorized for company 'acme'",
    )
    assert all(
        item["spec"]["userId"] != bob.uid
        for item in client.CustomObjectsApi(kube_api).list_namespaced_custom_object(
            "regtask.io", "v1alpha1", shim_namespace, "registrytasks"
        )["items"]
    )


# ------------------------------------------------------------------ refused tokens


@pytest.mark.kube
@pytest.mark.firebase_auth
async def test_no_token_malformed_tokens_and_custom_tokens_are_401(
    make_prod_shim: ProdShimFactory, auth_emulator: FirebaseAuthEmulator
) -> None:
    from firebase_admin import auth

    shim = await make_prod_shim()
    alice = sign_up(auth_emulator, "alice", companies=[ACME])
    args = [alice.uid, "s1", "/"]
    response = await shim.rpc("REGISTRY.register_user", args, token=None)
    refused(response, 401, "missing credentials")
    assert response.headers["WWW-Authenticate"] == "Bearer"

    header, _, signature = alice.id_token.split(".")
    not_json = base64.urlsafe_b64encode(b'{"sub": "alice", ').rstrip(b"=").decode()
    broken = f"{header}.{not_json}.{signature}"
    refused(await shim.rpc("REGISTRY.register_user", args, token=broken), 401, "invalid token")
    refused(await shim.rpc("REGISTRY.register_user", args, token="not-a-jwt"), 401)

    # A custom token (what a backend mints to sign a client in) is not an ID token.
    custom = auth.create_custom_token(alice.uid, app=admin_app(auth_emulator.project_id))
    refused(
        await shim.rpc("REGISTRY.register_user", args, token=custom.decode()),
        401,
        "invalid token",
        "custom token",
    )
    # The control: the untouched token passes through the same shim.
    ok(await shim.rpc("REGISTRY.register_user", args, token=alice.id_token))


@pytest.mark.kube
@pytest.mark.firebase_auth
async def test_a_token_of_another_project_or_issuer_is_401(
    make_prod_shim: ProdShimFactory, auth_emulator: FirebaseAuthEmulator
) -> None:
    ours = await make_prod_shim()
    theirs = await make_prod_shim(project_id="demo-regtask-other")
    alice = sign_up(auth_emulator, "alice", companies=[ACME])
    args = [alice.uid, "s1", "/"]
    ok(await ours.rpc("REGISTRY.register_user", args, token=alice.id_token))
    # The same genuine token, presented to a shim configured for another Firebase project.
    refused(
        await theirs.rpc("REGISTRY.register_user", args, token=alice.id_token),
        401,
        'incorrect "aud" (audience) claim',
    )
    # Payload edits that emulator mode still catches: audience and issuer.
    for changes, fragment in [
        ({"aud": "demo-regtask-other"}, '"aud"'),
        ({"iss": "https://securetoken.google.com/demo-regtask-other"}, '"iss"'),
        ({"iss": "https://evil.example/" + auth_emulator.project_id}, '"iss"'),
        ({"sub": ""}, '"sub"'),
    ]:
        tampered = with_claims(alice.id_token, **changes)
        refused(await ours.rpc("REGISTRY.register_user", args, token=tampered), 401, fragment)


@pytest.mark.kube
@pytest.mark.firebase_auth
async def test_check_revoked_refuses_revoked_disabled_and_deleted_users(
    make_prod_shim: ProdShimFactory, auth_emulator: FirebaseAuthEmulator
) -> None:
    from firebase_admin import auth

    app = admin_app(auth_emulator.project_id)
    strict = await make_prod_shim(check_revoked=None)  # the default: on (issue 16, item 11)
    lenient = await make_prod_shim(check_revoked=False)  # FIREBASE_CHECK_REVOKED=false
    alice = sign_up(auth_emulator, "alice", companies=[ACME])
    bob = sign_up(auth_emulator, "bob", companies=[ACME])
    carol = sign_up(auth_emulator, "carol", companies=[ACME])

    async def answer(shim: ProdShim, user: SignedIn, token: str | None = None) -> httpx.Response:
        # One session per user: a session id belongs to the user who registered it.
        return await shim.rpc(
            "REGISTRY.register_user", [user.uid, f"s-{user.uid}", "/"], token=token or user.id_token
        )

    for user in (alice, bob, carol):
        ok(await answer(strict, user))

    # Revocation counts in whole seconds: revoke strictly after the token was issued.
    issued_at = unverified_claims(alice.id_token)["iat"]
    await asyncio.sleep(max(0.0, issued_at + 1.05 - time.time()))
    auth.revoke_refresh_tokens(alice.uid, app=app)
    refused(await answer(strict, alice), 401, "token revoked")
    # With FIREBASE_CHECK_REVOKED=false the old token stays good until it expires (documented).
    ok(await answer(lenient, alice))
    # Signing in again gives a token the strict shim accepts.
    again = auth_emulator.sign_in("alice@example.com", "pw-alice-123456")
    ok(await answer(strict, alice, again.id_token))

    auth.update_user(bob.uid, disabled=True, app=app)
    refused(await answer(strict, bob), 401, "user account disabled")

    auth.delete_user(carol.uid, app=app)
    refused(await answer(strict, carol), 401, "user account no longer exists")


# ------------------------------------------------------------------ why emulator mode is refused


def service_account_file(directory: Path, project_id: str) -> Path:
    """A well-formed service-account key (unknown to Google) so firebase-admin gets that far."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path = directory / "service-account.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": project_id,
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": f"shim@{project_id}.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return path


@pytest.mark.kube
@pytest.mark.firebase_auth
async def test_emulator_mode_checks_no_signature_and_no_expiry(
    make_prod_shim: ProdShimFactory,
    auth_emulator: FirebaseAuthEmulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    shim = await make_prod_shim()
    alice = sign_up(auth_emulator, "alice", companies=[ACME])
    bob = sign_up(auth_emulator, "bob")
    # Anyone can rewrite an unsigned token: bob's token made to say alice, long expired.
    long_ago = int(time.time()) - 7200
    forged = with_claims(
        bob.id_token,
        sub=alice.uid,
        user_id=alice.uid,
        iat=long_ago,
        auth_time=long_ago,
        exp=long_ago + 3600,
        authorized_companies_ids=[EVIL],
    )
    ok(await shim.rpc("REGISTRY.register_user", [alice.uid, "forged", "/"], token=forged))

    # The same production verifier outside emulator mode refuses it before any network call.
    monkeypatch.delenv(AUTH_EMULATOR_ENV)
    project = auth_emulator.project_id + "-sa"
    verifier = FirebaseTokenVerifier(
        project, credentials_file=service_account_file(tmp_path, project)
    )
    with pytest.raises(Unauthenticated, match='no "kid" claim'):
        await verifier.verify(
            with_claims(forged, aud=project, iss=FIREBASE_ISSUER_PREFIX + project)
        )


# ------------------------------------------------------------------ start-up refusal


def _shim_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SHIM_ALLOW_AUTH_EMULATOR"}
    env.update(
        {
            "SHIM_HOST": "127.0.0.1",
            "SHIM_PORT": str(free_port()),
            "SHIM_SERVICE_TOKEN": SERVICE_TOKEN,
            "FIRESTORE_PROJECT_ID": "",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
    return env


@pytest.mark.parametrize("project", ["demo-regtask-auth", ""])
def test_the_shim_process_refuses_to_start_with_the_emulator_variable(project: str) -> None:
    """``python -m regtask_shim`` exits 2 with one clear line, with or without a project."""
    env = _shim_env(
        FIREBASE_AUTH_EMULATOR_HOST="127.0.0.1:9099",
        FIREBASE_PROJECT_ID=project,
        REDIS_URL="redis://127.0.0.1:1/0",
        KUBECONFIG="/nonexistent",
    )
    done = subprocess.run(
        [sys.executable, "-m", "regtask_shim"],
        env=env,
        capture_output=True,
        timeout=150,  # seconds on an idle machine: the margin is for a loaded one
        check=False,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 2, output
    assert "shim_refused_to_start" in output
    assert "FIREBASE_AUTH_EMULATOR_HOST is set" in output
    assert "SHIM_ALLOW_AUTH_EMULATOR=true" in output
    assert "Traceback" not in output


def test_build_app_refuses_the_emulator_variable_unless_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(AUTH_EMULATOR_ENV, "127.0.0.1:9099")
    base: dict[str, Any] = {"REDIS_URL": "redis://127.0.0.1:1/0", "FIRESTORE_PROJECT_ID": None}
    for project in ("demo-regtask-refuse", None):
        settings = ShimSettings(**base, FIREBASE_PROJECT_ID=project)
        assert settings.allow_auth_emulator is False
        with pytest.raises(RuntimeError, match=r"FIREBASE_AUTH_EMULATOR_HOST is set"):
            build_app(settings)
    allowed = ShimSettings(
        **base, FIREBASE_PROJECT_ID="demo-regtask-refuse", SHIM_ALLOW_AUTH_EMULATOR=True
    )
    assert build_app(allowed).title == "regtask RPC shim"
    # An empty value is "unset" (how the demo and the test servers neutralise the variable).
    monkeypatch.setenv(AUTH_EMULATOR_ENV, "")
    assert build_app(ShimSettings(**base, FIREBASE_PROJECT_ID=None)).title == "regtask RPC shim"


@pytest.fixture
def emulator_shim_process(
    redis_server: RedisServer,
    cluster: KindCluster,
    shim_namespace: str,
    auth_emulator: FirebaseAuthEmulator,
    tmp_path: Path,
) -> Iterator[ServiceProcess]:
    """``python -m regtask_shim`` with the emulator variable and the explicit permission."""
    process = ServiceProcess("shim-auth-emulator", ["regtask_shim"], {}, tmp_path)
    process.env = _shim_env(
        REDIS_URL=redis_server.url,
        REGTASK_NAMESPACE=shim_namespace,
        KUBECONFIG=str(cluster.kubeconfig_path),
        SHIM_PORT=str(process.port),
        FIREBASE_PROJECT_ID=auth_emulator.project_id,
        FIREBASE_AUTH_EMULATOR_HOST=auth_emulator.host,
        SHIM_ALLOW_AUTH_EMULATOR="true",
    )
    with process:
        yield process


@pytest.mark.kube
@pytest.mark.firebase_auth
def test_the_shim_process_with_the_permission_verifies_emulator_tokens(
    emulator_shim_process: ServiceProcess, auth_emulator: FirebaseAuthEmulator
) -> None:
    alice = sign_up(auth_emulator, "alice", companies=[ACME])
    bob = sign_up(auth_emulator, "bob")
    url = emulator_shim_process.url + "/rpc"
    body = {"method": "REGISTRY.register_user", "args": [alice.uid, "s1", "/"]}
    accepted = httpx.post(url, json=body, headers={"Authorization": f"Bearer {alice.id_token}"})
    ok(accepted)
    as_bob = httpx.post(url, json=body, headers={"Authorization": f"Bearer {bob.id_token}"})
    refused(as_bob, 403, "not authorized")
    refused(httpx.post(url, json=body), 401, "missing credentials")
    assert "shim_started" in emulator_shim_process.log_text()


# ------------------------------------------------------------------ the pinned version


def test_the_launcher_and_the_install_script_pin_the_same_firebase_tools() -> None:
    script = (REPO / "hack/install-firebase-tools.sh").read_text()
    pinned = re.search(r'^FIREBASE_TOOLS_VERSION="([^"]+)"$', script, re.MULTILINE)
    assert pinned is not None
    assert pinned.group(1) == FIREBASE_TOOLS_VERSION
    assert EMULATOR_HOST_ENV == AUTH_EMULATOR_ENV
