"""Who is calling. Resolved from a bearer token at the adapter, passed to every service call."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    AGENT = "agent"
    SYSTEM = "system"  # the server's own loops (reaper, supervisor); never a token


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    id: str  # "admin" or the agent id

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def agent_id(self) -> str | None:
        return self.id if self.role is Role.AGENT else None


ADMIN = Principal(Role.ADMIN, "admin")
REAPER = Principal(Role.SYSTEM, "reaper")
