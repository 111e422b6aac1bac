"""Reservation storms: many agents call budget_reserve at once against hard budgets, and the
money granted never exceeds any limit, and fills it exactly when the demand allows.

Each storm releases its reservers together (a start gate), so ~100 `budget_reserve` calls are in
flight at once. What every storm checks, from the clients' side and independently in the store:

- every call either returned a hold or failed with `budget_exceeded` (nothing else: no deadlock,
  no `unavailable`), and every refusal names a budget that applies to the caller;
- no hard budget's spent + reserved is over its limit (budget_status and the row itself);
- each budget's `reserved_micros` is the sum of what the open holds counting in it set aside, and
  that sum matches the holds the clients were granted (a refused reservation left no trace: no
  hold row, no money in any budget);
- with no release during a storm, every refusal is justified at the end: the budget it names has
  less left than the amount refused (committed money only grows, so it had less left when it
  refused). With one amount everywhere that makes the fill exact, and the total granted is the
  most the budgets could give: min(global units, sum over agents of min(requests, agent units)).

In-process on SQLite and PostgreSQL (one server, MCP in memory), and over HTTP on two
`agentfleet serve` replicas sharing one PostgreSQL store, where releases and reservations also
race each other and a monitor reads the global budget throughout.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from mcp import Client
from sqlalchemy import Connection, create_engine, select

from server.store.tables import budget_holds, budgets, usage
from tests.conftest import REPLICA_TEST, TEST_PROFILES
from tests.helpers import ToolFailed, call

if TYPE_CHECKING:
    from server.services.container import Services
    from tests.serving import ServeFactory

pytest_plugins = ["tests.serving"]

LIMIT = Decimal("10.00")
STEP = Decimal("0.25")
AGENTS = 20
PER_AGENT = 5  # concurrent reservations per agent: 100 reservers in a storm
# Every in-process client builds its own MCP server (~0.25 s of CPU): the storms that need fewer
# distinct agents use 10 agents with 10 reservations in flight each, still 100 reservers.
FEW_AGENTS, PER_FEW = 10, 10
TIGHT = Decimal("0.50")  # every fourth agent's own budget: 2 of its 5 requests fit
ROOMY = Decimal("1.00")  # the others': 4 of 5 fit; together 70 grants wanted against 40 global
TTL_S = 3600  # far beyond the test: no hold expires, so the sweep never returns money mid-storm
REFUSED_SCOPE = re.compile(r"^budget_exceeded: the (\S+) budget \(")
STORM_DEADLINE_S = 45


def micros(amount: Decimal | str) -> int:
    return int(Decimal(amount) * 1_000_000)


@dataclass
class Reserver:
    """One agent as a storm sees it: its token's client and the scopes its spend counts in."""

    id: str
    token: str
    scopes: set[str]
    client: Client | None = None


@dataclass
class Outcome:
    agent: Reserver
    amount: Decimal
    hold: dict[str, Any] | None = None
    refusal: ToolFailed | None = None
    granted_at: float = 0.0  # client monotonic time the grant returned
    released_at: float | None = None  # when its release was sent
    settled_at: float | None = None  # when its release returned
    spent: Decimal = Decimal(0)  # actual_usd given at release

    @property
    def refused_scope(self) -> str:
        assert self.refusal is not None
        found = REFUSED_SCOPE.match(self.refusal.text)
        assert found, f"a refusal that names no budget: {self.refusal.text}"
        return found.group(1)


@dataclass
class Storm:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def granted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.hold is not None]

    @property
    def refused(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.refusal is not None]

    def total(self) -> Decimal:
        return sum((o.amount for o in self.granted), Decimal(0))


async def reserve_once(outcome: Outcome, gate: anyio.Event) -> None:
    assert outcome.agent.client is not None
    await gate.wait()
    result = await outcome.agent.client.call_tool(
        "budget_reserve", {"amount_usd": str(outcome.amount), "ttl_s": TTL_S, "purpose": "storm"}
    )
    if result.is_error:
        outcome.refusal = ToolFailed("budget_reserve", result.content[0].text)
        return
    outcome.granted_at = time.monotonic()
    outcome.hold = result.structured_content


Job = Callable[[anyio.Event], Awaitable[None]]


