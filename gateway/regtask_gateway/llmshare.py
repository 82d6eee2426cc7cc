"""One company's share of the LLM connection pool (issue 16, item 5).

The gateway's HTTP pool to the provider is shared by every company: without a share, one
company's slow streams could hold all of it and every other company's calls would queue behind
them. Each company may hold at most ``per_company`` connections at once; a request over it waits
up to ``wait_s`` for one of its own company's to end, then is refused (429), while other
companies' requests go on. In memory, per gateway process (each replica has its own pool).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field


@dataclass
class _Slots:
    semaphore: asyncio.Semaphore
    users: int = 0


@dataclass
class ConnectionShare:
    per_company: int
    wait_s: float
    _slots: dict[str, _Slots] = field(default_factory=dict)

    @classmethod
    def of_pool(cls, pool: int, share: float, wait_s: float) -> ConnectionShare:
        return cls(max(1, math.floor(pool * share)), wait_s)

    async def acquire(self, company_id: str) -> bool:
        """True with a connection slot held (give it back with :meth:`release`); False when
        the company's share stayed full for ``wait_s``."""
        slots = self._slots.get(company_id)
        if slots is None:
            slots = self._slots[company_id] = _Slots(asyncio.Semaphore(self.per_company))
        slots.users += 1
        try:
            await asyncio.wait_for(slots.semaphore.acquire(), self.wait_s)
        except TimeoutError:
            self._forget(company_id, slots)
            return False
        return True

    def release(self, company_id: str) -> None:
        slots = self._slots[company_id]
        slots.semaphore.release()
        self._forget(company_id, slots)

    def _forget(self, company_id: str, slots: _Slots) -> None:
        slots.users -= 1
        if slots.users == 0:
            del self._slots[company_id]  # no holder, no waiter: nothing to keep
