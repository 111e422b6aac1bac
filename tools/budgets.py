"""Budget tools: set limits, read status, reserve before spending, release holds, record usage."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from server.domain.budget import Enforcement, Period, Threshold
from server.domain.views import BudgetReports, BudgetView, HoldView, UsageReceipt
from tools.annotations import DESTRUCTIVE, IDEMPOTENT_WRITE, READ_ONLY, WRITES
from tools.arguments import Reason
from tools.context import FleetContext, caller, services_of
from tools.tasks import TaskId

Usd = Annotated[Decimal, Field(ge=0, description="US dollars, up to six decimal places (a number or a string)")]
ScopeText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=120,
        description="global, agent:<agent id> (its descendants' spend included), profile:<name> or pool:<name>",
    ),
]
HoldId = Annotated[str, Field(min_length=5, max_length=40, pattern=r"^hld_[0-9A-Z]+$", description="a hold id, hld_…")]
Tokens = Annotated[int, Field(ge=0, le=10**12)]


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=IDEMPOTENT_WRITE)
    async def budget_set(
        ctx: FleetContext,
        scope: ScopeText,
        limit_usd: Usd,
        period: Annotated[
            Period, Field(description="total (never resets), daily or monthly (UTC calendar; unused budget lapses)")
        ] = Period.TOTAL,
        thresholds: Annotated[
            list[Threshold] | None,
            Field(
                max_length=10,
                description="[{percent, action: notify|warn|block}] of spent+reserved; default 70 notify, 90 warn, "
                "100 block. Each crossing is recorded once per period; block stops new dispatch and spawn",
            ),
        ] = None,
        enforcement: Annotated[
            Enforcement,
            Field(description="hard: reservations, dispatch and spawn never take it past the limit; soft: warn only"),
        ] = Enforcement.HARD,
        approval_above_usd: Annotated[
            Decimal | None,
            Field(
                ge=0,
                description="tasks submitted by anyone under this budget with a larger estimated_cost_usd wait "
                "in pending_approval for an admin or operator (approval_decide)",
            ),
        ] = None,
        reason: Reason = None,
    ) -> BudgetView:
        """Create or change the budget of a scope (one per scope). Spend already recorded in the scope
        this period counts at once. The admin may budget any scope; an agent only its descendants
        (agent:<child id>), to split its own budget among its children."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).budgets.set(
            principal, scope, limit_usd, period, thresholds, enforcement, approval_above_usd
        )

    @mcp.tool(annotations=READ_ONLY)
    async def budget_status(
        ctx: FleetContext, scope: Annotated[ScopeText | None, Field(description="one scope; omit for all")] = None
    ) -> BudgetReports:
        """Budgets with limit, spent, reserved, remaining and percent for the current period, burn
        rate over the last hour and day, when the limit will be reached at that rate, spend by agent,
        model and task type, and the thresholds crossed. An agent sees the budgets it spends under
        and its descendants'."""
        principal = await caller(ctx)
        return await services_of(ctx).budgets.status(principal, scope)

    @mcp.tool(annotations=WRITES)
    async def budget_reserve(
        ctx: FleetContext,
        amount_usd: Usd,
        ttl_s: Annotated[
            int, Field(ge=1, le=86_400, description="seconds until the hold expires and its money returns")
        ] = 300,
        purpose: Annotated[str | None, Field(max_length=500, description="what the money is for")] = None,
        reason: Reason = None,
    ) -> HoldView:
        """Set money aside before spending it, atomically across every budget over you (global, your
        agent scope and your ancestors', your profile, your pools). Fails with budget_exceeded, and
        sets nothing aside, if any hard budget cannot cover it. Record spend with usage_record
        (hold_id) and finish with budget_release; an unreleased hold expires after ttl_s."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).budgets.reserve(principal, amount_usd, ttl_s, purpose)

    @mcp.tool(annotations=DESTRUCTIVE)
    async def budget_release(
        ctx: FleetContext,
        hold_id: HoldId,
        actual_usd: Annotated[
            Usd | None,
            Field(description="the total actually spent under the hold (beyond usage already recorded against it)"),
        ] = None,
        reason: Reason = None,
    ) -> HoldView:
        """Settle a hold: what was spent (actual_usd, or the usage recorded against it) stays spent;
        the rest goes back. Releasing again answers the same. A hold that already expired can still
        be settled once with actual_usd, so late spend is not lost."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).budgets.release(principal, hold_id, actual_usd)

    @mcp.tool(annotations=WRITES)
    async def usage_record(
        ctx: FleetContext,
        model: Annotated[str, Field(min_length=1, max_length=120, description="e.g. claude-sonnet-4-5")],
        input_tokens: Annotated[Tokens, Field(description="uncached input tokens")],
        output_tokens: Tokens,
        cached_input_tokens: Annotated[Tokens, Field(description="input tokens read from a prompt cache")] = 0,
        cost_usd: Annotated[
            Usd | None, Field(description="the exact cost; omit to price the tokens from the model price table")
        ] = None,
        task_id: Annotated[
            TaskId | None, Field(description="a task you hold: its dispatch hold pays first, and it shows per type")
        ] = None,
        hold_id: Annotated[HoldId | None, Field(description="a hold of yours to draw the cost from")] = None,
        reason: Reason = None,
    ) -> UsageReceipt:
        """Record what an agent spent (agent token only). The cost comes from cost_usd, or from the
        price table (an unknown model without cost_usd is invalid_input). It is drawn from the hold
        named (or the task's dispatch hold) as far as that covers it and added to every budget over
        the agent. Ledger rows are immutable. Spend is always recorded: usage beyond what was
        reserved can take a budget past its limit, which then blocks new work in its scope."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).budgets.record_usage(
            principal, model, input_tokens, output_tokens, cached_input_tokens, cost_usd, task_id, hold_id
        )
