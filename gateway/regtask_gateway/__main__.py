"""``python -m regtask_gateway``: the runner gateway under uvicorn, configured from the
environment (:class:`regtask_gateway.settings.GatewaySettings`)."""

from __future__ import annotations

import uvicorn

from regtask.logconfig import configure_logging
from regtask_gateway.app import create_gateway_app
from regtask_gateway.settings import GatewaySettings


def main() -> None:
    settings = GatewaySettings()  # required values come from the environment
    configure_logging(settings.registry_debug)
    app = create_gateway_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)


if __name__ == "__main__":
    main()
