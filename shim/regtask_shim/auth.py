"""Who is calling, and what they may touch.

Two kinds of callers present ``Authorization: Bearer <token>``:

* **The microservice** (server to server) presents a shared service token, read from a
  Kubernetes Secret and compared in constant time. It may act for any user it names.
* **A Firebase user** presents a Firebase ID token. In production it is verified by
  ``firebase_admin.auth.verify_id_token`` (:class:`FirebaseTokenVerifier`). Tests and local runs
  build the app with :class:`KeySetTokenVerifier` instead: same interface, same Firebase claim
  rules, but the signing keys are a fixed set the test owns, so expiry, signatures, audience and
  issuer are all really checked. ``python -m regtask_shim`` only ever builds the firebase-admin
  verifier; the key-set one is reachable from code only. The firebase-admin verifier itself is
  tested against Google's Firebase Auth emulator (``tests/shim/test_firebase_auth_emulator.py``).

``FIREBASE_AUTH_EMULATOR_HOST`` makes firebase-admin skip signature and expiry checks (the
emulator's tokens are unsigned), so the shim refuses to start with it set unless
``SHIM_ALLOW_AUTH_EMULATOR=true`` says a local emulator run is meant
(:func:`refuse_auth_emulator_unless_allowed`).

A Firebase caller acts only as itself (``user_id`` must equal the token's uid) and only for the
companies of the token's custom claim ``authorized_companies_ids`` (signed by Firebase, set with
the Admin SDK's ``set_custom_user_claims``) plus its own default tenant: the claim, or its
absence, is the truth; the registry's copy is never consulted (it is refreshed by the user's own
``register_user``). That rule and the company resolution ladder live in
:mod:`regtask_shim.companies`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import jwt
import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError

from regtask.identifiers import Identifier
from regtask_shim.errors import Forbidden, Unauthenticated, Unavailable, echo

log = structlog.get_logger(__name__)

FIREBASE_ISSUER_PREFIX = "https://securetoken.google.com/"
# Custom claim listing the companies a Firebase user may act for.
COMPANIES_CLAIM = "authorized_companies_ids"
# Custom claim {company_id: role}; role "admin" opens the web console for that company.
ROLES_CLAIM = "company_roles"
ADMIN_ROLE = "admin"
AUTH_EMULATOR_ENV = "FIREBASE_AUTH_EMULATOR_HOST"
_UID = TypeAdapter(Identifier)
_COMPANIES = TypeAdapter(list[Identifier])
_ROLES = TypeAdapter(dict[Identifier, str])


class Principal(BaseModel):
    """The authenticated caller of one request."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["firebase", "service"]
    # Firebase uid; None for the service credential.
    uid: str | None = None
    # The token's ``authorized_companies_ids`` claim; None when the token has none.
    token_companies: tuple[str, ...] | None = None
    # The token's ``company_roles`` claim as (company, role) pairs; None when it has none.
    token_roles: tuple[tuple[str, str], ...] | None = None

    @property
    def is_service(self) -> bool:
        return self.kind == "service"

    def describe(self) -> str:
        return "service" if self.is_service else f"user:{self.uid}"


class FirebaseClaims(BaseModel):
    """The verified claims the shim uses from a Firebase ID token."""

    model_config = ConfigDict(frozen=True)

    uid: str
    companies: tuple[str, ...] | None = None
    roles: tuple[tuple[str, str], ...] | None = None
    expires_at: int = Field(description="epoch seconds")


class TokenVerifier(Protocol):
    """Verifies a Firebase ID token; raises Unauthenticated (bad token) or Unavailable."""

    async def verify(self, token: str) -> FirebaseClaims: ...


