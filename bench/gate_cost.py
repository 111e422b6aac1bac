"""What the door costs each call: `Gate.admit` (role table, profile, rate-limit bucket) in-process.

    python bench/gate_cost.py [--calls 5000] [--warmup 500] [--pg-server postgresql://postgres@127.0.0.1:5432/postgres]
                              [--no-sqlite]

What runs: `build_services` as `agentfleet serve` does (temp data dir, profiles from
tests/profiles), on a temporary SQLite file and, with --pg-server, on a scratch PostgreSQL
database created and dropped here. One agent of profile `worker` is spawned. Then, one coroutine
on uvloop, each timed with perf_counter_ns:

- `admit_admin`: `gate.admit(ADMIN, "task_submit")` — the role check only (the admin is exempt
  from rate limits): the floor.
- `admit_agent`: `gate.admit(agent, "task_claim")` — the role check, the agent's profile, and
  one write transaction taking a token from its bucket (a conditional upsert) and recording that
  the agent was heard from (an update that matches at most once a second). The bucket is sized
  so no call is refused.
- `heartbeat`: `agents.heartbeat(agent)` — a one-row write transaction, for scale: what any
  small write costs on this store.

The agent's calls each add `admit_agent - admit_admin` over what they cost before rate limits.
stdout carries exactly one JSON object; progress notes go to stderr. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_PG_SERVER, load_average, machine, make_note, pg_scratch_database, summarise_ns  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from server.domain.principal import ADMIN  # noqa: E402
from server.services.container import build_services  # noqa: E402
from server.settings import Settings  # noqa: E402

note = make_note("gate_cost")
ADMIN_TOKEN = "afk_bench-gate-cost-0123456789abcdefghijklmnopqrstuv"


async def timed(calls: int, warmup: int, step: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    for _ in range(warmup):
        await step()
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        await step()
        samples.append(time.perf_counter_ns() - start)
    return summarise_ns(samples)


async def measure(database_url: str, calls: int, warmup: int) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="agentfleet-bench-gate-"))
    settings = Settings(
        data_dir=data,
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        profiles_dir=REPO_ROOT / "tests" / "profiles",
        rate_limit_per_s=1_000_000.0,
        rate_limit_burst=1_000_000,
    )
    services = build_services(settings, ADMIN_TOKEN)
    try:
        spawned = await services.agents.spawn(ADMIN, "worker")
        agent = await services.auth.authenticate(spawned.token)
        assert agent is not None
        results = {
            "admit_admin": await timed(calls, warmup, lambda: services.gate.admit(ADMIN, "task_submit")),
            "admit_agent": await timed(calls, warmup, lambda: services.gate.admit(agent, "task_claim")),
            "heartbeat": await timed(calls, warmup, lambda: services.agents.heartbeat(agent)),
        }
        results["rate_limit_p50_ms"] = round(results["admit_agent"]["p50_ms"] - results["admit_admin"]["p50_ms"], 3)
        return results
    finally:
        services.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--pg-server", help=f"also measure on a scratch database here (e.g. {DEFAULT_PG_SERVER})")
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()
    import uvloop

    out: dict[str, Any] = {"bench": "gate_cost", "calls": args.calls, "results": {}}
    before = load_average()
    if not args.no_sqlite:
        note("sqlite")
        url = f"sqlite:///{tempfile.mkdtemp(prefix='agentfleet-bench-gate-db-')}/agentfleet.db"
        out["results"]["sqlite"] = uvloop.run(measure(url, args.calls, args.warmup))
    if args.pg_server:
        note("postgresql")
        with pg_scratch_database(args.pg_server, "gate", migrate=False) as url:
            out["results"]["postgresql"] = uvloop.run(measure(url, args.calls, args.warmup))
    out["machine"] = {**machine(), "loadavg_1m_before": before[0], "loadavg_1m_after": load_average()[0]}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
