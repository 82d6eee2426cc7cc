"""Every Redis key and channel name of the platform, and their lifetimes.

The formats below are the compatibility contract with the web app (CONTRACT.md section 1):
change nothing here without changing the contract. Every other module builds keys only through
these functions.
"""

from __future__ import annotations

# Hash field that holds the JSON document in every registry key.
DATA_FIELD = "data"
# Extra hash fields the contract names beside ``data``.
LAST_UPDATE_FIELD = "last_update"
CREATED_AT_FIELD = "created_at"
# Ours (additive): a task's step history, kept in its own ``registry:task:{id}`` hash beside
# ``data`` (same key: written by the progress script in the same call, gone with the document,
# and the script still touches one key, as Redis Cluster needs). A ring of
# ``TASK_STEP_HISTORY_CAP`` fields ``step:<n mod cap>``, each one JSON entry (time, step,
# progress, data), and ``step_count``, how many were ever written.
TASK_STEP_COUNT_FIELD = "step_count"
TASK_STEP_FIELD_PREFIX = "step:"
TASK_STEP_HISTORY_CAP = 50

UNIFIED_USER_TTL_S = 24 * 3600
COMPANY_TTL_S = 24 * 3600
LEGACY_USER_TTL_S = 24 * 3600
LEGACY_CHROMA_TTL_S = 90
CONVERSATION_TTL_S = 24 * 3600
HEARTBEAT_TTL_S = 90
# A task document lives for its max duration plus this margin, renewed on every update.
TASK_TTL_MARGIN_S = 300

UNIFIED_USER_PREFIX = "registry:unified:"
TASK_PREFIX = "registry:task:"
COMPANY_PREFIX = "registry:company:"
LEGACY_USER_PREFIX = "registry:user:"
LEGACY_CHROMA_PREFIX = "registry:chroma:"
CONVERSATION_PREFIX = "conversation:"
# Ours: session id -> user id, so ``REGISTRY.unregister_session(session_id)`` finds its user.
SESSION_PREFIX = "registry:session:"
# Ours: each company's LLM calls in a sliding log (regtask.ratelimit): a sorted set of calls by
# time and a hash of their tokens, kept an hour (a day when the company has a daily token
# budget). The company id is a hash tag (``{...}``): the two keys of one company share a Redis
# Cluster slot, as the limiter's one script needs.
LLM_RATE_PREFIX = "quota:llm:"
# Ours: real-time events, one pub/sub channel per user.
EVENTS_PREFIX = "events:user:"
# Ours: the limits the gateway and shim enforce, written only by the operator and without TTL,
# so they cannot expire into the contract's defaults (issue 16, item 3): one key per company with
# a CompanyQuota, and the operator's configured defaults for every other company. The contract's
# ``registry:company:{id}.quotas`` is a copy of them for the web app (24 h TTL, re-asserted by
# maintenance).
COMPANY_LIMITS_PREFIX = "quota:limits:"
DEFAULT_LIMITS_KEY = "quota:defaults"
# Ours: the shim's per-user count of task starts in one clock minute.
SHIM_START_RATE_PREFIX = "quota:shim:starts:"


def unified_user(user_id: str) -> str:
    return f"{UNIFIED_USER_PREFIX}{user_id}"


def task(task_id: str) -> str:
    return f"{TASK_PREFIX}{task_id}"


def task_step_field(sequence: int) -> str:
    """The ring field of the ``sequence``-th step (0-based) ever recorded for a task."""
    return f"{TASK_STEP_FIELD_PREFIX}{sequence % TASK_STEP_HISTORY_CAP}"


def company(company_id: str) -> str:
    return f"{COMPANY_PREFIX}{company_id}"


def legacy_user(user_id: str) -> str:
    return f"{LEGACY_USER_PREFIX}{user_id}"


def legacy_chroma(user_id: str, collection_name: str) -> str:
    return f"{LEGACY_CHROMA_PREFIX}{user_id}:{collection_name}"


def conversation(company_id: str, user_id: str, conversation_id: str) -> str:
    return f"{CONVERSATION_PREFIX}{company_id}:{user_id}:{conversation_id}"


def session(session_id: str) -> str:
    return f"{SESSION_PREFIX}{session_id}"


def llm_calls(company_id: str) -> str:
    """The company's LLM calls: sorted set, member = call id, score = time in microseconds."""
    return f"{LLM_RATE_PREFIX}{{{company_id}}}:calls"


def llm_tokens(company_id: str) -> str:
    """The tokens of the company's LLM calls (call id -> tokens) and their running totals."""
    return f"{LLM_RATE_PREFIX}{{{company_id}}}:tokens"


def company_limits(company_id: str) -> str:
    return f"{COMPANY_LIMITS_PREFIX}{company_id}"


def events_channel(user_id: str) -> str:
    """The pub/sub channel that carries one user's real-time events."""
    return f"{EVENTS_PREFIX}{user_id}"


def events_pattern() -> str:
    """The pattern matching every user's event channel (the web console's PSUBSCRIBE)."""
    return f"{EVENTS_PREFIX}*"


def task_ttl(max_duration_s: int) -> int:
    return max_duration_s + TASK_TTL_MARGIN_S
