"""Budget arithmetic inside the caller's transaction, shared by the budget, lease and agent services.

Every change to a budget's counters is one conditional UPDATE of that budget's row, taken in id
order. On PostgreSQL the UPDATE waits for a concurrent writer of the row and re-checks its WHERE
clause against the committed row, so a reservation either fits under the limit as it stands at
commit or changes nothing; a failure raises and the whole transaction, including the other
budgets' updates, rolls back. SQLite runs write transactions one at a time. Either way 100
concurrent reservers on two replicas cannot take a hard budget past its limit.

The UPDATEs also roll a daily or monthly budget into its current period: `spent` of a period
that has ended reads as 0, and the row moves to the new period start.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, Connection, Integer, Row, bindparam, select, text, update

from server.domain.budget import (
    GLOBAL,
    Enforcement,
    HoldStatus,
    Period,
    agent_scopes,
    block_percent,
    committed_percent,
)
from server.domain.money import usd
from server.errors import BudgetExceeded
from server.ids import EVENT, HOLD, new_id
from server.services.events.log import note_once
from server.store.tables import agents, budget_holds, budgets

_PG_CHARGE_LOCK = 0x61666264  # shared by charges, exclusive for budget_set (see `hold_off_charges`)
_CURRENT = "CASE period WHEN 'daily' THEN :day WHEN 'monthly' THEN :month ELSE 0 END"
_FRESH_SPENT = f"(CASE WHEN period_start < {_CURRENT} THEN 0 ELSE spent_micros END)"
_ROLL = f"period_start = CASE WHEN period_start < {_CURRENT} THEN {_CURRENT} ELSE period_start END"
_RETURNED = (
    "id",
    "scope",
    "limit_micros",
    "spent_micros",
    "reserved_micros",
    "period_start",
    "thresholds",
    "enforcement",
)
_RETURNING = " RETURNING " + ", ".join(_RETURNED)
_TYPED = [budgets.c[name] for name in _RETURNED]  # so JSON comes back decoded
_FITS = f"(enforcement = 'soft' OR {_FRESH_SPENT} + reserved_micros + :amount <= limit_micros)"
# Dispatch and spawn also stop at the lowest `block` threshold (passed as :block, in percent).
_NOT_BLOCKED = f"(enforcement = 'soft' OR ({_FRESH_SPENT} + reserved_micros) * 100 < :block * limit_micros)"
_PARAMS = (
    bindparam("day", type_=BigInteger),
    bindparam("month", type_=BigInteger),
    bindparam("amount", type_=BigInteger),
    bindparam("now", type_=BigInteger),
)
_RESERVE = (
    text(
        f"UPDATE orch_budgets SET spent_micros = {_FRESH_SPENT}, {_ROLL}, reserved_micros = reserved_micros + :amount, "
        f"updated_at = :now WHERE id = :id AND {_FITS}" + _RETURNING
    )
    .bindparams(*_PARAMS)
    .columns(*_TYPED)
)
_RESERVE_UNBLOCKED = (
    text(
        f"UPDATE orch_budgets SET spent_micros = {_FRESH_SPENT}, {_ROLL}, reserved_micros = reserved_micros + :amount, "
        f"updated_at = :now WHERE id = :id AND {_FITS} AND {_NOT_BLOCKED}" + _RETURNING
    )
    .bindparams(*_PARAMS, bindparam("block", type_=Integer))
    .columns(*_TYPED)
)
# Spend lands in the current period; money a hold set aside leaves `reserved` whatever the period.
_MOVE = (
    text(
        f"UPDATE orch_budgets SET spent_micros = {_FRESH_SPENT} + :amount, {_ROLL}, "
        "reserved_micros = reserved_micros - :unreserve, updated_at = :now WHERE id = :id" + _RETURNING
    )
    .bindparams(*_PARAMS, bindparam("unreserve", type_=BigInteger))
    .columns(*_TYPED)
)
_LINEAGE = (
    "WITH RECURSIVE lineage(id, parent_id, n) AS ("
    "SELECT id, parent_id, 0 FROM orch_agents WHERE id = :agent "
    "UNION ALL SELECT a.id, a.parent_id, l.n + 1 FROM orch_agents a JOIN lineage l ON a.id = l.parent_id "
    "WHERE l.n < 64) "
)
_ANCESTRY = text(_LINEAGE + "SELECT id FROM lineage ORDER BY n")
_BY_SCOPES = select(budgets).where(budgets.c.scope.in_(bindparam("scopes", expanding=True))).order_by(budgets.c.id)
_BY_SCOPES_AND_LINEAGE = (
    text(
        _LINEAGE + f"SELECT {', '.join(c.name for c in budgets.c)} FROM orch_budgets WHERE scope IN :scopes "
        "OR scope IN (SELECT 'agent:' || id FROM lineage) ORDER BY id"
    )
    .bindparams(bindparam("scopes", expanding=True))
    .columns(*budgets.c)
)
_HOLD_INSERT = budget_holds.insert()


@dataclass(frozen=True)
class Spender:
    """Whose money it is: an agent (with its place in the tree) or the admin (global only)."""

    agent_id: str | None
    parent_id: str | None = None
    profile: str = ""
    pools: tuple[str, ...] = ()

    @property
    def holder(self) -> str:
        return self.agent_id or "admin"

    @classmethod
    def of_agent(cls, row: Row[Any]) -> Spender:
        return cls(row.id, row.parent_id, row.profile, tuple(row.pools))


ADMIN_SPENDER = Spender(None)


def spender_of(conn: Connection, agent_id: str | None) -> Spender:
    """An agent's spender (its row read now), or the admin's for anyone else."""
    if agent_id is None:
        return ADMIN_SPENDER
    row = conn.execute(select(agents).where(agents.c.id == agent_id)).first()
    return ADMIN_SPENDER if row is None else Spender.of_agent(row)


def period_params(now: int) -> dict[str, int]:
    return {"day": Period.DAILY.start(now), "month": Period.MONTHLY.start(now), "now": now}


def is_stale(row: Any, now: int) -> bool:
    """Read in a period that has ended: the next write rolls it over."""
    return bool(row.period_start < Period(row.period).start(now))


def fresh_spent(row: Any, now: int) -> int:
    """A row's spend in the current period, even if no write has rolled it over yet."""
    return 0 if is_stale(row, now) else row.spent_micros


