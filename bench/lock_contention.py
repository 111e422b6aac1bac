"""Lock contention: 16 agents loop acquire(wait_s) -> release on ONE exclusive resource for a fixed
time, through the service layer in-process.

    python bench/lock_contention.py [--contenders 16] [--seconds 10] [--warmup-s 1] [--wait-s 5]
                                    [--hold-ms 0] [--ttl-s 30]
                                    [--database-url postgresql://user@host:5432/db]

What runs: `build_services` as `agentfleet serve` does (temp data dir, profiles from tests/profiles),
--contenders agents of profile `worker`, one asyncio task each, uvloop, one process. Each task loops:
`services.locks.acquire(agent, [{name, exclusive}], ttl_s, wait_s)`, hold --hold-ms (0: release at
once), `services.locks.release(agent, lock_id)`. A grant that finds the resource free returns at
once; otherwise the request queues (FIFO) and is handed the lock by the release before it.
An acquire that ends in lock_timeout is counted and the task tries again.

Reported, over the --seconds window after --warmup-s (an acquire or release counts in the window
when it returns inside it):
- grants_per_s: granted acquires / window;
- acquire_wait: time from calling acquire to its return (granted ones), p50/p90/p99/mean/max;
  `queued_grants` is how many of them were queued first rather than granted on arrival;
- release_call latency; timeouts (lock_timeout) and other errors by type;
- fairness: grants per contender (min/max);
- safety checks (counted, not asserted): holders seen inside at once (must stay 0 over 1) and
  fencing tokens that failed to increase from one grant to the next (must stay 0);
- process CPU while measuring (both the event loop and the store's worker threads; 2.0 = both cores).

The issue gives no number for this one; it is the workload that shows what the lock path costs
when every grant is a hand-off.

The store is a temporary SQLite file by default, or the `--database-url` you give (not emptied:
use a scratch database).

stdout carries exactly one JSON object; progress notes go to stderr. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import exit_on_sigterm, load_average, machine, make_note, store_kind, summarise_ns  # noqa: E402
from lock_latency import exclusive, inproc_services, lock_rows, run_async, run_tag, spawn_principals  # noqa: E402

note = make_note("lock_contention")


async def _run(
    database_url: str | None,
    contenders: int,
    seconds: float,
    warmup_s: float,
    wait_s: float,
    hold_s: float,
    ttl_s: int,
) -> dict[str, Any]:
    from server.errors import FleetError, LockTimeout

    async with inproc_services(database_url, "lock-contention") as services:
        agents = await spawn_principals(services, contenders)
        rows_at_start = await lock_rows(services)
        name = f"bench:contended-{run_tag()}"
        resource = exclusive(name)
        clock = time.perf_counter_ns
        window = [0, 0]  # ns: [start, end); set once every contender is running
        stop = asyncio.Event()
        waits: list[int] = []
        releases: list[int] = []
        grants_by = [0] * contenders
        timeout_waits: list[int] = []
        errors: dict[str, int] = {}
        counters = {"queued_grants": 0, "overlaps": 0, "fence_regressions": 0, "inside": 0, "last_fence": 0}

        def in_window(t: int) -> bool:
            return window[0] <= t < window[1]

        async def contender(k: int, principal: Any) -> None:
            while not stop.is_set():
                t0 = clock()
                try:
                    grant = await services.locks.acquire(principal, resource, ttl_s, wait_s)
                except LockTimeout:
                    t1 = clock()
                    if in_window(t1):
                        timeout_waits.append(t1 - t0)
                    continue
                except FleetError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    await asyncio.sleep(0.01)
                    continue
                t1 = clock()
                if not grant.granted or grant.lock is None:
                    errors["not_granted"] = errors.get("not_granted", 0) + 1
                    continue
                counters["inside"] += 1
                if counters["inside"] > 1:
                    counters["overlaps"] += 1
                fence = grant.fencing_tokens[name]
                if fence <= counters["last_fence"]:
                    counters["fence_regressions"] += 1
                counters["last_fence"] = fence
                if hold_s > 0:
                    await asyncio.sleep(hold_s)
                counters["inside"] -= 1
                t2 = clock()
                try:
                    await services.locks.release(principal, grant.lock_id)
                except FleetError as exc:
                    errors[f"release:{type(exc).__name__}"] = errors.get(f"release:{type(exc).__name__}", 0) + 1
                    continue
                t3 = clock()
                if in_window(t1):
                    waits.append(t1 - t0)
                    grants_by[k] += 1
                    if grant.lock.granted_at != grant.lock.created_at:
                        counters["queued_grants"] += 1
                if in_window(t3):
                    releases.append(t3 - t2)

        window[0] = window[1] = 1 << 62  # nothing counts until the window opens
        tasks = [asyncio.create_task(contender(k, p)) for k, p in enumerate(agents)]
        await asyncio.sleep(warmup_s)
        window[0] = clock()
        window[1] = window[0] + int(seconds * 1e9)
        cpu0 = time.process_time()
        await asyncio.sleep(seconds)
        cpu = time.process_time() - cpu0
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=wait_s + 30)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if pending:
            raise RuntimeError(f"{len(pending)} contenders did not stop")
        leftovers = await services.locks.list(prefix=name)
        rows_at_end = await lock_rows(services)

    grants = len(waits)
    return {
        "contenders": contenders,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "wait_s": wait_s,
        "hold_ms": round(hold_s * 1000, 3),
        "store_rows": {"start": rows_at_start, "end": rows_at_end},
        "grants": grants,
        "grants_per_s": round(grants / seconds, 1),
        "acquire_wait": summarise_ns(waits),
        "queued_grants": counters["queued_grants"],
        "release_call": summarise_ns(releases),
        "timeouts": len(timeout_waits),
        "timeout_wait": summarise_ns(timeout_waits),
        "errors": errors,
        "grants_per_contender": {"min": min(grants_by), "max": max(grants_by)},
        "safety": {
            "overlapping_holders": counters["overlaps"],
            "fence_regressions": counters["fence_regressions"],
            "live_locks_left": len(leftovers.locks),
        },
        "process_cpu_cores": round(cpu / seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="postgresql://… (default: SQLite in a temporary data dir)")
    parser.add_argument("--contenders", type=int, default=16, help="agents looping on the resource (16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window (10)")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured time before the window (1)")
    parser.add_argument("--wait-s", type=float, default=5.0, help="each acquire's wait_s (5)")
    parser.add_argument("--hold-ms", type=float, default=0.0, help="time each grant is held before release (0)")
    parser.add_argument("--ttl-s", type=int, default=30, help="each grant's lease (30)")
    args = parser.parse_args(argv)
    if args.contenders < 1 or args.seconds <= 0 or args.warmup_s < 0 or args.wait_s <= 0 or args.hold_ms < 0:
        parser.error("--contenders >= 1, --seconds > 0, --warmup-s >= 0, --wait-s > 0, --hold-ms >= 0")
    if args.ttl_s < 1:
        parser.error("--ttl-s must be >= 1")

    exit_on_sigterm()
    out: dict[str, Any] = {
        "bench": "lock_contention",
        "store": store_kind(args.database_url),
        "loadavg_at_start": load_average(),
    }
    note(
        f"{args.contenders} contenders on one exclusive resource for {args.warmup_s}+{args.seconds} s "
        f"(wait_s {args.wait_s}, hold {args.hold_ms} ms)"
    )
    r = run_async(
        _run,
        args.database_url,
        args.contenders,
        args.seconds,
        args.warmup_s,
        args.wait_s,
        args.hold_ms / 1000,
        args.ttl_s,
    )
    note(
        f"{r['grants_per_s']} grants/s, acquire wait p50 {r['acquire_wait'].get('p50_ms')} / "
        f"p99 {r['acquire_wait'].get('p99_ms')} ms, {r['timeouts']} timeouts, errors {r['errors']}, "
        f"safety {r['safety']}"
    )
    out.update(r)
    out["loadavg_at_end"] = load_average()
    out["machine"] = machine()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
