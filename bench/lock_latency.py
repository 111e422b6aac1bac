"""Uncontended lock latency: acquire + release of one exclusive resource, one at a time, through
the service layer in-process and over MCP Streamable HTTP beside an empty tool call.

    python bench/lock_latency.py [--pairs 2000] [--warmup 200] [--names same,distinct]
                                 [--calls 1000] [--mcp-warmup 100] [--modes auto]
                                 [--parts inproc,mcp]
                                 [--database-url postgresql://user@host:5432/db]

What runs:

- inproc: `build_services` as `agentfleet serve` does (temp data dir, profiles from tests/profiles),
  one agent of profile `worker`, one coroutine, uvloop. Each pair is
  `services.locks.acquire(agent, [{name, exclusive}], ttl_s=60, wait_s=0)` then
  `services.locks.release(agent, lock_id)`, each timed with perf_counter_ns. `--names`: `same`
  re-locks one name every time (the fence row is updated), `distinct` locks a new name (a new root)
  every time (a fence row is inserted); with both, the two alternate pair by pair. After the
  measured pairs, a few more are run with a SQLAlchemy cursor listener attached to count the
  statements (and transactions) per acquire and per release; those pairs are not timed.
  Goals (issue): acquire + release p50 <= 1 ms and p99 <= 5 ms.
- mcp: the server child of bench/mcp_latency.py (the real app, uvicorn with uvloop + httptools, plus
  the empty tool `bench_noop`) on the same store. The admin spawns one agent (profile `default`);
  one mcp.Client with that agent's token runs rounds of bench_noop, lock_acquire, lock_release
  (the noop's place in the round rotates; acquire always precedes its release). Every call is
  authenticated with the same agent token, so the noop pays the same auth as the lock calls.
  `ratio_to_empty_call` is each tool's p50 over bench_noop's p50 in the same run.
  Goal (issue): lock_acquire and lock_release each <= 1.5 x bench_noop (p50).

The store is a temporary SQLite file by default, or the `--database-url` you give. A PostgreSQL
database is not emptied: use a scratch one (lock rows pile up; live-lock lookups use partial indexes).

stdout carries exactly one JSON object; progress notes go to stderr. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    TEST_PROFILES,
    call,
    exit_on_sigterm,
    load_average,
    machine,
    make_note,
    mcp_client,
    store_kind,
    summarise_ns,
)

note = make_note("lock_latency")

ADMIN_TOKEN = "afk_bench-lock-latency-admin-token-00000000000"
GOAL_PAIR_P50_MS = 1.0
GOAL_PAIR_P99_MS = 5.0
GOAL_MCP_RATIO = 1.5
NOOP = "bench_noop"
NAME_KINDS = ("same", "distinct")
PARTS = ("inproc", "mcp")
TTL_S = 60


# -- in-process plumbing, shared with lock_handoff.py and lock_contention.py -----------------------


def run_async(fn: Callable[..., Any], *args: Any) -> Any:
    """anyio.run on asyncio with uvloop, as the server runs."""
    import anyio

    return anyio.run(fn, *args, backend="asyncio", backend_options={"use_uvloop": True})


@contextlib.asynccontextmanager
async def inproc_services(database_url: str | None, label: str) -> AsyncIterator[Any]:
    """build_services as `agentfleet serve` does, on `database_url` or a temp SQLite file."""
    from server.services.container import build_services
    from server.settings import Settings

    data_dir = Path(tempfile.mkdtemp(prefix=f"agentfleet-bench-{label}-"))
    settings = Settings(data_dir=data_dir, database_url=database_url, profiles_dir=TEST_PROFILES, log_level="warning")
    services = build_services(settings, ADMIN_TOKEN)
    try:
        yield services
    finally:
        services.close()
        shutil.rmtree(data_dir, ignore_errors=True)


async def spawn_principals(services: Any, count: int) -> list[Any]:
    """`count` agents of profile `worker`, as the Principals their tokens resolve to."""
    from server.domain.principal import ADMIN

    principals = []
    for _ in range(count):
        spawned = await services.agents.spawn(ADMIN, "worker")
        principal = await services.auth.authenticate(spawned.token)
        if principal is None:
            raise RuntimeError("a freshly spawned agent's token did not authenticate")
        principals.append(principal)
    return principals


def exclusive(name: str) -> list[Any]:
    from server.domain.resources import LockMode, ResourceRequest

    return [ResourceRequest(name=name, mode=LockMode.EXCLUSIVE)]


def run_tag() -> str:
    """Names unique to this run, so leftovers in a reused PostgreSQL database never get in the way."""
    return uuid.uuid4().hex[:8]


class StatementCounter:
    """Counts statements and transactions on an engine while attached: a SQLAlchemy cursor listener
    (BEGIN IMMEDIATE/DEFERRED on SQLite is a statement too) and the engine-level commit event (read
    transactions commit as well). Attaching it slows every statement, so never time with it."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.statements = 0
        self.transactions = 0
        self.by_verb: dict[str, int] = {}

    def _on_execute(self, _conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        self.statements += 1
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
        self.by_verb[verb] = self.by_verb.get(verb, 0) + 1

    def _on_commit(self, _conn: Any) -> None:
        self.transactions += 1

    def __enter__(self) -> StatementCounter:
        from sqlalchemy import event

        event.listen(self.engine, "before_cursor_execute", self._on_execute)
        event.listen(self.engine, "commit", self._on_commit)
        return self

    def __exit__(self, *_exc: Any) -> None:
        from sqlalchemy import event

        event.remove(self.engine, "before_cursor_execute", self._on_execute)
        event.remove(self.engine, "commit", self._on_commit)

    def take(self) -> dict[str, Any]:
        verbs = dict(sorted(self.by_verb.items()))
        out = {"statements": self.statements, "transactions": self.transactions, "by_verb": verbs}
        self.statements, self.transactions, self.by_verb = 0, 0, {}
        return out


async def lock_rows(services: Any) -> dict[str, int]:
    """Rows in the lock tables. Ended locks stay in the store, so this is the history a lookup may
    have to walk: compare runs by it as well as by time."""
    from sqlalchemy import func, select

    from server.store.tables import lock_items, locks, resources

    def count(conn: Any) -> dict[str, int]:
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in (locks, lock_items, resources)
        }

    return await services.db.read(count)


