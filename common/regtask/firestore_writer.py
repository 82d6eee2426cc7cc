"""The Firestore writer: presence and task status into Firestore for the web app, best effort.

The Firestore half of the operator's mirror (:mod:`regtask_operator.mirror`) and of its presence
sweep. Log events and metrics keep their ``firestore_mirror`` names (dashboards and alerts read
them).

Firestore is a read model for the web app, never the source of truth, so a slow or dead
Firestore must never block or crash the operator/shim: callers only touch an in-memory,
bounded, coalescing queue and a single daemon thread does the network writes with retries.

Credentials: with ``FIRESTORE_EMULATOR_HOST`` set (tests, local demo) the firebase app is
initialised with ``google.auth.credentials.AnonymousCredentials`` (firebase-admin 7.x accepts
any google-auth credential and wraps it); google-cloud-firestore then opens an insecure gRPC
channel to the emulator with the ``Bearer owner`` header, so no key file and no metadata server
are needed. Without the variable, Application Default Credentials are used (lazily; a missing
credential is logged and retried by the worker, never raised to callers). The emulator host is
read when the client is built, i.e. in ``__init__``.

Long (about 400 lines) for a reason: the queue, its coalescing, the writer thread and its retry
policy share one lock and one set of counters; split, their invariants would span modules.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from regtask.settings import Settings

log = structlog.get_logger(__name__)

EMULATOR_HOST_ENV = "FIRESTORE_EMULATOR_HOST"

_app_names = itertools.count(1)


@dataclass
class _Pending:
    """One document waiting to be written: the coalesced fields of every update so far."""

    collection: str
    doc_id: str
    fields: dict[str, Any]
    attempts: int = 0
    # A task's end: what its user must eventually see; trimmed only when nothing else is left.
    final: bool = False


def _copy_value(value: Any) -> Any:
    """Copy containers so later mutations by the caller cannot change a queued write."""
    if isinstance(value, Mapping):
        return {key: _copy_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_value(item) for item in value]
    return value


def _merge_into(base: dict[str, Any], newer: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``newer`` into ``base`` (newer wins), maps merged per key like ``merge=True``."""
    for key, value in newer.items():
        current = base.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            _merge_into(current, value)
        else:
            base[key] = _copy_value(value)
    return base


def _valid_doc_id(doc_id: object) -> bool:
    return (
        isinstance(doc_id, str)
        and doc_id not in ("", ".", "..")
        and "/" not in doc_id
        and not (doc_id.startswith("__") and doc_id.endswith("__"))
        and len(doc_id.encode()) <= 1500
    )


def _is_permanent(exc: BaseException) -> bool:
    """Errors a retry cannot fix (bad values/ids): retrying would block the queue forever."""
    if isinstance(exc, TypeError | ValueError):
        return True
    try:
        from google.api_core import exceptions as gexc
    except ImportError:  # pragma: no cover - firebase-admin pulls google-api-core in
        return False
    return isinstance(exc, gexc.InvalidArgument)