def is_overspent(row: Any, now: int) -> bool:
    """A hard budget whose recorded spend passed its limit: spend reported after the fact (usage
    beyond a hold, or without one) is recorded, because the money was spent, and blocks the scope."""
    return row.enforcement == Enforcement.HARD and fresh_spent(row, now) > row.limit_micros


def is_blocked(row: Any, now: int) -> bool:
    """A hard budget overspent, or at or past its lowest block threshold, takes no new dispatch or spawn."""
    if is_overspent(row, now):
        return True
    block = block_percent(row.thresholds)
    if row.enforcement != Enforcement.HARD or block is None:
        return False
    return (fresh_spent(row, now) + row.reserved_micros) * 100 >= block * row.limit_micros


def scopes_of(conn: Connection, spender: Spender) -> list[str]:
    """Every scope the spender's spend counts in (an agent's: its ancestors' too)."""
    if spender.agent_id is None:
        return [GLOBAL]
    lineage = [spender.agent_id]
    if spender.parent_id is not None:
        lineage = list(conn.execute(_ANCESTRY, {"agent": spender.agent_id}).scalars())
    return agent_scopes(lineage, spender.profile, list(spender.pools))


def applicable(conn: Connection, spender: Spender) -> list[Row[Any]]:
    """The budgets whose limits the spender's spend counts against, in id order (one statement)."""
    if spender.agent_id is None:
        return list(conn.execute(_BY_SCOPES, {"scopes": [GLOBAL]}))
    own = agent_scopes([spender.agent_id], spender.profile, list(spender.pools))
    if spender.parent_id is None:
        return list(conn.execute(_BY_SCOPES, {"scopes": own}))
    return list(conn.execute(_BY_SCOPES_AND_LINEAGE, {"scopes": own, "agent": spender.agent_id}))


def applicable_to_child(conn: Connection, parent_id: str | None, profile: str, pools: Sequence[str]) -> list[Row[Any]]:
    """The budgets a new agent would count against: its parent's lineage, its profile, its pools."""
    own = [GLOBAL, f"profile:{profile}", *(f"pool:{p}" for p in pools)]
    if parent_id is None:
        return list(conn.execute(_BY_SCOPES, {"scopes": own}))
    return list(conn.execute(_BY_SCOPES_AND_LINEAGE, {"scopes": own, "agent": parent_id}))


