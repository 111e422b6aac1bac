"""A child never has more power than its parent: which fields of a child profile would widen it.

Patterns are compared as patterns: a child's pattern is covered when one of the parent's patterns
matches it read as a literal (`review.*` covers `review.*` and `review.code`, not `*`). Tools are
a finite set, so they are compared by the tools each side allows."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase

from server.domain.permissions import TOOL_ROLES
from server.domain.profile import Profile
from server.domain.resources import parse_name


def matches(value: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(value, pattern) for pattern in patterns)


def lock_allowed(patterns: Iterable[str], name: str) -> bool:
    """A pattern allows a name it covers; a subtree request needs a subtree pattern covering it."""
    key, subtree = parse_name(name)
    for pattern in patterns:
        prefix, wide = parse_name(pattern)
        if (key == prefix or (wide and key.startswith(prefix + "/"))) and (wide or not subtree):
            return True
    return False


def _tools(profile: Profile) -> frozenset[str]:
    allowed = profile.permissions.tools
    return frozenset(t for t in TOOL_ROLES if allowed is None or matches(t, allowed))


def _within(
    child: tuple[str, ...] | None,
    parent: tuple[str, ...] | None,
    covers: Callable[[str, tuple[str, ...]], bool] = matches,
) -> bool:
    """Unset allows everything: only an unset parent covers an unset child."""
    if parent is None:
        return True
    if child is None:
        return False
    return all(covers(pattern, parent) for pattern in child)


def _lock_covers(pattern: str, parent: tuple[str, ...]) -> bool:
    return lock_allowed(parent, pattern)


def _spawn_within(child: tuple[str, ...], parent: tuple[str, ...]) -> bool:
    """An entry is covered by the same entry, or by its bare name (any version)."""
    return all(entry in parent or entry.partition("@")[0] in parent for entry in child)


def widened_fields(parent: Profile, child: Profile) -> list[str]:
    """The permission fields in which `child` allows something `parent` does not."""
    mine, theirs = parent.permissions, child.permissions
    widened = []
    if not _tools(child) <= _tools(parent):
        widened.append("permissions.tools")
    if not _within(theirs.task_types, mine.task_types):
        widened.append("permissions.task_types")
    if not _within(theirs.capabilities, mine.capabilities):
        widened.append("permissions.capabilities")
    if not _within(theirs.lock_resources, mine.lock_resources, _lock_covers):
        widened.append("permissions.lock_resources")
    if theirs.execute and not mine.execute:
        widened.append("permissions.execute")
    if "*" not in mine.message and not set(theirs.message) <= set(mine.message):
        widened.append("permissions.message")
    if not _spawn_within(child.spawn, parent.spawn):
        widened.append("spawn")
    if not set(parent.approvals.task_types) <= set(child.approvals.task_types):
        widened.append("approvals.task_types")  # the child would skip approvals its parent waits for
    return widened
