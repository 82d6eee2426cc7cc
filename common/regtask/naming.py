"""Kubernetes names derived from the platform's ids: valid, stable and collision-free.

Ids such as ``doc_analysis_job456`` or ``user@example`` are not DNS-1123 labels. Each name is a
sanitised, readable prefix plus a hash of the raw ids, so two different inputs never meet in the
same name, and the same input always gives the same name (creating twice is harmless).
The raw ids travel in annotations (:data:`ANNOTATION_USER` ...), never lost.
"""

from __future__ import annotations

import hashlib
import re

DNS_LABEL_MAX = 63
HASH_LENGTH = 10
# The API server cuts a generateName base ("<job>-") to 58 characters: a Job name of at most 57
# keeps every pod name "<job>-<5 random characters>", so a pod name tells its Job exactly.
JOB_NAME_MAX = 57
# The ServiceAccount every runner pod runs as, in its tenant namespace.
RUNNER_SERVICE_ACCOUNT = "regtask-runner"
# Every tenant namespace is named "rt-...": the chart's ValidatingAdmissionPolicy lets the
# operator touch only namespaces with this prefix and the managed-by label (a test keeps the
# chart and this constant equal).
TENANT_NAMESPACE_PREFIX = "rt"

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "regtask-operator"
LABEL_TENANT = "regtask.io/tenant"
LABEL_TASK = "regtask.io/task"
LABEL_TASK_TYPE = "regtask.io/task-type"
LABEL_COMPANY = "regtask.io/company"
# On RegistryTasks created by the shim, so one user's tasks can be listed by label selector.
LABEL_USER = "regtask.io/user"
ANNOTATION_USER = "regtask.io/user-id"
ANNOTATION_COMPANY = "regtask.io/company-id"
ANNOTATION_TASK = "regtask.io/task-id"
ANNOTATION_TASK_NAMESPACE = "regtask.io/task-namespace"
# The UID of the RegistryTask a Job was created for (a task re-created with the same taskId
# has another one).
ANNOTATION_TASK_UID = "regtask.io/task-uid"
# The operator's finalizer on RegistryTasks (its Job, quota slot and registry end are released
# behind it). The shim sets it at creation, which saves the operator one PATCH per task; the
# operator adds it to tasks created without it (kubectl apply).
TASK_FINALIZER = "regtask.io/finalizer"

_INVALID = re.compile(r"[^a-z0-9-]+")


def _digest(*raw: str) -> str:
    # NUL cannot occur in ids, so ("a_b", "c") and ("a", "b_c") hash differently.
    return hashlib.sha256("\0".join(raw).encode()).hexdigest()[:HASH_LENGTH]


def _slug(value: str) -> str:
    return _INVALID.sub("-", value.lower()).strip("-")


def derived_name(prefix: str, *raw: str, max_length: int = DNS_LABEL_MAX) -> str:
    """``{prefix}-{slug of each id}-{hash}``, cut to ``max_length``; a valid DNS-1123 label."""
    suffix = _digest(*raw)
    readable = "-".join(part for part in (_slug(v) for v in raw) if part)
    room = max_length - len(prefix) - len(suffix) - 2
    readable = readable[:room].strip("-") if room > 0 else ""
    return "-".join(part for part in (prefix, readable, suffix) if part)


def tenant_namespace(user_id: str, company_id: str) -> str:
    """The isolation namespace of one (user, company) pair."""
    return derived_name(TENANT_NAMESPACE_PREFIX, user_id, company_id)


def tenant_label(user_id: str, company_id: str) -> str:
    return _digest(user_id, company_id)


def user_label(user_id: str) -> str:
    return derived_name("u", user_id)


def company_label(company_id: str) -> str:
    return derived_name("c", company_id)


def task_resource_name(task_id: str) -> str:
    """``metadata.name`` of the RegistryTask that carries ``task_id``."""
    return derived_name("task", task_id)


def job_name(task_id: str) -> str:
    """At most :data:`JOB_NAME_MAX` long, so its pods are named ``<job name>-<5 characters>``."""
    return derived_name("rt", task_id, max_length=JOB_NAME_MAX)


def pod_job_name(pod_name: str) -> str:
    """The Job a pod belongs to, from the name the API server generated for it."""
    return pod_name[: -len("-xxxxx")] if len(pod_name) > len("-xxxxx") else ""
