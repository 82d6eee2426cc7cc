"""The Kubernetes reads behind ``regtask quota``: the CompanyQuota and the control namespace's
RegistryTasks (read-only; the estimate itself is in :mod:`regtask.queueplan`).

The quota view reads the API directly rather than the shim: queue positions, admission times and
the CompanyQuota's status only exist on the resources, and an operator on call has a kubeconfig.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from regtask.crmodels import API_GROUP, API_VERSION, QUOTA_PLURAL, TASK_PLURAL
from regtask_cli.errors import CliError, ExitCode

PAGE_SIZE = 500
REQUEST_TIMEOUT_S = 15.0

# The config loaders carry no hints; these names give them one.
_new_client: Callable[..., Any] = config.new_client_from_config
_load_incluster: Callable[..., None] = config.load_incluster_config


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """A client from ``kubeconfig`` (a path, or a list as in KUBECONFIG); in-cluster when
    unset inside a pod; else ``~/.kube/config``."""
    # urllib3 logs each connection retry: noise around the CLI's own one-line error.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    try:
        if kubeconfig:
            return cast(client.ApiClient, _new_client(config_file=kubeconfig))
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            _load_incluster(client_configuration=configuration)
            return client.ApiClient(configuration)
        return cast(client.ApiClient, _new_client())
    except (ConfigException, OSError, TypeError, ValueError) as exc:
        raise CliError(
            f"no usable Kubernetes configuration ({exc}): set KUBECONFIG or --kubeconfig",
            ExitCode.USAGE,
        ) from None


def close_client(api: client.ApiClient) -> None:
    close: Callable[[], None] = api.close
    close()


def _failure(exc: Exception, what: str, host: str) -> CliError:
    if isinstance(exc, ApiException):
        if exc.status in (401, 403):
            return CliError(
                f"Kubernetes API refused to {what} ({exc.status} {exc.reason})", ExitCode.DENIED
            )
        if exc.status == 404:
            return CliError(
                f"cannot {what}: the regtask CRDs are not installed (404)", ExitCode.NOT_FOUND
            )
        return CliError(
            f"Kubernetes API error while trying to {what}: {exc.status} {exc.reason}",
            ExitCode.REFUSED,
        )
    reason = getattr(exc, "reason", None) or exc
    # urllib3 wraps the cause twice; keep its last part ("... [Errno 111] Connection refused").
    detail = str(reason).split("): ", 1)[-1] or type(reason).__name__
    return CliError(f"Kubernetes API unreachable at {host}: {detail}", ExitCode.UNREACHABLE)


def list_objects(api: client.ApiClient, namespace: str, plural: str) -> list[dict[str, Any]]:
    """Every object of a regtask kind in the namespace, page by page."""
    objects = client.CustomObjectsApi(api)
    items: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        try:
            page = objects.list_namespaced_custom_object(
                API_GROUP,
                API_VERSION,
                namespace,
                plural,
                _continue=token,
                limit=PAGE_SIZE,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _failure(exc, f"list {plural} in {namespace}", api.configuration.host) from None
        body = cast(dict[str, Any], page)
        items.extend(item for item in body.get("items") or [] if isinstance(item, dict))
        token = (body.get("metadata") or {}).get("continue") or None
        if not token:
            return items


@dataclass(frozen=True)
class CompanyObjects:
    """What the API holds about one company: its CompanyQuota (if any) and all tasks."""

    quota: dict[str, Any] | None
    tasks: list[dict[str, Any]]


def read_company(api: client.ApiClient, namespace: str, company_id: str) -> CompanyObjects:
    """The company's CompanyQuota (by ``spec.companyId``; the first by name if several) and
    every RegistryTask of the namespace (other companies' runs feed the run-time history)."""
    quotas = [
        q
        for q in list_objects(api, namespace, QUOTA_PLURAL)
        if (q.get("spec") or {}).get("companyId") == company_id
    ]
    quotas.sort(key=lambda q: str((q.get("metadata") or {}).get("name", "")))
    tasks = list_objects(api, namespace, TASK_PLURAL)
    return CompanyObjects(quota=quotas[0] if quotas else None, tasks=tasks)