def claims_from_payload(payload: Mapping[str, Any]) -> FirebaseClaims:
    """The shim's view of verified claims; a uid or company list it cannot use is refused."""
    try:
        uid = _UID.validate_python(payload.get("uid") or payload.get("sub"))
    except ValidationError:
        raise Unauthenticated("token subject is not a usable user id") from None
    raw_companies = payload.get(COMPANIES_CLAIM)
    companies: tuple[str, ...] | None = None
    if raw_companies is not None:
        try:
            companies = tuple(_COMPANIES.validate_python(raw_companies))
        except ValidationError:
            raise Unauthenticated(f"token claim '{COMPANIES_CLAIM}' is not a list of ids") from None
    raw_roles = payload.get(ROLES_CLAIM)
    roles: tuple[tuple[str, str], ...] | None = None
    if raw_roles is not None:
        try:
            roles = tuple(sorted(_ROLES.validate_python(raw_roles).items()))
        except ValidationError:
            raise Unauthenticated(f"token claim '{ROLES_CLAIM}' is not a map of ids") from None
    exp = payload.get("exp")
    return FirebaseClaims(
        uid=uid,
        companies=companies,
        roles=roles,
        expires_at=int(exp) if isinstance(exp, int | float) else 0,
    )


def refuse_auth_emulator_unless_allowed(allowed: bool) -> None:
    """Start-up check: the Auth emulator variable is a configuration error unless allowed."""
    host = os.environ.get(AUTH_EMULATOR_ENV)
    if host and not allowed:
        raise RuntimeError(
            f"{AUTH_EMULATOR_ENV} is set ({host!r}): firebase-admin would accept unsigned tokens "
            "(no signature or expiry check) from anyone. Unset it, or set "
            "SHIM_ALLOW_AUTH_EMULATOR=true for a local run against the Firebase Auth emulator."
        )


class FirebaseTokenVerifier:
    """Production verifier: ``firebase_admin.auth.verify_id_token`` (Google-signed tokens)."""

    def __init__(
        self,
        project_id: str,
        *,
        credentials_file: Path | None = None,
        check_revoked: bool = True,
        clock_skew_s: int = 5,
        allow_emulator: bool = False,
    ) -> None:
        import firebase_admin
        from firebase_admin import credentials

        refuse_auth_emulator_unless_allowed(allow_emulator)
        self.project_id = project_id
        self.check_revoked = check_revoked
        self.clock_skew_s = clock_skew_s
        self.allow_emulator = allow_emulator
        name = f"regtask-shim-{project_id}"
        try:
            self._app = firebase_admin.get_app(name)
        except ValueError:
            credential = (
                credentials.Certificate(str(credentials_file))
                if credentials_file is not None
                else credentials.ApplicationDefault()
            )
            self._app = firebase_admin.initialize_app(
                credential, {"projectId": project_id}, name=name
            )

    def _verify_sync(self, token: str) -> dict[str, Any]:
        from firebase_admin import auth

        claims: dict[str, Any] = auth.verify_id_token(
            token,
            app=self._app,
            check_revoked=self.check_revoked,
            clock_skew_seconds=self.clock_skew_s,
        )
        return claims

    async def verify(self, token: str) -> FirebaseClaims:
        import google.auth.exceptions
        from firebase_admin import auth, exceptions

        if os.environ.get(AUTH_EMULATOR_ENV) and not self.allow_emulator:
            # Set after start-up: never let it switch signature checks off.
            raise Unavailable("token verification is misconfigured (auth emulator variable set)")
        try:
            payload = await asyncio.to_thread(self._verify_sync, token)
        except auth.ExpiredIdTokenError:
            raise Unauthenticated("token expired: sign in again") from None
        except auth.RevokedIdTokenError:
            raise Unauthenticated("token revoked: sign in again") from None
        except auth.UserDisabledError:
            raise Unauthenticated("user account disabled") from None
        except auth.UserNotFoundError:
            # check_revoked looks the user up: a deleted account is a refused caller, not an
            # outage (firebase-admin raises it as a FirebaseError, caught below otherwise).
            raise Unauthenticated("user account no longer exists") from None
        except auth.InvalidIdTokenError as exc:
            raise Unauthenticated(f"invalid token: {_first_sentence(str(exc))}") from None
        except auth.CertificateFetchError:
            log.warning("firebase_certificates_unreachable")
            raise Unavailable("cannot verify tokens now: Firebase keys unreachable") from None
        except google.auth.exceptions.DefaultCredentialsError:
            log.error("firebase_credentials_missing")
            raise Unavailable("cannot verify tokens: Firebase credentials unavailable") from None
        except exceptions.FirebaseError as exc:
            log.warning("firebase_error", error=type(exc).__name__)
            raise Unavailable("cannot verify tokens now: Firebase error") from None
        except ValueError:
            raise Unauthenticated("invalid token") from None
        return claims_from_payload(payload)


