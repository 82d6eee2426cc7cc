"""Which replica acts: Kopf's peering, read the way Kopf reads it, for the operator's own loops.

Kopf pauses its watchers while another live peer has a higher priority, and pauses *every*
peer when two share the highest one: replicas of one Deployment must therefore each get their
own priority (:func:`priority_of`, from the pod name, Kopf's identity there). The operator's own
loops (scheduler, reconcile, status sync, maintenance) are not Kopf's and would keep launching
in a paused replica: :class:`Leadership` reads the same peering object and tells them when to
stop, and when this replica becomes the active one, so its memory is rebuilt from the cluster
(what the other replica did meanwhile is not in it).

Hazard: Kopf learns of a change through its watch and this module by polling
(``REGTASK_PEERING_POLL_S``): for up to one interval after a takeover two replicas may both
decide. Derived Job names keep that from creating a second Job for a task; a quota could be
exceeded for that instant, by the tasks admitted in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import getpass
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from regtask_operator.kube import Kube

log = structlog.get_logger(__name__)

PEERING_PATH = "/apis/kopf.dev/v1/clusterkopfpeerings/{name}"
# Kopf's own default when a peer does not say (kopf._core.engines.peering.Peer)
DEFAULT_LIFETIME_S = 60


def own_identity() -> str:
    """Kopf's identity for this process: ``POD_ID`` (the chart sets the pod name) or one made
    here and handed to Kopf, so both read the same entry of the peering object."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    return f"{getpass.getuser()}@{socket.gethostname()}/{os.getpid()}"


def priority_of(identity: str) -> int:
    """A priority of its own for each replica: a stable hash of its identity, in 1..2**31-1.

    Equal priorities pause every peer (Kopf's rule), so replicas must differ; two pod names
    colliding has a chance of about 1 in 2**31 per pair (then Kopf pauses both and logs it).
    """
    digest = hashlib.sha256(identity.encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1) + 1


def _parse(value: str) -> datetime.datetime:
    parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def is_paused(
    peers: Mapping[str, Any], identity: str, priority: int, now: datetime.datetime
) -> bool:
    """Kopf's rule over the peering object's status: paused while another live peer has a
    priority higher than or equal to ours. A peer is live until ``lastseen + lifetime``."""
    for peer_id, info in peers.items():
        if peer_id == identity or not isinstance(info, Mapping):
            continue
        lastseen = info.get("lastseen")
        lifetime = int(info.get("lifetime", DEFAULT_LIFETIME_S))
        if lastseen is None or _parse(str(lastseen)) + datetime.timedelta(seconds=lifetime) <= now:
            continue  # dead (Kopf removes it)
        if int(info.get("priority", 0)) >= priority:
            return True
    return False


class Leadership:
    """Whether this replica is the active one, kept true by polling the peering object.

    ``active`` is set while it is; ``on_active`` runs on each move from paused to active (and
    at the first poll that finds it active) before ``active`` is set, so loops waiting on it
    start on a rebuilt memory. Standalone (no peering): always active.
    """

    def __init__(
        self,
        kube: Kube | None,
        peering_name: str,
        identity: str,
        priority: int,
        poll_s: float,
        on_active: Callable[[], Awaitable[None]],
    ) -> None:
        self.kube = kube
        self.path = PEERING_PATH.format(name=peering_name)
        self.identity = identity
        self.priority = priority
        self.poll_s = poll_s
        self.on_active = on_active
        self.active = asyncio.Event()

    async def check(self) -> bool:
        """One poll: read the peering object, move to active or paused. True when active."""
        if self.kube is None:
            paused = False
        else:
            body = await self.kube.get(self.path)
            peers = (body or {}).get("status") or {}
            # Not announced yet: Kopf announces itself before it handles anything; until then
            # this replica does not know who else is there.
            announced = self.identity in peers
            now = datetime.datetime.now(datetime.UTC)
            paused = not announced or is_paused(peers, self.identity, self.priority, now)
        if paused and self.active.is_set():
            self.active.clear()
            log.warning("operator_paused", identity=self.identity, priority=self.priority)
        elif not paused and not self.active.is_set():
            log.info("operator_active", identity=self.identity, priority=self.priority)
            await self.on_active()
            self.active.set()
        return self.active.is_set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - API unreachable: keep the last verdict
                log.warning("peering_check_failed", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.poll_s)
