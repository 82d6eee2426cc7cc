"""The verifiers and the service credential, without servers.

The production verifier runs firebase-admin's own code: in Auth-emulator mode (where
firebase-admin skips signatures by design, so the shim refuses that mode unless told) and with
Google unreachable (where it must answer 503, not 500).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr, ValidationError

from regtask_shim.auth import (
    AUTH_EMULATOR_ENV,
    Authenticator,
    FirebaseTokenVerifier,
    KeySetTokenVerifier,
)
from regtask_shim.errors import Unauthenticated, Unavailable
from regtask_shim.settings import ShimSettings
from tests.fixtures.shim import FirebaseKeys

pytestmark = pytest.mark.unit

PROJECT = "regtask-unit"


def emulator_token(audience: str = PROJECT, **extra: Any) -> str:
    """What the Firebase Auth emulator issues: unsigned (alg none) Firebase claims."""
    now = int(time.time())
    claims = {
        "iss": f"https://securetoken.google.com/{audience}",
        "aud": audience,
        "sub": "emu_user",
        "iat": now,
        "exp": now + 600,
        "auth_time": now,
        **extra,
    }
    return jwt.encode(claims, "", algorithm="none")


def test_the_production_verifier_refuses_to_start_in_emulator_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(AUTH_EMULATOR_ENV, "127.0.0.1:9099")
    with pytest.raises(RuntimeError, match="unsigned tokens"):
        FirebaseTokenVerifier(PROJECT)


async def test_the_production_verifier_runs_firebase_admin_in_allowed_emulator_mode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(AUTH_EMULATOR_ENV, "127.0.0.1:9099")
    # No Auth server here: the claim rules only (revocation is tested against the emulator).
    verifier = FirebaseTokenVerifier(PROJECT + "-emu", allow_emulator=True, check_revoked=False)
    token = emulator_token(PROJECT + "-emu", authorized_companies_ids=["acme"])
    claims = await verifier.verify(token)
    assert (claims.uid, claims.companies) == ("emu_user", ("acme",))
    with pytest.raises(Unauthenticated, match="aud"):
        await verifier.verify(emulator_token("another-project"))
    with pytest.raises(Unauthenticated, match="custom token"):
        await verifier.verify(
            emulator_token(
                aud="https://identitytoolkit.googleapis.com/google.identity.identitytoolkit.v1.IdentityToolkit"
            )
        )


async def test_an_emulator_variable_set_after_start_up_does_not_switch_checks_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(AUTH_EMULATOR_ENV, raising=False)
    verifier = FirebaseTokenVerifier(PROJECT + "-late")
    monkeypatch.setenv(AUTH_EMULATOR_ENV, "127.0.0.1:9099")
    with pytest.raises(Unavailable):
        await verifier.verify(emulator_token(PROJECT + "-late"))


async def test_google_unreachable_is_unavailable_not_an_error(
    monkeypatch: pytest.MonkeyPatch, firebase_keys: FirebaseKeys, tmp_path: Path
) -> None:
    monkeypatch.delenv(AUTH_EMULATOR_ENV, raising=False)
    token = firebase_keys.mint("u1")
    # No credentials at all (no ADC on this machine).
    with pytest.raises(Unavailable, match=r"credentials|keys unreachable"):
        await FirebaseTokenVerifier(PROJECT + "-noadc").verify(token)
    # A service-account file: firebase-admin then fetches Google's keys, which is impossible.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = tmp_path / "sa.json"
    account.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "k1",
                "private_key": key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ).decode(),
                "client_email": f"shim@{PROJECT}.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    verifier = FirebaseTokenVerifier(PROJECT + "-sa", credentials_file=account)
    with pytest.raises(Unavailable, match="keys unreachable"):
        await verifier.verify(
            firebase_keys.mint(
                "u1",
                audience=PROJECT + "-sa",
                issuer=f"https://securetoken.google.com/{PROJECT}-sa",
            )
        )


async def test_key_set_verifier_checks_the_company_claim(firebase_keys: FirebaseKeys) -> None:
    verifier = KeySetTokenVerifier(
        firebase_keys.project_id, {firebase_keys.kid: firebase_keys.public_pem}
    )
    claims = await verifier.verify(firebase_keys.mint("u1", companies=["a", "b"]))
    assert (claims.uid, claims.companies) == ("u1", ("a", "b"))
    assert (await verifier.verify(firebase_keys.mint("u1"))).companies is None
    with pytest.raises(Unauthenticated, match="authorized_companies_ids"):
        await verifier.verify(firebase_keys.mint("u1", authorized_companies_ids="acme"))
    with pytest.raises(Unauthenticated, match="user id"):
        await verifier.verify(firebase_keys.mint("user:with:colons"))


async def test_service_tokens_match_exactly_and_only_when_configured() -> None:
    token = "t" * 40
    auth = Authenticator(None, [SecretStr(token)])
    assert (await auth.authenticate(token)).is_service
    for wrong in ("t" * 39, "t" * 41, "T" * 40, ""):
        with pytest.raises(Unauthenticated):
            await auth.authenticate(wrong)
    with pytest.raises(Unauthenticated):
        await Authenticator(None, []).authenticate(token)


def test_service_tokens_come_from_env_or_a_secret_file(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("a" * 32 + "\n\n" + "b" * 32 + "\n")
    settings = ShimSettings(SHIM_SERVICE_TOKEN="c" * 32, SHIM_SERVICE_TOKEN_FILE=file)
    assert [t.get_secret_value() for t in settings.service_tokens()] == [
        "c" * 32,
        "a" * 32,
        "b" * 32,
    ]
    with pytest.raises(ValueError, match="at least 32"):
        ShimSettings(SHIM_SERVICE_TOKEN="short").service_tokens()
    with pytest.raises(ValidationError):
        ShimSettings(REGTASK_NAMESPACE="Not_A_Namespace")
