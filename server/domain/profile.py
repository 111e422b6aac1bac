"""An agent profile: what an agent is, what it can do, and the limits it runs under."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from server.domain.budget import POOL_NAME


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

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def version_key(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.version.split("."))
