"""Approval rows: why a submission must wait, opening and withdrawing an approval, and its view.
Shared by the task service (submit, get, cancel) and the approval service (decide, expire)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, select, update

from server.clock import MICROS, to_iso
from server.domain.approval import ApprovalStatus, Decision
from server.domain.delegation import matches
from server.domain.money import to_micros, usd
from server.domain.principal import Principal
from server.domain.task_spec import TaskSpec
from server.domain.views import ApprovalView
from server.services.access import AccessPolicy
from server.services.budget_rows import applicable, spender_of
from server.services.events import log as events
from server.store.tables import approvals

EXPIRY = "expiry"  # decided_by when nobody decided in time


@dataclass(frozen=True)
class ApprovalTerms:
    """How long a person has to decide, and what happens if nobody does."""

    timeout_s: int
    on_expiry: Decision


def approval_view(row: Row[Any], task: Row[Any]) -> ApprovalView:
    return ApprovalView(
        id=row.id,
        task_id=row.task_id,
        task_type=task.type,
        estimated_cost_usd=None if task.estimated_cost_micros is None else str(usd(task.estimated_cost_micros)),
        status=row.status,
        reasons=list(row.reasons),
        requested_by=row.requested_by,
        created_at=to_iso(row.created_at) or "",
        expires_at=to_iso(row.expires_at) or "",
        on_expiry=row.on_expiry,
        decided_by=row.decided_by,
        decided_at=to_iso(row.decided_at),
        note=row.note,
        expired=row.expired,
    )


def approval_reasons(conn: Connection, access: AccessPolicy, principal: Principal, spec: TaskSpec) -> list[str]:
    """Why this submission must wait for a person; empty when it need not."""
    reasons = []
    if spec.requires_approval:
        reasons.append("the submitter asked for approval (requires_approval)")
    profile = access.profile_of(principal)
    if profile is not None and matches(spec.type, profile.approvals.task_types):
        reasons.append(f"profile {profile.ref} needs approval for {spec.type} tasks")
    if spec.estimated_cost_usd is not None:
        estimate = to_micros(spec.estimated_cost_usd, "estimated_cost_usd")
        for budget in applicable(conn, spender_of(conn, principal.agent_id)):
            above = budget.approval_above_micros
            if above is not None and estimate > above:
                reasons.append(
                    f"estimated ${usd(estimate)} is above budget {budget.scope}'s approval threshold ${usd(above)}"
                )
    return reasons


def open_approval(
    conn: Connection,
    approval_id: str,
    task_id: str,
    principal: Principal,
    reasons: list[str],
    terms: ApprovalTerms,
    now: int,
) -> Row[Any]:
    """The approval a task just inserted with `approval_id` waits for."""
    values = dict(
        id=approval_id,
        task_id=task_id,
        status=ApprovalStatus.PENDING.value,
        reasons=reasons,
        requested_by=principal.id,
        created_at=now,
        expires_at=now + terms.timeout_s * MICROS,
        on_expiry=terms.on_expiry.value,
        expired=False,
    )
    row = conn.execute(approvals.insert().values(values).returning(*approvals.c)).one()
    data = {"task_id": task_id, "reasons": reasons, "expires_at": to_iso(row.expires_at)}
    events.emit(conn, now, "approval.requested", approval_id, data, actor=principal, owner=principal.id)
    return row


def withdraw(conn: Connection, approval_id: str, now: int) -> None:
    """Its task was cancelled while waiting: nobody needs to decide any more."""
    conn.execute(
        update(approvals)
        .where(approvals.c.id == approval_id, approvals.c.status == ApprovalStatus.PENDING.value)
        .values(status=ApprovalStatus.WITHDRAWN.value, decided_at=now)
    )


def approval_of(conn: Connection, task: Row[Any]) -> ApprovalView | None:
    if task.approval_id is None:
        return None
    row = conn.execute(select(approvals).where(approvals.c.id == task.approval_id)).one()
    return approval_view(row, task)


def terms_for(access: AccessPolicy, principal: Principal, default: ApprovalTerms) -> ApprovalTerms:
    """The submitter's profile may give its own time to decide and default decision."""
    profile = access.profile_of(principal)
    if profile is None:
        return default
    policy = profile.approvals
    return ApprovalTerms(policy.timeout_s or default.timeout_s, policy.on_expiry or default.on_expiry)
