"""An agent profile: what an agent is, what it can do, and the limits it runs under."""

from __future__ import annotations

from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from semantic_version import NpmSpec

from server.domain.approval import Decision
from server.domain.budget import POOL_NAME
from server.domain.permissions import TOOL_ROLES
from server.domain.resources import parse_name
from server.errors import InvalidInput


class ProfileState(StrEnum):
    ACTIVE = "active"  # chosen by name and by ranges
    DEPRECATED = "deprecated"  # spawned only when named exactly, or when no active version fits a range
    RETIRED = "retired"  # no new spawns; agents already running keep their pinned version


class Runtime(StrEnum):
    EXTERNAL = "external"  # the caller runs the agent; it connects with its token
    PROCESS = "process"  # the server starts the profile's command and supervises it
    A2A = "a2a"  # a remote A2A agent: the server hands it tasks over A2A


# Passed through from the server's environment unless a profile lists its own: enough to find
# programs and speak the locale, never a secret.
DEFAULT_PASSTHROUGH = ("PATH", "LANG", "LC_ALL", "TZ")
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# Set by the server for every process agent; a profile cannot override them.
RESERVED_ENV = frozenset({"AGENTFLEET_URL", "AGENTFLEET_TOKEN", "AGENTFLEET_AGENT_ID"})


class ProcessSpec(BaseModel):
    """How the server runs a `process` agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: tuple[Annotated[str, Field(min_length=1, max_length=4000)], ...] = Field(
        min_length=1,
        max_length=256,
        description="argument list, never a shell; a first word `agentfleet` or `python` runs this server's install",
    )
    env: dict[Annotated[str, Field(pattern=ENV_NAME)], Annotated[str, Field(max_length=4000)]] = Field(
        default_factory=dict, description="variables set for the process"
    )
    env_passthrough: tuple[Annotated[str, Field(pattern=ENV_NAME)], ...] = Field(
        default=DEFAULT_PASSTHROUGH, max_length=64, description="variables copied from the server's environment"
    )
    stop_timeout_s: float = Field(10.0, ge=0.1, le=3600, description="SIGTERM to SIGKILL on a graceful stop")
    executes_payload: bool = Field(
        False,
        description="its command runs task payloads as code (a shell, an LLM with tools): its agents claim only "
        "tasks whose submitter holds permissions.execute",
    )
    allow_read: tuple[Annotated[str, Field(pattern=r"^/", max_length=1000)], ...] = Field(
        default=(), max_length=32, description="extra absolute paths the confined process may read and execute"
    )
    allow_write: tuple[Annotated[str, Field(pattern=r"^/", max_length=1000)], ...] = Field(
        default=(), max_length=32, description="extra absolute paths the confined process may write"
    )

    @field_validator("env")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        taken = sorted(RESERVED_ENV & set(value))
        if taken:
            raise ValueError(f"env may not set {', '.join(taken)}: the server sets them")
        return value


class RestartPolicy(BaseModel):
    """What happens when a process agent exits without being asked to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_restarts: int = Field(5, ge=0, le=1000, description="restarts before the agent is marked failed")
    backoff_base_s: float = Field(1.0, ge=0.01, le=3600, description="first restart delay; doubles each time")
    backoff_cap_s: float = Field(60.0, ge=0.01, le=86_400, description="largest restart delay")


class Autoscale(BaseModel):
    """Keep between min and max process agents of this profile, one per tasks_per_agent tasks
    they could serve (queued or running)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: int = Field(0, ge=0, le=1000)
    max: int = Field(ge=1, le=1000)
    tasks_per_agent: int = Field(1, ge=1, le=100_000)
    scale_in_after_s: float = Field(
        30.0, ge=0, le=86_400, description="an agent idle this long may be retired (drained first)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> Autoscale:
        if self.min > self.max:
            raise ValueError("autoscale.min must not exceed autoscale.max")
        return self


class A2APeer(BaseModel):
    """The remote A2A agent an `a2a` agent stands for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(
        None, pattern=r"^https?://", max_length=2000, description="its base URL (the card is at /.well-known/…)"
    )
    token_env: str | None = Field(
        None, pattern=ENV_NAME, description="server environment variable holding a bearer token for the peer"
    )


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
# A profile name, optionally with a version or an npm-style range: no wildcards, so a profile that
# may spawn a process agent always names it.
SPAWN_ENTRY = r"^[a-z][a-z0-9_-]{0,63}(@[0-9A-Za-z.^~<>=*| -]{1,60})?$"


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
    capabilities: tuple[Pattern, ...] | None = Field(
        None, max_length=64, description="capabilities the tasks it submits may require (shell-style patterns)"
    )
    execute: bool = Field(
        False,
        description="its tasks may be run as code by agents whose profile executes payloads (e.g. shell-worker)",
    )
    message: tuple[Pattern, ...] = Field(
        (),
        max_length=64,
        description="recipients beyond its parent, children, subtree, siblings, requester and operators that "
        "it may message: topic:<pattern>, profile:<pattern>, label:<k=v pattern>, or * for anyone",
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
    process: ProcessSpec | None = Field(None, description="runtime process: what to run")
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    autoscale: Autoscale | None = Field(None, description="runtime process: keep a number of agents by demand")
    a2a: A2APeer | None = Field(None, description="runtime a2a: the remote agent (or give a2a_url at spawn)")
    spawn: tuple[Annotated[str, Field(pattern=SPAWN_ENTRY)], ...] = Field(
        default=(),
        max_length=64,
        description="profiles its agents may spawn: names, or name@range (researcher@^1); none by default",
    )

    @field_validator("spawn")
    @classmethod
    def _spawn_ranges(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            _, _, wanted = entry.partition("@")
            if wanted:
                try:
                    NpmSpec(wanted)
                except ValueError as exc:
                    raise ValueError(f"spawn entry {entry!r}: {exc}; write name, name@1.2.0 or name@^1") from None
        return value

    @model_validator(mode="after")
    def _runtime_fits(self) -> Profile:
        if (self.runtime is Runtime.PROCESS) != (self.process is not None):
            raise ValueError("runtime process needs a `process:` section, and only it may have one")
        if self.autoscale is not None and self.runtime is not Runtime.PROCESS:
            raise ValueError("autoscale applies to runtime process only")
        if self.a2a is not None and self.runtime is not Runtime.A2A:
            raise ValueError("an `a2a:` section needs runtime a2a")
        return self

    @property
    def executes_payload(self) -> bool:
        return self.process is not None and self.process.executes_payload

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def version_key(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.version.split("."))
