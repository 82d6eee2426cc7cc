"""Which operator shard a company lives in, and where its RegistryTasks and CompanyQuota go.

One operator (one active replica per peering object) decides for every company it serves. To
admit faster than one process can, the platform runs ``N`` shards: shard ``i`` is an operator
Deployment of its own, with its own control namespace (:func:`control_namespace`), its own
peering object, and only the Jobs and tenant namespaces labelled with its index
(:data:`LABEL_SHARD`). A company lives in exactly one shard, so its per-user and per-company
limits stay exact: one process holds all of its slots.

The placement is a stable hash of the company id, the same in the shim, the operator, the CLI
and the chart's documentation: :func:`shard_of`. Hazard: changing the number of shards moves
companies between shards. That is a migration (drain the moving companies' tasks first, then
move their CompanyQuota), never something to do by accident; ``regtask shard`` prints where
each company lives for a given count.
"""

from __future__ import annotations

import hashlib

# On the Jobs and tenant namespaces of a shard: each shard's operator lists and watches only
# its own (with one shard, none is filtered on: objects made before sharding still count).
LABEL_SHARD = "regtask.io/shard"
MAX_SHARDS = 64


def shard_of(company_id: str, shards: int) -> int:
    """The shard of a company: the first 8 bytes of SHA-256 of its id, modulo ``shards``.

    SHA-256, not Python's ``hash()``: the same in every process and every release."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be between 1 and {MAX_SHARDS}, not {shards}")
    digest = hashlib.sha256(company_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % shards


def control_namespace(base: str, shard: int, shards: int) -> str:
    """Where a shard's RegistryTasks and CompanyQuotas live: ``base`` itself with one shard
    (the unsharded layout, unchanged), ``{base}-shard-{i}`` with several."""
    if shards == 1:
        return base
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} out of range for {shards} shards")
    return f"{base}-shard-{shard}"


def company_namespace(base: str, company_id: str, shards: int) -> str:
    """The control namespace of a company's shard."""
    return control_namespace(base, shard_of(company_id, shards), shards)


def all_control_namespaces(base: str, shards: int) -> list[str]:
    return [control_namespace(base, shard, shards) for shard in range(shards)]
