"""What a company stores through the platform: tenant blob keys, results, and the byte counter.

Ours (not in the web app's contract):

- ``blob:{company_id}:{user_id}:{name}`` — large task inputs, referenced from a RegistryTask as
  ``redis://blob:...``. The prefix carries the tenant, so the gateway can refuse a reference to
  another tenant's blob by looking at the key alone.
- ``quota:storage:{company_id}`` — bytes stored for the company (results and blobs), checked
  against ``Quotas.storage_limit_mb`` by one Lua check-and-add, so concurrent writers cannot go
  over the limit together. No TTL: storage is accounted until it is released.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from regtask import keys
from regtask.docstore import DocUpdate, op_guard_not, op_set
from regtask.documents import TERMINAL_STATUSES

BLOB_PREFIX = "blob:"
STORAGE_PREFIX = "quota:storage:"
REDIS_REF_SCHEME = "redis://"
# Results above this size belong in a blob, not inside the task document the web app polls.
MAX_INLINE_RESULT_BYTES = 64 * 1024
MB = 1024 * 1024

_TERMINAL = sorted(s.value for s in TERMINAL_STATUSES)

# KEYS[1] counter; ARGV delta bytes, limit bytes. Returns {allowed (0/1), bytes used after}.
_RESERVE_LUA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local delta = tonumber(ARGV[1])
if used + delta > tonumber(ARGV[2]) then
  return {0, used}
end
return {1, redis.call('INCRBY', KEYS[1], delta)}
"""

# Never below zero, even if a release is replayed.
_RELEASE_LUA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local left = math.max(used - tonumber(ARGV[1]), 0)
redis.call('SET', KEYS[1], left)
return left
"""


def blob_prefix(company_id: str, user_id: str) -> str:
    return f"{BLOB_PREFIX}{company_id}:{user_id}:"


def blob_key(company_id: str, user_id: str, name: str) -> str:
    return f"{blob_prefix(company_id, user_id)}{name}"


def blob_ref(company_id: str, user_id: str, name: str) -> str:
    """The ``redis://`` URI a RegistryTask input uses to point at a blob."""
    return f"{REDIS_REF_SCHEME}{blob_key(company_id, user_id, name)}"


def storage_key(company_id: str) -> str:
    return f"{STORAGE_PREFIX}{company_id}"


@dataclass(frozen=True)
class StorageDecision:
    allowed: bool
    used_bytes: int
    limit_bytes: int


class StorageAccounting:
    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self._reserve = client.register_script(_RESERVE_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    async def reserve(self, company_id: str, nbytes: int, limit_mb: int) -> StorageDecision:
        """Count ``nbytes`` against the company's limit if they fit; refuse otherwise."""
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        limit = limit_mb * MB
        allowed, used = await self._reserve(keys=[storage_key(company_id)], args=[nbytes, limit])
        return StorageDecision(bool(allowed), int(used), limit)

    async def release(self, company_id: str, nbytes: int) -> int:
        return int(await self._release(keys=[storage_key(company_id)], args=[nbytes]))

    async def used(self, company_id: str) -> int:
        raw = await self.client.get(storage_key(company_id))
        return int(raw) if raw is not None else 0


def store_result(task_id: str, result: dict[str, Any], max_duration_s: int) -> DocUpdate:
    """Record a running task's result in its document (a finished task is left alone)."""
    return DocUpdate(
        key=keys.task(task_id),
        ops=[op_guard_not(("task_info", "status"), _TERMINAL), op_set(("result",), result)],
        ttl_s=keys.task_ttl(max_duration_s),
    )
