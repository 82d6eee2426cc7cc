"""One way for asyncio code (operator, shim, gateway) to reach the Kubernetes API."""

from __future__ import annotations

from pathlib import Path

from kubernetes_asyncio import client, config


async def async_api_client(kubeconfig: str | Path | None = None) -> client.ApiClient:
    """A kubeconfig file when one is given (dev, tests); else the in-cluster ServiceAccount,
    else ``~/.kube/config``. Raises ``config.ConfigException`` when none is usable."""
    configuration = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(
            config_file=str(kubeconfig), client_configuration=configuration
        )
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)
