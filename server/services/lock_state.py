"""The live lock table as one transaction sees it, and the decisions made from it: who stands in
whose way, queue positions, and cycles in the wait-for graph. Pure functions over loaded rows.

Queue order is (priority rank, lock id): FIFO within a priority, ids being time-ordered. A request
is granted only when nothing held and nothing queued ahead of it conflicts, so a waiting exclusive
request is never starved by a stream of shared ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from server.domain.resources import Claim, LockMode, blocked, parse_name
from server.domain.statuses import LockStatus


@lru_cache(maxsize=8192)
def claim_of(name: str, mode: str) -> Claim:
    key, subtree = parse_name(name)
    return Claim(name, LockMode(mode), key, subtree)


@dataclass(frozen=True, slots=True)
class LiveItem:
    """One resource of a waiting or held lock."""

    lock_id: str
    party: str
    holder: str
    status: str
    priority: int
    claim: Claim
    deadline: int | None  # held: the lease's end (None: bound to its task); waiting: when it gives up
    ttl_s: int | None

    @property
    def held(self) -> bool:
        return self.status == LockStatus.HELD

    @property
    def queue_key(self) -> tuple[int, str]:
        return (self.priority, self.lock_id)


@dataclass(frozen=True, slots=True)
class Obstacle:
    mine: Claim
    theirs: LiveItem


def obstacles(
    mine: Iterable[Claim], others: Iterable[LiveItem], capacities: Mapping[str, int], lock_id: str
) -> list[Obstacle]:
    """What keeps the claims `mine` (of lock `lock_id`) from being granted among `others`
    (holders and requests queued ahead)."""
    others = [o for o in others if o.lock_id != lock_id]
    found: list[Obstacle] = []
    claims = [o.claim for o in others]
    for claim in mine:
        found.extend(Obstacle(claim, others[i]) for i in blocked(claim, claims, capacities.get(claim.name, 1)))
    return found


def ahead_of(items: Iterable[LiveItem], priority: int, lock_id: str) -> list[LiveItem]:
    """Held items, and waiting items queued ahead of a request at (priority, lock_id)."""
    return [i for i in items if i.held or i.queue_key < (priority, lock_id)]


def queue_position(mine: list[Claim], items: list[LiveItem], priority: int, lock_id: str) -> int:
    """1 + the waiting requests ahead that want a resource conflicting with one of ours."""
    waiting_ahead = [i for i in items if not i.held and i.queue_key < (priority, lock_id)]
    return 1 + len({o.theirs.lock_id for o in obstacles(mine, waiting_ahead, {}, lock_id)})


def group_waiting(items: Iterable[LiveItem]) -> list[list[LiveItem]]:
    """Waiting requests in queue order, each as the list of its items."""
    by_lock: dict[str, list[LiveItem]] = {}
    for item in sorted((i for i in items if not i.held), key=lambda i: i.queue_key):
        by_lock.setdefault(item.lock_id, []).append(item)
    return list(by_lock.values())


@dataclass(frozen=True, slots=True)
class Hop:
    waiter: str
    resource: str
    holder: str
    blocked_by: str


def find_cycle(items: list[LiveItem], capacities: Mapping[str, int], start: str) -> list[Hop] | None:
    """A cycle through party `start` in the wait-for graph, as hops (waiter waits for holder on
    resource), or None. Edges run from each waiting party to every party holding, or queued ahead
    with, something in its way."""
    edges: dict[str, list[Hop]] = {}
    for request in group_waiting(items):
        first = request[0]
        in_front = ahead_of(items, first.priority, first.lock_id)
        for obstacle in obstacles([i.claim for i in request], in_front, capacities, first.lock_id):
            edges.setdefault(first.party, []).append(
                Hop(first.party, obstacle.mine.name, obstacle.theirs.party, obstacle.theirs.claim.name)
            )
    # Depth-first from `start`; the path back to it is the cycle.
    path: list[Hop] = []
    seen: set[str] = set()

    def visit(party: str) -> bool:
        for hop in edges.get(party, []):
            path.append(hop)
            if hop.holder == start:
                return True
            if hop.holder not in seen:
                seen.add(hop.holder)
                if visit(hop.holder):
                    return True
            path.pop()
        return False

    return path if visit(start) else None