class FirestoreWriter:
    """Queue + one writer thread; ``write_*`` are O(1), thread-safe and never raise."""

    def __init__(
        self,
        project_id: str,
        *,
        tasks_collection: str = "registry_tasks",
        presence_collection: str = "listeners_registry",
        queue_size: int = 10_000,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        write_timeout_s: float = 5.0,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.project_id = project_id
        self.tasks_collection = tasks_collection
        self.presence_collection = presence_collection
        self.queue_size = queue_size
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = max(retry_max_s, retry_initial_s)
        self.write_timeout_s = write_timeout_s
        self._client_factory = client_factory or self._firebase_client
        self._client: Any = None
        self._app: Any = None

        self._cond = threading.Condition(threading.Lock())
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._inflight: tuple[str, _Pending] | None = None
        self._thread: threading.Thread | None = None
        self._stop_requested = False
        self._stopped = False
        self._warned_stopped = False
        self._drain_deadline = 0.0
        self._backoff_s = 0.0
        self._written = 0
        self._failed_attempts = 0
        self._dropped = 0
        self._rejected = 0

        # Built eagerly so FIRESTORE_EMULATOR_HOST is read now; on failure the worker retries.
        try:
            self._ensure_client()
        except Exception as exc:  # noqa: BLE001 - never raise to callers; the worker retries
            log.warning("firestore_mirror_client_failed", project_id=project_id, error=repr(exc))

    @classmethod
    def from_settings(cls, settings: Settings) -> FirestoreWriter | None:
        """None when ``FIRESTORE_PROJECT_ID`` is unset: Firestore is off, callers skip it."""
        if not settings.firestore_project_id:
            log.info("firestore_mirror_disabled", reason="firestore_project_id unset")
            return None
        return cls(
            settings.firestore_project_id,
            tasks_collection=settings.firestore_tasks_collection,
            presence_collection=settings.firestore_presence_collection,
            queue_size=settings.firestore_queue_size,
        )

    # -- client -----------------------------------------------------------------------------

    def _firebase_client(self) -> Any:
        """A firestore client from a firebase app of our own (named, so instances never clash)."""
        import firebase_admin
        from firebase_admin import firestore as fb_firestore

        if self._app is None:
            credential: Any = None  # None = Application Default Credentials, resolved lazily
            if os.environ.get(EMULATOR_HOST_ENV):
                from google.auth.credentials import AnonymousCredentials

                credential = AnonymousCredentials()  # type: ignore[no-untyped-call]
            self._app = firebase_admin.initialize_app(
                credential,
                options={"projectId": self.project_id},
                name=f"regtask-firestore-mirror-{os.getpid()}-{next(_app_names)}",
            )
        return fb_firestore.client(self._app)

    def _ensure_client(self) -> Any:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    # -- producer side ----------------------------------------------------------------------

    def write_presence(
        self,
        uid: str,
        *,
        status: str,
        heartbeat_at: str,
        ttl_seconds: int,
        authorized_companies_ids: list[str],
    ) -> None:
        """Queue a merge write of ``listeners_registry/{uid}`` with exactly the contract fields."""
        self._enqueue(
            self.presence_collection,
            uid,
            {
                "status": status,
                "heartbeat_at": heartbeat_at,
                "ttl_seconds": ttl_seconds,
                "authorized_companies_ids": list(authorized_companies_ids),
            },
        )

    def write_task(self, task_id: str, fields: dict[str, Any], final: bool = False) -> None:
        """Queue a merge write of the task status document (fields chosen by the caller).
        ``final``: the task's end, kept over every other kind of write when the queue is full."""
        self._enqueue(self.tasks_collection, task_id, fields, final)

    def _enqueue(
        self, collection: str, doc_id: str, fields: Mapping[str, Any], final: bool = False
    ) -> None:
        try:
            if not _valid_doc_id(doc_id):
                with self._cond:
                    self._rejected += 1
                log.warning("firestore_mirror_invalid_id", collection=collection, doc_id=doc_id)
                return
            path = f"{collection}/{doc_id}"
            dropped: list[tuple[str, str]] = []
            with self._cond:
                if self._stopped:
                    self._dropped += 1
                    if not self._warned_stopped:  # once: producers may outlive the writer
                        self._warned_stopped = True
                        dropped.append((path, "stopped"))
                else:
                    entry = self._pending.get(path)
                    if entry is not None:
                        _merge_into(entry.fields, fields)  # keeps its queue position
                        entry.final = entry.final or final
                    else:
                        self._pending[path] = _Pending(
                            collection, doc_id, _merge_into({}, fields), final=final
                        )
                        dropped.extend((p, "queue_full") for p in self._trim())
                    self._cond.notify_all()
            for dropped_path, reason in dropped:
                log.warning("firestore_mirror_dropped", path=dropped_path, reason=reason)
        except Exception as exc:  # never let a Firestore problem reach the caller
            log.exception("firestore_mirror_enqueue_failed", doc_id=doc_id, error=repr(exc))

    def _trim(self) -> list[str]:
        """Drop documents beyond ``queue_size`` (caller holds the lock): the oldest that is not
        a task's end first (a progress or presence update is superseded anyway; an end is
        never written again), then the oldest ends when only ends are left."""
        dropped: list[str] = []
        excess = len(self._pending) - self.queue_size
        if excess <= 0:
            return dropped
        for path in [p for p, entry in self._pending.items() if not entry.final][:excess]:
            del self._pending[path]
            dropped.append(path)
        while len(self._pending) > self.queue_size:
            path, _ = self._pending.popitem(last=False)
            dropped.append(path)
        self._dropped += len(dropped)
        return dropped

    # -- observation ------------------------------------------------------------------------

    def _pending_locked(self) -> int:
        inflight = self._inflight is not None and self._inflight[0] not in self._pending
        return len(self._pending) + int(inflight)

    def pending(self) -> int:
        """Distinct documents not yet confirmed written (queued or being written)."""
        with self._cond:
            return self._pending_locked()

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {
                "written": self._written,
                "failed_attempts": self._failed_attempts,
                "dropped": self._dropped,
                "rejected": self._rejected,
                "pending": self._pending_locked(),
            }

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until nothing is pending (True) or ``timeout_s`` passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending_locked() == 0, timeout=timeout_s)

    async def flush(self, timeout_s: float) -> bool:
        """``wait_idle`` for async callers, without blocking the event loop."""
        return await asyncio.to_thread(self.wait_idle, timeout_s)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the single writer thread (idempotent); updates queued before are kept."""
        with self._cond:
            if self._stopped:
                raise RuntimeError("FirestoreWriter cannot be restarted after stop()")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="firestore-mirror", daemon=True)
            self._thread.start()
        log.info("firestore_mirror_started", project_id=self.project_id)

    def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Try to flush within ``drain_timeout_s``, then stop; returns in about that time."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._stop_requested = True
            self._drain_deadline = time.monotonic() + max(drain_timeout_s, 0.0)
            thread = self._thread
            self._cond.notify_all()
        if thread is not None:
            thread.join(timeout=max(self._drain_deadline - time.monotonic(), 0.0))
        alive = thread is not None and thread.is_alive()
        stats = self.stats()
        if alive or stats["pending"]:
            log.warning("firestore_mirror_stopped_with_pending", worker_alive=alive, **stats)
        else:
            log.info("firestore_mirror_stopped", **stats)
        if not alive:
            self._close_client()

    def _close_client(self) -> None:
        try:
            close = getattr(self._client, "close", None)
            if callable(close):
                close()
            if self._app is not None:
                import firebase_admin

                firebase_admin.delete_app(self._app)
                self._app = None
        except Exception as exc:  # noqa: BLE001 - closing is best effort, logged
            log.warning("firestore_mirror_close_failed", error=repr(exc))

    # -- worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                item = self._next()
                if item is None:
                    return
                self._write(*item)
            except Exception as exc:  # the worker must survive anything
                log.exception("firestore_mirror_worker_error", error=repr(exc))
                self._sleep_backoff()

    def _next(self) -> tuple[str, _Pending] | None:
        """Take the oldest pending document, or None when it is time to exit."""
        with self._cond:
            while True:
                if self._stop_requested and (
                    not self._pending or time.monotonic() >= self._drain_deadline
                ):
                    return None
                if self._pending:
                    item = self._pending.popitem(last=False)
                    self._inflight = item
                    return item
                self._cond.wait()

    def _write(self, path: str, entry: _Pending) -> None:
        attempt = entry.attempts + 1
        try:
            client = self._ensure_client()  # e.g. no credentials yet: retried, never rejected
        except Exception as exc:  # noqa: BLE001 - any client failure is retried
            self._requeue(path, entry, exc, attempt)
            self._sleep_backoff()
            return
        try:
            ref = client.collection(entry.collection).document(entry.doc_id)
            # retry=None: the GAPIC default retry would block this thread ~60 s on UNAVAILABLE;
            # retries are ours (logged, counted, merged with newer values).
            ref.set(entry.fields, merge=True, timeout=self.write_timeout_s, retry=None)
        except Exception as exc:  # noqa: BLE001 - classified below: retried or rejected
            if _is_permanent(exc):
                with self._cond:
                    self._rejected += 1
                    self._inflight = None
                    self._cond.notify_all()
                log.error("firestore_mirror_write_rejected", path=path, error=repr(exc))
                return
            self._requeue(path, entry, exc, attempt)
            self._sleep_backoff()
            return
        with self._cond:
            self._written += 1
            self._inflight = None
            self._backoff_s = 0.0
            self._cond.notify_all()

    def _requeue(self, path: str, entry: _Pending, exc: Exception, attempt: int) -> None:
        """Put a failed document back at the head; updates that arrived meanwhile win."""
        with self._cond:
            self._failed_attempts += 1
            entry.attempts = attempt
            newer = self._pending.get(path)
            if newer is not None:
                entry.fields = _merge_into(entry.fields, newer.fields)
            self._pending[path] = entry
            self._pending.move_to_end(path, last=False)
            self._inflight = None
            dropped = self._trim()
            self._cond.notify_all()
        log.warning("firestore_mirror_write_failed", path=path, error=repr(exc), attempt=attempt)
        for dropped_path in dropped:
            log.warning("firestore_mirror_dropped", path=dropped_path, reason="queue_full")

    def _sleep_backoff(self) -> None:
        """Exponential backoff with jitter; cut short once by stop() so the drain tries now."""
        with self._cond:
            self._backoff_s = min(self.retry_max_s, max(self._backoff_s * 2, self.retry_initial_s))
            delay = self._backoff_s * random.uniform(0.5, 1.0)
            stopping = self._stop_requested
            deadline = time.monotonic() + delay
            if stopping:
                deadline = min(deadline, self._drain_deadline)
            self._cond.wait_for(
                lambda: (self._stop_requested and not stopping) or time.monotonic() >= deadline,
                timeout=max(deadline - time.monotonic(), 0.0),
            )