async def storm(plan: Sequence[tuple[Reserver, Decimal]], *extra: Job, watch: Job | None = None) -> Storm:
    """Every (reserver, amount) in `plan` calls budget_reserve once, all let go by one gate;
    `extra` jobs (releases) start behind the same gate; `watch` runs until the rest are done."""
    result = Storm([Outcome(agent, amount) for agent, amount in plan])
    gate = anyio.Event()
    with anyio.fail_after(STORM_DEADLINE_S):
        async with anyio.create_task_group() as outer:
            if watch is not None:
                outer.start_soon(watch, gate)
            async with anyio.create_task_group() as group:
                for outcome in result.outcomes:
                    group.start_soon(reserve_once, outcome, gate)
                for job in extra:
                    group.start_soon(job, gate)
                await anyio.sleep(0.05)  # every reserver parked on the gate
                gate.set()
            outer.cancel_scope.cancel()
    assert result.outcomes, "an empty storm"
    codes = Counter(o.refusal.code for o in result.refused)
    assert set(codes) <= {"budget_exceeded"}, (
        f"reservations failed otherwise than budget_exceeded: {codes}\n"
        + "\n".join(o.refusal.text for o in result.refused if o.refusal.code != "budget_exceeded")
    )
    for o in result.refused:
        assert o.refused_scope in o.agent.scopes, f"{o.agent.id} was refused by a budget not over it: {o.refusal.text}"
    for o in result.granted:
        assert o.hold is not None
        assert o.hold["status"] == "held" and o.hold["holder"] == o.agent.id, o.hold
        assert Decimal(o.hold["amount_usd"]) == o.amount, o.hold
    return result


# -- the store, read independently -----------------------------------------------------------------


@dataclass(frozen=True)
class BudgetRow:
    scope: str
    limit: int
    spent: int
    reserved: int
    enforcement: str

    @property
    def committed(self) -> int:
        return self.spent + self.reserved

    @property
    def left(self) -> int:
        return self.limit - self.committed


@dataclass(frozen=True)
class Ledger:
    budgets: dict[str, BudgetRow]  # by scope
    held: dict[str, int]  # open hold id -> amount it still sets aside
    held_by_scope: dict[str, int]  # scope -> sum of open holds counting in it (their budget_ids)
    spent_by_scope: dict[str, int]  # scope -> sum of the usage ledger's costs counting in it


def read_ledger(conn: Connection) -> Ledger:
    rows = list(conn.execute(select(budgets)))
    scope_of = {r.id: r.scope for r in rows}
    held: dict[str, int] = {}
    held_by_scope: Counter[str] = Counter()
    for hold in conn.execute(select(budget_holds).where(budget_holds.c.status == "held")):
        held[hold.id] = hold.amount_micros - hold.drawn_micros
        for budget_id in hold.budget_ids:
            held_by_scope[scope_of[budget_id]] += hold.amount_micros - hold.drawn_micros
    spent_by_scope: Counter[str] = Counter()
    for cost, scopes in conn.execute(select(usage.c.cost_micros, usage.c.scopes)):
        for scope in scopes:
            spent_by_scope[scope] += cost
    return Ledger(
        budgets={
            r.scope: BudgetRow(r.scope, r.limit_micros, r.spent_micros, r.reserved_micros, r.enforcement) for r in rows
        },
        held=held,
        held_by_scope=dict(held_by_scope),
        spent_by_scope=dict(spent_by_scope),
    )


def assert_books_balance(ledger: Ledger, open_holds: dict[str, Outcome], reservers: Sequence[Reserver]) -> None:
    """The store against itself and against what the clients were granted and spent."""
    unknown, missing = set(ledger.held) - set(open_holds), set(open_holds) - set(ledger.held)
    assert not unknown and not missing, (
        f"open holds in the store: {len(ledger.held)}, granted and not released: {len(open_holds)}; "
        f"holds nobody was granted {sorted(unknown)[:5]}, granted holds not in the store {sorted(missing)[:5]}"
    )
    for row in ledger.budgets.values():
        assert row.enforcement == "hard"
        assert row.committed <= row.limit, f"{row.scope} is over its limit: {row}"
        held, spent = ledger.held_by_scope.get(row.scope, 0), ledger.spent_by_scope.get(row.scope, 0)
        assert row.reserved == held, f"{row.scope}: reserved {row.reserved} but its open holds set aside {held}"
        assert row.spent == spent, f"{row.scope}: spent {row.spent} but the usage ledger says {spent}"
        # Independent of budget_ids: what the clients hold, by the scopes each agent is under.
        by_clients = sum(micros(o.amount) for o in open_holds.values() if row.scope in o.agent.scopes)
        assert row.reserved == by_clients, f"{row.scope}: reserved {row.reserved}, clients hold {by_clients}"
    for o in open_holds.values():
        assert set(o.hold["budgets"]) == o.agent.scopes & set(ledger.budgets), (o.hold, o.agent.scopes)
    assert {r.id for r in reservers} >= {o.agent.id for o in open_holds.values()}


