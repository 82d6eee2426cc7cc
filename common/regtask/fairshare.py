"""Fair share between a company's users (issue 18, item 3): who gets the next free slot.

The rule, in one place: a free slot goes to the waiting user with the fewest running tasks, then
to that user's task of highest priority, then to the oldest (then the first to arrive). One
user's burst of 200 tasks therefore never starves a colleague who queues 5 later: each slot
that frees goes to the colleague until both run as many.

Used by admission (who gets a slot now, and each waiting task's position), by the ETA model
(which user gets each slot as it frees) and by ``regtask quota`` (the same order over the listed
tasks). Pure: no I/O.

Hazard: :func:`merge_order` is a projection (slots freeing one at a time, nothing ending); the
real order moves as tasks end, which is why positions are recomputed at every decision.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Generic, TypeVar

from regtask.crmodels import PRIORITY_RANK, Priority

T = TypeVar("T")

# (-priority rank, created as epoch seconds, arrival): smaller goes first within a user, and
# between users with as many tasks running.
Rank = tuple[int, float, int]


def rank(priority: Priority, created: float, arrival: int = 0) -> Rank:
    """A task's place among its user's tasks: priority first, then age, then arrival."""
    return (-PRIORITY_RANK[priority], created, arrival)


def by_user(
    items: Iterable[T], user_of: Callable[[T], str], rank_of: Callable[[T], Rank]
) -> dict[str, list[tuple[Rank, T]]]:
    """Each user's tasks with their rank, in rank order (what :class:`FairShare` and
    :func:`merge_order` take)."""
    queues: dict[str, list[tuple[Rank, T]]] = {}
    for item in items:
        queues.setdefault(user_of(item), []).append((rank_of(item), item))
    for queue in queues.values():
        queue.sort(key=_first)
    return queues


def merge_order(
    queues: Mapping[str, Sequence[tuple[Rank, T]]], running: Mapping[str, int]
) -> list[T]:
    """Waiting tasks (each user's in rank order) in the order the slots would go to them if
    slots freed one at a time and nothing ended: a user's k-th task stands at (running + k,
    rank)."""
    keyed: list[tuple[int, Rank, int, T]] = []
    for order, (user, queue) in enumerate(queues.items()):
        base = running.get(user, 0)
        keyed.extend((base + k, r, order, item) for k, (r, item) in enumerate(queue))
    # (count, rank, user order) is unique per task, so the items themselves are never compared;
    # each user's run is already sorted, which Timsort merges in about linear time.
    keyed.sort()
    return [entry[3] for entry in keyed]


def fair_order(
    waiting: Iterable[T],
    running: Mapping[str, int],
    user_of: Callable[[T], str],
    rank_of: Callable[[T], Rank],
) -> list[T]:
    """:func:`merge_order` of tasks in any order."""
    return merge_order(by_user(waiting, user_of, rank_of), running)


def _first(entry: tuple[Rank, T]) -> Rank:
    return entry[0]


class FairShare(Generic[T]):
    """Per-user queues (each in rank order) and running counts; :meth:`peek` names the user the
    next slot goes to.

    A heap of users keyed by (running, their head's rank), with stale entries skipped: each
    pick is O(log users), so a step over 10,000 waiting tasks stays a sort, not a scan per slot.
    A parked user (at their own limit, or whose head may not start yet) is passed over until
    :meth:`unpark`.
    """

    def __init__(
        self,
        queues: Mapping[str, Sequence[tuple[Rank, T]]],
        running: Mapping[str, int] | None = None,
    ) -> None:
        self.running: Counter[str] = Counter(running or {})
        self._queues = {user: list(queue) for user, queue in queues.items() if queue}
        self._heads = dict.fromkeys(self._queues, 0)  # index of each user's head
        self._heap = [(self.running[u], q[0][0], 0, u) for u, q in self._queues.items()]
        heapq.heapify(self._heap)
        self._parked: set[str] = set()

    def _offer(self, user: str) -> None:
        head = self._heads.get(user)
        if head is not None and user not in self._parked:
            head_rank = self._queues[user][head][0]
            heapq.heappush(self._heap, (self.running[user], head_rank, head, user))

    def peek(self) -> tuple[str, T] | None:
        """The user the next slot goes to and their head task; None when nobody can take it."""
        while self._heap:
            running, _, head, user = self._heap[0]
            if (
                user in self._parked
                or self._heads.get(user) != head
                or self.running[user] != running
            ):
                heapq.heappop(self._heap)  # stale: the user's state moved since it was pushed
                continue
            return user, self._queues[user][head][1]
        return None

    def pop(self, user: str) -> T:
        """Take the user's head out of their queue (started, refused or set aside)."""
        head = self._heads[user]
        queue = self._queues[user]
        if head + 1 < len(queue):
            self._heads[user] = head + 1
        else:
            del self._heads[user]
        self._offer(user)
        return queue[head][1]

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

    def remaining(self) -> dict[str, list[tuple[Rank, T]]]:
        """Each user's tasks still queued, in rank order."""
        return {user: self._queues[user][head:] for user, head in self._heads.items()}

    def __bool__(self) -> bool:
        return bool(self._heads)
