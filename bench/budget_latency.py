"""Budget reservation latency, and how much of a hard budget concurrent reservers get.

    python bench/budget_latency.py [--store sqlite|postgresql] [--database-url postgresql://…]
                                   [--pairs 1000] [--warmup 100] [--calls 500] [--mcp-warmup 50]
                                   [--workers 16] [--cap-usd 2.00] [--cap-amount-usd 0.01]
                                   [--parts inproc,mcp,cap]

What runs:

- inproc: `build_services` as `agentfleet serve` does (temp data dir, profiles from tests/profiles),
  one agent of profile `worker` under two hard budgets (`global`, 1,000,000 USD, and its own
  `agent:<id>`, 1,000 USD), one coroutine, uvloop. Each pair is
  `services.budgets.reserve(agent, 0.01 USD, ttl_s=60)` then `services.budgets.release(agent,
  hold_id)`, each timed with perf_counter_ns. A few extra, untimed pairs run with a SQLAlchemy
  cursor listener attached to count statements and transactions per reserve and per release.
- mcp: the server child of bench/mcp_latency.py (the real app, uvicorn with uvloop + httptools, plus
  the empty tool `bench_noop`) on the same store. The admin spawns one agent (profile `default`)
  and sets the same two budgets; one mcp.Client with that agent's token runs rounds of
  bench_noop, budget_reserve, budget_release (the noop's place in the round rotates).
  `ratio_to_empty_call` is each tool's p50 over bench_noop's p50 in the same run.
- cap: --workers agents join a pool of their own whose hard budget is --cap-usd; each worker
  loops budget_reserve(--cap-amount-usd) until it is refused, never releasing. Reported: attempted,
  granted, refused (budget_exceeded) and other errors, granted_usd against limit_usd, the store's
  reserved for the pool afterwards, granted/attempted, and the reserve latency under that
  contention. With one amount that divides the limit, granted_usd must equal the limit exactly
  (`exact_fill`): less means a reservation was refused while money was left, more an overspend.
  Every worker stops at its first refusal, so attempted = granted + workers, and
  `refused_with_room_left` (refusals whose own message says the amount still fitted) stays 0.
  Runs in-process (`inproc`: asyncio tasks calling the service) and over MCP (`mcp`: one HTTP
  session per worker on the server child), unless --parts leaves one side out.

The store is a temporary SQLite file by default. `--store postgresql` without --database-url
creates a scratch database on --pg-server and drops it afterwards; a --database-url you give is not
emptied (budgets and holds pile up; each run uses its own pool and agents), so use a scratch one.

stdout carries exactly one JSON object; progress notes go to stderr. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_PG_SERVER,
    ToolFailed,
    call,
    exit_on_sigterm,
    load_average,
    machine,
    make_note,
    mcp_client,
    pg_scratch_database,
    store_kind,
    summarise_ns,
)
from lock_latency import (  # noqa: E402
    StatementCounter,
    drift,
    inproc_services,
    merge_counts,
    per_op,
    run_async,
    run_tag,
    spawn_principals,
    split_list,
)

note = make_note("budget_latency")

NOOP = "bench_noop"
PARTS = ("inproc", "mcp", "cap")
AMOUNT = Decimal("0.01")
GLOBAL_LIMIT = Decimal(1_000_000)  # never reached: the latency parts measure the path, not refusals
AGENT_LIMIT = Decimal(1_000)
TTL_S = 60
CAP_TTL_S = 3600  # no hold expires during a cap run
LEFT = re.compile(r"has (\d+\.\d+) USD left")


# -- in-process ------------------------------------------------------------------------------------


async def _set_budgets(services: Any, agent_id: str) -> None:
    from server.domain.principal import ADMIN

    await services.budgets.set(ADMIN, "global", GLOBAL_LIMIT)
    await services.budgets.set(ADMIN, f"agent:{agent_id}", AGENT_LIMIT)


async def _inproc(database_url: str | None, pairs: int, warmup: int, count_pairs: int) -> dict[str, Any]:
    async with inproc_services(database_url, "budget-latency") as services:
        (agent,) = await spawn_principals(services, 1)
        await _set_budgets(services, agent.id)
        clock = time.perf_counter_ns
        samples: dict[str, list[int]] = {"pair": [], "reserve": [], "release": []}

        async def one(record: bool) -> None:
            t0 = clock()
            hold = await services.budgets.reserve(agent, AMOUNT, TTL_S, None)
            t1 = clock()
            released = await services.budgets.release(agent, hold.id)
            t2 = clock()
            if released.status != "settled" or len(hold.budgets) != 2:
                raise RuntimeError(f"unexpected hold: {hold} -> {released}")
            if record:
                samples["reserve"].append(t1 - t0)
                samples["release"].append(t2 - t1)
                samples["pair"].append(t2 - t0)

        for _ in range(warmup):
            await one(False)
        cpu0, started = time.process_time(), time.perf_counter()
        for _ in range(pairs):
            await one(True)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0

        reserve_counts: dict[str, Any] = {"statements": 0, "transactions": 0, "by_verb": {}}
        release_counts: dict[str, Any] = {"statements": 0, "transactions": 0, "by_verb": {}}
        with StatementCounter(services.db.engine) as counter:
            for _ in range(count_pairs):
                hold = await services.budgets.reserve(agent, AMOUNT, TTL_S, None)
                merge_counts(reserve_counts, counter.take())
                await services.budgets.release(agent, hold.id)
                merge_counts(release_counts, counter.take())

    return {
        "pairs": pairs,
        "warmup_pairs": warmup,
        "budgets_per_reserve": 2,
        "pairs_per_s": round(pairs / elapsed, 1),
        "process_cpu_us_per_pair": round(cpu / pairs * 1e6, 1),
        "pair": summarise_ns(samples["pair"]),
        "reserve": summarise_ns(samples["reserve"]),
        "release": summarise_ns(samples["release"]),
        "drift": {op: drift(samples[op]) for op in ("reserve", "release")},
        "statements_per_op": {
            "reserve": per_op(reserve_counts, count_pairs),
            "release": per_op(release_counts, count_pairs),
        },
    }


# -- over MCP --------------------------------------------------------------------------------------


async def _mcp(base_url: str, admin_token: str, calls: int, warmup: int) -> dict[str, Any]:
    async with mcp_client(base_url, admin_token) as admin:
        spawned = await call(admin, "agent_spawn", profile="default")
        await call(admin, "budget_set", scope="global", limit_usd=str(GLOBAL_LIMIT))
        await call(admin, "budget_set", scope=f"agent:{spawned['agent']['id']}", limit_usd=str(AGENT_LIMIT))
    tools = ("budget_reserve", "budget_release")
    samples: dict[str, list[int]] = {NOOP: [], **{t: [] for t in tools}}
    async with mcp_client(base_url, spawned["token"]) as agent:
        protocol = agent.protocol_version

        async def timed(tool: str, **arguments: Any) -> tuple[int, dict[str, Any]]:
            t0 = time.perf_counter_ns()
            got = await call(agent, tool, **arguments)
            return time.perf_counter_ns() - t0, got

        async def one_round(i: int, record: bool) -> None:
            noop_at = i % 3  # 0: before the reserve, 1: between, 2: after the release
            took: dict[str, int] = {}
            if noop_at == 0:
                took[NOOP], _ = await timed(NOOP)
            took["budget_reserve"], hold = await timed("budget_reserve", amount_usd=str(AMOUNT), ttl_s=TTL_S)
            if noop_at == 1:
                took[NOOP], _ = await timed(NOOP)
            took["budget_release"], released = await timed("budget_release", hold_id=hold["id"])
            if noop_at == 2:
                took[NOOP], _ = await timed(NOOP)
            if released["status"] != "settled" or len(hold["budgets"]) != 2:
                raise RuntimeError(f"unexpected hold: {hold} -> {released}")
            if record:
                for name, ns in took.items():
                    samples[name].append(ns)

        for i in range(warmup):
            await one_round(i, False)
        for i in range(calls):
            await one_round(i, True)

    noop = summarise_ns(samples[NOOP])
    out: dict[str, Any] = {"rounds": calls, "warmup_rounds": warmup, "protocol_version": protocol, NOOP: noop}
    pair = [r + s for r, s in zip(samples["budget_reserve"], samples["budget_release"], strict=True)]
    out["pair"] = summarise_ns(pair)
    for tool in tools:
        out[tool] = summarise_ns(samples[tool])
    out["ratio_to_empty_call"] = {t: round(out[t]["p50_ms"] / noop["p50_ms"], 3) for t in tools}
    out["p99_ratio_to_empty_call"] = {t: round(out[t]["p99_ms"] / noop["p99_ms"], 3) for t in tools}
    return out


# -- at the cap ------------------------------------------------------------------------------------


class CapTally:
    def __init__(self, workers: int) -> None:
        self.attempted = 0
        self.granted = 0
        self.refused = 0
        self.refused_with_room = 0  # refusals whose message says the amount still fitted
        self.errors: dict[str, int] = {}
        self.granted_micros = 0
        self.grants_by_worker = [0] * workers
        self.reserve_ns: list[int] = []

    def result(self, limit: Decimal, amount: Decimal, reserved_after: str, elapsed: float) -> dict[str, Any]:
        from server.domain.money import usd

        granted_usd = usd(self.granted_micros)
        return {
            "workers": len(self.grants_by_worker),
            "limit_usd": str(limit),
            "amount_usd": str(amount),
            "attempted": self.attempted,
            "granted": self.granted,
            "refused_budget_exceeded": self.refused,
            "refused_with_room_left": self.refused_with_room,
            "other_errors": self.errors,
            "granted_usd": str(granted_usd),
            "store_reserved_usd": reserved_after,
            "granted_over_attempted": round(self.granted / self.attempted, 4) if self.attempted else None,
            "granted_usd_over_limit": float(granted_usd / limit) if limit else None,
            "exact_fill": granted_usd == limit and Decimal(reserved_after) == limit,
            "grants_per_worker": {"min": min(self.grants_by_worker), "max": max(self.grants_by_worker)},
            "seconds": round(elapsed, 3),
            "grants_per_s": round(self.granted / elapsed, 1) if elapsed else None,
            "reserve_under_contention": summarise_ns(self.reserve_ns),
        }


async def _cap_workers(tally: CapTally, reserve_fns: list[Any], amount_micros: int) -> float:
    """Each worker reserves until refused; returns the wall time of the whole run. A reserve
    function returns None when granted, else the error text ("code: message")."""
    from server.domain.money import to_micros

    gate = asyncio.Event()

    async def worker(i: int) -> None:
        await gate.wait()
        while True:
            tally.attempted += 1
            t0 = time.perf_counter_ns()
            failure = await reserve_fns[i]()
            tally.reserve_ns.append(time.perf_counter_ns() - t0)
            if failure is None:
                tally.granted += 1
                tally.granted_micros += amount_micros
                tally.grants_by_worker[i] += 1
                continue
            code = failure.split(":", 1)[0]
            if code == "budget_exceeded":
                tally.refused += 1
                left = LEFT.search(failure)
                if left is None or to_micros(Decimal(left.group(1)), "left") >= amount_micros:
                    tally.refused_with_room += 1
            else:
                tally.errors[code] = tally.errors.get(code, 0) + 1
            return

    tasks = [asyncio.ensure_future(worker(i)) for i in range(len(reserve_fns))]
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    gate.set()
    await asyncio.gather(*tasks)
    return time.perf_counter() - started


async def _cap_inproc(database_url: str | None, workers: int, limit: Decimal, amount: Decimal) -> dict[str, Any]:
    from server.domain.money import to_micros
    from server.domain.principal import ADMIN
    from server.errors import FleetError

    async with inproc_services(database_url, "budget-cap") as services:
        pool = f"cap-{run_tag()}"
        agents = []
        for _ in range(workers):
            spawned = await services.agents.spawn(ADMIN, "worker", pools=[pool])
            agents.append(await services.auth.authenticate(spawned.token))
        await services.budgets.set(ADMIN, f"pool:{pool}", limit)

        def reserver(agent: Any) -> Any:
            async def reserve() -> str | None:
                try:
                    await services.budgets.reserve(agent, amount, CAP_TTL_S, "cap")
                except FleetError as exc:
                    return str(exc)
                return None

            return reserve

        tally = CapTally(workers)
        elapsed = await _cap_workers(tally, [reserver(a) for a in agents], to_micros(amount, "amount"))
        status = await services.budgets.status(ADMIN, f"pool:{pool}")
    return tally.result(limit, amount, status.budgets[0].budget.reserved_usd, elapsed)


async def _cap_mcp(base_url: str, admin_token: str, workers: int, limit: Decimal, amount: Decimal) -> dict[str, Any]:
    from server.domain.money import to_micros

    pool = f"cap-{run_tag()}"
    async with mcp_client(base_url, admin_token) as admin:
        spawned = [await call(admin, "agent_spawn", profile="default", pools=[pool]) for _ in range(workers)]
        await call(admin, "budget_set", scope=f"pool:{pool}", limit_usd=str(limit))
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(mcp_client(base_url, s["token"])) for s in spawned]

        def reserver(client: Any) -> Any:
            async def reserve() -> str | None:
                result = await client.call_tool(
                    "budget_reserve", {"amount_usd": str(amount), "ttl_s": CAP_TTL_S, "purpose": "cap"}
                )
                if result.is_error:
                    return str(result.content[0].text)
                return None

            return reserve

        tally = CapTally(workers)
        elapsed = await _cap_workers(tally, [reserver(c) for c in clients], to_micros(amount, "amount"))
    async with mcp_client(base_url, admin_token) as admin:
        status = await call(admin, "budget_status", scope=f"pool:{pool}")
    return tally.result(limit, amount, status["budgets"][0]["budget"]["reserved_usd"], elapsed)


def _log_cap(where: str, r: dict[str, Any]) -> None:
    note(
        f"cap {where}: {r['granted']}/{r['attempted']} granted ({r['granted_over_attempted']}), "
        f"{r['granted_usd']} of {r['limit_usd']} USD ({'exact' if r['exact_fill'] else 'NOT EXACT'}), "
        f"other errors {r['other_errors']}, reserve p50 {r['reserve_under_contention']['p50_ms']} ms"
    )


# -- driver ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def chosen_store(store: str | None, database_url: str | None, pg_server: str) -> Iterator[str | None]:
    if database_url or store != "postgresql":
        yield database_url
        return
    with pg_scratch_database(pg_server, "budget") as url:
        note("scratch PostgreSQL database created (dropped at the end)")
        yield url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("sqlite", "postgresql"), help="default: from --database-url, else sqlite")
    parser.add_argument("--database-url", help="postgresql://… (default: SQLite in a temporary data dir)")
    parser.add_argument("--pg-server", default=DEFAULT_PG_SERVER, help="where --store postgresql makes its scratch db")
    parser.add_argument("--pairs", type=int, default=1000, help="measured in-process reserve+release pairs (1000)")
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured in-process pairs first (100)")
    parser.add_argument("--count-pairs", type=int, default=20, help="untimed pairs counting statements (20)")
    parser.add_argument("--calls", type=int, default=500, help="measured MCP rounds (500)")
    parser.add_argument("--mcp-warmup", type=int, default=50, help="unmeasured MCP rounds (50)")
    parser.add_argument("--workers", type=int, default=16, help="concurrent reservers at the cap (16)")
    parser.add_argument("--cap-usd", default="2.00", help="the hard budget the workers share (2.00)")
    parser.add_argument("--cap-amount-usd", default=str(AMOUNT), help=f"each reservation at the cap ({AMOUNT})")
    parser.add_argument("--parts", default=",".join(PARTS), help="inproc, mcp, cap (default all)")
    args = parser.parse_args(argv)
    parts = split_list(args.parts, PARTS, "--parts", parser)
    if min(args.pairs, args.calls, args.count_pairs, args.workers) < 1 or min(args.warmup, args.mcp_warmup) < 0:
        parser.error("--pairs, --calls, --count-pairs, --workers must be >= 1; warm-ups >= 0")
    if args.database_url and args.store and store_kind(args.database_url) != args.store:
        parser.error(f"--store {args.store} but --database-url is {store_kind(args.database_url)}")
    cap, cap_amount = Decimal(args.cap_usd), Decimal(args.cap_amount_usd)
    if cap <= 0 or cap_amount <= 0:
        parser.error("--cap-usd and --cap-amount-usd must be positive")

    exit_on_sigterm()
    with chosen_store(args.store, args.database_url, args.pg_server) as database_url:
        out: dict[str, Any] = {
            "bench": "budget_latency",
            "store": store_kind(database_url),
            "loadavg_at_start": load_average(),
        }
        if "inproc" in parts:
            note(f"in-process: {args.warmup} warm-up + {args.pairs} measured reserve+release pairs")
            r = run_async(_inproc, database_url, args.pairs, args.warmup, args.count_pairs)
            note(
                f"in-process: pair p50 {r['pair']['p50_ms']} / p99 {r['pair']['p99_ms']} ms, "
                f"reserve p50 {r['reserve']['p50_ms']} ms, release p50 {r['release']['p50_ms']} ms"
            )
            out["inproc"] = r
        if "cap" in parts:
            note(f"cap in-process: {args.workers} workers reserve {cap_amount} USD each until refused, limit {cap}")
            out["cap_inproc"] = run_async(_cap_inproc, database_url, args.workers, cap, cap_amount)
            _log_cap("in-process", out["cap_inproc"])
        if "mcp" in parts or "cap" in parts:
            out.update(run_mcp_side(database_url, parts, args, cap, cap_amount))
        out["loadavg_at_end"] = load_average()
        out["machine"] = machine()
    print(json.dumps(out))
    return 0


def run_mcp_side(
    database_url: str | None, parts: list[str], args: argparse.Namespace, cap: Decimal, cap_amount: Decimal
) -> dict[str, Any]:
    from mcp_latency import server_child

    from server.services.auth import new_admin_token

    token = new_admin_token()
    out: dict[str, Any] = {}
    with server_child(database_url, token) as base_url:
        if "mcp" in parts:
            note(f"mcp: {args.mcp_warmup} warm-up and {args.calls} measured rounds of {NOOP}, reserve, release")
            r = run_async(_mcp, base_url, token, args.calls, args.mcp_warmup)
            note(
                f"mcp: noop p50 {r[NOOP]['p50_ms']} ms, reserve p50 {r['budget_reserve']['p50_ms']} / p99 "
                f"{r['budget_reserve']['p99_ms']} ms, release p50 {r['budget_release']['p50_ms']} / p99 "
                f"{r['budget_release']['p99_ms']} ms; ratios {r['ratio_to_empty_call']}"
            )
            out["mcp"] = r
        if "cap" in parts:
            note(f"cap over MCP: {args.workers} sessions reserve {cap_amount} USD each until refused, limit {cap}")
            out["cap_mcp"] = run_async(_cap_mcp, base_url, token, args.workers, cap, cap_amount)
            _log_cap("mcp", out["cap_mcp"])
    return out


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ToolFailed as exc:
        print(f"[budget_latency] {exc}", file=sys.stderr)
        sys.exit(1)