def assert_refusals_justified(result: Storm, ledger: Ledger) -> None:
    """No release happened since the storm began: a budget's committed money only grew, so one
    that refused `a` has less than `a` left now."""
    for o in result.refused:
        row = ledger.budgets[o.refused_scope]
        assert row.left < micros(o.amount), (
            f"{o.agent.id} was refused {o.amount} by {row.scope}, which still has {Decimal(row.left) / 10**6} left"
        )


async def assert_status_matches(admin: Client, ledger: Ledger) -> None:
    reports = (await call(admin, "budget_status"))["budgets"]
    assert {r["budget"]["scope"] for r in reports} == set(ledger.budgets)
    for report in reports:
        view = report["budget"]
        row = ledger.budgets[view["scope"]]
        assert micros(view["reserved_usd"]) == row.reserved, view
        assert micros(view["spent_usd"]) == row.spent, view
        assert micros(view["remaining_usd"]) == row.left >= 0, view
        assert micros(view["spent_usd"]) + micros(view["reserved_usd"]) <= micros(view["limit_usd"]), view


def most_grantable(global_left: int, agent_left: dict[str, int], asks: Counter[str]) -> int:
    """Grants of STEP a storm can give under one global budget and disjoint per-agent budgets
    (each agent asking asks[a] times): whichever order they come in, it gives exactly this many."""
    wanted = sum(min(n, agent_left[a] // micros(STEP)) for a, n in asks.items())
    return min(global_left // micros(STEP), wanted)


# -- set-up ----------------------------------------------------------------------------------------


async def spawn(admin: Client, count: int, prefix: str, **extra: Any) -> list[Reserver]:
    spawned = []
    for i in range(count):
        got = await call(admin, "agent_spawn", profile="worker", name=f"{prefix}-{i}", **extra)
        spawned.append(Reserver(got["agent"]["id"], got["token"], {"global", f"agent:{got['agent']['id']}"}))
    return spawned


async def global_and_agent_budgets(admin: Client, reservers: list[Reserver]) -> dict[str, Decimal]:
    limits = {"global": LIMIT}
    await call(admin, "budget_set", scope="global", limit_usd=str(LIMIT))
    for i, r in enumerate(reservers):
        limits[f"agent:{r.id}"] = TIGHT if i % 4 == 0 else ROOMY
        await call(admin, "budget_set", scope=f"agent:{r.id}", limit_usd=str(limits[f"agent:{r.id}"]))
    return limits


def uniform_plan(reservers: Sequence[Reserver], per_agent: int = PER_AGENT) -> list[tuple[Reserver, Decimal]]:
    plan = [(r, STEP) for r in reservers for _ in range(per_agent)]
    random.shuffle(plan)
    return plan


@asynccontextmanager
async def sessions() -> AsyncIterator[AsyncExitStack]:
    """A stack for many client sessions. Each session wraps an exception raised inside it in an
    ExceptionGroup, and 20 of them nest it deeper than a traceback shows: the failure is raised
    as it was once they are all closed."""
    caught: Exception | None = None
    async with AsyncExitStack() as stack:
        try:
            yield stack
        except Exception as exc:  # noqa: BLE001 - raised again below
            caught = exc
    if caught is not None:
        raise caught


async def open_clients(stack: Any, reservers: Sequence[Reserver], opener: Callable[[Reserver], Any]) -> None:
    for r in reservers:
        r.client = await stack.enter_async_context(opener(r))


def check_uniform_storm(
    result: Storm, ledger: Ledger, before: Ledger, reservers: Sequence[Reserver], open_holds: dict[str, Outcome]
) -> None:
    """A storm of STEP-sized reservations with no release in it: exact fill of what could fit."""
    assert_books_balance(ledger, open_holds, reservers)
    assert_refusals_justified(result, ledger)
    asks = Counter(o.agent.id for o in result.outcomes)
    agent_left = {r.id: before.budgets[f"agent:{r.id}"].left for r in reservers}
    expected = most_grantable(before.budgets["global"].left, agent_left, asks)
    assert len(result.granted) == expected, (
        f"granted {len(result.granted)} of {len(result.outcomes)}, the budgets allowed exactly {expected}; "
        f"refused by {Counter(o.refused_scope.split(':')[0] for o in result.refused)}"
    )
    for r in reservers:
        mine = sum(1 for o in result.granted if o.agent is r)
        assert mine <= agent_left[r.id] // micros(STEP), f"{r.id} got {mine} grants"


# -- in-process, SQLite and PostgreSQL -------------------------------------------------------------

inprocess = pytest.mark.anyio


@inprocess
async def test_a_storm_of_100_reservers_fills_the_global_budget_exactly(connect, services: Services) -> None:
    async with sessions() as outer:
        admin = await outer.enter_async_context(connect())
        reservers = await spawn(admin, AGENTS, "storm")
        await global_and_agent_budgets(admin, reservers)
        before = await services.db.read(read_ledger)
        async with sessions() as stack:
            await open_clients(stack, reservers, lambda r: connect(r.token))
            started = time.monotonic()
            result = await storm(uniform_plan(reservers))
            took = time.monotonic() - started
        ledger = await services.db.read(read_ledger)
        open_holds = {o.hold["id"]: o for o in result.granted}
        check_uniform_storm(result, ledger, before, reservers, open_holds)
        # 25 USD asked of a 10 USD budget: all of it granted, to the micro-dollar.
        assert result.total() == LIMIT, result.total()
        assert ledger.budgets["global"].reserved == micros(LIMIT)
        assert len(result.refused) == AGENTS * PER_AGENT - int(LIMIT / STEP)
        await assert_status_matches(admin, ledger)
        status = (await call(admin, "budget_status", scope="global"))["budgets"][0]["budget"]
        assert (status["reserved_usd"], status["remaining_usd"]) == ("10.000000", "0.000000"), status
    print(f"\n{len(result.granted)} granted, {len(result.refused)} refused in {took:.2f} s")


@inprocess
async def test_mixed_amounts_never_pass_the_limit_and_leave_less_than_any_refused_amount(
    connect, services: Services
) -> None:
    """Amounts that cannot add up to the limit exactly: the gap left is smaller than every refusal
    (sound only because nothing is released during the storm)."""
    rng = random.Random()
    amounts = [Decimal(a) for a in ("0.07", "0.13", "0.29", "0.41", "0.55", "1.01", "1.37")]
    async with sessions() as outer:
        admin = await outer.enter_async_context(connect())
        reservers = await spawn(admin, FEW_AGENTS, "mixed")
        await call(admin, "budget_set", scope="global", limit_usd=str(LIMIT))
        async with sessions() as stack:
            await open_clients(stack, reservers, lambda r: connect(r.token))
            plan = [(r, rng.choice(amounts)) for r in reservers for _ in range(PER_FEW)]
            assert sum(a for _, a in plan) > 2 * LIMIT, "demand must exceed the limit"
            result = await storm(plan)
        ledger = await services.db.read(read_ledger)
        assert_books_balance(ledger, {o.hold["id"]: o for o in result.granted}, reservers)
        assert result.total() <= LIMIT
        assert micros(result.total()) == ledger.budgets["global"].committed
        assert result.refused, "nothing was refused: the storm never reached the limit"
        assert {o.refused_scope for o in result.refused} == {"global"}
        smallest_refused = min(o.amount for o in result.refused)
        assert LIMIT - result.total() < smallest_refused, (
            f"{LIMIT - result.total()} USD left, yet {smallest_refused} USD was refused: "
            f"{Counter(o.amount for o in result.refused)}"
        )
        assert_refusals_justified(result, ledger)
        await assert_status_matches(admin, ledger)


@inprocess
async def test_a_reservation_is_all_or_nothing_across_global_profile_pool_and_ancestor_budgets(
    connect, services: Services
) -> None:
    """Reservers in pool red, pool blue or both, children of two leads, under budgets for global,
    their profile, each pool and one lead: every grant counts in all of them, every refusal in none."""
    limits = {
        "global": Decimal("6.00"),
        "profile:worker": Decimal("7.00"),
        "pool:red": Decimal("3.50"),
        "pool:blue": Decimal("3.00"),
    }
    async with sessions() as outer:
        admin = await outer.enter_async_context(connect())
        leads = await spawn(admin, 2, "lead")
        reservers: list[Reserver] = []
        for i in range(FEW_AGENTS):
            pools = [["red"], ["blue"], ["red", "blue"], ["red"], ["blue"]][i % 5]
            lead = leads[i % 2]
            (r,) = await spawn(admin, 1, f"pooled-{i}", pools=pools, parent_id=lead.id)
            r.scopes |= {"profile:worker", f"agent:{lead.id}", *(f"pool:{p}" for p in pools)}
            reservers.append(r)
        limits[f"agent:{leads[0].id}"] = Decimal("2.50")
        for scope, limit in limits.items():
            await call(admin, "budget_set", scope=scope, limit_usd=str(limit))
        async with sessions() as stack:
            await open_clients(stack, reservers, lambda r: connect(r.token))
            result = await storm(uniform_plan(reservers, PER_FEW))
        ledger = await services.db.read(read_ledger)
        open_holds = {o.hold["id"]: o for o in result.granted}
        assert_books_balance(ledger, open_holds, reservers)
        assert set(ledger.budgets) == set(limits)
        for scope, limit in limits.items():
            assert ledger.budgets[scope].committed <= micros(limit), ledger.budgets[scope]
        # Refusals happened, each by a budget now exactly full (all amounts are multiples of STEP).
        assert result.refused, "nothing was refused"
        refusers = Counter(o.refused_scope for o in result.refused)
        for scope in refusers:
            assert ledger.budgets[scope].left == 0, (scope, ledger.budgets[scope], refusers)
        assert_refusals_justified(result, ledger)
        assert len(result.granted) >= 12, f"suspiciously few grants: {len(result.granted)}"
        await assert_status_matches(admin, ledger)
    print(f"\n{len(result.granted)} granted; refused by {dict(refusers)}")


# -- two PostgreSQL replicas over HTTP -------------------------------------------------------------

ENV = {"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES)}
ACTUAL = Decimal("0.10")  # what every other released hold reports as spent


def replica_test(fn: Callable[..., Any]) -> Callable[..., Any]:
    for mark in reversed(REPLICA_TEST):
        fn = mark(fn)
    return fn


def read_store(database_url: str) -> Ledger:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return read_ledger(conn)
    finally:
        engine.dispose()


def peak_seen_by_clients(outcomes: Sequence[Outcome]) -> Decimal:
    """The most money committed at once as the clients saw it: each hold from its grant's return
    to its release's sending, plus what settled releases had spent by the time they returned. The
    server held each hold at least that long and recorded each spend before answering, so this is
    never above what the store had committed at that instant."""
    peak = Decimal(0)
    instants = [o.granted_at for o in outcomes if o.hold] + [o.settled_at for o in outcomes if o.settled_at]
    for t in instants:
        held = sum(
            (
                o.amount
                for o in outcomes
                if o.hold and o.granted_at <= t and (o.released_at is None or t < o.released_at)
            ),
            Decimal(0),
        )
        spent = sum((o.spent for o in outcomes if o.settled_at is not None and o.settled_at <= t), Decimal(0))
        peak = max(peak, held + spent)
    return peak


@replica_test
async def test_100_reservers_on_two_replicas_never_overspend(
    database_url: str, serve: ServeFactory, tmp_path: Path
) -> None:
    from tests.test_lock_replicas import two_replicas

    a, b = two_replicas(serve, database_url, tmp_path, ENV)
    started = time.monotonic()
    async with sessions() as stack:
        admin = await stack.enter_async_context(a.mcp())
        watcher = await stack.enter_async_context(b.mcp())
        reservers = await spawn(admin, AGENTS, "replica")
        await global_and_agent_budgets(watcher, reservers)  # set on B, spawned on A
        home = {r.id: (a, b)[i % 2] for i, r in enumerate(reservers)}
        away = {r.id: (b, a)[i % 2] for i, r in enumerate(reservers)}
        await open_clients(stack, reservers, lambda r: home[r.id].mcp(r.token))
        away_clients = {r.id: await stack.enter_async_context(away[r.id].mcp(r.token)) for r in reservers}

        # 1. 100 reservers, 50 per replica: exactly 40 of the 0.25 USD asks fit the 10 USD budget.
        before = await anyio.to_thread.run_sync(read_store, database_url)
        first = await storm(uniform_plan(reservers))
        ledger = await anyio.to_thread.run_sync(read_store, database_url)
        open_holds = {o.hold["id"]: o for o in first.granted}
        check_uniform_storm(first, ledger, before, reservers, open_holds)
        assert first.total() == LIMIT, first.total()
        assert {home[o.agent.id].name for o in first.granted} == {a.name, b.name}, "grants came through one replica"
        assert {home[o.agent.id].name for o in first.refused} == {a.name, b.name}, "refusals came from one replica"
        await assert_status_matches(watcher, ledger)

        # 2. Half the holds are released through the other replica (every other one reporting
        # 0.10 USD spent) while 100 more reservers storm, and B's admin reads the budget throughout.
        to_release = random.sample(first.granted, len(first.granted) // 2)
        reads: list[tuple[int, int]] = []
        gate_open = anyio.Event()
        gate_open.set()

        async def release(o: Outcome, spent: Decimal, gate: anyio.Event) -> None:
            await gate.wait()
            o.released_at = time.monotonic()
            extra = {"actual_usd": str(spent)} if spent else {}
            settled = await call(away_clients[o.agent.id], "budget_release", hold_id=o.hold["id"], **extra)
            o.settled_at, o.spent = time.monotonic(), spent
            assert settled["status"] == "settled" and Decimal(settled["spent_usd"]) == spent, settled

        async def releaser(gate: anyio.Event) -> None:
            async with anyio.create_task_group() as group:
                for i, o in enumerate(to_release):
                    group.start_soon(release, o, ACTUAL if i % 2 else Decimal(0), gate)

        async def monitor(gate: anyio.Event) -> None:
            await gate.wait()
            while True:
                view = (await call(watcher, "budget_status", scope="global"))["budgets"][0]["budget"]
                reads.append((micros(view["spent_usd"]), micros(view["reserved_usd"])))
                assert sum(reads[-1]) <= micros(LIMIT), f"global over its limit mid-storm: {view}"
                await anyio.sleep(0.01)

        second = await storm(uniform_plan(reservers), releaser, watch=monitor)
        ledger = await anyio.to_thread.run_sync(read_store, database_url)
        open_holds = {o.hold["id"]: o for o in [*first.granted, *second.granted] if o.settled_at is None}
        assert_books_balance(ledger, open_holds, reservers)
        spent = ACTUAL * (len(to_release) // 2)
        assert ledger.budgets["global"].spent == micros(spent), ledger.budgets["global"]
        assert micros(first.total() - STEP * len(to_release) + second.total()) == ledger.budgets["global"].reserved
        assert second.granted and second.refused, "the second storm did not contend"
        assert len(reads) >= 2, f"the monitor read the budget only {len(reads)} times"
        peak = peak_seen_by_clients([*first.outcomes, *second.outcomes])
        assert peak <= LIMIT, f"clients saw {peak} USD committed at once against a {LIMIT} USD limit"
        await assert_status_matches(watcher, ledger)

        # 3. Every hold still open is released at once (every other one spending 0.10 USD), then a
        # last storm with nothing released during it fills what is left exactly again.
        still_open = list(open_holds.values())
        async with anyio.create_task_group() as group:
            for i, o in enumerate(still_open):
                group.start_soon(release, o, ACTUAL if i % 2 else Decimal(0), gate_open)
        ledger = await anyio.to_thread.run_sync(read_store, database_url)
        assert_books_balance(ledger, {}, reservers)
        spent += ACTUAL * (len(still_open) // 2)
        assert ledger.budgets["global"].committed == micros(spent), ledger.budgets["global"]
        before = ledger
        third = await storm(uniform_plan(reservers))
        ledger = await anyio.to_thread.run_sync(read_store, database_url)
        open_holds = {o.hold["id"]: o for o in third.granted}
        check_uniform_storm(third, ledger, before, reservers, open_holds)
        assert third.granted and third.refused, "the last storm did not contend"
        await assert_status_matches(watcher, ledger)
    print(
        f"\nstorms granted {len(first.granted)}, {len(second.granted)} (beside {len(to_release)} releases), "
        f"{len(still_open)} released, {len(third.granted)}; peak seen {peak} USD; {len(reads)} monitor reads; "
        f"{time.monotonic() - started:.1f} s"
    )
