"""Budgets: set limits per scope, reserve before spending, record usage, report burn and forecast.

The arithmetic that must hold under concurrency lives in budget_rows; this module decides who may
do what and shapes the answers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import BigInteger, Connection, Row, bindparam, select, text, update

from server.clock import MICROS, Clock, to_iso
from server.domain.budget import (
    DEFAULT_THRESHOLDS,
    Enforcement,
    HoldStatus,
    Period,
    Scope,
    Threshold,
    check_thresholds,
)
from server.domain.money import cost_to_micros, to_micros, usd
from server.domain.principal import REAPER, Principal
from server.domain.views import BudgetEvent, BudgetReport, BudgetReports, BudgetView, HoldView, UsageReceipt
from server.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from server.ids import BUDGET, HOLD, USAGE, new_id
from server.instruments import Instruments
from server.services import audit
from server.services.agents import descendants
from server.services.budget_rows import (
    Spender,
    applicable,
    close_hold,
    fresh_spent,
    hold_off_charges,
    is_stale,
    move,
    open_hold,
    record_crossings,
    scopes_of,
    spender_of,
)
from server.services.budget_views import budget_summary, budget_view, hold_view
from server.services.pricing import PriceTable
from server.services.profiles import ProfileRegistry
from server.store.database import Database
from server.store.dialect import json_subset
from server.store.tables import agents, budget_holds, budgets, events, tasks, usage

_SWEEP_BATCH = 200
_HOUR = 3600 * MICROS
_DAY = 24 * _HOUR
_EXPIRED = (
    select(budget_holds)
    .where(budget_holds.c.status == HoldStatus.HELD.value, budget_holds.c.expires_at <= bindparam("now"))
    .order_by(budget_holds.c.expires_at)
    .limit(_SWEEP_BATCH)
)
_DRAW = (
    update(budget_holds)
    .where(
        budget_holds.c.id == bindparam("b_hold"),
        budget_holds.c.status == HoldStatus.HELD.value,
        budget_holds.c.drawn_micros + bindparam("b_draw", type_=BigInteger) <= budget_holds.c.amount_micros,
    )
    .values(drawn_micros=budget_holds.c.drawn_micros + bindparam("b_draw", type_=BigInteger))
)


class BudgetService:
    def __init__(
        self, db: Database, clock: Clock, profiles: ProfileRegistry, prices: PriceTable, instruments: Instruments
    ) -> None:
        self._instruments = instruments
        self._db = db
        self._clock = clock
        self._profiles = profiles
        self._prices = prices
        in_scope = json_subset(db.dialect, ":needle", "orch_usage.scopes")
        self._spend_since = text(
            f"SELECT COALESCE(SUM(cost_micros), 0) FROM orch_usage WHERE at >= :since AND {in_scope}"
        )
        self._breakdowns = {
            name: text(
                f"SELECT {key} AS k, SUM(cost_micros) AS v FROM orch_usage WHERE at >= :since AND {in_scope} "
                f"GROUP BY {key} ORDER BY v DESC, k"
            )
            for name, key in (
                ("agent", "COALESCE(agent_id, 'admin')"),
                ("model", "COALESCE(model, 'settlement')"),
                ("task_type", "COALESCE(task_type, 'none')"),
            )
        }

    # -- budget_set ----------------------------------------------------------------------------
    async def set(
        self,
        principal: Principal,
        scope: str,
        limit_usd: Decimal,
        period: Period = Period.TOTAL,
        thresholds: Sequence[Threshold] | None = None,
        enforcement: Enforcement = Enforcement.HARD,
        approval_above_usd: Decimal | None = None,
    ) -> BudgetView:
        parsed = Scope.parse(scope)
        limit = to_micros(limit_usd, "limit_usd")
        approval_above = None if approval_above_usd is None else to_micros(approval_above_usd, "approval_above_usd")
        chosen = check_thresholds(tuple(thresholds) if thresholds is not None else DEFAULT_THRESHOLDS)
        if parsed.kind == "profile":
            if not self._profiles.has_name(parsed.name):
                await self._profiles.refresh()  # registered on another replica a moment ago?
            self._profiles.resolve(parsed.name)  # a typo is invalid_input, not a budget nobody is under
        return await self._db.write(self._set_tx, principal, parsed, limit, period, chosen, enforcement, approval_above)

    def _set_tx(
        self,
        conn: Connection,
        principal: Principal,
        scope: Scope,
        limit: int,
        period: Period,
        thresholds: tuple[Threshold, ...],
        enforcement: Enforcement,
        approval_above: int | None,
    ) -> BudgetView:
        now = self._clock.now_us()
        self._authorize_set(conn, principal, scope)
        hold_off_charges(conn, exclusive=True)
        existing = conn.execute(select(budgets).where(budgets.c.scope == str(scope))).first()
        values: dict[str, Any] = {
            "limit_micros": limit,
            "period": period.value,
            "enforcement": enforcement.value,
            "thresholds": [t.model_dump(mode="json") for t in thresholds],
            "approval_above_micros": approval_above,
            "updated_at": now,
        }
        if existing is None or existing.period != period.value or existing.period_start < period.start(now):
            # Spend already recorded in the scope this period counts: a budget set at noon knows the morning.
            values.update(period_start=period.start(now), spent_micros=self._spent_since(conn, str(scope), period, now))
        if existing is None:  # no race: budget_set runs alone (the exclusive charge lock, or SQLite's)
            budget_id = new_id(BUDGET)
            conn.execute(
                budgets.insert().values(
                    id=budget_id, scope=str(scope), reserved_micros=0, created_by=principal.id, created_at=now, **values
                )
            )
        else:
            budget_id = existing.id
            conn.execute(update(budgets).where(budgets.c.id == budget_id).values(**values))
        row = conn.execute(select(budgets).where(budgets.c.id == budget_id)).one()
        committed = fresh_spent(row, now) + row.reserved_micros
        record_crossings(conn, row, committed, now)
        audit.record(
            conn,
            now,
            principal,
            "budget.set",
            budget_id,
            {"scope": str(scope), "limit_usd": str(usd(limit)), "period": period.value, "enforcement": enforcement},
            before=existing,
            after=row,
        )
        return budget_view(row, now, self._crossed(conn, row, now))

    def _authorize_set(self, conn: Connection, principal: Principal, scope: Scope) -> None:
        exists = select(agents.c.id).where(agents.c.id == scope.name)
        if scope.kind == "agent" and conn.execute(exists).first() is None:
            raise NotFound(f"no agent {scope.name}")
        if principal.is_admin:
            return
        if scope.kind != "agent" or scope.name not in descendants(conn, principal.id):
            raise PermissionDenied(
                "an agent may set budgets only for its own descendants (agent:<child id>); ask the admin for others"
            )

    def _spent_since(self, conn: Connection, scope: str, period: Period, now: int) -> int:
        params = {"since": period.start(now), "needle": json.dumps([scope])}
        return int(conn.execute(self._spend_since, params).scalar_one())

    @staticmethod
    def _period_events(conn: Connection, row: Row[Any], now: int) -> list[Row[Any]]:
        prefix = f"{row.id}:{Period(row.period).start(now)}:"  # the dedupe key names the period
        return list(
            conn.execute(
                select(events)
                .where(
                    events.c.subject == row.id,
                    events.c.kind == "budget.threshold",
                    events.c.dedupe_key.startswith(prefix, autoescape=True),
                )
                .order_by(events.c.id)
            )
        )

    def _crossed(self, conn: Connection, row: Row[Any], now: int) -> set[int]:
        return {int(e.detail["percent"]) for e in self._period_events(conn, row, now)}

    # -- budget_status -------------------------------------------------------------------------
    async def status(self, principal: Principal, scope: str | None = None) -> BudgetReports:
        parsed = Scope.parse(scope) if scope is not None else None
        return await self._db.read(self._status_tx, principal, parsed)

    def _status_tx(self, conn: Connection, principal: Principal, scope: Scope | None) -> BudgetReports:
        now = self._clock.now_us()
        visible = None if principal.sees_all else self._visible_scopes(conn, principal)
        query = select(budgets).order_by(budgets.c.scope)
        if scope is not None:
            query = query.where(budgets.c.scope == str(scope))
        rows = [r for r in conn.execute(query) if visible is None or r.scope in visible]
        if scope is not None and not rows:
            raise NotFound(f"no budget for {scope}" + ("" if visible is None else " that applies to you"))
        return BudgetReports(budgets=[self._report(conn, row, now) for row in rows])

    def _visible_scopes(self, conn: Connection, principal: Principal) -> set[str]:
        """An agent sees the budgets it spends under and those of its descendants."""
        spender = self._spender(conn, principal)
        return {*scopes_of(conn, spender), *(f"agent:{d}" for d in descendants(conn, principal.id))}

    def _report(self, conn: Connection, row: Row[Any], now: int) -> BudgetReport:
        period_events = self._period_events(conn, row, now)
        view = budget_view(row, now, {int(e.detail["percent"]) for e in period_events})
        needle = json.dumps([row.scope])
        last_hour = int(conn.execute(self._spend_since, {"since": now - _HOUR, "needle": needle}).scalar_one())
        last_day = int(conn.execute(self._spend_since, {"since": now - _DAY, "needle": needle}).scalar_one())
        burn = last_hour if last_hour else last_day // 24  # micro-dollars per hour
        left = row.limit_micros - fresh_spent(row, now) - row.reserved_micros
        forecast = None
        if left <= 0:
            forecast = now
        elif burn > 0:
            forecast = now + left * _HOUR // burn
        since = Period(row.period).start(now)
        breakdown = {
            name: {str(k): str(usd(int(v))) for k, v in conn.execute(query, {"since": since, "needle": needle})}
            for name, query in self._breakdowns.items()
        }
        return BudgetReport(
            budget=view,
            spent_last_hour_usd=str(usd(last_hour)),
            spent_last_day_usd=str(usd(last_day)),
            burn_usd_per_hour=str(usd(burn)),
            forecast_exhausted_at=to_iso(forecast),
            by_agent=breakdown["agent"],
            by_model=breakdown["model"],
            by_task_type=breakdown["task_type"],
            events=[
                BudgetEvent(
                    id=e.id,
                    at=to_iso(e.at) or "",
                    percent=e.detail["percent"],
                    action=e.detail["action"],
                    committed_usd=e.detail["committed_usd"],
                )
                for e in period_events
            ],
        )

    # -- budget_reserve / budget_release ---------------------------------------------------------
    async def reserve(self, principal: Principal, amount_usd: Decimal, ttl_s: int, purpose: str | None) -> HoldView:
        amount = to_micros(amount_usd, "amount_usd")
        return await self._db.write(self._reserve_tx, principal, amount, ttl_s, purpose)

    def _reserve_tx(
        self, conn: Connection, principal: Principal, amount: int, ttl_s: int, purpose: str | None
    ) -> HoldView:
        now = self._clock.now_us()
        spender = self._spender(conn, principal)
        hold_id = new_id(HOLD)
        open_hold(
            conn,
            spender,
            amount,
            now,
            hold_id=hold_id,
            rows=applicable(conn, spender),
            purpose=purpose,
            expires_at=now + ttl_s * MICROS,
        )
        audit.record(conn, now, principal, "budget.reserve", hold_id, {"amount_usd": str(usd(amount))})
        return hold_view(conn, self._hold(conn, hold_id))

    async def release(self, principal: Principal, hold_id: str, actual_usd: Decimal | None = None) -> HoldView:
        actual = None if actual_usd is None else to_micros(actual_usd, "actual_usd")
        return await self._db.write(self._release_tx, principal, hold_id, actual)

    def _release_tx(self, conn: Connection, principal: Principal, hold_id: str, actual: int | None) -> HoldView:
        now = self._clock.now_us()
        hold_off_charges(conn, exclusive=False)  # before any budget row: budget_set takes them in that order
        hold = self._hold(conn, hold_id, for_update=True)
        if not (principal.is_admin or hold.holder == principal.id):
            raise PermissionDenied(f"hold {hold_id} is not yours")
        if hold.status == HoldStatus.SETTLED or (hold.status == HoldStatus.EXPIRED and actual is None):
            if actual is not None and actual != hold.spent_micros:
                raise Conflict(
                    f"hold {hold_id} was already {hold.status} with {usd(hold.spent_micros or 0)} USD spent; "
                    f"it cannot be settled again at {usd(actual)}"
                )
            return hold_view(conn, hold)  # the same call again answers the same
        if actual is not None and actual < hold.drawn_micros:
            raise InvalidInput(
                f"usage of {usd(hold.drawn_micros)} USD was already recorded against hold {hold_id}; "
                "actual_usd is the total spent under it and cannot be less"
            )
        spent = hold.drawn_micros if actual is None else actual
        extra = spent - hold.drawn_micros  # drawn usage is in the ledger already
        if hold.status == HoldStatus.HELD:
            close_hold(conn, hold_id, HoldStatus.SETTLED, now, spent)
        else:  # settled late, after it expired: the money it set aside already went back
            conn.execute(
                update(budget_holds)
                .where(budget_holds.c.id == hold_id)
                .values(status=HoldStatus.SETTLED.value, spent_micros=spent)
            )
        if extra > 0:
            self._charge(conn, principal, spender_of(conn, hold.holder), now, extra, hold_id=hold_id)
        audit.record(conn, now, principal, "budget.release", hold_id, {"spent_usd": str(usd(spent))})
        return hold_view(conn, self._hold(conn, hold_id))

    # -- usage_record --------------------------------------------------------------------------
    async def record_usage(
        self,
        principal: Principal,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        cost_usd: Decimal | None = None,
        task_id: str | None = None,
        hold_id: str | None = None,
    ) -> UsageReceipt:
        if principal.agent_id is None:
            raise InvalidInput("usage_record records an agent's spend: call it with the agent's own token")
        if cost_usd is not None:
            cost, priced_by = to_micros(cost_usd, "cost_usd"), "caller"
        else:
            exact = self._prices.cost(model, input_tokens, output_tokens, cached_input_tokens)
            cost, priced_by = cost_to_micros(exact), "price_table"
        tokens = (input_tokens, output_tokens, cached_input_tokens)
        receipt = await self._db.write(self._usage_tx, principal, model, tokens, cost, priced_by, task_id, hold_id)
        profile = None if principal.profile is None else principal.profile.partition("@")[0]  # name, not version
        self._instruments.spent(model, profile, usd(cost))
        return receipt

    def _usage_tx(
        self,
        conn: Connection,
        principal: Principal,
        model: str,
        tokens: tuple[int, int, int],
        cost: int,
        priced_by: str,
        task_id: str | None,
        hold_id: str | None,
    ) -> UsageReceipt:
        now = self._clock.now_us()
        hold_off_charges(conn, exclusive=False)  # before any budget row: budget_set takes them in that order
        task_type = self._task_type(conn, principal, task_id) if task_id is not None else None
        hold = self._hold_to_draw(conn, principal, task_id, hold_id)
        drawn = 0
        if hold is not None:
            drawn = min(cost, hold.amount_micros - hold.drawn_micros)
            conn.execute(_DRAW, {"b_hold": hold.id, "b_draw": drawn})
        spender = self._spender(conn, principal)
        usage_id, rows = self._charge(
            conn,
            principal,
            spender,
            now,
            cost,
            model=model,
            tokens=tokens,
            priced_by=priced_by,
            task=(task_id, task_type),
            hold_id=None if hold is None else hold.id,
            unreserve={b: drawn for b in hold.budget_ids} if hold is not None else {},
        )
        audit.record(conn, now, principal, "usage.record", usage_id, {"cost_usd": str(usd(cost)), "model": model})
        return UsageReceipt(
            id=usage_id,
            model=model,
            cost_usd=str(usd(cost)),
            priced_by=priced_by,
            task_id=task_id,
            hold_id=None if hold is None else hold.id,
            drawn_from_hold_usd=str(usd(drawn)),
            budgets=[budget_summary(r, now) for r in rows],
        )

    def _charge(
        self,
        conn: Connection,
        reporter: Principal,
        spender: Spender,
        now: int,
        cost: int,
        *,
        model: str | None = None,
        tokens: tuple[int, int, int] = (0, 0, 0),
        priced_by: str = "settlement",
        task: tuple[str | None, str | None] = (None, None),
        hold_id: str | None = None,
        unreserve: dict[str, int] | None = None,
    ) -> tuple[str, list[Row[Any]]]:
        """Write one ledger row and add its cost to every budget the spender is under. The caller
        holds off budget_set first (hold_off_charges)."""
        usage_id = new_id(USAGE)
        rows = applicable(conn, spender)
        stale = frozenset(r.id for r in rows if is_stale(r, now))
        overspent = move(conn, {r.id: cost for r in rows}, unreserve or {}, now, stale)
        # Written after the budgets moved, so the (immutable) ledger row says whether it overspent.
        conn.execute(
            usage.insert().values(
                id=usage_id,
                at=now,
                agent_id=spender.agent_id,
                task_id=task[0],
                task_type=task[1],
                hold_id=hold_id,
                model=model,
                input_tokens=tokens[0],
                output_tokens=tokens[1],
                cached_input_tokens=tokens[2],
                cost_micros=cost,
                priced_by=priced_by,
                scopes=scopes_of(conn, spender),
                over_limit=bool(overspent),
            )
        )
        if overspent:
            self._audit_overspend(conn, reporter, usage_id, overspent, now)
        return usage_id, list(conn.execute(select(budgets).where(budgets.c.id.in_([r.id for r in rows]))))

    @staticmethod
    def _audit_overspend(
        conn: Connection, reporter: Principal, usage_id: str, overspent: list[Row[Any]], now: int
    ) -> None:
        """Recorded, because the money was spent; flagged on its ledger row and in the audit trail."""
        detail = {
            "usage_id": usage_id,
            "budgets": [
                {"scope": r.scope, "spent_usd": str(usd(r.spent_micros)), "limit_usd": str(usd(r.limit_micros))}
                for r in overspent
            ],
        }
        audit.record(conn, now, reporter, "budget.overspent", overspent[0].id, detail)

    # -- holds expire ----------------------------------------------------------------------------
    async def sweep(self) -> int:
        """Expire holds whose TTL ran out; their unspent money goes back. Safe on every replica."""
        if not await self._db.read(self._anything_expired_tx):
            return 0
        return await self._db.write(self._sweep_tx)

    def _anything_expired_tx(self, conn: Connection) -> bool:
        return (
            conn.execute(_EXPIRED.with_only_columns(budget_holds.c.id), {"now": self._clock.now_us()}).first()
            is not None
        )

    def _sweep_tx(self, conn: Connection) -> int:
        now = self._clock.now_us()
        ended = 0
        query = _EXPIRED.with_for_update(skip_locked=True) if self._db.dialect == "postgresql" else _EXPIRED
        for hold in conn.execute(query, {"now": now}).all():
            if close_hold(conn, hold.id, HoldStatus.EXPIRED, now):
                audit.record(conn, now, REAPER, "budget.hold_expired", hold.id, {"holder": hold.holder})
                ended += 1
        return ended

    # -- internals -----------------------------------------------------------------------------
    @staticmethod
    def _hold(conn: Connection, hold_id: str, for_update: bool = False) -> Row[Any]:
        """for_update: concurrent draws, settlements and expiry of one hold take turns (PostgreSQL)."""
        query = select(budget_holds).where(budget_holds.c.id == hold_id)
        row = conn.execute(query.with_for_update() if for_update else query).first()
        if row is None:
            raise NotFound(f"no hold {hold_id}")
        return row

    @staticmethod
    def _spender(conn: Connection, principal: Principal) -> Spender:
        return spender_of(conn, principal.agent_id)

    @staticmethod
    def _task_type(conn: Connection, principal: Principal, task_id: str) -> str:
        row = conn.execute(select(tasks.c.type, tasks.c.agent_id).where(tasks.c.id == task_id)).first()
        if row is None:
            raise NotFound(f"no task {task_id}")
        if row.agent_id != principal.id:
            raise PermissionDenied(f"task {task_id} is not leased to you; record usage only for your own tasks")
        return row.type

    def _hold_to_draw(
        self, conn: Connection, principal: Principal, task_id: str | None, hold_id: str | None
    ) -> Row[Any] | None:
        """The hold a usage draws from: the one named, else the task's current dispatch hold."""
        if hold_id is not None:
            hold = self._hold(conn, hold_id, for_update=True)
            if hold.holder != principal.id:
                raise PermissionDenied(f"hold {hold_id} is not yours; draw only from your own holds")
            if hold.status != HoldStatus.HELD:
                raise Conflict(f"hold {hold_id} is {hold.status}; record the usage without hold_id")
            return hold
        if task_id is None:
            return None
        return conn.execute(
            select(budget_holds)
            .where(
                budget_holds.c.task_id == task_id,
                budget_holds.c.holder == principal.id,
                budget_holds.c.status == HoldStatus.HELD.value,
            )
            .with_for_update()
        ).first()
