"""Budget, hold and threshold rows to views."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, bindparam, select

from server.clock import to_iso
from server.domain.budget import Period, committed_percent
from server.domain.money import usd
from server.domain.views import BudgetSummary, BudgetView, HoldView, ThresholdView
from server.services.budget_rows import fresh_spent, is_blocked, is_overspent
from server.store.tables import budgets

_SCOPES_BY_ID = select(budgets.c.id, budgets.c.scope).where(budgets.c.id.in_(bindparam("ids", expanding=True)))


def _summary_fields(row: Any, now: int) -> dict[str, Any]:
    spent = fresh_spent(row, now)
    return {
        "scope": row.scope,
        "period": row.period,
        "enforcement": row.enforcement,
        "limit_usd": str(usd(row.limit_micros)),
        "spent_usd": str(usd(spent)),
        "reserved_usd": str(usd(row.reserved_micros)),
        "percent": round(committed_percent(spent, row.reserved_micros, row.limit_micros), 2),
        "blocked": is_blocked(row, now),
        "overspent": is_overspent(row, now),
    }


def budget_summary(row: Any, now: int) -> BudgetSummary:
    return BudgetSummary(**_summary_fields(row, now))


def budget_summaries(conn: Connection, now: int) -> list[BudgetSummary]:
    """Every budget's percent used (fleet_status, `agentfleet status`)."""
    return [budget_summary(row, now) for row in conn.execute(select(budgets).order_by(budgets.c.scope))]


def budget_view(row: Row[Any], now: int, crossed: set[int]) -> BudgetView:
    fields = _summary_fields(row, now)
    period = Period(row.period)
    committed = fresh_spent(row, now) + row.reserved_micros
    return BudgetView(
        **fields,
        id=row.id,
        remaining_usd=str(usd(max(row.limit_micros - committed, 0))),
        thresholds=[
            ThresholdView(percent=t["percent"], action=t["action"], crossed=t["percent"] in crossed)
            for t in row.thresholds
        ],
        approval_above_usd=None if row.approval_above_micros is None else str(usd(row.approval_above_micros)),
        period_start=to_iso(period.start(now)) if period is not Period.TOTAL else None,
        period_end=to_iso(period.end(now)),
        created_at=to_iso(row.created_at) or "",
        updated_at=to_iso(row.updated_at) or "",
    )


def hold_view(conn: Connection, row: Row[Any]) -> HoldView:
    scopes = dict(conn.execute(_SCOPES_BY_ID, {"ids": list(row.budget_ids)}).all()) if row.budget_ids else {}
    return HoldView(
        id=row.id,
        holder=row.holder,
        task_id=row.task_id,
        purpose=row.purpose,
        status=row.status,
        amount_usd=str(usd(row.amount_micros)),
        drawn_usd=str(usd(row.drawn_micros)),
        spent_usd=None if row.spent_micros is None else str(usd(row.spent_micros)),
        budgets=sorted(scopes[b] for b in row.budget_ids if b in scopes),
        created_at=to_iso(row.created_at) or "",
        expires_at=to_iso(row.expires_at),
        ended_at=to_iso(row.ended_at),
    )
