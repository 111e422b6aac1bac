"""Parked long-poll claimers: 2,000 concurrent task_claim(wait_s=60) calls on one `agentfleet serve`
while a separate client measures the latency of unrelated tool calls.

    python bench/parked_claimers.py [--agents 40] [--claims-per-agent 50] [--processes 4]
                                    [--settle-s 15] [--measure-s 20] [--baseline-s 5] [--probe-gap-ms 10]
                                    [--mode auto|legacy] [--pg-url postgresql://…] [--no-sqlite]
                                    [--py-spy DIR]

What runs:
1. `python -m server.cli serve --port P` (uvloop + httptools, as shipped) with its own temp data
   dir and admin token, profiles from tests/profiles; SQLite by default, and with --pg-url also on
   a scratch PostgreSQL database (created and dropped here). The server's own settings are used
   (claim_recheck_s = 10: a parked claim re-checks the store every 10 s).
2. The admin spawns --agents agents of profile `worker` (max_concurrency 64) plus one probe agent.
   A probe task is submitted, claimed and completed by the probe agent, so task_get has a target.
3. Baseline: the probe process (its own OS process, its own mcp.Client with the admin token)
   calls fleet_status and task_get alternately, one at a time, --probe-gap-ms apart, for
   --baseline-s on the idle server.
4. --processes claimer processes start; each holds (agents / processes) agents, one mcp.Client
   (one httpx2 pool) per agent, and runs --claims-per-agent concurrent task_claim(wait_s=60)
   calls on each client. Defaults: 40 agents x 50 concurrent claims = 2,000 parked claims, spread
   over 4 processes. A claim that times out empty is re-issued, so the count stays at 2,000.
5. When every claim's POST is sent and its connection is established (server-side ESTABLISHED
   sockets, /proc/net/tcp), the parent waits --settle-s and until the server uses < 0.5 cores, then
   the probe measures again for --measure-s (the JSON also has the worst latency of each second).
   Goal: p99 <= 50 ms for the unrelated calls while 2,000 claims are parked.
6. The admin submits one task per parked claim (each submit wakes one waiter); every claimer that
   gets a task stops, the rest stop on their next empty return (a claim parked since the start
   may reach its 60 s limit while the tasks are still being submitted: counted as empty_returns).
   All processes are then reaped (SIGTERM, then SIGKILL) and the temp dirs removed.

Reported: probe latencies (baseline and parked), server RSS (VmRSS idle / parked / after, VmHWM),
server CPU utilisation while parked, how many claims were woken by a task, timings of each phase.

--py-spy DIR records the server with py-spy while the probe measures (DIR/parked-<store>.txt).

stdout carries exactly one JSON object; progress notes go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    vmhwm_kb,
)
from mcp_workers import submit_tasks  # noqa: E402

note = make_note("parked_claimers")
GOAL_P99_MS = 50.0
WAIT_S = 60.0
SETTLE_MAX_S = 30.0
SETTLE_CPU = 0.5  # server cores in use below which the launch storm is over
EXIT_DEADLINE_S = WAIT_S + 30


# -- claimer process -------------------------------------------------------------------------------


async def claimer_main(url: str, tokens: list[str], per_agent: int, mode: str, stop_flag: str) -> dict[str, Any]:
    import httpx2

    woken: list[int] = []  # ms from go to the claim that returned a task
    empty = 0
    errors: list[str] = []
    started = 0

    async def one(client: Any, go_ns: int) -> None:
        nonlocal empty, started
        started += 1
        while True:
            try:
                got = await call(client, "task_claim", wait_s=WAIT_S)
            except Exception as exc:  # noqa: BLE001 - counted and reported; the run then fails
                errors.append(repr(exc)[:300])
                return
            if got["task"] is not None:
                woken.append((time.monotonic_ns() - go_ns) // 1_000_000)
                return
            empty += 1
            if os.path.exists(stop_flag):
                return

    sent = 0
    all_sent = asyncio.Event()
    target = len(tokens) * per_agent

    async def on_request(request: Any) -> None:
        nonlocal sent
        if request.method == "POST":
            sent += 1
            if sent >= target:
                all_sent.set()

    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for token in tokens:
            http = await stack.enter_async_context(
                httpx2.AsyncClient(
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=httpx2.Timeout(WAIT_S + 60, connect=30),
                    limits=httpx2.Limits(max_connections=per_agent + 8, max_keepalive_connections=per_agent + 8),
                    event_hooks={"request": [on_request]},
                )
            )
            clients.append(await stack.enter_async_context(mcp_client(url, token, mode=mode, http=http)))
        print("ready", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            raise RuntimeError(f"expected go, got {line!r}")
        go_ns = time.monotonic_ns()
        sent = 0  # count only the claims' POSTs, not the session setup
        async with asyncio.TaskGroup() as group:
            for client in clients:
                for _ in range(per_agent):
                    group.create_task(one(client, go_ns))
            print(json.dumps({"launched": target}), flush=True)
            await all_sent.wait()
            print(json.dumps({"sent": sent, "ms": (time.monotonic_ns() - go_ns) // 1_000_000}), flush=True)
    return {
        "claims": len(tokens) * per_agent,
        "woken_by_task": len(woken),
        "empty_returns": empty,
        "errors": errors,
        "woken_ms": sorted(woken),
    }


def run_claimer(args: argparse.Namespace) -> int:
    import anyio

    tokens = sys.stdin.readline().split()
    result = anyio.run(
        claimer_main,
        args.url,
        tokens,
        args.claims_per_agent,
        args.mode,
        args.stop_flag,
        backend="asyncio",
        backend_options={"use_uvloop": True},
    )
    print(json.dumps(result), flush=True)
    return 0


# -- probe process ---------------------------------------------------------------------------------


async def probe_main(url: str, token: str, task_id: str, mode: str, gap_ms: float) -> None:
    """Commands on stdin: 'measure SECONDS' -> prints one JSON line; 'quit'."""
    loop = asyncio.get_running_loop()
    async with mcp_client(url, token, mode=mode) as client:
        await call(client, "fleet_status")
        await call(client, "task_get", task_id=task_id)
        print("ready", flush=True)
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
            if not line or line[0] == "quit":
                return
            seconds = float(line[1])
            samples: dict[str, list[int]] = {"fleet_status": [], "task_get": []}
            per_second: dict[int, int] = {}  # second of the window -> worst latency in it (ns)
            errors = 0
            begin = time.monotonic()
            end = begin + seconds
            i = 0
            while time.monotonic() < end:
                tool = "fleet_status" if i % 2 == 0 else "task_get"
                i += 1
                t0 = time.perf_counter_ns()
                result = await client.call_tool(tool, {} if tool == "fleet_status" else {"task_id": task_id})
                took = time.perf_counter_ns() - t0
                samples[tool].append(took)
                second = int(time.monotonic() - begin)
                per_second[second] = max(per_second.get(second, 0), took)
                if result.is_error:
                    errors += 1
                if gap_ms > 0:
                    await asyncio.sleep(gap_ms / 1000)
            print(
                json.dumps(
                    {
                        "samples": samples,
                        "errors": errors,
                        "worst_ms_by_second": [round(per_second.get(k, 0) / 1e6, 1) for k in range(int(seconds) + 1)],
                    }
                ),
                flush=True,
            )


def run_probe(args: argparse.Namespace) -> int:
    import anyio

    token, task_id = sys.stdin.readline().split()
    anyio.run(
        probe_main,
        args.url,
        token,
        task_id,
        args.mode,
        args.probe_gap_ms,
        backend="asyncio",
        backend_options={"use_uvloop": True},
    )
    return 0


def probe_summary(raw: dict[str, Any]) -> dict[str, Any]:
    both = raw["samples"]["fleet_status"] + raw["samples"]["task_get"]
    return {
        "all": summarise_ns(both),
        "fleet_status": summarise_ns(raw["samples"]["fleet_status"]),
        "task_get": summarise_ns(raw["samples"]["task_get"]),
        "errors": raw["errors"],
        "worst_ms_by_second": raw["worst_ms_by_second"],
    }


# -- parent ----------------------------------------------------------------------------------------


async def _prepare_probe_task(url: str, admin: str, probe_token: str) -> str:
    async with mcp_client(url, admin) as client:
        task = await call(client, "task_submit", type="probe", payload={"probe": True})
    async with mcp_client(url, probe_token) as client:
        got = await call(client, "task_claim", wait_s=5)
        assert got["task"] is not None and got["task"]["id"] == task["id"], got
        await call(client, "task_complete", task_id=task["id"], result={"ok": True})
    return task["id"]


def _wait_settled(pid: int, min_s: float, deadline_s: float) -> tuple[float, float]:
    """Wait at least `min_s`, then until the server uses < SETTLE_CPU cores over a 1 s window (at
    most `deadline_s` in all); returns (seconds waited, last rate). CPU alone is not enough on
    SQLite: a backlog of writers sleeping in SQLite's busy handler uses little CPU."""
    started = time.monotonic()
    last = proc_cpu_s(pid) or 0.0
    rate = float("nan")
    while time.monotonic() - started < deadline_s:
        time.sleep(1.0)
        now = proc_cpu_s(pid) or 0.0
        rate = now - last
        last = now
        if rate < SETTLE_CPU and time.monotonic() - started >= min_s:
            break
    return time.monotonic() - started, rate


