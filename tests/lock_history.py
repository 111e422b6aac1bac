"""An independent checker for histories of resource-lock grants, as clients observed them.

It imports nothing from `server/`: the conflict rule is re-implemented here from its description.
Names are `/`-separated; a trailing `/**` is a subtree pattern covering its prefix and everything
under it. Two claims overlap when some name is covered by both; overlapping claims conflict unless
both are shared; on a semaphore (a plain name with capacity > 1, exclusive only) up to `capacity`
holders of that exact name coexist.

A `Record` is one grant as a client saw it. `granted_at` is a monotonic time taken right AFTER the
grant reply arrived and `released_at` right BEFORE the release request was sent, so the client's
interval lies inside the server's hold. `requested_at` (optional) is taken right BEFORE the acquire
request was sent, so the server's grant happened within [requested_at, granted_at].

`check(records, capacities)` returns the violations found:
- overlap: two records whose intervals overlap hold conflicting claims;
- capacity: more than `capacity` records hold a semaphore name at one instant;
- fence_missing: a granted resource came without a fencing token (tokens start at 1);
- fence_duplicate: two grants of one resource share a token;
- fence_order: A's interval ends before B's grant and both hold resource r, yet fence_A[r] >=
  fence_B[r]. The server must have granted A before B when either B was requested after A was
  released (any modes), or their claims on r conflict (then the holds cannot have overlapped). Two
  shared holders (or semaphore slots) without `requested_at` are not ordered: B may have been granted
  first and its reply have arrived late, so a "later" B with a smaller token is no violation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

SHARED = "shared"
EXCLUSIVE = "exclusive"


@dataclass(frozen=True)
class Record:
    agent: str
    resources: Sequence[tuple[str, str]]  # (name, mode)
    fences: Mapping[str, int]
    granted_at: float
    released_at: float
    requested_at: float | None = None
    label: str = field(default="", compare=False)  # e.g. the lock id, for messages

    def __str__(self) -> str:
        return f"{self.label or self.agent}[{self.granted_at:.6f}..{self.released_at:.6f}]"


@dataclass(frozen=True)
class Violation:
    kind: str  # overlap | capacity | fence_missing | fence_duplicate | fence_order
    detail: str


# -- the conflict rule, re-implemented --------------------------------------------------------


def _key(name: str) -> tuple[str, bool]:
    """(name without a trailing /**, whether it is a subtree pattern)."""
    return (name[:-3], True) if name.endswith("/**") else (name, False)


def covers(pattern: str, name: str) -> bool:
    """Whether claim `pattern` covers the key of `name` (a plain name covers only itself)."""
    key, subtree = _key(pattern)
    other, _ = _key(name)
    return other == key or (subtree and other.startswith(key + "/"))


def overlaps(a: str, b: str) -> bool:
    return covers(a, b) or covers(b, a)


def conflicts(a: tuple[str, str], b: tuple[str, str], capacities: Mapping[str, int]) -> bool:
    """Whether two claims (name, mode) may not be held at once by two holders. Same-name semaphore
    slots never conflict pairwise: they are counted instead."""
    (name_a, mode_a), (name_b, mode_b) = a, b
    if not overlaps(name_a, name_b):
        return False
    if name_a == name_b and capacities.get(name_a, 1) > 1:
        return False
    return not (mode_a == SHARED and mode_b == SHARED)


# -- the checks -------------------------------------------------------------------------------


def _concurrent(a: Record, b: Record) -> bool:
    return a.granted_at < b.released_at and b.granted_at < a.released_at


def _check_overlaps(records: list[Record], capacities: Mapping[str, int]) -> list[Violation]:
    found = []
    by_start = sorted(records, key=lambda r: r.granted_at)
    for i, a in enumerate(by_start):
        for b in by_start[i + 1 :]:
            if b.granted_at >= a.released_at:
                break  # sorted by start: no later record overlaps a
            if not _concurrent(a, b):
                continue
            for claim_a in a.resources:
                for claim_b in b.resources:
                    if conflicts(claim_a, claim_b, capacities):
                        found.append(
                            Violation("overlap", f"{a} holds {claim_a} while {b} holds {claim_b}: they conflict")
                        )
    return found


def _check_capacities(records: list[Record], capacities: Mapping[str, int]) -> list[Violation]:
    found = []
    for name, capacity in capacities.items():
        if capacity <= 1:
            continue
        held = [r for r in records if any(n == name for n, _ in r.resources)]
        for record in held:  # the most holders at once are found at some holder's start
            start = record.granted_at
            at_once = [record] + [o for o in held if o is not record and o.granted_at <= start < o.released_at]
            if len(at_once) > capacity:
                who = ", ".join(str(r) for r in at_once)
                found.append(Violation("capacity", f"{len(at_once)} holders of {name} (capacity {capacity}): {who}"))
    return found


def _check_fences(records: list[Record], capacities: Mapping[str, int]) -> list[Violation]:
    found = []
    holders: dict[str, list[tuple[Record, str]]] = {}
    for record in records:
        for name, mode in record.resources:
            token = record.fences.get(name)
            if not isinstance(token, int) or token < 1:  # tokens start at 1
                found.append(Violation("fence_missing", f"{record} holds {name} without a fencing token ({token})"))
                continue
            holders.setdefault(name, []).append((record, mode))
    for name, held in holders.items():
        seen: dict[int, Record] = {}
        for record, _ in held:
            token = record.fences[name]
            if token in seen:
                clash = f"{seen[token]} and {record} both got token {token} on {name}"
                found.append(Violation("fence_duplicate", clash))
            seen[token] = record
        for (a, mode_a), (b, mode_b) in combinations(held, 2):
            for (first, mode_first), (then, mode_then) in (((a, mode_a), (b, mode_b)), ((b, mode_b), (a, mode_a))):
                if first.released_at >= then.granted_at:
                    continue
                requested_after = then.requested_at is not None and first.released_at < then.requested_at
                exclusive = conflicts((name, mode_first), (name, mode_then), capacities)
                if (requested_after or exclusive) and first.fences[name] >= then.fences[name]:
                    found.append(
                        Violation(
                            "fence_order",
                            f"{first} (token {first.fences[name]}) ended before {then} (token "
                            f"{then.fences[name]}) began on {name}: tokens must strictly increase",
                        )
                    )
    return found


def check(records: Iterable[Record], capacities: Mapping[str, int] | None = None) -> list[Violation]:
    """Every violation in `records`; `capacities` names the semaphores ({name: capacity > 1})."""
    records = list(records)
    capacities = dict(capacities or {})
    for record in records:
        if record.released_at < record.granted_at:
            raise ValueError(f"{record}: released before granted")
    return (
        _check_overlaps(records, capacities)
        + _check_capacities(records, capacities)
        + _check_fences(records, capacities)
    )


def summary(violations: Sequence[Violation], limit: int = 10) -> str:
    lines = [f"{v.kind}: {v.detail}" for v in violations[:limit]]
    if len(violations) > limit:
        lines.append(f"... and {len(violations) - limit} more")
    return "\n".join(lines)
