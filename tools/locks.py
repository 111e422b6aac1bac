"""Lock tools: acquire, renew, release, list, and resource_set for counting semaphores."""

from __future__ import annotations

from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from server.domain.priority import Priority
from server.domain.resources import MAX_RESOURCES, ResourceRequest
from server.domain.views import LockGrant, LockList, LockView, ResourceView
from tools.annotations import DESTRUCTIVE, IDEMPOTENT_WRITE, READ_ONLY, WRITES
from tools.arguments import Reason
from tools.context import FleetContext, caller, services_of
from tools.tasks import TaskId

LockId = Annotated[str, Field(min_length=5, max_length=40, pattern=r"^lck_[0-9A-Z]+$", description="a lock id, lck_…")]
TtlSeconds = Annotated[int, Field(ge=1, le=86_400, description="lease length in seconds; lock_renew extends it")]


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=WRITES)
    async def lock_acquire(
        ctx: FleetContext,
        resources: Annotated[
            list[ResourceRequest],
            Field(
                min_length=1,
                max_length=MAX_RESOURCES,
                description="what to lock, all or nothing: [{name, mode: exclusive|shared}]. Names are "
                "/-separated; a final '/**' locks a subtree (repo:/src/** covers repo:/src/app.py)",
            ),
        ],
        ttl_s: TtlSeconds = 60,
        wait_s: Annotated[
            float,
            Field(ge=0, le=300, description="0: answer at once; >0: queue fairly and wait up to this long"),
        ] = 0,
        priority: Annotated[Priority, Field(description="queue order: critical > high > normal > low")] = (
            Priority.NORMAL
        ),
        task_id: Annotated[
            TaskId | None, Field(description="bind the lock to a task you hold: released when the task ends")
        ] = None,
        request_id: Annotated[
            str | None,
            Field(
                min_length=1,
                max_length=200,
                description="repeat an acquire with the same request_id to get the same lock back (a lost reply "
                "never leaves a ghost holder)",
            ),
        ] = None,
        reason: Reason = None,
    ) -> LockGrant:
        """Lock resources for this agent, all or nothing. Exclusive conflicts with everything on an
        overlapping name; shared only with exclusive. A grant returns lock_id, expires_at and a fencing
        token per resource that strictly increases with every grant of that resource: pass it to
        whatever you write, so a holder whose lease lapsed is recognisably stale. wait_s=0 answers
        at once (granted, or not with who holds what); wait_s>0 queues FIFO within a priority and
        fails with lock_timeout (and the queue position) if not granted in time. A wait that would
        close a cycle of agents waiting on each other fails at once with deadlock. Renew with
        lock_renew before expires_at; release with lock_release."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).locks.acquire(principal, resources, ttl_s, wait_s, priority, task_id, request_id)

    @mcp.tool(annotations=IDEMPOTENT_WRITE)
    async def lock_renew(ctx: FleetContext, lock_id: LockId, ttl_s: TtlSeconds = 60) -> LockView:
        """Extend a lock you hold to now + ttl_s. A lease that already ran out answers lease_expired:
        someone else may hold the resource now, so stop writing and acquire again."""
        principal = await caller(ctx)
        return await services_of(ctx).locks.renew(principal, lock_id, ttl_s)

    @mcp.tool(annotations=DESTRUCTIVE)
    async def lock_release(ctx: FleetContext, lock_id: LockId, reason: Reason = None) -> LockView:
        """Release a lock you hold (or withdraw a request still waiting); the next waiter is granted at
        once. Releasing twice answers the same. The admin may release anyone's lock (a force-release,
        recorded in the audit trail); its former holder then gets lease_expired."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).locks.release(principal, lock_id)

    @mcp.tool(annotations=READ_ONLY)
    async def lock_list(
        ctx: FleetContext,
        prefix: Annotated[
            str | None, Field(min_length=1, max_length=300, description="only resources whose name starts so")
        ] = None,
        holder: Annotated[
            str | None, Field(min_length=1, max_length=60, description="only this agent's (or 'admin') locks")
        ] = None,
    ) -> LockList:
        """Held locks and waiting requests, holders first, then waiters in queue order with their
        queue position."""
        await caller(ctx)
        return await services_of(ctx).locks.list(prefix, holder)

    @mcp.tool(annotations=IDEMPOTENT_WRITE)
    async def resource_set(
        ctx: FleetContext,
        name: Annotated[str, Field(min_length=1, max_length=300, description="a plain name, e.g. gpu:pool")],
        capacity: Annotated[
            int, Field(ge=1, le=10_000, description="holders that may share it (1: a plain exclusive lock)")
        ],
        reason: Reason = None,
    ) -> ResourceView:
        """Make a resource a counting semaphore (admin only): up to `capacity` exclusive holders of this
        exact name at once, each taking one slot, e.g. gpu:pool with capacity 4."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).locks.set_resource(principal, name, capacity)
