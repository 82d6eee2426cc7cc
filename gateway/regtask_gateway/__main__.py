"""``python -m regtask_gateway``: the runner gateway under uvicorn, configured from the
environment (:class:`regtask_gateway.settings.GatewaySettings`).

Two servers in one event loop: the runners' API on ``REGTASK_GATEWAY_PORT`` and ``/metrics``
on ``REGTASK_GATEWAY_METRICS_PORT`` (0: none). Only the API server handles SIGTERM/SIGINT; the
metrics server is stopped when it ends, so the process always exits as one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn

from regtask.logconfig import configure_logging
from regtask_gateway.app import create_gateway_app, create_metrics_app
from regtask_gateway.settings import GatewaySettings


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signals to the main one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: GatewaySettings) -> None:
    app = create_gateway_app(settings)
    api = uvicorn.Server(
        uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None)
    )
    if not settings.metrics_port:
        await api.serve()
        return
    metrics = _QuietServer(
        uvicorn.Config(
            create_metrics_app(app),
            host=settings.host,
            port=settings.metrics_port,
            log_config=None,
            lifespan="off",
        )
    )
    metrics_task = asyncio.create_task(metrics.serve())
    try:
        await api.serve()
    finally:
        metrics.should_exit = True
        await metrics_task


def main() -> None:
    settings = GatewaySettings()  # required values come from the environment
    configure_logging(settings.registry_debug)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
