"""Per-task credentials: what lets a runner touch its own task's records, and nothing else.

A runner proves who it is with a Kubernetes ServiceAccount token that the kubelet projects into
its pod (no Secret, no shared signing key): the token is bound to the pod, expires, and its
audience names the task (``regtask-gateway:<task id>``), so it is worth nothing for any other
task or service. The gateway has the API server check it (TokenReview) and then checks what the
token says against the task's spec with :func:`authorize`: the pod runs in the task's tenant
namespace, as the runner ServiceAccount, and belongs to the task's Job.
"""

from __future__ import annotations

import base64
import binascii
import json

from pydantic import BaseModel, ConfigDict

from regtask import naming
from regtask.crmodels import RegistryTaskSpec
from regtask.identifiers import Identifier

AUDIENCE_PREFIX = "regtask-gateway:"
# Lifetime asked of the kubelet: at least Kubernetes' minimum (600 s), at least the task's deadline.
MIN_TOKEN_SECONDS = 600
TOKEN_MARGIN_SECONDS = 600


class TokenError(ValueError):
    """The token is missing, expired, forged, for another audience or another task's pod."""


def audience(task_id: str) -> str:
    return AUDIENCE_PREFIX + task_id


def token_lifetime(max_duration_s: int) -> int:
    """The projected token outlives the Job's deadline, so a runner never needs a fresh one."""
    return max(MIN_TOKEN_SECONDS, max_duration_s + TOKEN_MARGIN_SECONDS)


def claimed_task_id(token: str) -> str:
    """The task id the token's audience names, read *before* any verification.

    Only used to ask the API server the right question (TokenReview for that audience): a
    forged audience fails there.
    """
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        audiences = claims["aud"]
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise TokenError("not a ServiceAccount token") from exc
    if isinstance(audiences, str):
        audiences = [audiences]
    ours = [a for a in audiences if isinstance(a, str) and a.startswith(AUDIENCE_PREFIX)]
    if len(ours) != 1 or len(ours[0]) == len(AUDIENCE_PREFIX):
        raise TokenError("token audience names no task")
    return ours[0][len(AUDIENCE_PREFIX) :]


class PodIdentity(BaseModel):
    """What the API server vouches for: a live pod, its namespace and ServiceAccount."""

    model_config = ConfigDict(frozen=True)

    task_id: Identifier  # from the verified audience
    namespace: str
    service_account: str
    pod_name: str


class TaskClaims(BaseModel):
    """The task a verified runner acts for: ids from the task's spec, never from a request."""

    model_config = ConfigDict(frozen=True)

    task_id: Identifier
    task_type: str
    user_id: Identifier
    company_id: Identifier
    namespace: str
    conversation_id: str | None = None


def authorize(identity: PodIdentity, spec: RegistryTaskSpec) -> TaskClaims:
    """The claims of the task ``spec`` if the pod is one of its Job's pods; else TokenError.

    Pods of a Job are named ``<job name>-<5 random characters>`` by the API server, and only the
    Job controller creates pods in a tenant namespace (tenants have no API access).
    """
    namespace = naming.tenant_namespace(spec.user_id, spec.company_id)
    if spec.task_id != identity.task_id:
        raise TokenError("token is for another task")
    if identity.namespace != namespace:
        raise TokenError("token is from another tenant's namespace")
    if identity.service_account != naming.RUNNER_SERVICE_ACCOUNT:
        raise TokenError("token is not a runner's")
    if naming.pod_job_name(identity.pod_name) != naming.job_name(spec.task_id):
        raise TokenError("token is from a pod of another Job")
    return TaskClaims(
        task_id=spec.task_id,
        task_type=spec.task_type.value,
        user_id=spec.user_id,
        company_id=spec.company_id,
        namespace=namespace,
        conversation_id=spec.conversation_id,
    )
