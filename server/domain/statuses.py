"""Lifecycle enums and the transitions the store enforces with conditional updates."""

from __future__ import annotations

from enum import StrEnum


class AgentStatus(StrEnum):
    STARTING = "starting"  # spawned; has not called in yet
    ACTIVE = "active"  # has called in and is within its heartbeat timeout
    UNRESPONSIVE = "unresponsive"  # silent past its heartbeat timeout
    STOPPING = "stopping"  # terminate requested; draining
    TERMINATED = "terminated"  # gone; token revoked
    FAILED = "failed"  # gave up restarting


class TaskStatus(StrEnum):
    PENDING_APPROVAL = "pending_approval"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEAD = "dead"  # ran out of attempts


class LockStatus(StrEnum):
    WAITING = "waiting"  # queued for its resources
    HELD = "held"  # granted; until released, expired or its task ends
    RELEASED = "released"  # by its holder, an admin (force), its task's end or its agent's
    EXPIRED = "expired"  # the lease ran out
    TIMED_OUT = "timed_out"  # never granted within wait_s
    CANCELLED = "cancelled"  # a waiting request withdrawn (released, caller gone, agent ended)


LIVE_LOCK_STATUSES = frozenset({LockStatus.WAITING, LockStatus.HELD})


AGENT_TRANSITIONS: dict[AgentStatus, frozenset[AgentStatus]] = {
    AgentStatus.STARTING: frozenset(
        {AgentStatus.ACTIVE, AgentStatus.UNRESPONSIVE, AgentStatus.STOPPING, AgentStatus.TERMINATED, AgentStatus.FAILED}
    ),
    # -> starting: a process agent's process is (re)started.
    AgentStatus.ACTIVE: frozenset(
        {
            AgentStatus.STARTING,
            AgentStatus.UNRESPONSIVE,
            AgentStatus.STOPPING,
            AgentStatus.TERMINATED,
            AgentStatus.FAILED,
        }
    ),
    AgentStatus.UNRESPONSIVE: frozenset(
        {AgentStatus.STARTING, AgentStatus.ACTIVE, AgentStatus.STOPPING, AgentStatus.TERMINATED, AgentStatus.FAILED}
    ),
    AgentStatus.STOPPING: frozenset({AgentStatus.TERMINATED}),
    AgentStatus.TERMINATED: frozenset(),
    AgentStatus.FAILED: frozenset({AgentStatus.STARTING, AgentStatus.TERMINATED}),  # agent_restart revives it
}

TASK_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING_APPROVAL: frozenset({TaskStatus.QUEUED, TaskStatus.CANCELLED}),
    TaskStatus.QUEUED: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED}),
    TaskStatus.RUNNING: frozenset(
        {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.QUEUED, TaskStatus.DEAD, TaskStatus.CANCELLED}
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
    TaskStatus.DEAD: frozenset(),
}

LIVE_AGENT_STATUSES = frozenset(
    {AgentStatus.STARTING, AgentStatus.ACTIVE, AgentStatus.UNRESPONSIVE, AgentStatus.STOPPING}
)


def agent_sources(target: AgentStatus) -> frozenset[AgentStatus]:
    """Statuses from which `target` may be entered: the WHERE clause of a conditional update."""
    return frozenset(s for s, nxt in AGENT_TRANSITIONS.items() if target in nxt)


def task_sources(target: TaskStatus) -> frozenset[TaskStatus]:
    return frozenset(s for s, nxt in TASK_TRANSITIONS.items() if target in nxt)