def refuse_if_blocked(rows: Iterable[Row[Any]], now: int, what: str) -> None:
    for row in rows:
        if is_overspent(row, now):
            raise BudgetExceeded(
                f"{what} refused: the {row.scope} budget is overspent ({usd(fresh_spent(row, now))} USD spent of "
                f"{usd(row.limit_micros)}, reported after the fact); raise the limit with budget_set or wait for "
                "the next period"
            )
        if is_blocked(row, now):
            percent = committed_percent(fresh_spent(row, now), row.reserved_micros, row.limit_micros)
            raise BudgetExceeded(
                f"{what} refused: the {row.scope} budget is at {percent:.1f}% of {usd(row.limit_micros)} USD "
                f"(its block threshold is {block_percent(row.thresholds)}%); raise the limit with budget_set "
                "or wait for the next period"
            )


def reserve(
    conn: Connection, rows: Sequence[Row[Any]], amount: int, now: int, *, stop_at_block: bool = False
) -> list[str]:
    """Add `amount` to every budget's reserved, all or nothing. Returns the budget ids."""
    params = {**period_params(now), "amount": amount}
    for row in rows:
        if stop_at_block and (block := block_percent(row.thresholds)) is not None:
            after = conn.execute(_RESERVE_UNBLOCKED, {**params, "id": row.id, "block": block}).first()
        else:
            after = conn.execute(_RESERVE, {**params, "id": row.id}).first()
        if after is None:
            _refuse(conn, row.id, amount, now, stop_at_block)
        record_crossings(conn, after, amount, now, rolled_over=is_stale(row, now))
    return [row.id for row in rows]


def _refuse(conn: Connection, budget_id: str, amount: int, now: int, stop_at_block: bool) -> None:
    row = conn.execute(select(budgets).where(budgets.c.id == budget_id)).one()
    if stop_at_block and is_blocked(row, now):
        refuse_if_blocked([row], now, "dispatch")
    committed = fresh_spent(row, now) + row.reserved_micros
    left = max(row.limit_micros - committed, 0)
    raise BudgetExceeded(
        f"the {row.scope} budget ({row.period}, hard) has {usd(left)} USD left of {usd(row.limit_micros)}; "
        f"{usd(amount)} USD does not fit. Nothing was reserved"
    )


def move(
    conn: Connection, spend: dict[str, int], unreserve: dict[str, int], now: int, stale: frozenset[str] = frozenset()
) -> list[Row[Any]]:
    """Add spend to some budgets and take money set aside off others (by budget id), in id order.
    `stale`: budgets read in an ended period, which this write rolls over. Returns the hard
    budgets this spend took past their limit."""
    params = period_params(now)
    overspent = []
    for budget_id in sorted(spend.keys() | unreserve.keys()):
        amount, back = spend.get(budget_id, 0), unreserve.get(budget_id, 0)
        if amount == 0 and back == 0:
            continue
        after = conn.execute(_MOVE, {**params, "id": budget_id, "amount": amount, "unreserve": back}).first()
        if after is not None and amount > back:
            record_crossings(conn, after, amount - back, now, rolled_over=budget_id in stale)
        if (
            after is not None
            and amount
            and after.enforcement == Enforcement.HARD
            and after.spent_micros > after.limit_micros
        ):
            overspent.append(after)
            _record_overspend(conn, after, now)
    return overspent


def _record_overspend(conn: Connection, after: Any, now: int) -> None:
    """One `budget.overspent` event per budget and period, for whoever watches the events."""
    note_once(
        conn,
        {
            "id": new_id(EVENT),
            "at": now,
            "kind": "budget.overspent",
            "subject": after.id,
            "detail": {
                "scope": after.scope,
                "spent_usd": str(usd(after.spent_micros)),
                "limit_usd": str(usd(after.limit_micros)),
            },
            "dedupe_key": f"{after.id}:{after.period_start}:overspent",
        },
        agent_id=_agent_of(after.scope),
    )


def _agent_of(scope: str) -> str | None:
    """The agent a budget scope names (`agent:<id>`), who may read its events."""
    return scope.partition(":")[2] if scope.startswith("agent:") else None


def hold_off_charges(conn: Connection, exclusive: bool) -> None:
    """PostgreSQL: a new budget sums past spend from the ledger, so it must not run beside a
    charge it would miss. Charges share the lock; budget_set takes it alone."""
    if conn.dialect.name == "postgresql":
        fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        conn.execute(text(f"SELECT {fn}(:key)"), {"key": _PG_CHARGE_LOCK})


