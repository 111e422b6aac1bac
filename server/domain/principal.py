"""Who is calling. Resolved from a bearer token at the adapter, passed to every service call."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"  # everything
    OPERATOR = "operator"  # runs the fleet: spawns, submits, cancels, decides approvals, reads all
    VIEWER = "viewer"  # reads everything but the audit trail and tokens; changes nothing
    AGENT = "agent"  # a spawned agent: its own work, within its profile
    SYSTEM = "system"  # the server's own loops (reaper, supervisor); never a token


# Roles a token can be created for; agent tokens are issued by agent_spawn only.
TOKEN_ROLES = (Role.ADMIN, Role.OPERATOR, Role.VIEWER)


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    id: str  # "admin", a token's name, or the agent id
    profile: str | None = None  # an agent's profile name
    # Why the caller says it acts, carried into the audit rows of this one request.
    reason: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def can_operate(self) -> bool:
        """May act on any task or agent, not only its own."""
        return self.role in (Role.ADMIN, Role.OPERATOR)

    @property
    def sees_all(self) -> bool:
        """May read every task, agent, lock and budget."""
        return self.role in (Role.ADMIN, Role.OPERATOR, Role.VIEWER)

    @property
    def agent_id(self) -> str | None:
        return self.id if self.role is Role.AGENT else None

    def because(self, reason: str | None) -> Principal:
        return self if reason is None else replace(self, reason=reason)


ADMIN = Principal(Role.ADMIN, "admin")
REAPER = Principal(Role.SYSTEM, "reaper")
SHIPPED = Principal(Role.SYSTEM, "shipped")  # what came with the installation (workflow templates)
