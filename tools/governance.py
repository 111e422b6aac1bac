"""Governance tools: the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from server.clock import MICROS
from server.domain.views import AuditPage
from server.errors import InvalidInput
from server.services.audit import AuditFilter
from tools.annotations import READ_ONLY
from tools.context import FleetContext, caller, services_of


def _micros(value: datetime | None, name: str) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise InvalidInput(f"{name} needs a timezone, e.g. 2026-01-01T12:00:00Z")
    return int(value.timestamp() * MICROS)


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=READ_ONLY)
    async def audit_query(
        ctx: FleetContext,
        actor: Annotated[str | None, Field(max_length=60, description="who acted: admin, an agent id, reaper")] = None,
        subject: Annotated[str | None, Field(max_length=40, description="the id acted on, e.g. tsk_…")] = None,
        action: Annotated[str | None, Field(max_length=60, description="e.g. task.claim, budget.reserve")] = None,
        since: Annotated[datetime | None, Field(description="ISO 8601 UTC, inclusive")] = None,
        until: Annotated[datetime | None, Field(description="ISO 8601 UTC, exclusive")] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 100,
        before_id: Annotated[
            str | None,
            Field(max_length=40, pattern=r"^evt_[0-9A-V]+$", description="page: only entries older than this id"),
        ] = None,
    ) -> AuditPage:
        """The audit trail (admin only), newest first: every state change with who did it, to what,
        when and the details, each row hash-chained to the one before it in its chain
        (`agentfleet audit verify` checks the chains). Page with before_id=next_before_id."""
        principal = await caller(ctx)
        where = AuditFilter(actor, subject, action, _micros(since, "since"), _micros(until, "until"), before_id, limit)
        return await services_of(ctx).audit.query(principal, where)