def _established(port: int) -> int:
    """Server-side ESTABLISHED TCP connections on `port` (IPv4), from /proc/net/tcp."""
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                count += 1
    return count


def _wait_connections(port: int, want: int, deadline_s: float) -> int:
    end = time.monotonic() + deadline_s
    count = _established(port)
    while count < want and time.monotonic() < end:
        time.sleep(0.2)
        count = _established(port)
    return count


def run_store(args: argparse.Namespace, database_url: str | None, store: str) -> dict[str, Any]:
    import anyio

    admin = "afk_" + secrets.token_urlsafe(32)
    children: list[subprocess.Popen[Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="agentfleet-bench-parked-"))
    stop_flag = str(tmp / "stop")
    spy = None
    phases: dict[str, float] = {}
    out: dict[str, Any] = {"store": store}
    try:
        with serve_child(admin, database_url, note=note) as server, reaped(children):
            url, pid = server.base_url, server.pid
            t = time.monotonic()
            agents = anyio.run(spawn_agents, url, admin, args.agents + 1, "worker")
            probe_agent, agents = agents[0], agents[1:]
            task_id = anyio.run(_prepare_probe_task, url, admin, probe_agent["token"])
            phases["spawn_agents_s"] = round(time.monotonic() - t, 2)
            rss_idle = rss_kb(pid)

            common = ["--url", url, "--mode", args.mode]
            probe = spawn_script(
                __file__, ["--probe", *common, "--probe-gap-ms", str(args.probe_gap_ms)], f"{admin} {task_id}"
            )
            children.append(probe)
            if read_line(probe, time.monotonic() + 60).strip() != "ready":
                raise RuntimeError("probe did not get ready")

            def measure(seconds: float) -> dict[str, Any]:
                assert probe.stdin is not None
                cpu0 = proc_cpu_s(pid)
                probe.stdin.write(f"measure {seconds}\n")
                probe.stdin.flush()
                raw = json.loads(read_line(probe, time.monotonic() + seconds + 120))
                cpu1 = proc_cpu_s(pid)
                summary = probe_summary(raw)
                if cpu0 is not None and cpu1 is not None:
                    summary["server_cpu_cores"] = round((cpu1 - cpu0) / seconds, 2)
                return summary

            note(f"{store}: baseline probe for {args.baseline_s}s on the idle server")
            out["probe_idle"] = measure(args.baseline_s)

            groups = [agents[i :: args.processes] for i in range(args.processes)]
            claimers = [
                spawn_script(
                    __file__,
                    ["--claimer", *common, "--claims-per-agent", str(args.claims_per_agent), "--stop-flag", stop_flag],
                    " ".join(a["token"] for a in group),
                )
                for group in groups
                if group
            ]
            children.extend(claimers)
            deadline = time.monotonic() + 120
            for proc in claimers:
                if read_line(proc, deadline).strip() != "ready":
                    raise RuntimeError("a claimer process did not get ready")
            t = time.monotonic()
            for proc in claimers:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            launched = sum(json.loads(read_line(proc, deadline))["launched"] for proc in claimers)
            sent = sum(json.loads(read_line(proc, deadline))["sent"] for proc in claimers)
            phases["all_claims_sent_s"] = round(time.monotonic() - t, 2)
            connected = _wait_connections(server.port, launched, 60)
            phases["all_connected_s"] = round(time.monotonic() - t, 2)
            settle_s, settle_rate = _wait_settled(pid, args.settle_s, args.settle_s + SETTLE_MAX_S)
            phases["settle_s"] = round(settle_s, 2)
            phases["since_first_claim_at_measure_start_s"] = round(time.monotonic() - t, 2)
            out["connections_at_measure_start"] = connected
            note(
                f"{store}: {sent} claims sent from {len(claimers)} processes, {connected} connections; settled to "
                f"{settle_rate:.2f} cores after {settle_s:.1f}s; measuring {args.measure_s}s"
            )
            if phases["since_first_claim_at_measure_start_s"] + args.measure_s > WAIT_S:
                note("warning: the measurement overlaps the first wave of 60 s claim timeouts (re-issued claims)")
            if args.py_spy:
                spy = start_py_spy(pid, Path(args.py_spy) / f"parked-{store}.txt", args.py_spy_gil)
            rss_parked_start = rss_kb(pid)
            out["probe_parked"] = measure(args.measure_s)
            rss_parked = rss_kb(pid)
            stop_py_spy(spy)
            spy = None

            Path(stop_flag).touch()
            t = time.monotonic()
            note(f"{store}: waking: submitting {launched} tasks")
            submit_s = anyio.run(
                submit_tasks,
                url,
                admin,
                args.mode,
                launched,
                32,
                0,
                backend="asyncio",
                backend_options={"use_uvloop": True},
            )
            phases["wake_submit_s"] = round(submit_s, 2)
            results = [json.loads(read_line(proc, time.monotonic() + EXIT_DEADLINE_S)) for proc in claimers]
            phases["wake_total_s"] = round(time.monotonic() - t, 2)
            assert probe.stdin is not None
            probe.stdin.write("quit\n")
            probe.stdin.flush()
            stop_processes(children)
            rss_after = rss_kb(pid)
            out.update(
                agents=args.agents,
                claims_per_agent=args.claims_per_agent,
                claimer_processes=len(claimers),
                parked_claims=launched,
                wait_s=WAIT_S,
                woken_by_task=sum(r["woken_by_task"] for r in results),
                empty_returns=sum(r["empty_returns"] for r in results),
                claimer_errors=[e for r in results for e in r["errors"]][:5],
                wake_latency_ms_from_go=_wake_percentiles([ms for r in results for ms in r["woken_ms"]]),
                server_rss_kb={
                    "idle": rss_idle,
                    "parked_start": rss_parked_start,
                    "parked_end": rss_parked,
                    "after_wake": rss_after,
                    "peak_vmhwm": vmhwm_kb(pid),
                },
                phases=phases,
                settle_cpu_cores=round(settle_rate, 2),
            )
            p99 = out["probe_parked"]["all"]["p99_ms"]
            out.update(goal_p99_ms=GOAL_P99_MS, goal_met=p99 <= GOAL_P99_MS and not out["claimer_errors"])
            log = server.stderr_tail(1500)
            if "Traceback" in log or " ERROR " in log:
                out["server_log_tail"] = log
    finally:
        stop_py_spy(spy)
        stop_processes(children)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _wake_percentiles(ms: list[int]) -> dict[str, Any]:
    if not ms:
        return {"n": 0}
    ms = sorted(ms)
    return {"n": len(ms), "first": ms[0], "p50": ms[len(ms) // 2], "last": ms[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=40, help="claiming agents (default 40)")
    parser.add_argument(
        "--claims-per-agent", type=int, default=50, help="concurrent task_claim calls per agent, <= 64 (default 50)"
    )
    parser.add_argument("--processes", type=int, default=4, help="claimer processes (default 4)")
    parser.add_argument("--measure-s", type=float, default=20.0, help="probe window while parked (default 20)")
    parser.add_argument(
        "--settle-s",
        type=float,
        default=15.0,
        help="wait at least this long after every claim is connected before measuring (default 15)",
    )
    parser.add_argument("--baseline-s", type=float, default=5.0, help="probe window on the idle server (default 5)")
    parser.add_argument("--probe-gap-ms", type=float, default=10.0, help="pause between probe calls (default 10)")
    parser.add_argument(
        "--mode",
        choices=["auto", "legacy"],
        default="auto",
        help="MCP protocol era for every client (default auto = 2026-07-28)",
    )
    parser.add_argument("--pg-url", help="also run on a scratch database on this PostgreSQL server")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite run")
    parser.add_argument("--py-spy", metavar="DIR", help="record the server with py-spy while parked")
    parser.add_argument("--py-spy-gil", action="store_true", help="with --py-spy: sample only the GIL holder")
    parser.add_argument("--claimer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--stop-flag", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.claimer:
        return run_claimer(args)
    if args.probe:
        return run_probe(args)
    if args.agents < 1 or args.processes < 1 or not 1 <= args.claims_per_agent <= 64:
        parser.error("--agents and --processes must be >= 1; --claims-per-agent 1..64 (worker max_concurrency)")

    exit_on_sigterm()
    out: dict[str, Any] = {
        "bench": "parked_claimers",
        "mode": args.mode,
        "loadavg_at_start": load_average(),
        "layout": f"{args.agents} agents x {args.claims_per_agent} concurrent task_claim(wait_s=60) "
        f"calls, one mcp.Client (own httpx2 pool) per agent, {args.processes} "
        "claimer processes; probe = its own process, admin token, sequential calls",
        "results": {},
    }
    if not args.no_sqlite:
        out["results"]["sqlite"] = run_store(args, None, "sqlite")
    if args.pg_url:
        why_not = pg_reachable(args.pg_url)
        if why_not:
            out["results"]["postgresql"] = {"skipped": why_not}
        else:
            with pg_scratch_database(args.pg_url, "parked", migrate=False) as url:
                out["results"]["postgresql"] = run_store(args, url, "postgresql")
    ran = [r for r in out["results"].values() if "goal_met" in r]
    out["goal"] = f"p99 of fleet_status/task_get <= {GOAL_P99_MS:.0f} ms with the claims parked"
    out["goal_met"] = bool(ran) and all(r["goal_met"] for r in ran)
    out["loadavg_at_end"] = load_average()
    out["machine"] = machine()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
