"""Everything one operator process shares: settings, one API session, Redis, the mirror, loops.

Built once by the Kopf start-up handler; the handlers reach the controller through it. The loops:
the scheduler, reconcile, status sync, maintenance and memory trim, each on its own cadence;
all but the memory trim run only while this replica is the active one
(:class:`~regtask_operator.peering.Leadership`), which primes the controller each time it
becomes so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog
from prometheus_client import start_http_server

from regtask.firestore_writer import FirestoreWriter
from regtask.ratelimit import LlmRateLimiter
from regtask.registry import Registry
from regtask.settings import Settings
from regtask_operator import memory, metrics
from regtask_operator.config import OperatorSettings
from regtask_operator.controller import Controller
from regtask_operator.kube import Kube, Login
from regtask_operator.maintenance import Maintenance
from regtask_operator.mirror import Mirror
from regtask_operator.peering import Leadership

log = structlog.get_logger(__name__)


@dataclass
class Runtime:
    settings: OperatorSettings
    shared: Settings
    kube: Kube
    redis: aioredis.Redis
    registry: Registry
    firestore: FirestoreWriter | None
    controller: Controller
    maintenance: Maintenance
    leadership: Leadership
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    loops: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def start(cls, settings: OperatorSettings, shared: Settings, login: Login) -> Runtime:
        kube = await Kube.connect(login)
        # A blocking pool: a burst of handlers waits for a free connection instead of failing
        # with "Too many connections".
        pool = aioredis.BlockingConnectionPool.from_url(
            shared.redis_url,
            max_connections=32,
            timeout=10,
            socket_timeout=5,
            socket_connect_timeout=5,
        )
        client = aioredis.Redis(connection_pool=pool)
        registry = Registry(client, shared)
        firestore = FirestoreWriter.from_settings(shared)
        if firestore is not None:
            firestore.start()
        limiter = LlmRateLimiter(client)

        async def llm_window(company_id: str) -> tuple[int, int]:
            decision = await limiter.peek(company_id, limit=1 << 30)
            return decision.count, decision.reset_in_s

        mirror = Mirror(registry, firestore)
        controller = Controller(settings, kube, mirror, llm_window)
        maintenance = Maintenance(
            mirror=mirror,
            registry=registry,
            firestore=firestore,
            tenants=controller.tenants,
            busy_namespaces=controller.busy_namespaces,
            delete_expired=controller.delete_expired,
            repair_interval_s=settings.namespace_repair_interval_s,
            known_limits=controller.known_limits,
            storage=mirror.storage,
            owns_company=settings.handles_company,
            global_chores=settings.shard == 0,
        )
        leadership = Leadership(
            None if settings.standalone else kube,
            settings.peering_name,
            settings.peering_identity,
            settings.effective_peering_priority,
            settings.peering_poll_s,
            controller.prime,
        )
        runtime = cls(
            settings, shared, kube, client, registry, firestore, controller, maintenance, leadership
        )
        collector = metrics.OperatorCollector(controller.tracker, mirror)
        collector.refresh()
        metrics.REGISTRY.register(collector)

        async def refresh_metrics() -> None:
            collector.refresh()  # on the event loop: the scrape's thread only reads the result

        if settings.metrics_port:
            start_http_server(settings.metrics_port, settings.metrics_host, metrics.REGISTRY)
        # Standalone: the companies' limits and the live Jobs' slots before any task is
        # admitted (a restart never admits over quota, or under the defaults, while the resume
        # handlers are still arriving). With peering, the first poll that finds this replica
        # active does the same (a paused replica must not write).
        if settings.standalone:
            await leadership.check()
        active = leadership.active
        runtime.loops = [
            asyncio.create_task(leadership.run(runtime.stop), name="peering"),
            asyncio.create_task(controller.scheduler.run(runtime.stop, active), name="scheduler"),
            asyncio.create_task(
                runtime._every(settings.reconcile_interval_s, runtime.reconcile, active),
                name="reconcile",
            ),
            asyncio.create_task(
                runtime._every(settings.status_sync_interval_s, runtime.sync_status, active),
                name="status-sync",
            ),
            asyncio.create_task(
                runtime._every(settings.maintenance_interval_s, runtime.maintain, active),
                name="maintenance",
            ),
            asyncio.create_task(
                runtime._every(settings.memory_trim_interval_s, runtime.trim_memory),
                name="memory-trim",
            ),
            asyncio.create_task(
                runtime._every(settings.status_sync_interval_s, refresh_metrics),
                name="metrics-snapshot",
            ),
        ]
        return runtime

    # One method per loop (its name is the loop's in the logs).

    async def reconcile(self) -> None:
        await self.controller.reconcile()

    async def sync_status(self) -> None:
        await self.controller.sync_status()

    async def maintain(self) -> None:
        await self.maintenance.run_once()

    async def trim_memory(self) -> None:
        before = memory.resident_mb()
        if memory.trim():
            after = memory.resident_mb()
            if before is not None and after is not None and before - after >= 10:
                log.info(
                    "memory_trimmed", resident_mb=round(after, 1), freed_mb=round(before - after, 1)
                )

    async def _every(
        self,
        interval_s: float,
        action: Callable[[], Awaitable[None]],
        active: asyncio.Event | None = None,
    ) -> None:
        """``action`` every ``interval_s``; only while ``active`` is set, when given."""
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=interval_s)
            if self.stop.is_set():
                return
            if active is not None and not active.is_set():
                continue  # paused: another replica acts
            try:
                await action()
            except Exception:
                log.exception("loop_iteration_failed", loop=getattr(action, "__name__", "?"))

    async def close(self) -> None:
        self.stop.set()
        for task in self.loops:
            task.cancel()
        await asyncio.gather(*self.loops, return_exceptions=True)
        await self.controller.launcher.cancel()
        if self.firestore is not None:
            await asyncio.to_thread(self.firestore.stop, 5.0)
        await self.redis.aclose()
        await self.kube.close()
