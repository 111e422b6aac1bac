"""Task-engine throughput over MCP Streamable HTTP: 8 worker processes drain a queue on a real
`agentfleet serve` child, each looping task_claim(wait_s=1) -> task_complete.

    python bench/mcp_workers.py [--tasks 2000] [--workers 8] [--mode auto|legacy]
                                [--submit pre|concurrent] [--submit-concurrency 8]
                                [--pg-url postgresql://postgres@127.0.0.1:5432/postgres] [--no-sqlite]
                                [--py-spy DIR]

What runs:
1. `python -m server.cli serve --port P` (uvloop + httptools, as shipped) with its own temp data
   dir, admin token and AGENTFLEET_PROFILES_DIR=tests/profiles; SQLite by default, and with
   --pg-url a second run on a scratch PostgreSQL database created and dropped here.
2. The admin spawns `--workers` agents of profile `worker` (max_concurrency 64) over MCP.
3. --submit pre (default): the admin submits --tasks tasks before the workers start (with
   --submit-concurrency concurrent calls; not measured). --submit concurrent: a separate
   submitter process submits them while the workers run, and the clock covers both.
4. Each worker is its own OS process (this file with --worker) with its own agent token and one
   mcp.Client. All connect first, then start together; each loops task_claim(wait_s=1) ->
   task_complete(result) and stops when a claim comes back empty (pre) or empty after the
   submitter finished (concurrent).
5. cycles/s = completed tasks / (last completion - start). Per-call client-side latencies of
   task_claim and task_complete (p50/p90/p99), server CPU seconds per cycle (from /proc), and a
   check that every task ended completed exactly once. Goal: >= 150 cycles/s.

--py-spy DIR records the server process with py-spy during the measured phase (raw collapsed
stacks in DIR/server-<store>.txt); it must be on PATH or in the venv.

stdout carries exactly one JSON object; progress notes go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    call,
    exit_on_sigterm,
    load_average,
    machine,
    make_note,
    mcp_client,
    pg_reachable,
    pg_scratch_database,
    proc_cpu_s,
    read_line,
    reaped,
    rss_kb,
    serve_child,
    spawn_agents,
    spawn_script,
    start_py_spy,
    stop_processes,
    stop_py_spy,
    summarise_ns,
)

note = make_note("mcp_workers")
GOAL_CPS = 150.0
RUN_DEADLINE_S = 300.0


# -- worker process --------------------------------------------------------------------------------


async def worker_main(url: str, token: str, mode: str, wait_s: float, done_flag: str | None) -> dict[str, Any]:
    """Connect, say ready, wait for 'go' on stdin, drain, report."""
    claim_ns: list[int] = []
    complete_ns: list[int] = []
    empty = 0
    completed = 0
    first = last = 0
    errors: list[str] = []
    async with mcp_client(url, token, mode=mode) as client:
        loop = asyncio.get_running_loop()
        print("ready", flush=True)
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            return {"error": f"expected 'go', got {line!r}"}
        first = time.monotonic_ns()
        cpu0 = time.process_time()
        clock = time.perf_counter_ns
        while True:
            t0 = clock()
            got = await call(client, "task_claim", wait_s=wait_s)
            t1 = clock()
            task = got["task"]
            if task is None:
                empty += 1  # an empty claim waited wait_s: not a latency sample
                if done_flag is None or os.path.exists(done_flag):
                    break
                continue
            claim_ns.append(t1 - t0)
            t2 = clock()
            try:
                await call(client, "task_complete", task_id=task["id"], result={"n": task["payload"]["n"]})
            except Exception as exc:  # noqa: BLE001 - reported, counted, and the run fails
                errors.append(repr(exc))
                if len(errors) > 20:
                    break
                continue
            complete_ns.append(clock() - t2)
            completed += 1
            last = time.monotonic_ns()
        cpu = time.process_time() - cpu0
    return {
        "completed": completed,
        "empty_claims": empty,
        "first_ns": first,
        "last_complete_ns": last,
        "claim_ns": claim_ns,
        "complete_ns": complete_ns,
        "cpu_s": cpu,
        "errors": errors,
    }


def run_worker(args: argparse.Namespace) -> int:
    import anyio

    token = sys.stdin.readline().strip()  # the token comes on stdin, not argv (ps shows argv)
    result = anyio.run(
        worker_main,
        args.url,
        token,
        args.mode,
        args.wait_s,
        args.done_flag,
        backend="asyncio",
        backend_options={"use_uvloop": True},
    )
    print(json.dumps(result), flush=True)
    return 0


# -- submitter process (concurrent mode) -----------------------------------------------------------


async def submit_tasks(url: str, token: str, mode: str, count: int, concurrency: int, offset: int = 0) -> float:
    started = time.perf_counter()
    async with mcp_client(url, token, mode=mode) as client:
        queue = iter(range(offset, offset + count))

        async def one() -> None:
            for i in queue:
                await call(client, "task_submit", type="bench", payload={"n": i})

        await asyncio.gather(*(one() for _ in range(concurrency)))
    return time.perf_counter() - started


def run_submitter(args: argparse.Namespace) -> int:
    import anyio

    token = sys.stdin.readline().strip()
    if sys.stdin.readline().strip() != "go":
        return 1
    seconds = anyio.run(
        submit_tasks,
        args.url,
        token,
        args.mode,
        args.tasks,
        args.submit_concurrency,
        backend="asyncio",
        backend_options={"use_uvloop": True},
    )
    Path(args.done_flag).touch()
    print(json.dumps({"submitted": args.tasks, "seconds": round(seconds, 3)}), flush=True)
    return 0


# -- parent ----------------------------------------------------------------------------------------


def run_store(args: argparse.Namespace, database_url: str | None, store: str) -> dict[str, Any]:
    import anyio

    admin = "afk_" + secrets.token_urlsafe(32)
    children: list[subprocess.Popen[Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="agentfleet-bench-workers-"))
    spy: subprocess.Popen[bytes] | None = None
    try:
        server_env = dict(item.split("=", 1) for item in args.server_env)
        with serve_child(admin, database_url, server_env, note=note) as server, reaped(children):
            url = server.base_url
            agents = anyio.run(spawn_agents, url, admin, args.workers, "worker")
            note(f"{store}: spawned {len(agents)} agents of profile worker")
            done_flag = None
            if args.submit == "pre":
                seconds = anyio.run(
                    submit_tasks,
                    url,
                    admin,
                    args.mode,
                    args.tasks,
                    args.submit_concurrency,
                    backend="asyncio",
                    backend_options={"use_uvloop": True},
                )
                note(f"{store}: pre-submitted {args.tasks} tasks in {seconds:.1f}s (not measured)")
            else:
                done_flag = str(tmp / "submit-done")
            common = ["--url", url, "--mode", args.mode, "--wait-s", str(args.wait_s)]
            if done_flag:
                common += ["--done-flag", done_flag]
            workers = [spawn_script(__file__, ["--worker", *common], a["token"]) for a in agents]
            children.extend(workers)
            submitter = None
            if args.submit == "concurrent":
                submitter = spawn_script(
                    __file__,
                    [
                        "--submitter",
                        *common,
                        "--tasks",
                        str(args.tasks),
                        "--submit-concurrency",
                        str(args.submit_concurrency),
                    ],
                    admin,
                )
                children.append(submitter)
            deadline = time.monotonic() + 60
            for proc in workers:
                if read_line(proc, deadline).strip() != "ready":
                    raise RuntimeError("a worker did not get ready")
            note(f"{store}: {len(workers)} worker processes connected; go")
            if args.py_spy:
                spy = start_py_spy(server.pid, Path(args.py_spy) / f"server-{store}.txt", args.py_spy_gil)
            rss_before = rss_kb(server.pid)
            cpu_before = proc_cpu_s(server.pid)
            go_ns = time.monotonic_ns()
            for proc in [*workers, *([submitter] if submitter else [])]:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            deadline = time.monotonic() + RUN_DEADLINE_S
            results = [json.loads(read_line(proc, deadline)) for proc in workers]
            cpu_after = proc_cpu_s(server.pid)
            rss_after = rss_kb(server.pid)
            stop_py_spy(spy)
            spy = None
            submit_info = json.loads(read_line(submitter, deadline)) if submitter else None
            stop_processes(children)
            failed = [r for r in results if "error" in r or r.get("errors")]
            if failed:
                raise RuntimeError(f"workers failed: {[r.get('error') or r.get('errors')[:3] for r in failed]}")
            status = anyio.run(_fleet_status, url, admin)
            server_log = server.stderr_tail(1500)
    finally:
        stop_py_spy(spy)
        stop_processes(children)
        shutil.rmtree(tmp, ignore_errors=True)

    completed = sum(r["completed"] for r in results)
    end_ns = max(r["last_complete_ns"] for r in results)
    start_ns = go_ns
    seconds = (end_ns - start_ns) / 1e9
    claim = [ns for r in results for ns in r["claim_ns"]]
    complete = [ns for r in results for ns in r["complete_ns"]]
    by_status = {k: sum(v.values()) for k, v in status["tasks"].items() if sum(v.values())}
    cps = completed / seconds if seconds > 0 else 0.0
    server_cpu = (cpu_after - cpu_before) if cpu_before is not None and cpu_after is not None else None
    out = {
        "store": store,
        "tasks": args.tasks,
        "completed": completed,
        "all_completed_once": by_status == {"completed": args.tasks} and completed == args.tasks,
        "task_statuses": by_status,
        "seconds": round(seconds, 3),
        "cycles_per_s": round(cps, 1),
        "goal_cycles_per_s": GOAL_CPS,
        "goal_met": cps >= GOAL_CPS,
        "task_claim": summarise_ns(claim),
        "task_complete": summarise_ns(complete),
        "empty_claims": sum(r["empty_claims"] for r in results),
        "per_worker_completed": [r["completed"] for r in results],
        "server_cpu_s": None if server_cpu is None else round(server_cpu, 2),
        "server_cpu_ms_per_cycle": (
            None if server_cpu is None or not completed else round(server_cpu / completed * 1e3, 3)
        ),
        "server_cpu_utilisation": None if server_cpu is None or seconds <= 0 else round(server_cpu / seconds, 2),
        "worker_cpu_ms_per_cycle": round(sum(r["cpu_s"] for r in results) / max(completed, 1) * 1e3, 3),
        "server_rss_kb": {"before": rss_before, "after": rss_after},
    }
    if submit_info:
        out["submitter"] = submit_info
    if "Traceback" in server_log or " ERROR " in server_log:
        out["server_log_tail"] = server_log
    return out


async def _fleet_status(url: str, admin: str) -> dict[str, Any]:
    async with mcp_client(url, admin) as client:
        return await call(client, "fleet_status")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000, help="tasks to drain (default 2000)")
    parser.add_argument("--workers", type=int, default=8, help="worker processes, one agent each (default 8)")
    parser.add_argument(
        "--mode",
        choices=["auto", "legacy"],
        default="auto",
        help="MCP protocol era: auto = 2026-07-28 (default), legacy = 2025-11-25 handshake",
    )
    parser.add_argument("--wait-s", type=float, default=1.0, help="task_claim wait_s (default 1)")
    parser.add_argument(
        "--submit",
        choices=["pre", "concurrent"],
        default="pre",
        help="pre: queue every task before the clock starts (default); concurrent: a "
        "submitter process runs beside the workers",
    )
    parser.add_argument("--submit-concurrency", type=int, default=8, help="concurrent task_submit calls (default 8)")
    parser.add_argument("--pg-url", help="also run on a scratch database on this PostgreSQL server")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite run")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the server, e.g. AGENTFLEET_RATE_LIMIT_PER_S=0 (repeatable)",
    )
    parser.add_argument("--py-spy", metavar="DIR", help="record the server with py-spy into DIR")
    parser.add_argument("--py-spy-gil", action="store_true", help="with --py-spy: sample only the GIL holder")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--submitter", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--done-flag", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return run_worker(args)
    if args.submitter:
        return run_submitter(args)
    if args.tasks < 1 or args.workers < 1 or args.submit_concurrency < 1:
        parser.error("--tasks, --workers and --submit-concurrency must be >= 1")

    exit_on_sigterm()
    out: dict[str, Any] = {
        "bench": "mcp_workers",
        "workers": args.workers,
        "worker_processes": args.workers,
        "mode": args.mode,
        "submit": "pre-submitted before the clock" if args.submit == "pre" else "concurrent submitter process",
        "claim_wait_s": args.wait_s,
        "transport": "streamable-http to `python -m server.cli serve` (uvloop+httptools)",
        "loadavg_at_start": load_average(),
        "results": {},
    }
    if not args.no_sqlite:
        out["results"]["sqlite"] = run_store(args, None, "sqlite")
        note(f"sqlite: {out['results']['sqlite']['cycles_per_s']} cycles/s")
    if args.pg_url:
        why_not = pg_reachable(args.pg_url)
        if why_not:
            out["results"]["postgresql"] = {"skipped": why_not}
        else:
            with pg_scratch_database(args.pg_url, "workers", migrate=False) as url:
                out["results"]["postgresql"] = run_store(args, url, "postgresql")
            note(f"postgresql: {out['results']['postgresql']['cycles_per_s']} cycles/s")
    ran = [r for r in out["results"].values() if "goal_met" in r]
    out["goal"] = f">= {GOAL_CPS:.0f} cycles/s"
    out["goal_met"] = bool(ran) and all(r["goal_met"] for r in ran)
    out["loadavg_at_end"] = load_average()
    out["machine"] = machine()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
