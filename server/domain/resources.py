"""Resource names, lock modes and the one rule for when two claims on resources conflict.

A name is `/`-separated segments, e.g. `device:mobile1` or `repo:/src/app.py`. A name whose last
segment is `**` is a subtree pattern: `repo:/src/**` covers `repo:/src` and every name under
`repo:/src/`. Two claims overlap when some name is covered by both: a plain name covers only
itself. Overlapping claims conflict unless both are shared; on a counting semaphore (a plain name
given a capacity above 1) up to `capacity` holders of that exact name coexist.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from server.errors import InvalidInput

MAX_NAME = 300
MAX_RESOURCES = 32
SUBTREE = "**"
_SEGMENT = re.compile(r"^[A-Za-z0-9_.:@+=,~%#!$&'()\[\]-]+$")


class LockMode(StrEnum):
    EXCLUSIVE = "exclusive"
    SHARED = "shared"


class ResourceRequest(BaseModel):
    """One resource of an acquire: its name and the mode wanted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=MAX_NAME, description="e.g. device:mobile1 or repo:/src/**")
    mode: LockMode = LockMode.EXCLUSIVE


@dataclass(frozen=True, slots=True)
class Claim:
    """A parsed resource claim. `key` is the name without a trailing `/**`."""

    name: str
    mode: LockMode
    key: str
    subtree: bool

    @property
    def root(self) -> str:
        """Claims overlap only within one root: the name's first segment."""
        return root_of(self.key)

    def covers(self, key: str) -> bool:
        return key == self.key or (self.subtree and key.startswith(self.key + "/"))

    def overlaps(self, other: Claim) -> bool:
        return self.covers(other.key) or other.covers(self.key)


def root_of(key: str) -> str:
    head, _, _ = key.partition("/")
    return head or key


def parse_name(name: str) -> tuple[str, bool]:
    """(key, subtree) for a well-formed name, or invalid_input saying what is wrong with it."""
    if not name or len(name) > MAX_NAME:
        raise InvalidInput(f"resource name must be 1..{MAX_NAME} characters")
    segments = name.split("/")
    subtree = segments[-1] == SUBTREE
    if subtree:
        segments = segments[:-1]
        if not any(segments):
            raise InvalidInput(f"resource pattern {name!r} needs a prefix before '/**', e.g. repo:/src/**")
    for segment in segments:
        if segment == "":
            raise InvalidInput(
                f"resource name {name!r} has an empty segment: it starts or ends with '/' or has '//' "
                "(use '/**' for a subtree)"
            )
        if segment in (".", ".."):
            raise InvalidInput(f"resource name {name!r} has a '{segment}' segment; write the path out")
        if "*" in segment:
            raise InvalidInput(f"resource name {name!r}: '*' is allowed only as a final '/**' (a subtree)")
        if not _SEGMENT.match(segment):
            raise InvalidInput(f"resource name {name!r} has whitespace or characters outside letters, digits, _.:-@")
    return "/".join(segments), subtree


def parse(request: ResourceRequest) -> Claim:
    key, subtree = parse_name(request.name)
    return Claim(request.name, request.mode, key, subtree)


def parse_all(requests: Sequence[ResourceRequest]) -> list[Claim]:
    """Parsed claims of one acquire: 1..MAX_RESOURCES, none overlapping another of the same request."""
    if not requests:
        raise InvalidInput("name at least one resource")
    if len(requests) > MAX_RESOURCES:
        raise InvalidInput(f"at most {MAX_RESOURCES} resources in one acquire")
    claims = [parse(r) for r in requests]
    for i, first in enumerate(claims):
        for second in claims[i + 1 :]:
            if first.overlaps(second):
                raise InvalidInput(f"resources {first.name!r} and {second.name!r} overlap; ask once for the wider one")
    return sorted(claims, key=lambda c: c.name)


def conflicts(mine: Claim, theirs: Claim, capacity: int = 1) -> bool:
    """Whether `theirs` (a holder, or a waiter ahead) stands in the way of `mine`, ignoring semaphore
    counting: on a semaphore, holders of the same name are counted by `blocked`, not here."""
    if not mine.overlaps(theirs):
        return False
    if capacity > 1 and mine.name == theirs.name:
        return False
    return not (mine.mode is LockMode.SHARED and theirs.mode is LockMode.SHARED)


def blocked(mine: Claim, others: Sequence[Claim], capacity: int) -> list[int]:
    """Indexes of the claims among `others` that keep `mine` from being granted now (none: grantable)."""
    in_the_way = [i for i, other in enumerate(others) if conflicts(mine, other, capacity)]
    if capacity > 1:
        same = [i for i, other in enumerate(others) if other.name == mine.name]
        if len(same) >= capacity:
            in_the_way.extend(same)
    return in_the_way
