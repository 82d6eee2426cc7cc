"""What a company stores through the platform: tenant blob keys, results, and the byte counter.

Ours (not in the web app's contract):

- ``blob:{company_id}:{user_id}:{name}`` — large task inputs, referenced from a RegistryTask as
  ``redis://blob:...``. The prefix carries the tenant, so the gateway can refuse a reference to
  another tenant's blob by looking at the key alone.
- ``quota:storage:{company_id}`` — bytes stored for the company (results and blobs), checked
  against ``Quotas.storage_limit_mb`` by one Lua check-and-add, so concurrent writers cannot go
  over the limit together. No TTL: storage is accounted until it is released.
- ``quota:storage:held:{company_id}`` — what the counter is made of: a hash from the stored
  object (a blob key, ``registry:task:{id}`` for a result, ``chroma:{collection}`` for vectors)
  to its bytes. A task's blobs are deleted and released when it ends (the operator) or when its
  creation is refused (the shim); maintenance drops the entries whose blob or task document has
  expired and sets the counter to the sum of what is left (issue 16, item 4), so a lost release
  cannot keep a company full for ever.
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
HELD_PREFIX = "quota:storage:held:"
# Held entries whose object is a Redis key (its expiry releases it); others (vectors) stay.
_EXPIRING_ITEMS = (BLOB_PREFIX, keys.TASK_PREFIX)
REDIS_REF_SCHEME = "redis://"
# Results above this size belong in a blob, not inside the task document the web app polls.
MAX_INLINE_RESULT_BYTES = 64 * 1024
MB = 1024 * 1024

_TERMINAL = sorted(s.value for s in TERMINAL_STATUSES)

# KEYS[1] counter, KEYS[2] held hash; ARGV delta bytes, limit bytes, item ('' = none).
# Returns {allowed (0/1), bytes used after}.
_RESERVE_LUA = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local delta = tonumber(ARGV[1])
if used + delta > tonumber(ARGV[2]) then
  return {0, used}
end
if ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[2], ARGV[3], delta) end
return {1, redis.call('INCRBY', KEYS[1], delta)}
"""

# KEYS[1] counter, KEYS[2] held hash; ARGV bytes, item ('' = none). Never below zero, and an
# item's release frees at most what it holds (a replayed release frees nothing).
_RELEASE_LUA = """
local nbytes = tonumber(ARGV[1])
if ARGV[2] ~= '' then
  local held = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0')
  nbytes = math.min(nbytes, held)
  if held - nbytes <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
  else
    redis.call('HINCRBY', KEYS[2], ARGV[2], -nbytes)
  end
end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local left = math.max(used - nbytes, 0)
redis.call('SET', KEYS[1], left)
return left
"""

# KEYS[1] counter, KEYS[2] held hash; ARGV the items whose object is gone. The counter becomes
# the sum of what is held, in the same step (a reservation cannot slip between).
_RECONCILE_LUA = """
for i = 1, #ARGV do redis.call('HDEL', KEYS[2], ARGV[i]) end
local total = 0
local values = redis.call('HVALS', KEYS[2])
for i = 1, #values do total = total + tonumber(values[i]) end
redis.call('SET', KEYS[1], total)
return total
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


def held_key(company_id: str) -> str:
    return f"{HELD_PREFIX}{company_id}"


def vectors_item(collection: str) -> str:
    """The held entry of a company's vectors in one (derived) Chroma collection."""
    return f"chroma:{collection}"


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
        self._reconcile = client.register_script(_RECONCILE_LUA)

    def _keys(self, company_id: str) -> list[str]:
        return [storage_key(company_id), held_key(company_id)]

    async def reserve(
        self, company_id: str, nbytes: int, limit_mb: int, item: str = ""
    ) -> StorageDecision:
        """Count ``nbytes`` of ``item`` against the company's limit if they fit; refuse
        otherwise. ``item`` names the stored object, so the bytes can be given back."""
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        limit = limit_mb * MB
        allowed, used = await self._reserve(keys=self._keys(company_id), args=[nbytes, limit, item])
        return StorageDecision(bool(allowed), int(used), limit)

    async def release(self, company_id: str, nbytes: int, item: str = "") -> int:
        return int(await self._release(keys=self._keys(company_id), args=[nbytes, item]))

    async def release_task_blobs(self, company_id: str, user_id: str, task_id: str) -> int:
        """Delete a task's input blobs and give their bytes back; returns the bytes freed.

        Blob names start with ``{task_id}:`` and ids cannot contain ``:``, so the prefix names
        this task's blobs only. Replaying it frees nothing more.
        """
        prefix = blob_key(company_id, user_id, f"{task_id}:")
        freed = 0
        async for raw_item, raw_bytes in self.client.hscan_iter(
            held_key(company_id), match=f"{prefix}*"
        ):
            item = raw_item.decode() if isinstance(raw_item, bytes) else str(raw_item)
            await self.client.delete(item)
            nbytes = int(raw_bytes)
            await self.release(company_id, nbytes, item)
            freed += nbytes
        return freed

    async def reconcile(self, company_id: str) -> int:
        """Drop the held entries whose blob or task document is gone (expired, deleted) and
        set the counter to the sum of the rest; returns the bytes now used."""
        gone: list[str] = []
        async for raw_item, _ in self.client.hscan_iter(held_key(company_id)):
            item = raw_item.decode() if isinstance(raw_item, bytes) else str(raw_item)
            if item.startswith(_EXPIRING_ITEMS) and not await self.client.exists(item):
                gone.append(item)
        return int(await self._reconcile(keys=self._keys(company_id), args=gone))

    async def companies(self) -> list[str]:
        """Every company with a storage counter."""
        found: list[str] = []
        async for raw in self.client.scan_iter(match=f"{STORAGE_PREFIX}*", count=500):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            if not name.startswith(HELD_PREFIX):
                found.append(name[len(STORAGE_PREFIX) :])
        return found

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