def record_crossings(conn: Connection, after: Any, added: int, now: int, rolled_over: bool = False) -> None:
    """Each threshold crossed by adding `added`: one event per budget, period and threshold. A write
    that rolled the budget into a new period crosses, in that period, every threshold it is past
    (money still reserved from the last period may already stand above some)."""
    limit = after.limit_micros
    new = after.spent_micros + after.reserved_micros
    old = 0 if rolled_over else new - added
    for threshold in after.thresholds:
        percent = int(threshold["percent"])
        if old * 100 < percent * limit <= new * 100:
            note_once(
                conn,
                {
                    "id": new_id(EVENT),
                    "at": now,
                    "kind": "budget.threshold",
                    "subject": after.id,
                    "detail": {
                        "scope": after.scope,
                        "percent": percent,
                        "action": threshold["action"],
                        "enforcement": after.enforcement,
                        "committed_usd": str(usd(new)),
                        "limit_usd": str(usd(limit)),
                    },
                    "dedupe_key": f"{after.id}:{after.period_start}:{percent}",
                },
                agent_id=_agent_of(after.scope),
            )


def open_hold(
    conn: Connection,
    spender: Spender,
    amount: int,
    now: int,
    *,
    hold_id: str,
    rows: Sequence[Row[Any]],
    task_id: str | None = None,
    purpose: str | None = None,
    expires_at: int | None = None,
    stop_at_block: bool = False,
) -> None:
    budget_ids = reserve(conn, rows, amount, now, stop_at_block=stop_at_block)
    conn.execute(
        _HOLD_INSERT,
        {
            "id": hold_id,
            "holder": spender.holder,
            "task_id": task_id,
            "purpose": purpose,
            "amount_micros": amount,
            "drawn_micros": 0,
            "spent_micros": None,
            "status": HoldStatus.HELD.value,
            "budget_ids": budget_ids,
            "created_at": now,
            "expires_at": expires_at,
            "ended_at": None,
        },
    )


def close_hold(conn: Connection, hold_id: str, status: HoldStatus, now: int, spent: int | None = None) -> bool:
    """End a held hold, recording what was spent under it (default: what usage drew from it);
    what it set aside and nobody drew leaves `reserved`. Works from the row as the UPDATE finds
    it, so a draw committed meanwhile is counted. False if it had already ended."""
    ended = conn.execute(
        update(budget_holds)
        .where(budget_holds.c.id == hold_id, budget_holds.c.status == HoldStatus.HELD.value)
        .values(
            status=status.value,
            ended_at=now,
            spent_micros=budget_holds.c.drawn_micros if spent is None else spent,
        )
        .returning(budget_holds.c.amount_micros, budget_holds.c.drawn_micros, budget_holds.c.budget_ids)
    ).first()
    if ended is None:
        return False
    left = ended.amount_micros - ended.drawn_micros
    move(conn, {}, {b: left for b in ended.budget_ids}, now)
    return True


def release_holds_of(conn: Connection, holders: list[str], now: int) -> None:
    """Agents that are gone spend nothing more: their open holds settle at what they drew."""
    if not holders:
        return
    found = conn.execute(
        select(budget_holds.c.id).where(
            budget_holds.c.holder.in_(holders), budget_holds.c.status == HoldStatus.HELD.value
        )
    ).scalars()
    for hold_id in sorted(found):
        close_hold(conn, hold_id, HoldStatus.SETTLED, now)


# -- task dispatch ------------------------------------------------------------------------------
_TASK_HOLD = select(budget_holds.c.id).where(
    budget_holds.c.task_id == bindparam("task"), budget_holds.c.status == HoldStatus.HELD.value
)


def hold_for_dispatch(conn: Connection, agent: Row[Any], task_id: str, estimate: int | None, now: int) -> None:
    """A claim: refuse if a hard budget over the agent is at its block threshold; otherwise set
    the task's estimated cost aside for this attempt (all or nothing)."""
    spender = Spender.of_agent(agent)
    rows = applicable(conn, spender)
    if not rows:
        return
    if not estimate:
        refuse_if_blocked(rows, now, "dispatch")
        return
    open_hold(conn, spender, estimate, now, hold_id=new_id(HOLD), rows=rows, task_id=task_id, stop_at_block=True)


def settle_task_hold(conn: Connection, task_id: str, now: int) -> None:
    """The attempt ended: its hold keeps what usage_record drew from it and returns the rest."""
    hold_id = conn.execute(_TASK_HOLD, {"task": task_id}).scalar()
    if hold_id is not None:
        close_hold(conn, hold_id, HoldStatus.SETTLED, now)
