"""What services return and adapters publish: JSON-ready, explicitly typed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class AgentView(BaseModel):
    id: str
    name: str
    profile: str = Field(description="name@version")
    runtime: str
    capabilities: list[str]
    parent_id: str | None
    depth: int
    status: str
    created_at: str
    last_heartbeat_at: str | None
    terminated_at: str | None
    labels: dict[str, str]
    children: list[str] | None = Field(None, description="ids of direct children (agent_get only)")


class SpawnedAgent(BaseModel):
    agent: AgentView
    token: str = Field(description="the agent's bearer token; shown once, stored only as a hash")


class AgentList(BaseModel):
    agents: list[AgentView]


class TerminatedAgents(BaseModel):
    terminated: list[str] = Field(description="ids that this call terminated, the target first")


class AttemptView(BaseModel):
    number: int
    agent_id: str
    started_at: str
    ended_at: str | None
    outcome: str | None = Field(description="completed, failed, expired, cancelled, released; null while running")
    error: str | None


class TaskView(BaseModel):
    id: str
    type: str
    payload: Any
    capabilities: list[str]
    priority: str
    status: str
    pinned_agent_id: str | None
    agent_id: str | None = Field(description="the agent holding or last holding the task")
    submitted_by: str
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    max_attempts: int
    lease_expires_at: str | None
    cancel_requested: bool
    idempotency_key: str | None
    result: Any
    error: str | None
    ready_at: str = Field(description="when the task is (or was) next claimable")
    lease_s: int
    progress: int | None
    progress_message: str | None
    usage: Any
    unroutable: bool = Field(description="queued although no live agent or profile had its capabilities")
    attempt_history: list[AttemptView] | None = Field(
        None, description="every attempt: filled by task_get (and the task resource), null elsewhere"
    )


class ClaimResult(BaseModel):
    task: TaskView | None = Field(description="the leased task, or null if none was available in time")
    reason: str | None = Field(None, description="why no task: 'none_available' or 'at_capacity'")


class TaskLease(BaseModel):
    task_id: str
    lease_expires_at: str
    cancel_requested: bool = Field(description="true: stop work and call task_fail; the task ends cancelled")
    progress: int | None


class TaskList(BaseModel):
    tasks: list[TaskView]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at the end")


class FleetStatus(BaseModel):
    agents: dict[str, int] = Field(description="agent count by status")
    tasks: dict[str, dict[str, int]] = Field(description="task count by status, then by priority")
    unroutable: int = Field(description="queued tasks no live agent or profile could run when submitted")
    totals: dict[str, int]
