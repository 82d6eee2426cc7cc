"""``python -m regtask_operator``: run the operator (liveness on :8080/healthz)."""

from __future__ import annotations

import argparse
import os

import kopf

from regtask.logconfig import configure_logging
from regtask.settings import get_settings
from regtask_operator import handlers  # noqa: F401 - registers the Kopf handlers
from regtask_operator.config import get_operator_settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="RegistryTask operator")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz")
    args = parser.parse_args(argv)
    if args.kubeconfig:
        # Kopf's own login reads KUBECONFIG; our API session gets the same file via the memo.
        os.environ["KUBECONFIG"] = args.kubeconfig
    configure_logging(get_settings().registry_debug)
    config = get_operator_settings()
    kopf.run(
        clusterwide=True,
        standalone=config.standalone,
        peering_name=None if config.standalone else config.peering_name,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(kubeconfig=args.kubeconfig),
    )


if __name__ == "__main__":
    main()
