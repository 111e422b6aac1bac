"""What services return and adapters publish: JSON-ready, explicitly typed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def _nullable_as_type_lists(schema: dict[str, Any]) -> None:
    """Write `X | None` as {"type": ["x", "null"]} rather than anyOf: the same contract, and MCP
    clients validate every structured result against this schema (measured ~2x cheaper)."""
    for prop in schema.get("properties", {}).values():
        branches = prop.get("anyOf")
        if branches and all(set(b) == {"type"} for b in branches):
            del prop["anyOf"]
            prop["type"] = [b["type"] for b in branches]


class View(BaseModel):
    model_config = ConfigDict(json_schema_extra=_nullable_as_type_lists)


class AgentView(View):
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


class SpawnedAgent(View):
    agent: AgentView
    token: str = Field(description="the agent's bearer token; shown once, stored only as a hash")


class AgentList(View):
    agents: list[AgentView]


class TerminatedAgents(View):
    terminated: list[str] = Field(description="ids that this call terminated, the target first")


class AttemptView(View):
    number: int
    agent_id: str
    started_at: str
    ended_at: str | None
    outcome: str | None = Field(description="completed, failed, expired, cancelled, released; null while running")
    error: str | None


class LockItemView(View):
    name: str
    mode: str
    fence: int | None = Field(description="fencing token: strictly increasing per resource across all grants")
    lock_id: str


class TaskView(View):
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
    resources: list[dict[str, str]] | None = Field(
        description="resources the task needs ({name, mode}); it is claimed only together with their locks"
    )
    locks: list[LockItemView] | None = Field(
        None, description="locks the current attempt holds, with fencing tokens (claim result and task_get)"
    )
    attempt_history: list[AttemptView] | None = Field(
        None, description="every attempt: filled by task_get (and the task resource), null elsewhere"
    )


class LockView(View):
    id: str
    holder: str = Field(description="the agent (or admin) the lock belongs to")
    task_id: str | None = Field(description="set for task-scoped locks: released when the task ends")
    request_id: str | None
    status: str = Field(description="waiting, held, released, expired, timed_out, cancelled")
    priority: str
    resources: list[LockItemView]
    created_at: str
    granted_at: str | None
    expires_at: str | None = Field(description="lease end; null for locks that live as long as their task")
    wait_until: str | None = Field(description="a waiting request gives up at this time")
    ended_at: str | None
    ended_by: str | None
    queue_position: int | None = Field(
        None, description="waiting only: 1 + the waiting requests ahead of it that want a conflicting resource"
    )


class LockConflict(View):
    resource: str = Field(description="the resource you asked for")
    blocked_by: str = Field(description="the resource name held or awaited by the other party")
    lock_id: str
    holder: str
    mode: str
    status: str = Field(description="held, or waiting (queued ahead of you)")
    expires_at: str | None


class LockGrant(View):
    granted: bool
    lock_id: str | None = Field(description="the lock; null when not granted with wait_s=0")
    expires_at: str | None
    fencing_tokens: dict[str, int] = Field(description="resource name -> fencing token; send it with every write")
    lock: LockView | None
    conflicts: list[LockConflict] = Field(description="not granted: who holds or awaits what you asked for")


class LockList(View):
    locks: list[LockView]


class ResourceView(View):
    name: str
    capacity: int = Field(description="holders of this exact name that may coexist (1: a plain lock)")
    fence: int = Field(description="the last fencing token issued for it")
    holders: int


class ClaimResult(View):
    task: TaskView | None = Field(description="the leased task, or null if none was available in time")
    reason: str | None = Field(None, description="why no task: 'none_available' or 'at_capacity'")


class TaskLease(View):
    task_id: str
    lease_expires_at: str
    cancel_requested: bool = Field(description="true: stop work and call task_fail; the task ends cancelled")
    progress: int | None


class TaskReceipt(View):
    """What task_submit answers: enough to follow the task, without echoing its payload back."""

    id: str
    type: str
    status: str
    priority: str
    capabilities: list[str]
    pinned_agent_id: str | None
    created_at: str
    ready_at: str
    max_attempts: int
    idempotency_key: str | None
    unroutable: bool

    @classmethod
    def of(cls, task: TaskView) -> TaskReceipt:
        return cls.model_construct(**{name: getattr(task, name) for name in cls.model_fields})


class TaskList(View):
    tasks: list[TaskView]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at the end")


class FleetStatus(View):
    agents: dict[str, int] = Field(description="agent count by status")
    tasks: dict[str, dict[str, int]] = Field(description="task count by status, then by priority")
    unroutable: int = Field(description="queued tasks no live agent or profile could run when submitted")
    totals: dict[str, int]
