"""Reading the web app's presence registry (``listeners_registry/{uid}`` in Firestore).

The existing app keeps each signed-in user's ``authorized_companies_ids`` there; the shim reads it
only to pick a company for a call that names none (:mod:`regtask_shim.companies`), never to
authorise one. A read is best effort: Firestore slow, down or holding a malformed document gives
"no answer" (logged), so a valid call never fails because of it.

Hazard: google-cloud-firestore's client is synchronous; each read runs in a worker thread under
a timeout (``SHIM_PRESENCE_TIMEOUT_SECONDS``). A timed-out read keeps its thread until the gRPC
deadline passes, so the deadline is the same timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from typing import Any, Protocol

import structlog
from pydantic import TypeAdapter, ValidationError

from regtask.identifiers import Identifier

log = structlog.get_logger(__name__)

EMULATOR_HOST_ENV = "FIRESTORE_EMULATOR_HOST"
COMPANIES_FIELD = "authorized_companies_ids"
_COMPANIES = TypeAdapter(list[Identifier])
_app_names = itertools.count(1)


class PresenceReader(Protocol):
    """The companies the presence registry lists for a user; None when it says nothing."""

    async def companies(self, uid: str) -> tuple[str, ...] | None: ...

    def close(self) -> None: ...


def companies_from_document(uid: str, data: dict[str, Any] | None) -> tuple[str, ...] | None:
    """The document's company list; None when absent or not a list of ids (logged)."""
    if data is None or data.get(COMPANIES_FIELD) is None:
        return None
    try:
        return tuple(_COMPANIES.validate_python(data[COMPANIES_FIELD]))
    except ValidationError:
        log.warning("presence_companies_malformed", uid=uid)
        return None


class FirestorePresenceReader:
    """``listeners_registry/{uid}`` through firebase-admin (emulator: anonymous credentials)."""

    def __init__(self, project_id: str, collection: str, timeout_s: float) -> None:
        self.project_id = project_id
        self.collection = collection
        self.timeout_s = timeout_s
        self._app: Any = None
        self._client: Any = None
        self._lock = threading.Lock()
        # Read now, as the writer does: the emulator variable of the start-up environment counts.
        self._emulator = bool(os.environ.get(EMULATOR_HOST_ENV))

    def _ensure_client(self) -> Any:
        """Built on first use (in a worker thread): missing credentials fail a read, not start."""
        with self._lock:
            return self._build_client()

    def _build_client(self) -> Any:
        if self._client is None:
            import firebase_admin
            from firebase_admin import firestore as fb_firestore

            if self._app is None:
                credential: Any = None  # None = Application Default Credentials
                if self._emulator:
                    from google.auth.credentials import AnonymousCredentials

                    credential = AnonymousCredentials()  # type: ignore[no-untyped-call]
                self._app = firebase_admin.initialize_app(
                    credential,
                    options={"projectId": self.project_id},
                    name=f"regtask-shim-presence-{os.getpid()}-{next(_app_names)}",
                )
            self._client = fb_firestore.client(self._app)
        return self._client

    def _read(self, uid: str) -> dict[str, Any] | None:
        document = self._ensure_client().collection(self.collection).document(uid)
        snapshot = document.get(timeout=self.timeout_s)
        data: dict[str, Any] | None = snapshot.to_dict() if snapshot.exists else None
        return data

    async def companies(self, uid: str) -> tuple[str, ...] | None:
        try:
            data = await asyncio.wait_for(asyncio.to_thread(self._read, uid), self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - best effort by design: any failure = no answer
            log.warning("presence_read_failed", uid=uid, error=type(exc).__name__)
            return None
        return companies_from_document(uid, data)

    def close(self) -> None:
        import firebase_admin

        if self._client is not None:
            self._client.close()
        if self._app is not None:
            firebase_admin.delete_app(self._app)