def drift(samples: list[int]) -> dict[str, float]:
    """p50 of the first and the last tenth of a run, in order: does a call get slower as the run goes?"""
    tenth = max(1, len(samples) // 10)
    return {
        "first_tenth_p50_ms": summarise_ns(samples[:tenth])["p50_ms"],
        "last_tenth_p50_ms": summarise_ns(samples[-tenth:])["p50_ms"],
    }


def per_op(counted: dict[str, Any], ops: int) -> dict[str, Any]:
    return {
        "statements": round(counted["statements"] / ops, 2),
        "transactions": round(counted["transactions"] / ops, 2),
        "by_verb": {k: round(v / ops, 2) for k, v in counted["by_verb"].items()},
    }


# -- in-process ------------------------------------------------------------------------------------


async def _inproc(database_url: str | None, pairs: int, warmup: int, kinds: list[str], count_pairs: int) -> dict:
    async with inproc_services(database_url, "lock-latency") as services:
        (agent,) = await spawn_principals(services, 1)
        rows_at_start = await lock_rows(services)
        tag = run_tag()
        serial = 0

        def name_for(kind: str) -> str:
            nonlocal serial
            serial += 1
            return f"bench:same-{tag}" if kind == "same" else f"bench:d-{tag}-{serial}"

        samples = {kind: {"pair": [], "acquire": [], "release": []} for kind in kinds}
        clock = time.perf_counter_ns
        last_fence: dict[str, int] = {}

        async def one(kind: str, record: bool) -> None:
            name = name_for(kind)
            t0 = clock()
            grant = await services.locks.acquire(agent, exclusive(name), TTL_S, 0)
            t1 = clock()
            if not grant.granted or grant.lock_id is None:
                raise RuntimeError(f"uncontended acquire of {name} was not granted: {grant.conflicts}")
            await services.locks.release(agent, grant.lock_id)
            t2 = clock()
            fence = grant.fencing_tokens[name]
            if fence <= last_fence.get(name, 0):
                raise RuntimeError(f"fence for {name} did not increase: {fence}")
            last_fence[name] = fence
            if record:
                s = samples[kind]
                s["acquire"].append(t1 - t0)
                s["release"].append(t2 - t1)
                s["pair"].append(t2 - t0)

        for i in range(warmup):
            await one(kinds[i % len(kinds)], False)
        cpu0, started = time.process_time(), time.perf_counter()
        for i in range(pairs):
            for kind in kinds[i % len(kinds) :] + kinds[: i % len(kinds)]:
                await one(kind, True)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu0
        done = pairs * len(kinds)

        # Not timed: statements per acquire and per release, with a listener on the engine.
        statements: dict[str, Any] = {}
        for kind in kinds:
            acq: dict[str, Any] = {"statements": 0, "transactions": 0, "by_verb": {}}
            rel: dict[str, Any] = {"statements": 0, "transactions": 0, "by_verb": {}}
            with StatementCounter(services.db.engine) as counter:
                for _ in range(count_pairs):
                    grant = await services.locks.acquire(agent, exclusive(name_for(kind)), TTL_S, 0)
                    merge_counts(acq, counter.take())
                    await services.locks.release(agent, grant.lock_id)
                    merge_counts(rel, counter.take())
            statements[kind] = {"acquire": per_op(acq, count_pairs), "release": per_op(rel, count_pairs)}
        rows_at_end = await lock_rows(services)

    results: dict[str, Any] = {}
    for kind in kinds:
        s = samples[kind]
        pair = summarise_ns(s["pair"])
        results[kind] = {
            "pair": pair,
            "acquire": summarise_ns(s["acquire"]),
            "release": summarise_ns(s["release"]),
            "drift": {op: drift(s[op]) for op in ("acquire", "release")},
            "statements_per_op": statements[kind],
            "goal_p50_met": pair["p50_ms"] <= GOAL_PAIR_P50_MS,
            "goal_p99_met": pair["p99_ms"] <= GOAL_PAIR_P99_MS,
        }
    return {
        "pairs_per_kind": pairs,
        "warmup_pairs": warmup,
        "store_rows": {"start": rows_at_start, "end": rows_at_end},
        "pairs_per_s": round(done / elapsed, 1),
        "process_cpu_us_per_pair": round(cpu / done * 1e6, 1),
        "by_name": results,
        "goal": f"acquire+release p50 <= {GOAL_PAIR_P50_MS} ms and p99 <= {GOAL_PAIR_P99_MS} ms",
        "goal_met": all(r["goal_p50_met"] and r["goal_p99_met"] for r in results.values()),
    }


def merge_counts(into: dict[str, Any], got: dict[str, Any]) -> None:
    into["statements"] += got["statements"]
    into["transactions"] += got["transactions"]
    for verb, n in got["by_verb"].items():
        into["by_verb"][verb] = into["by_verb"].get(verb, 0) + n


# -- over MCP --------------------------------------------------------------------------------------


async def _mcp_mode(base_url: str, admin_token: str, mode: str, calls: int, warmup: int, kinds: list[str]) -> dict:
    async with mcp_client(base_url, admin_token, mode) as admin:
        spawned = await call(admin, "agent_spawn", profile="default")
    tag = run_tag()
    serial = 0
    tools = ("lock_acquire", "lock_release")
    samples: dict[str, list[int]] = {NOOP: []}
    for kind in kinds:
        for tool in tools:
            samples[f"{tool}:{kind}"] = []

    async with mcp_client(base_url, spawned["token"], mode) as agent:
        protocol = agent.protocol_version

        async def timed(tool: str, **arguments: Any) -> tuple[int, dict[str, Any]]:
            t0 = time.perf_counter_ns()
            got = await call(agent, tool, **arguments)
            return time.perf_counter_ns() - t0, got

        async def one_round(i: int, record: bool) -> None:
            nonlocal serial
            kind = kinds[i % len(kinds)]
            serial += 1
            name = f"bench:same-{tag}" if kind == "same" else f"bench:d-{tag}-{serial}"
            noop_at = i % 3  # 0: before the acquire, 1: between, 2: after the release
            took: dict[str, int] = {}
            if noop_at == 0:
                took[NOOP], _ = await timed(NOOP)
            took["lock_acquire"], grant = await timed(
                "lock_acquire", resources=[{"name": name, "mode": "exclusive"}], ttl_s=TTL_S
            )
            if not grant["granted"]:
                raise RuntimeError(f"uncontended lock_acquire of {name} was not granted: {grant['conflicts']}")
            if noop_at == 1:
                took[NOOP], _ = await timed(NOOP)
            took["lock_release"], _ = await timed("lock_release", lock_id=grant["lock_id"])
            if noop_at == 2:
                took[NOOP], _ = await timed(NOOP)
            if record:
                samples[NOOP].append(took[NOOP])
                for tool in tools:
                    samples[f"{tool}:{kind}"].append(took[tool])

        for i in range(warmup):
            await one_round(i, False)
        for i in range(calls):
            await one_round(i, True)

    noop = summarise_ns(samples[NOOP])
    out: dict[str, Any] = {"protocol_version": protocol, NOOP: noop, "by_name": {}}
    met = True
    for kind in kinds:
        acq, rel = summarise_ns(samples[f"lock_acquire:{kind}"]), summarise_ns(samples[f"lock_release:{kind}"])
        ratios = {
            "lock_acquire": round(acq["p50_ms"] / noop["p50_ms"], 3),
            "lock_release": round(rel["p50_ms"] / noop["p50_ms"], 3),
        }
        p99_ratios = {
            "lock_acquire": round(acq["p99_ms"] / noop["p99_ms"], 3),
            "lock_release": round(rel["p99_ms"] / noop["p99_ms"], 3),
        }
        kind_met = all(r <= GOAL_MCP_RATIO for r in ratios.values())
        met = met and kind_met
        out["by_name"][kind] = {
            "lock_acquire": acq,
            "lock_release": rel,
            "ratio_to_empty_call": ratios,
            "p99_ratio_to_empty_call": p99_ratios,
            "goal_met": kind_met,
        }
    out["goal_met"] = met
    return out


def run_mcp(database_url: str | None, modes: list[str], calls: int, warmup: int, kinds: list[str]) -> dict:
    from mcp_latency import server_child

    from server.services.auth import new_admin_token

    token = new_admin_token()
    results: dict[str, Any] = {}
    with server_child(database_url, token) as base_url:
        for mode in modes:
            note(f"mcp mode={mode}: {warmup} warm-up and {calls} measured rounds of {NOOP}, lock_acquire, lock_release")
            r = run_async(_mcp_mode, base_url, token, mode, calls, warmup, kinds)
            results[mode] = r
            for kind, k in r["by_name"].items():
                note(
                    f"mcp mode={mode} names={kind}: noop p50 {r[NOOP]['p50_ms']} ms, "
                    f"acquire p50 {k['lock_acquire']['p50_ms']} ms, release p50 {k['lock_release']['p50_ms']} ms; "
                    f"ratios {k['ratio_to_empty_call']} ({'goal met' if k['goal_met'] else 'goal MISSED'})"
                )
    return {
        "rounds": calls,
        "warmup_rounds": warmup,
        "transport": "streamable-http, uvicorn uvloop+httptools, server in a child process (bench/mcp_latency.py)",
        "modes": results,
        "goal": f"lock_acquire and lock_release p50 each <= {GOAL_MCP_RATIO} x {NOOP} p50",
        "goal_met": all(r["goal_met"] for r in results.values()),
    }


# -- driver ----------------------------------------------------------------------------------------


def split_list(raw: str, allowed: tuple[str, ...], flag: str, parser: argparse.ArgumentParser) -> list[str]:
    items = [x.strip() for x in raw.split(",") if x.strip()]
    if not items or any(x not in allowed for x in items):
        parser.error(f"{flag} takes a comma list of {', '.join(allowed)}")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="postgresql://… (default: SQLite in a temporary data dir)")
    parser.add_argument("--pairs", type=int, default=2000, help="measured in-process pairs per name kind (2000)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured in-process pairs first (200)")
    parser.add_argument("--count-pairs", type=int, default=20, help="untimed pairs counting statements (20)")
    parser.add_argument("--names", default="same,distinct", help="same, distinct or both (default both)")
    parser.add_argument("--calls", type=int, default=1000, help="measured MCP rounds per mode (1000)")
    parser.add_argument("--mcp-warmup", type=int, default=100, help="unmeasured MCP rounds per mode (100)")
    parser.add_argument("--modes", default="auto", help="MCP protocol eras: legacy, auto (default auto)")
    parser.add_argument("--parts", default="inproc,mcp", help="inproc, mcp or both (default both)")
    args = parser.parse_args(argv)
    kinds = split_list(args.names, NAME_KINDS, "--names", parser)
    parts = split_list(args.parts, PARTS, "--parts", parser)
    modes = split_list(args.modes, ("legacy", "auto"), "--modes", parser)
    if min(args.pairs, args.calls, args.count_pairs) < 1 or min(args.warmup, args.mcp_warmup) < 0:
        parser.error("--pairs, --calls, --count-pairs must be >= 1; warm-ups >= 0")

    exit_on_sigterm()
    out: dict[str, Any] = {
        "bench": "lock_latency",
        "store": store_kind(args.database_url),
        "loadavg_at_start": load_average(),
    }
    if "inproc" in parts:
        note(f"in-process: {args.warmup} warm-up + {args.pairs} measured pairs per name kind ({', '.join(kinds)})")
        r = run_async(_inproc, args.database_url, args.pairs, args.warmup, kinds, args.count_pairs)
        for kind, k in r["by_name"].items():
            note(
                f"in-process names={kind}: pair p50 {k['pair']['p50_ms']} / p99 {k['pair']['p99_ms']} ms, "
                f"acquire p50 {k['acquire']['p50_ms']} ms, release p50 {k['release']['p50_ms']} ms, "
                f"{k['statements_per_op']['acquire']['statements']} + {k['statements_per_op']['release']['statements']}"
                " statements"
            )
        out["inproc"] = r
    if "mcp" in parts:
        out["mcp"] = run_mcp(args.database_url, modes, args.calls, args.mcp_warmup, kinds)
    out["goals_met"] = all(out[p]["goal_met"] for p in parts)
    out["loadavg_at_end"] = load_average()
    out["machine"] = machine()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