class KeySetTokenVerifier:
    """Firebase ID-token rules against a fixed set of RSA public keys (tests, local runs).

    Applies what firebase-admin applies: a ``kid`` naming a known key, RS256 only, ``aud`` = the
    project, ``iss`` = ``https://securetoken.google.com/<project>``, a non-empty ``sub`` of at
    most 128 characters, ``exp``/``iat``/``auth_time`` checked with the same clock skew.
    """

    def __init__(
        self, project_id: str, public_keys: Mapping[str, str | bytes], *, clock_skew_s: int = 5
    ) -> None:
        self.project_id = project_id
        self.clock_skew_s = clock_skew_s
        self._keys: dict[str, str | bytes] = dict(public_keys)

    async def verify(self, token: str) -> FirebaseClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token: not a JWT") from None
        if header.get("alg") != "RS256":
            raise Unauthenticated("invalid token: algorithm must be RS256")
        key = self._keys.get(str(header.get("kid")))
        if key is None:
            raise Unauthenticated("invalid token: unknown signing key")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=["RS256"],
                audience=self.project_id,
                issuer=FIREBASE_ISSUER_PREFIX + self.project_id,
                leeway=self.clock_skew_s,
                options={"require": ["exp", "iat", "aud", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired: sign in again") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from None
        subject = payload.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 128:
            raise Unauthenticated("invalid token: bad subject")
        auth_time = payload.get("auth_time")
        if not isinstance(auth_time, int) or auth_time > time.time() + self.clock_skew_s:
            raise Unauthenticated("invalid token: bad auth_time")
        payload["uid"] = subject
        return claims_from_payload(payload)


def _first_sentence(text: str) -> str:
    return text.split(". ", 1)[0][:200]


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class Authenticator:
    """Turns the ``Authorization`` header into a :class:`Principal`, or refuses with 401."""

    def __init__(
        self, verifier: TokenVerifier | None, service_tokens: Sequence[SecretStr | str] = ()
    ) -> None:
        self.verifier = verifier
        # Compared as SHA-256 digests with compare_digest: constant time, length hidden too.
        self._service_digests = [
            _digest(t.get_secret_value() if isinstance(t, SecretStr) else t) for t in service_tokens
        ]

    def _is_service(self, token: str) -> bool:
        presented = _digest(token)
        matched = False
        for digest in self._service_digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated(
                "missing credentials: send 'Authorization: Bearer <Firebase ID token>'"
            )
        if self._is_service(token):
            return Principal(kind="service")
        if self.verifier is None:
            raise Unauthenticated("invalid token (Firebase sign-in is not configured here)")
        claims = await self.verifier.verify(token)
        return Principal(
            kind="firebase",
            uid=claims.uid,
            token_companies=claims.companies,
            token_roles=claims.roles,
        )


class Access:
    """Authorisation rules about users (companies: :mod:`regtask_shim.companies`)."""

    @staticmethod
    def require_self(principal: Principal, user_id: str) -> None:
        if not principal.is_service and principal.uid != user_id:
            raise Forbidden(f"not authorized: user_id {echo(user_id)} is not the signed-in user")

    @staticmethod
    def owns(principal: Principal, owner_id: str) -> bool:
        """The service acts for everyone; a user only for itself."""
        return principal.is_service or principal.uid == owner_id

    @staticmethod
    def require_owner(principal: Principal, owner_id: str, what: str) -> None:
        if not Access.owns(principal, owner_id):
            raise Forbidden(f"not authorized: this {what} belongs to another user")

    @staticmethod
    def require_service(principal: Principal, what: str) -> None:
        if not principal.is_service:
            raise Forbidden(f"not authorized: only the service credential may set {what}")
