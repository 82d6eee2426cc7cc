"""``python -m regtask_operator``: run the operator (liveness on :8080/healthz)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Kopf imports the `kubernetes` and `kubernetes_asyncio` clients when they are installed, only
# to recognise their model classes; their generated models cost ~100 MB of resident memory.
# The operator uses neither (see regtask_operator.kube), so a None in sys.modules makes those
# imports fail fast, as if the libraries were absent (Kopf's documented optional dependency).
UNUSED_CLIENTS = ("kubernetes", "kubernetes_asyncio", "pykube")
# Optional extras other libraries import when installed (a dev venv has them, the operator image
# does not): structlog's dev console renderer and pretty tracebacks import `rich` (~3 MB; the
# operator logs JSON), redis-py's metrics import the OpenTelemetry SDK (~1.5 MB; unused here).
# Both libraries treat the failed import as "not installed". The OpenTelemetry API itself stays
# importable (google-api-core uses it for the Firestore mirror).
UNUSED_EXTRAS = ("rich", "opentelemetry.sdk")


def block_unused_clients() -> None:
    for name in (*UNUSED_CLIENTS, *UNUSED_EXTRAS):
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    block_unused_clients()  # first: regtask_operator.memory imports structlog
    from regtask_operator import memory

    memory.tune()  # before the imports below allocate: see regtask_operator.memory
    import kopf
    from kopf._core.engines.peering import Identity  # a NewType of str; not re-exported

    from regtask.logconfig import configure_logging
    from regtask.settings import get_settings
    from regtask_operator import handlers  # noqa: F401 - registers the Kopf handlers
    from regtask_operator.config import get_operator_settings

    parser = argparse.ArgumentParser(description="RegistryTask operator")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz")
    args = parser.parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # read by Kopf's login (and so by ours)
    debug = get_settings().registry_debug
    configure_logging(debug)
    if not debug:
        # Kopf logs "Handler succeeded" per watch event at INFO: one line per task change.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    config = get_operator_settings()
    kopf.run(
        clusterwide=True,
        standalone=config.standalone,
        peering_name=None if config.standalone else config.peering_name,
        # One identity and one priority of its own per replica, read by Kopf and by the
        # operator's own loops alike (see regtask_operator.peering).
        identity=Identity(config.peering_identity),
        priority=config.effective_peering_priority,
        liveness_endpoint=args.liveness,
    )


if __name__ == "__main__":
    main()
