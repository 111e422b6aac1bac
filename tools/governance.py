"""Governance tools: approvals, tokens, the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.mcpserver import Elicit, MCPServer, Resolve
from pydantic import BaseModel, Field

from server.clock import MICROS
from server.domain.approval import ApprovalStatus, Decision
from server.domain.principal import Role
from server.domain.views import ApprovalPage, ApprovalView, AuditPage, IssuedToken, TokenList, TokenView
from server.errors import InvalidInput
from server.services.audit import AuditFilter
from server.services.tokens import TOKEN_NAME
from tools.annotations import DESTRUCTIVE, READ_ONLY, WRITES
from tools.arguments import Reason
from tools.context import FleetContext, caller, services_of


def _micros(value: datetime | None, name: str) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise InvalidInput(f"{name} needs a timezone, e.g. 2026-01-01T12:00:00Z")
    return int(value.timestamp() * MICROS)


ApprovalId = Annotated[str, Field(max_length=40, pattern=r"^apr_[0-9A-V]+$", description="an approval id, apr_…")]
TokenRef = Annotated[
    str, Field(min_length=1, max_length=60, description="the token's name, or its id (tkn_…) from token_list")
]


_PAST = {"approve": "approved", "reject": "rejected", "decline": "declined", "cancel": "cancelled"}


class PersonsDecision(BaseModel):
    """The question put to the person at the client (flat fields: elicitation forms allow no nesting)."""

    # A Literal, not the Decision enum: an enum renders as a $ref, which elicitation forms do not allow.
    decision: Literal["approve", "reject"] = Field(description="approve queues the task; reject cancels it")
    note: str = Field("", max_length=2000, description="for the requester (optional)")


async def ask_the_person(
    approval_id: str, decision: Decision | None, note: str | None, ctx: FleetContext
) -> PersonsDecision | Elicit[PersonsDecision]:
    """The caller's own decision when it gave one; else a question for the person at the client."""
    if decision is not None:
        return PersonsDecision(decision=decision.value, note=note or "")
    capabilities = ctx.request_context.session.client_params
    elicitation = capabilities.capabilities.elicitation if capabilities is not None else None
    if elicitation is None:
        raise InvalidInput("decision is required: this client cannot ask its user (no MCP elicitation capability)")
    principal = await caller(ctx)
    approval = await services_of(ctx).approvals.get(principal, approval_id)
    cost = f", estimated ${approval.estimated_cost_usd}" if approval.estimated_cost_usd else ""
    question = (
        f"Approve task {approval.task_id} ({approval.task_type}{cost}), requested by {approval.requested_by}? "
        f"Why it needs you: {'; '.join(approval.reasons)}. If nobody decides by {approval.expires_at}, "
        f"it is {_PAST[approval.on_expiry]}."
    )
    return Elicit(question, PersonsDecision)


def register(mcp: MCPServer) -> None:
    _register_approvals(mcp)
    _register_tokens(mcp)
    _register_audit(mcp)


def _register_approvals(mcp: MCPServer) -> None:
    @mcp.tool(annotations=READ_ONLY)
    async def approval_list(
        ctx: FleetContext,
        status: Annotated[ApprovalStatus | None, Field(description="pending (waiting for you), approved, …")] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
        after_id: Annotated[
            str | None, Field(max_length=40, pattern=r"^apr_[0-9A-V]+$", description="page: entries after this id")
        ] = None,
    ) -> ApprovalPage:
        """Approvals, oldest first (admin and operator): each names its task, why it needs a person,
        when it expires and what happens then. Decide with approval_decide; task_get shows the task."""
        principal = await caller(ctx)
        return await services_of(ctx).approvals.list(principal, status, limit, after_id)

    @mcp.tool(annotations=WRITES)
    async def approval_decide(
        ctx: FleetContext,
        approval_id: ApprovalId,
        answer: Annotated[ElicitationResult[PersonsDecision], Resolve(ask_the_person)],
        decision: Annotated[
            Decision | None,
            Field(
                description="approve: the task is queued; reject: it is cancelled. Omit it to have the person "
                "at your client asked directly (clients with MCP elicitation)"
            ),
        ] = None,
        note: Annotated[
            str | None, Field(max_length=2000, description="for the requester: shown on the task and audited")
        ] = None,
    ) -> ApprovalView:
        """Decide a pending approval (admin and operator). Approving queues the task for the fleet;
        rejecting cancels it with your note. A decision is final: deciding twice is a conflict.
        Without `decision`, the person at the client is shown the task and asked (elicitation)."""
        if not isinstance(answer, AcceptedElicitation):
            raise InvalidInput(
                f"no decision: the person {_PAST[answer.action]} the question; {approval_id} stays pending"
            )
        note = answer.data.note or note
        principal = await caller(ctx, note)
        return await services_of(ctx).approvals.decide(principal, approval_id, Decision(answer.data.decision), note)


def _register_tokens(mcp: MCPServer) -> None:
    @mcp.tool(annotations=WRITES)
    async def token_create(
        ctx: FleetContext,
        name: Annotated[
            str,
            Field(
                pattern=TOKEN_NAME,
                description="who it is for, e.g. alice or ci-bot: the id its calls are audited under",
            ),
        ],
        role: Annotated[
            Role, Field(description="admin, operator (runs the fleet, decides approvals) or viewer (reads)")
        ],
        expires_in_s: Annotated[
            int | None, Field(ge=60, le=10 * 365 * 86_400, description="lifetime; unset: until revoked")
        ] = None,
        reason: Reason = None,
    ) -> IssuedToken:
        """Create a bearer token for a person or service (admin only). The secret is in this answer
        only: it is stored as a hash. Agents get their tokens from agent_spawn instead."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).tokens.create(principal, name, role, expires_in_s)

    @mcp.tool(annotations=READ_ONLY)
    async def token_list(ctx: FleetContext) -> TokenList:
        """Every token made with token_create (admin only): name, role, when made, rotated, revoked.
        Secrets are never shown again."""
        principal = await caller(ctx)
        return await services_of(ctx).tokens.list(principal)

    @mcp.tool(annotations=DESTRUCTIVE)
    async def token_revoke(ctx: FleetContext, token: TokenRef, reason: Reason = None) -> TokenView:
        """Revoke a token at once (admin only); its next call is refused. Revoking twice is harmless."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).tokens.revoke(principal, token)

    @mcp.tool(annotations=WRITES)
    async def token_rotate(ctx: FleetContext, token: TokenRef, reason: Reason = None) -> IssuedToken:
        """Replace a token's secret (admin only): same name and role, the old secret stops working
        now. The new secret is in this answer only."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).tokens.rotate(principal, token)


def _register_audit(mcp: MCPServer) -> None:
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
        """The audit trail (admin and operator), newest first: every state change and every refused
        request (action request.refused) with who, what, when, details, the reason given, and
        digests of the subject before and after; each row hash-chained to the one before it in its
        chain (`agentfleet audit verify` checks the chains). Page with before_id=next_before_id."""
        principal = await caller(ctx)
        where = AuditFilter(actor, subject, action, _micros(since, "since"), _micros(until, "until"), before_id, limit)
        return await services_of(ctx).audit.query(principal, where)
