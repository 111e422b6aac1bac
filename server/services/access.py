"""Who may do what: the role table for every tool, and an agent's profile permissions on top.

Checked at the door of every call (`admit`, by each adapter) and, for the rules that depend on a
request's content (task types, resource names), by the service that handles it."""

from __future__ import annotations

from collections.abc import Iterable

from server.domain.delegation import lock_allowed, matches
from server.domain.permissions import EXPLICIT_FOR_AGENTS, roles_for
from server.domain.principal import Principal, Role
from server.domain.profile import Profile
from server.errors import InvalidInput, PermissionDenied
from server.services.profiles import ProfileRegistry


class AccessPolicy:
    def __init__(self, profiles: ProfileRegistry) -> None:
        self._profiles = profiles

    async def ensure_current(self, principal: Principal) -> None:
        """An agent spawned (on another replica) from a version this server has not loaded yet:
        read the registry first, so its own version's rules apply, never a guess."""
        if principal.role is Role.AGENT and principal.profile and not self._profiles.knows(principal.profile):
            await self._profiles.refresh()

    def profile_of(self, principal: Principal) -> Profile | None:
        """An agent's profile: the version it was spawned from, else the newest of that name."""
        if principal.role is not Role.AGENT or principal.profile is None:
            return None
        try:
            return self._profiles.resolve(principal.profile)
        except InvalidInput:
            pass
        try:
            return self._profiles.resolve(principal.profile.partition("@")[0])
        except InvalidInput:
            raise PermissionDenied(
                f"your profile {principal.profile} is no longer installed, so nothing is allowed; ask an operator"
            ) from None

    def check_tool(self, principal: Principal, tool: str) -> None:
        roles = roles_for(tool)
        if principal.role not in roles:
            allowed = ", ".join(sorted(r.value for r in roles))
            raise PermissionDenied(f"{tool} is for {allowed}; you are {principal.role.value} {principal.id}")
        profile = self.profile_of(principal)
        tools = profile.permissions.tools if profile is not None else None
        if tools is not None and not matches(tool, tools):
            raise PermissionDenied(f"profile {profile.ref} does not allow {tool}")
        if principal.role is Role.AGENT and tool in EXPLICIT_FOR_AGENTS and tools is None:
            ref = profile.ref if profile is not None else principal.profile
            raise PermissionDenied(f"{tool} needs a profile that names it in permissions.tools; {ref} does not")

    def allows_tool(self, principal: Principal, tool: str) -> bool:
        """Whether a call to `tool` would pass the door: what a tool list shows this principal."""
        try:
            self.check_tool(principal, tool)
        except PermissionDenied:
            return False
        return True

    def check_task_type(self, principal: Principal, task_type: str) -> None:
        profile = self.profile_of(principal)
        if (
            profile is not None
            and (types := profile.permissions.task_types) is not None
            and not matches(task_type, types)
        ):
            allowed = ", ".join(types) or "none"
            raise PermissionDenied(
                f"profile {profile.ref} may not submit tasks of type {task_type!r}; allowed: {allowed}"
            )

    def check_lock_names(self, principal: Principal, names: Iterable[str]) -> None:
        profile = self.profile_of(principal)
        if profile is None or profile.permissions.lock_resources is None:
            return
        for name in names:
            if not lock_allowed(profile.permissions.lock_resources, name):
                patterns = ", ".join(profile.permissions.lock_resources) or "none"
                raise PermissionDenied(f"profile {profile.ref} may not lock {name}; allowed: {patterns}")

    def may_execute(self, principal: Principal) -> bool:
        """Whether work this principal submits may be run as code by payload-running agents."""
        if principal.can_operate:
            return True
        profile = self.profile_of(principal)
        return profile is not None and profile.permissions.execute

    def check_capabilities(self, principal: Principal, capabilities: Iterable[str]) -> None:
        """The capabilities a submitter's task may require: its profile's list, and none that only
        payload-running profiles serve unless it may have code run."""
        needed = sorted(set(capabilities))
        profile = self.profile_of(principal)
        if profile is not None and (allowed := profile.permissions.capabilities) is not None:
            refused = [c for c in needed if not matches(c, allowed)]
            if refused:
                raise PermissionDenied(
                    f"profile {profile.ref} may not submit tasks requiring {', '.join(refused)}; "
                    f"allowed: {', '.join(allowed) or 'none'}"
                )
        if self.may_execute(principal):
            return
        runners = self._profiles.payload_runners_only(needed)
        if runners:
            raise PermissionDenied(
                f"capability {', '.join(runners)} is served only by agents that run their task's payload as code "
                f"({', '.join(sorted({r for rs in runners.values() for r in rs}))}); submitting to them needs "
                "`permissions.execute: true` in your profile, or an operator"
            )
