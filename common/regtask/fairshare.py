"""Fair share between a company's users (issue 18, item 3): who gets the next free slot.

The rule, in one place: a free slot goes to the waiting user with the fewest running tasks, then
to that user's task of highest priority, then to the oldest (then the first to arrive). One
user's burst of 200 tasks therefore never starves a colleague who queues 5 later: each slot
that frees goes to the colleague until both run as many.

Used by admission (who gets a slot now, and each waiting task's position), by the ETA model
(which user gets each slot as it frees) and by ``regtask quota`` (the same order over the listed
tasks). Pure: no I/O.

Hazard: :func:`fair_order` is a projection (slots freeing one at a time, nothing ending); the
real order moves as tasks end, which is why positions are recomputed at every decision.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

from regtask.crmodels import PRIORITY_RANK, Priority

T = TypeVar("T")

# (-priority rank, created as epoch seconds, arrival): smaller goes first within a user, and
# between users with as many tasks running.
Rank = tuple[int, float, int]


def rank(priority: Priority, created: float, arrival: int = 0) -> Rank:
    """A task's place among its user's tasks: priority first, then age, then arrival."""
    return (-PRIORITY_RANK[priority], created, arrival)


def fair_order(
    waiting: Iterable[T],
    running: Mapping[str, int],
    user_of: Callable[[T], str],
    rank_of: Callable[[T], Rank],
) -> list[T]:
    """Waiting tasks in the order the slots would go to them if slots freed one at a time and
    nothing ended: a user's k-th task (in rank order) stands at (running + k, rank)."""
    per_user: dict[str, list[T]] = {}
    for item in waiting:
        per_user.setdefault(user_of(item), []).append(item)
    keyed: list[tuple[int, Rank, int, T]] = []
    arrival = itertools.count()
    for user, items in per_user.items():
        items.sort(key=rank_of)
        base = running.get(user, 0)
        keyed.extend((base + k, rank_of(item), next(arrival), item) for k, item in enumerate(items))
    keyed.sort(key=lambda entry: entry[:3])
    return [entry[3] for entry in keyed]


class FairShare(Generic[T]):
    """Per-user queues and running counts; :meth:`peek` names the user the next slot goes to.

    A heap of users keyed by (running, their head's rank), with stale entries skipped: each
    pick is O(log users), so a step over 10,000 waiting tasks stays a sort, not a scan per slot.
    A parked user (at their own limit, or whose head may not start yet) is passed over until
    :meth:`unpark`.
    """

    def __init__(self, running: Mapping[str, int] | None = None) -> None:
        self.running: Counter[str] = Counter(running or {})
        self._queues: dict[str, list[tuple[Rank, int, T]]] = {}
        self._heap: list[tuple[int, Rank, int, str]] = []
        self._parked: set[str] = set()
        self._arrival = itertools.count()

    def add(self, user: str, task_rank: Rank, item: T) -> None:
        queue = self._queues.setdefault(user, [])
        entry = (task_rank, next(self._arrival), item)
        heapq.heappush(queue, entry)
        if queue[0] is entry:
            self._offer(user)  # a new head; otherwise the user's entry still stands

    def _offer(self, user: str) -> None:
        queue = self._queues.get(user)
        if queue and user not in self._parked:
            head_rank, head_id, _ = queue[0]
            heapq.heappush(self._heap, (self.running[user], head_rank, head_id, user))

    def peek(self) -> tuple[str, T] | None:
        """The user the next slot goes to and their head task; None when nobody can take it."""
        while self._heap:
            running, _, head_id, user = self._heap[0]
            queue = self._queues.get(user)
            if (
                user in self._parked
                or not queue
                or queue[0][1] != head_id
                or self.running[user] != running
            ):
                heapq.heappop(self._heap)  # stale: the user's state moved since it was pushed
                continue
            return user, queue[0][2]
        return None

    def pop(self, user: str) -> T:
        """Take the user's head out of their queue (started, refused or set aside)."""
        _, _, item = heapq.heappop(self._queues[user])
        if not self._queues[user]:
            del self._queues[user]
        self._offer(user)
        return item

    def start(self, user: str) -> None:
        self.running[user] += 1
        self._offer(user)

    def end(self, user: str) -> None:
        self.running[user] -= 1
        self._offer(user)

    def park(self, user: str) -> None:
        self._parked.add(user)

    def unpark(self, user: str) -> None:
        if user in self._parked:
            self._parked.discard(user)
            self._offer(user)

    def remaining(self) -> list[T]:
        """The tasks still queued (any order)."""
        return [item for queue in self._queues.values() for _, _, item in queue]

    def __bool__(self) -> bool:
        return bool(self._queues)
