"""``python -m regtask_shim``: the production shim under uvicorn, configured from the environment.

Builds the real collaborators only: Redis from ``REDIS_URL``, RegistryTasks through the pod's
service account (or ``KUBECONFIG``), Firebase ID tokens through firebase-admin when
``FIREBASE_PROJECT_ID`` is set, and the service tokens from ``SHIM_SERVICE_TOKEN`` /
``SHIM_SERVICE_TOKEN_FILE``, and the presence registry reader when ``FIRESTORE_PROJECT_ID`` is
set. See :mod:`regtask_shim.settings` for every variable.
"""

from __future__ import annotations

import redis.asyncio as aioredis
import structlog
import uvicorn
from fastapi import FastAPI

from regtask.logconfig import configure_logging
from regtask.registry import Registry
from regtask_shim.app import create_app
from regtask_shim.auth import (
    Authenticator,
    FirebaseTokenVerifier,
    TokenVerifier,
    refuse_auth_emulator_unless_allowed,
)
from regtask_shim.presence import FirestorePresenceReader
from regtask_shim.settings import ShimSettings
from regtask_shim.taskstore import KubeTaskStore

log = structlog.get_logger(__name__)


def build_app(settings: ShimSettings) -> FastAPI:
    # Before anything else, with or without a Firebase project: never by accident.
    refuse_auth_emulator_unless_allowed(settings.allow_auth_emulator)
    client = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )
    project = settings.auth_project_id()
    verifier: TokenVerifier | None = None
    if project:
        verifier = FirebaseTokenVerifier(
            project,
            credentials_file=settings.firebase_credentials_file,
            check_revoked=settings.firebase_check_revoked,
            clock_skew_s=settings.firebase_clock_skew_s,
            allow_emulator=settings.allow_auth_emulator,
        )
    tokens = settings.service_tokens()
    if verifier is None and not tokens:
        log.warning("shim_no_credentials", detail="neither FIREBASE_PROJECT_ID nor service token")
    presence = None
    if settings.firestore_project_id:
        presence = FirestorePresenceReader(
            settings.firestore_project_id,
            settings.firestore_presence_collection,
            settings.presence_timeout_s,
        )
    return create_app(
        settings,
        registry=Registry(client, settings),
        task_store=KubeTaskStore(
            settings.namespace, settings.kubeconfig, settings.kube_timeout_s, settings.shards
        ),
        authenticator=Authenticator(verifier, tokens),
        presence=presence,
        owns_resources=True,
    )


def main() -> None:
    settings = ShimSettings()
    configure_logging(settings.registry_debug)
    try:
        app = build_app(settings)
    except (RuntimeError, ValueError) as exc:
        # A configuration the shim must not run with: one clear line, exit status 2.
        log.error("shim_refused_to_start", error=str(exc))
        raise SystemExit(2) from None
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
