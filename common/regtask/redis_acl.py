"""Redis ACL users of the platform's components: each with only the keys, channels and
commands it uses (issue 16, item 11).

One user per component (``regtask-operator``, ``regtask-shim``, ``regtask-gateway``), each
given to its process as ``REDIS_URL=redis://<user>:<password>@host:port/db``. Key patterns come
from :mod:`regtask.keys` and :mod:`regtask.storage` (every key's one definition); the commands
include those the Lua scripts call (Redis 7 checks a script's inner commands, keys and
channels against the caller's ACL). The quotas in ``registry:company:*`` are written by the
operator; the shim and the gateway may only read them, unless ``UNIFIED_REGISTRY_ENABLED`` is
on: then the shim writes the company document's ``active_users`` and the gateway its
``llm_conversations`` (the contract keeps them in the same key as the quotas), so both must be
given write access there (:func:`user` with ``unified=True``) and the ACL no longer protects the
quotas from them.

Print the ``ACL SETUSER`` commands for a Redis administrator with
``python -m regtask.redis_acl --password-file <component>=<file> ...``.

Hazard: a new key prefix or command in a component needs its line here, or the component gets
``NOPERM`` (the component tests run under these users and show it).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from regtask import keys, storage

OPERATOR, SHIM, GATEWAY = "operator", "shim", "gateway"
COMPONENTS = (OPERATOR, SHIM, GATEWAY)


def _all(prefix: str) -> str:
    return f"{prefix}*"


# Connection and script plumbing every client needs (redis-py's Script: EVALSHA, then SCRIPT
# LOAD on NOSCRIPT), and what the shared Lua scripts call: doc_apply/task_progress (HGET, HSET,
# DEL, EXPIRE, PUBLISH), storage (GET, INCRBY, SET).
# The LLM quota's sliding log (lua/llm_quota.lua): what its read-only peek calls, for every
# component that reads it, then what its reservations add, for the gateway alone.
_LLM_LOG_READ = ("evalsha_ro", "time", "hmget", "zrangebyscore", "zcount")
_LLM_LOG_WRITE = (*_LLM_LOG_READ, "hdel", "zadd", "zrem", "zscore", "pexpire")
_BASE_COMMANDS = (
    "ping",
    "evalsha",
    "script|load",
    "hget",
    "hset",
    "del",
    "expire",
    "publish",
    "exists",
    "get",
    "multi",
    "exec",
    "discard",
)


@dataclass(frozen=True)
class AclUser:
    """One component's user: keys it reads only, keys it reads and writes, the channels it
    publishes on, and its commands beyond the base set."""

    component: str
    read: tuple[str, ...]
    write: tuple[str, ...]
    commands: tuple[str, ...]
    channels: tuple[str, ...] = (_all(keys.EVENTS_PREFIX),)

    @property
    def name(self) -> str:
        return f"regtask-{self.component}"

    def rules(self, password: str) -> list[str]:
        """The arguments of ``ACL SETUSER <name>``: resets first, so applying them again
        replaces what the user had."""
        if not password or any(c.isspace() for c in password):
            raise ValueError("an ACL password must be non-empty and without whitespace")
        return [
            "reset",
            "on",
            f">{password}",
            *(f"%R~{pattern}" for pattern in self.read),
            *(f"~{pattern}" for pattern in self.write),
            *(f"&{channel}" for channel in self.channels),
            "-@all",
            *(f"+{command}" for command in (*_BASE_COMMANDS, *self.commands)),
        ]


def user(component: str, *, unified: bool = False) -> AclUser:
    """The ACL user of ``component``; ``unified``: UNIFIED_REGISTRY_ENABLED is on (the shim and
    the gateway then write the company documents: see the module's doc)."""
    company = _all(keys.COMPANY_PREFIX)
    task = _all(keys.TASK_PREFIX)
    unified_user = _all(keys.UNIFIED_USER_PREFIX)
    conversation = _all(keys.CONVERSATION_PREFIX)
    blob = _all(storage.BLOB_PREFIX)
    storage_used = _all(storage.STORAGE_PREFIX)  # with the held records (quota:storage:held:*)
    # The limits every component enforces, written by the operator only (issue 16, item 3).
    limits = (_all(keys.COMPANY_LIMITS_PREFIX), keys.DEFAULT_LIMITS_KEY)
    # The storage scripts' per-object records (HINCRBY, HDEL, HVALS), limits read in one MGET.
    storage_commands = ("hincrby", "hdel", "hvals", "hscan", "mget")
    if component == OPERATOR:
        # The mirror (tasks, company quotas and usage, users' task lists), maintenance (expired
        # entries, presence sweep), the LLM windows admission reads, storage given back.
        return AclUser(
            OPERATOR,
            read=(_all(keys.LLM_RATE_PREFIX), conversation),
            write=(
                task,
                company,
                unified_user,
                _all(keys.LEGACY_USER_PREFIX),
                _all(keys.SESSION_PREFIX),
                blob,
                storage_used,
                *limits,
            ),
            commands=(
                "scan",
                "incrby",
                "set",
                "ttl",
                "strlen",
                "hgetall",
                *storage_commands,
                *_LLM_LOG_READ,
            ),
        )
    if component == SHIM:
        # Sessions and collections (legacy, and unified when on), task and conversation
        # registration, large inputs as blobs with their storage reservation, its per-user
        # start counter; reads the company's quotas, never writes them (unless unified: see
        # the module's doc).
        write = [
            unified_user,
            _all(keys.LEGACY_USER_PREFIX),
            _all(keys.LEGACY_CHROMA_PREFIX),
            _all(keys.SESSION_PREFIX),
            task,
            conversation,
            blob,
            storage_used,
            _all(keys.SHIM_START_RATE_PREFIX),
        ]
        # The web console reads the companies' LLM logs.
        read: list[str] = [*limits, _all(keys.LLM_RATE_PREFIX)]
        (write if unified else read).append(company)
        return AclUser(
            SHIM,
            read=tuple(read),
            write=tuple(write),
            # hmget: a task's step history for the console (regtask.keys.task_step_field).
            commands=(
                "set",
                "incr",
                "incrby",
                "strlen",
                "hmget",
                *storage_commands,
                *_LLM_LOG_READ,
            ),
        )
    if component == GATEWAY:
        # A runner's task document (progress, result), its conversation (and the user's
        # document that lists it), the company's LLM log (reserve, settle, refund) and
        # storage; reads quotas, the legacy user registry and its input blobs.
        write = [task, conversation, unified_user, _all(keys.LLM_RATE_PREFIX), storage_used]
        read = [_all(keys.LEGACY_USER_PREFIX), blob, *limits]
        (write if unified else read).append(company)
        return AclUser(
            GATEWAY,
            read=tuple(read),
            write=tuple(write),
            commands=("incrby", "set", "ttl", "strlen", *storage_commands, *_LLM_LOG_WRITE),
        )
    raise ValueError(f"unknown component {component!r}; one of {', '.join(COMPONENTS)}")


def setuser_command(component: str, password: str, *, unified: bool = False) -> str:
    """One ``ACL SETUSER`` line (redis-cli syntax) for ``component``."""
    acl = user(component, unified=unified)
    return " ".join(["ACL", "SETUSER", acl.name, *acl.rules(password)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m regtask.redis_acl",
        description="Print the ACL SETUSER commands of the platform's Redis users.",
    )
    parser.add_argument(
        "--password-file",
        action="append",
        default=[],
        metavar="COMPONENT=FILE",
        help="a component's password, read from FILE (one per component)",
    )
    parser.add_argument(
        "--unified", action="store_true", help="UNIFIED_REGISTRY_ENABLED is on (see the doc)"
    )
    args = parser.parse_args(argv)
    passwords: dict[str, str] = {}
    for item in args.password_file:
        component, sep, path = item.partition("=")
        if not sep or component not in COMPONENTS:
            parser.error(f"--password-file {item!r}: expected one of {COMPONENTS}=FILE")
        passwords[component] = Path(path).read_text().strip()
    missing = [c for c in COMPONENTS if c not in passwords]
    if missing:
        parser.error(f"no password for {', '.join(missing)}")
    for component in COMPONENTS:
        sys.stdout.write(setuser_command(component, passwords[component], unified=args.unified))
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
