"""An agent profile: what an agent is, what it can do, and the limits it runs under."""

from __future__ import annotations

from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.domain.approval import Decision
from server.domain.budget import POOL_NAME
from server.domain.permissions import TOOL_ROLES
from server.domain.resources import parse_name
from server.errors import InvalidInput


class Runtime(StrEnum):
    EXTERNAL = "external"  # the caller runs the agent; it connects with its token


class ProfileLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    heartbeat_timeout_s: int = Field(60, ge=5, le=86_400, description="silence after which the agent is unresponsive")
    max_children: int = Field(10, ge=0, le=10_000, description="children this agent may spawn")
    max_depth: int = Field(4, ge=0, le=32, description="deepest level of descendants below a root agent")
    cpu_seconds: int | None = Field(None, ge=1, description="RLIMIT_CPU for process agents")
    memory_mb: int | None = Field(None, ge=16, description="RLIMIT_AS for process agents")
    open_files: int | None = Field(None, ge=16, description="RLIMIT_NOFILE for process agents")
    rate_per_s: float | None = Field(
        None, gt=0, le=100_000, description="tool calls per second (refill); unset: AGENTFLEET_RATE_LIMIT_PER_S"
    )
    rate_burst: int | None = Field(None, ge=1, le=1_000_000, description="calls allowed at once; unset: the setting")


Pattern = Annotated[str, Field(min_length=1, max_length=300)]


class ProfilePermissions(BaseModel):
    """What an agent of this profile may do. Unset means no restriction beyond its role."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tools: tuple[Pattern, ...] | None = Field(
        None, max_length=64, description="tool names it may call (shell-style patterns, e.g. task_*)"
    )
    task_types: tuple[Pattern, ...] | None = Field(
        None, max_length=64, description="task types it may submit (shell-style patterns, e.g. review.*)"
    )
    lock_resources: tuple[Pattern, ...] | None = Field(
        None, max_length=64, description="resource names it may lock; a trailing /** allows a subtree"
    )

    @field_validator("tools")
    @classmethod
    def _known_tools(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """A misspelt pattern would quietly forbid a tool; say so when the profile loads."""
        for pattern in value or ():
            if not any(fnmatchcase(tool, pattern) for tool in TOOL_ROLES):
                raise ValueError(f"tools pattern {pattern!r} matches no tool")
        return value

    @field_validator("lock_resources")
    @classmethod
    def _resource_names(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for name in value or ():
            try:
                parse_name(name)
            except InvalidInput as exc:
                raise ValueError(exc.message) from None
        return value


class ApprovalPolicy(BaseModel):
    """Which of this profile's agents' submissions wait for a person."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_types: tuple[Pattern, ...] = Field(
        default=(), max_length=64, description="task types whose submission needs approval (patterns)"
    )
    timeout_s: int | None = Field(
        None, ge=60, le=30 * 86_400, description="how long a person has to decide; unset: AGENTFLEET_APPROVAL_TIMEOUT_S"
    )
    on_expiry: Decision | None = Field(None, description="the decision when time runs out; unset: the setting")


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$")
    version: str = Field(pattern=r"^\d+\.\d+\.\d+$", description="semantic version")
    description: str = Field(min_length=1, max_length=2000)
    runtime: Runtime = Runtime.EXTERNAL
    capabilities: tuple[str, ...] = Field(default=(), max_length=64)
    max_concurrency: int = Field(1, ge=1, le=1000, description="leases an agent may hold at once")
    pools: tuple[Annotated[str, Field(pattern=POOL_NAME)], ...] = Field(
        default=(), max_length=16, description="budget pools its agents join (scopes pool:<name>)"
    )
    limits: ProfileLimits = Field(default_factory=ProfileLimits)
    permissions: ProfilePermissions = Field(default_factory=ProfilePermissions)
    approvals: ApprovalPolicy = Field(default_factory=ApprovalPolicy)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def version_key(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.version.split("."))
