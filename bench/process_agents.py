"""Process agents on a real `agentfleet serve`: how long a `python-echo` agent takes from
`agent_spawn` to its first heartbeat, and what a fleet of 50 of them costs and does.

    python bench/process_agents.py [--spawns 20] [--quiet-spawns 10] [--fleet 50] [--tasks 500]
                                   [--rate 10] [--parts spawn,fleet,startup]
                                   [--database-url URL | --store postgresql [--pg-server URL]]

What runs (one `python -m server.cli serve` child per run, its own temp data dir and admin token,
AGENTFLEET_RATE_LIMIT_PER_S=0; the admin talks to it over MCP Streamable HTTP with one mcp.Client):

1. `spawn`: `--spawns` python-echo agents, one at a time. Each: agent_spawn, then agent_get every
   `--poll-ms` (10) until it shows `active`; then agent_terminate (default wait), and the next one
   only after that, so each spawn has the machine to itself (no other agent is alive).
   Per agent:
     server-side  last_heartbeat_at - created_at from agent_get (the server's own clock, so no
                  polling error), split at process.launched_at (when the supervisor claimed the
                  start, just before fork) and at the process's start time from /proc (±10 ms):
                  created -> launched (supervisor wake-up + the launch transaction),
                  launched -> exec (fork/exec from the supervisor's thread),
                  exec -> first heartbeat (interpreter, imports of `agentfleet worker`, the
                  first task_claim reaching the server's door);
     client       from just before the agent_spawn call to the agent_get that first says active.
   Then `--quiet-spawns` more, with no polling (one agent_get 1.5 s after the spawn returned), to
   show what the 10 ms polling itself costs a starting agent on 2 cores: server-side only.
   Goal: server-side p50 of the polled spawns <= 500 ms (`goal_met`; the seed documents ask
   < 2 s); `goal_met_without_polling` judges the quiet ones.
2. `fleet`: `--fleet` python-echo agents spawned back to back, then wait until all are active
   (ramp time, and each one's server-side spawn -> heartbeat under that burst). With all alive and
   idle (each parked in a long-poll task_claim): server RSS (before the first spawn of the run,
   before this fleet, with all alive, after the tasks), the agents' RSS and PSS summed over their
   pids and any children, load average. Then `--tasks` echo tasks
   (`task_submit(type="echo", capabilities=["echo"], payload={"n": i})`) at a fixed `--rate`
   per second (0: as fast as `--submit-concurrency` callers go). The default, 10/s, is well under
   what 2 cores can run (each echo task starts a Python interpreter for its command), so queue ->
   claim shows how fast a parked claimer is handed a new task, not a backlog; --rate 0 shows the
   ceiling. Once all have ended, task_get on
   each: queue -> claim (started_at - created_at), end to end (finished_at - created_at), run
   (finished_at - started_at), throughput (tasks / (last finished - first created)), how the tasks
   spread over the agents, and that each result is {"echo": payload}. Then agent_terminate on all
   (concurrently, `--terminate-concurrency`), and a check that none of their processes (nor their
   children) is left.
3. `startup`: where a spawn's time goes, outside the server, each `--startup-runs` times in a
   fresh process with a minimal environment and a temp cwd, as the supervisor starts an agent:
   `python -c pass`; `python -c "import server.cli, server.worker.loop"` (what `agentfleet worker`
   imports); `python -m server.cli worker --help`; and a probe that does those imports, then, like
   the worker, asyncio.run + FleetClient + task_claim(wait_s=0) against the server with the token
   of a fresh `worker` agent (its first call is its first heartbeat), then agent_get on itself (a
   second call, for comparison, that does not move the heartbeat). Plus the top imports by
   cumulative time from `python -X importtime`, and the probe's imports split by phase (up front,
   in FleetClient(), in the first call).

An agent_terminate still waiting after 3 s gets a snapshot of the agent's process (state, signal
masks, each thread's wait channel, the worker's log tail): `slow_to_stop` in the output.
`machine_cpu_over_run` gives the whole machine's busy and steal share over the run (/proc/stat).

Stores: SQLite in the server's temp data dir by default; `--database-url` uses a PostgreSQL (or
SQLite) database you give (not emptied: use a scratch one); `--store postgresql` creates a scratch
database on `--pg-server` and drops it afterwards.

Every agent process is stopped at the end: by agent_terminate, then (after the server stopped)
by pid, checked against the start time seen while it ran, if any survived. `agentfleet serve`
leaves its process agents running when it stops (a restarted server re-adopts them), so that last
step matters if a run fails half-way.

stdout carries exactly one JSON object; progress notes go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
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
    pg_reachable,
    pg_scratch_database,
    proc_cpu_s,
    rss_kb,
    serve_child,
    store_kind,
    summarise_ns,
)

note = make_note("process_agents")
PROFILE = "python-echo"
GOAL_P50_MS = 500.0
SEED_GOAL_MS = 2000.0
ACTIVE_DEADLINE_S = 60.0
TASKS_DEADLINE_S = 600.0
STUCK_AFTER_S = 3.0  # a terminate still waiting this long: snapshot the agent's process
SLOW_TERMINATE_S = 5.0  # python-echo's stop_timeout_s is 10: a terminate this slow ended in SIGKILL
TERMINAL = {"completed", "failed", "cancelled", "dead"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- /proc helpers ---------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text(errors="replace").rpartition(")")[2].split()
    except OSError:
        return None


def start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot) of a live, non-zombie pid."""
    fields = _stat_fields(pid)
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def alive_as(pid: int, ticks: str) -> bool:
    """Is `pid` still the process that started at `ticks` (and not a zombie)?"""
    return start_ticks(pid) == ticks


def is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] == "Z"


def exec_epoch_s(pid: int) -> float | None:
    """When `pid` started, as a Unix time (clock-tick resolution: 10 ms at CLK_TCK=100)."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    boot_epoch = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return boot_epoch + int(ticks) / CLK_TCK


def children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and len(fields) > 1:
                kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def descendants(pid: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [], list(kids.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(kids.get(child, []))
    return out


def cpu_times() -> list[int]:
    """The aggregate `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal …"""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def cpu_split(before: list[int], after: list[int]) -> dict[str, float]:
    """Busy and steal as percent of all CPU time between two cpu_times() (steal: taken by the host)."""
    delta = [b - a for a, b in zip(before, after, strict=False)]
    total = sum(delta[:8]) or 1
    idle = delta[3] + delta[4]
    return {
        "busy_percent": round((total - idle - delta[7]) / total * 100, 1),
        "steal_percent": round(delta[7] / total * 100, 1),
    }


def pss_kb(pid: int) -> int | None:
    """Proportional set size (shared pages split between the processes sharing them), KiB."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_with_children_s(pid: int) -> float | None:
    """utime + stime + cutime + cstime (reaped children, e.g. the echo commands), seconds."""
    fields = _stat_fields(pid)
    if not fields:
        return None
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def iso_us(value: str | None) -> int | None:
    if value is None:
        return None
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1_000_000)


def ms(us: int | float | None) -> float | None:
    return None if us is None else round(us / 1000, 1)


def summarise_us(samples: list[int]) -> dict[str, Any]:
    return summarise_ns([s * 1000 for s in samples])


# -- agent bookkeeping -----------------------------------------------------------------------------


class Fleet:
    """Every agent this run spawned, and the pids (with start times) seen for them, so that all
    of them can be stopped whatever happens."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.ids: list[str] = []
        self.live: set[str] = set()
        self.pids: dict[int, str] = {}  # pid -> start ticks
        self.pid_of: dict[str, int] = {}  # agent id -> its process
        self.data_dir = data_dir  # the server's: agents/<id>/stderr.log is the worker's log
        self.stuck: list[dict[str, Any]] = []  # snapshots of agents slow to stop

    def spawned(self, agent_id: str) -> None:
        self.ids.append(agent_id)
        self.live.add(agent_id)

    def saw(self, agent: dict[str, Any]) -> int | None:
        pid = (agent.get("process") or {}).get("pid")
        if pid:
            self.pid_of[agent["id"]] = pid
        if pid and pid not in self.pids:
            ticks = start_ticks(pid)
            if ticks is not None:
                self.pids[pid] = ticks
        return pid

    def saw_children(self, kids: dict[int, list[int]]) -> None:
        for pid in list(self.pids):
            for child in descendants(pid, kids):
                ticks = start_ticks(child)
                if ticks is not None:
                    self.pids.setdefault(child, ticks)

    def survivors(self) -> list[int]:
        return [pid for pid, ticks in self.pids.items() if alive_as(pid, ticks)]

    def kill_survivors(self) -> list[int]:
        left = self.survivors()
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.survivors():
            time.sleep(0.1)
        for pid in self.survivors():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return left


async def wait_active(admin: Any, agent_id: str, poll_s: float) -> tuple[dict[str, Any], int, int]:
    """agent_get until `active`: (the view, monotonic ns when seen, number of agent_get calls)."""
    deadline = time.monotonic() + ACTIVE_DEADLINE_S
    polls = 0
    while True:
        agent = await call(admin, "agent_get", agent_id=agent_id)
        polls += 1
        if agent["status"] == "active":
            return agent, time.perf_counter_ns(), polls
        if agent["status"] in ("failed", "terminated"):
            raise RuntimeError(f"agent {agent_id} is {agent['status']}: {json.dumps(agent.get('process'))[:1500]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"agent {agent_id} not active after {ACTIVE_DEADLINE_S} s: {json.dumps(agent)[:1500]}")
        await asyncio.sleep(poll_s)


def server_side(agent: dict[str, Any], exec_s: float | None) -> dict[str, int | None]:
    """Server clock: created -> launched -> (exec, from /proc) -> first heartbeat, in µs."""
    created = iso_us(agent["created_at"])
    beat = iso_us(agent["last_heartbeat_at"])
    launched = iso_us((agent.get("process") or {}).get("launched_at"))
    exec_us = None if exec_s is None else int(exec_s * 1_000_000)
    return {
        "spawn_to_heartbeat": None if created is None or beat is None else beat - created,
        "created_to_launched": None if created is None or launched is None else launched - created,
        "launched_to_exec": None if launched is None or exec_us is None else exec_us - launched,
        "exec_to_heartbeat": None if exec_us is None or beat is None else beat - exec_us,
        "launched_to_heartbeat": None if launched is None or beat is None else beat - launched,
    }


def breakdown(rows: list[dict[str, int | None]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in (
        "spawn_to_heartbeat",
        "created_to_launched",
        "launched_to_exec",
        "exec_to_heartbeat",
        "launched_to_heartbeat",
    ):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = summarise_us(values)  # type: ignore[arg-type]
    return out


async def terminate(admin: Any, fleet: Fleet, agent_id: str, **extra: Any) -> tuple[dict[str, Any], int]:
    """agent_terminate, timed. If it is still waiting after STUCK_AFTER_S, what the agent's process
    is doing then goes to fleet.stuck (its state, wait channels, signals, its log's tail)."""
    t0 = time.perf_counter_ns()
    watch = asyncio.ensure_future(_snapshot_later(fleet, agent_id, STUCK_AFTER_S))
    try:
        got = await call(admin, "agent_terminate", agent_id=agent_id, **extra)
    finally:
        watch.cancel()
    fleet.live.discard(agent_id)
    return got, time.perf_counter_ns() - t0


async def _snapshot_later(fleet: Fleet, agent_id: str, after_s: float) -> None:
    await asyncio.sleep(after_s)
    pid = fleet.pid_of.get(agent_id)
    shot: dict[str, Any] = {"agent_id": agent_id, "pid": pid, "after_s": after_s}
    if pid:
        proc = Path(f"/proc/{pid}")
        with contextlib.suppress(OSError):
            status = (proc / "status").read_text().splitlines()
            shot["status"] = [
                ln for ln in status if ln.startswith(("State", "SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigCgt"))
            ]
        threads = []
        with contextlib.suppress(OSError):
            for task in sorted(proc.joinpath("task").iterdir()):
                with contextlib.suppress(OSError):
                    stat = (task / "stat").read_text().rpartition(")")[2].split()
                    threads.append(
                        {
                            "tid": task.name,
                            "comm": (task / "comm").read_text().strip(),
                            "state": stat[0],
                            "wchan": (task / "wchan").read_text().strip(),
                        }
                    )
        shot["threads"] = threads
        with contextlib.suppress(OSError):
            shot["kernel_stack"] = (proc / "stack").read_text().splitlines()[:8]
        shot["children"] = descendants(pid, children_map())
    if fleet.data_dir is not None:
        log = fleet.data_dir / "agents" / agent_id / "stderr.log"
        with contextlib.suppress(OSError):
            shot["stderr_log_tail"] = log.read_text(errors="replace")[-1500:]
    fleet.stuck.append(shot)


# -- part 1: spawn latency -------------------------------------------------------------------------


async def part_spawn(admin: Any, fleet: Fleet, args: argparse.Namespace) -> dict[str, Any]:
    poll_s = args.poll_ms / 1000
    polled: list[dict[str, Any]] = []
    quiet: list[dict[str, Any]] = []
    for i in range(args.spawns + args.quiet_spawns):
        quiet_run = i >= args.spawns
        await asyncio.sleep(args.spawn_gap_s)
        t0 = time.perf_counter_ns()
        got = await call(admin, "agent_spawn", profile=PROFILE)
        t_spawned = time.perf_counter_ns()
        agent_id = got["agent"]["id"]
        fleet.spawned(agent_id)
        if quiet_run:
            await asyncio.sleep(1.5)
            agent, _, polls = await wait_active(admin, agent_id, 0.1)
        else:
            agent, t_active, polls = await wait_active(admin, agent_id, poll_s)
        pid = fleet.saw(agent)
        exec_s = exec_epoch_s(pid) if pid else None
        row: dict[str, Any] = {"agent_id": agent_id, "pid": pid, "polls": polls}
        row.update(server_side(agent, exec_s))
        row["spawn_call"] = (t_spawned - t0) // 1000
        if not quiet_run:
            row["client_spawn_to_active"] = (t_active - t0) // 1000
        rss = rss_kb(pid) if pid else None
        row["agent_rss_kb"] = rss
        _, term_ns = await terminate(admin, fleet, agent_id)
        row["terminate_call"] = term_ns // 1000
        row["pid_left_after_terminate"] = bool(pid and fleet.pids.get(pid) and alive_as(pid, fleet.pids[pid]))
        if term_ns > SLOW_TERMINATE_S * 1e9:  # what the agent's process said, for the report
            after = await call(admin, "agent_get", agent_id=agent_id)
            proc = after.get("process") or {}
            row["slow_terminate"] = {
                "last_exit": proc.get("last_exit"),
                "stderr_tail": (proc.get("stderr_tail") or "")[-1500:],
            }
        (quiet if quiet_run else polled).append(row)
        note(
            f"spawn {i + 1}/{args.spawns + args.quiet_spawns}{' (quiet)' if quiet_run else ''}: "
            f"server {ms(row['spawn_to_heartbeat'])} ms "
            f"(created->launched {ms(row['created_to_launched'])}, launched->exec {ms(row['launched_to_exec'])}, "
            f"exec->beat {ms(row['exec_to_heartbeat'])})"
            + ("" if quiet_run else f", client {ms(row['client_spawn_to_active'])} ms, {polls} polls")
            + f"; terminate {ms(row['terminate_call'])} ms"
        )
    server_all = [r["spawn_to_heartbeat"] for r in polled + quiet]
    server_polled = summarise_us([r["spawn_to_heartbeat"] for r in polled])
    out = {
        "how": "one at a time; each agent terminated (agent_terminate, default wait) before the next spawn",
        "spawns_polled": len(polled),
        "spawns_quiet": len(quiet),
        "poll_ms": args.poll_ms,
        "server_spawn_to_heartbeat": summarise_us(server_all),
        "server_spawn_to_heartbeat_polled": server_polled,
        "server_spawn_to_heartbeat_quiet": summarise_us([r["spawn_to_heartbeat"] for r in quiet]),
        "server_breakdown": breakdown(polled + quiet),
        "client_spawn_to_active": summarise_us([r["client_spawn_to_active"] for r in polled]),
        "spawn_call": summarise_us([r["spawn_call"] for r in polled + quiet]),
        "terminate_call": summarise_us([r["terminate_call"] for r in polled + quiet]),
        "agent_rss_kb_idle": _int_summary([r["agent_rss_kb"] for r in polled + quiet if r["agent_rss_kb"]]),
        "slow_terminates": sum(1 for r in polled + quiet if "slow_terminate" in r),
        "pids_left_after_terminate": sum(1 for r in polled + quiet if r["pid_left_after_terminate"]),
        "samples": [
            {k: (ms(v) if type(v) is int and k not in ("pid", "polls", "agent_rss_kb") else v) for k, v in r.items()}
            for r in polled + quiet
        ],
    }
    p50 = server_polled.get("p50_ms")
    quiet_p50 = out["server_spawn_to_heartbeat_quiet"].get("p50_ms")
    out["goal"] = (
        f"server-side spawn -> first heartbeat p50 <= {GOAL_P50_MS:.0f} ms over the polled spawns "
        f"(seed documents: < {SEED_GOAL_MS:.0f} ms)"
    )
    out["goal_met"] = p50 is not None and p50 <= GOAL_P50_MS
    out["seed_goal_met"] = p50 is not None and p50 < SEED_GOAL_MS
    out["goal_met_without_polling"] = None if quiet_p50 is None else quiet_p50 <= GOAL_P50_MS
    return out


def _int_summary(values: list[int]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": int(statistics.median(values)), "min": min(values), "max": max(values)}


# -- part 2: a fleet -------------------------------------------------------------------------------


async def part_fleet(admin: Any, fleet: Fleet, server_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"agents": args.fleet}
    out["server_rss_kb_before_fleet"] = rss_kb(server_pid)
    out["loadavg_before_fleet"] = load_average()

    # spawn them back to back, then wait for all to be active
    ids: list[str] = []
    t0 = time.perf_counter_ns()
    for _ in range(args.fleet):
        got = await call(admin, "agent_spawn", profile=PROFILE)
        ids.append(got["agent"]["id"])
        fleet.spawned(got["agent"]["id"])
    t_spawned = time.perf_counter_ns()
    note(f"fleet: {args.fleet} spawned in {(t_spawned - t0) / 1e9:.2f} s; waiting for all to be active")
    deadline = time.monotonic() + ACTIVE_DEADLINE_S * 3
    while True:
        listed = await call(admin, "agent_list", profile=PROFILE, status="active", limit=1000)
        active = {a["id"] for a in listed["agents"]} & set(ids)
        if len(active) == len(ids):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(active)}/{len(ids)} agents active after {ACTIVE_DEADLINE_S * 3:.0f} s")
        await asyncio.sleep(0.05)
    t_all = time.perf_counter_ns()
    views = [await call(admin, "agent_get", agent_id=i) for i in ids]
    rows = []
    for view in views:
        pid = fleet.saw(view)
        rows.append(server_side(view, exec_epoch_s(pid) if pid else None))
    out["spawn_calls_s"] = round((t_spawned - t0) / 1e9, 3)
    out["first_spawn_to_all_active_s"] = round((t_all - t0) / 1e9, 3)
    out["server_spawn_to_heartbeat_burst"] = breakdown(rows)
    note(f"fleet: all {len(ids)} active {out['first_spawn_to_all_active_s']} s after the first spawn")

    # idle, all alive
    agent_pids = [v["process"]["pid"] for v in views]
    server_cpu0 = proc_cpu_s(server_pid)
    agents_cpu0 = sum(proc_cpu_with_children_s(p) or 0 for p in agent_pids)
    t_idle0 = time.perf_counter()
    await asyncio.sleep(args.settle_s)
    idle_s = time.perf_counter() - t_idle0
    server_cpu1 = proc_cpu_s(server_pid)
    agents_cpu1 = sum(proc_cpu_with_children_s(p) or 0 for p in agent_pids)
    kids = children_map()
    fleet.saw_children(kids)
    child_pids = [c for p in agent_pids for c in descendants(p, kids)]
    rss = [rss_kb(p) or 0 for p in agent_pids + child_pids]
    pss = [pss_kb(p) or 0 for p in agent_pids + child_pids]
    out["alive_idle"] = {
        "server_rss_kb": rss_kb(server_pid),
        "server_pss_kb": pss_kb(server_pid),
        "agent_processes": len(agent_pids),
        "agent_child_processes": len(child_pids),
        "agents_rss_kb_sum": sum(rss),
        "agents_rss_kb_per_agent_median": int(statistics.median(rss[: len(agent_pids)])) if agent_pids else None,
        "agents_pss_kb_sum": sum(pss),
        "idle_s": round(idle_s, 2),
        "server_cpu_percent_idle": (
            None if server_cpu0 is None or server_cpu1 is None else round((server_cpu1 - server_cpu0) / idle_s * 100, 1)
        ),
        "agents_cpu_percent_idle_sum": round((agents_cpu1 - agents_cpu0) / idle_s * 100, 1),
        "loadavg": load_average(),
    }
    note(
        f"fleet: idle, server RSS {out['alive_idle']['server_rss_kb']} KiB, agents RSS sum "
        f"{out['alive_idle']['agents_rss_kb_sum']} KiB (PSS {out['alive_idle']['agents_pss_kb_sum']}), "
        f"load {out['alive_idle']['loadavg']}"
    )

    # tasks at a steady rate
    out["tasks"] = await run_tasks(admin, fleet, server_pid, agent_pids, args)
    out["server_rss_kb_after_tasks"] = rss_kb(server_pid)

    # terminate all and check that nothing is left
    kids = children_map()
    fleet.saw_children(kids)
    pids = dict(fleet.pids)
    fleet_pids = {
        p: t for p, t in pids.items() if p in agent_pids or any(p in descendants(a, kids) for a in agent_pids)
    }
    sem = asyncio.Semaphore(args.terminate_concurrency)
    durations: list[int] = []

    slow: list[str] = []

    async def stop_one(agent_id: str) -> dict[str, Any]:
        async with sem:
            got, took = await terminate(admin, fleet, agent_id)
            durations.append(took)
            if took > SLOW_TERMINATE_S * 1e9:
                slow.append(agent_id)
            return got

    t0 = time.perf_counter_ns()
    answers = await asyncio.gather(*(stop_one(i) for i in ids))
    t_done = time.perf_counter_ns()
    still = [a for a in answers if a.get("stopping")]
    left_now = [p for p, t in fleet_pids.items() if alive_as(p, t)]
    waited_until = time.monotonic() + 10
    while time.monotonic() < waited_until and [p for p, t in fleet_pids.items() if alive_as(p, t)]:
        await asyncio.sleep(0.1)
    left_later = [p for p, t in fleet_pids.items() if alive_as(p, t)]
    listed = await call(admin, "agent_list", profile=PROFILE, limit=1000)
    statuses: dict[str, int] = {}
    for a in listed["agents"]:
        if a["id"] in ids:
            statuses[a["status"]] = statuses.get(a["status"], 0) + 1
    out["terminate_all"] = {
        "concurrency": args.terminate_concurrency,
        "seconds": round((t_done - t0) / 1e9, 3),
        "per_call": summarise_ns(durations),
        "answers_still_stopping": len(still),
        "processes_tracked": len(fleet_pids),
        "processes_left_when_calls_returned": len(left_now),
        "processes_left_10s_later": len(left_later),
        "zombies_10s_later": sum(1 for p in fleet_pids if is_zombie(p)),
        "agent_statuses_after": statuses,
        "none_left": not left_later,
        "slow_terminates": len(slow),
    }
    if slow:  # what those agents' processes said (the first few), for the report
        samples = []
        for agent_id in slow[:3]:
            proc = (await call(admin, "agent_get", agent_id=agent_id)).get("process") or {}
            samples.append(
                {
                    "agent_id": agent_id,
                    "last_exit": proc.get("last_exit"),
                    "stderr_tail": (proc.get("stderr_tail") or "")[-1500:],
                }
            )
        out["terminate_all"]["slow_samples"] = samples
    out["server_rss_kb_after_terminate"] = rss_kb(server_pid)
    note(f"fleet: terminated all in {out['terminate_all']['seconds']} s; processes left {len(left_later)}")
    return out


async def run_tasks(
    admin: Any, fleet: Fleet, server_pid: int, agent_pids: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    n = args.tasks
    ids: list[str | None] = [None] * n
    submit_ns: list[int] = []
    sem = asyncio.Semaphore(args.submit_concurrency)
    cpu_server0 = proc_cpu_s(server_pid)
    cpu_agents0 = sum(proc_cpu_with_children_s(p) or 0 for p in agent_pids)
    load0 = load_average()

    async def submit(i: int) -> None:
        async with sem:
            t0 = time.perf_counter_ns()
            got = await call(admin, "task_submit", type="echo", capabilities=["echo"], payload={"n": i})
            submit_ns.append(time.perf_counter_ns() - t0)
        ids[i] = (got.get("task") or got)["id"]

    start = time.perf_counter()
    pending = []
    if args.rate > 0:
        for i in range(n):
            delay = start + i / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.ensure_future(submit(i)))
    else:
        pending = [asyncio.ensure_future(submit(i)) for i in range(n)]
    await asyncio.gather(*pending)
    submit_s = time.perf_counter() - start
    note(f"tasks: {n} submitted in {submit_s:.1f} s ({n / submit_s:.1f}/s); waiting for them to end")

    deadline = time.monotonic() + TASKS_DEADLINE_S
    while True:
        status = await call(admin, "fleet_status")
        ended = sum(sum(status["tasks"].get(s, {}).values()) for s in TERMINAL)
        if ended >= n:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {ended}/{n} tasks ended after {TASKS_DEADLINE_S} s")
        await asyncio.sleep(0.25)
    drained_s = time.perf_counter() - start
    cpu_server1 = proc_cpu_s(server_pid)
    cpu_agents1 = sum(proc_cpu_with_children_s(p) or 0 for p in agent_pids)
    load1 = load_average()

    tasks = [await call(admin, "task_get", task_id=i) for i in ids]
    by_status: dict[str, int] = {}
    per_agent: dict[str, int] = {}
    claim, e2e, run, wrong = [], [], [], 0
    for t in tasks:
        by_status[t["status"]] = by_status.get(t["status"], 0) + 1
        if t["status"] != "completed":
            continue
        per_agent[t["agent_id"]] = per_agent.get(t["agent_id"], 0) + 1
        created, started, finished = (iso_us(t[k]) for k in ("created_at", "started_at", "finished_at"))
        claim.append(started - created)
        e2e.append(finished - created)
        run.append(finished - started)
        if t["result"] != {"echo": t["payload"]}:
            wrong += 1
    completed = [t for t in tasks if t["status"] == "completed"]
    first_created = min(iso_us(t["created_at"]) for t in tasks)
    last_finished = max((iso_us(t["finished_at"]) for t in completed), default=first_created)
    span_s = (last_finished - first_created) / 1e6
    counts = sorted(per_agent.values())
    server_cpu = None if cpu_server0 is None or cpu_server1 is None else cpu_server1 - cpu_server0
    out = {
        "tasks": n,
        "rate_per_s": args.rate or "max",
        "submit_concurrency": args.submit_concurrency,
        "submitted_in_s": round(submit_s, 2),
        "submit_rate_achieved_per_s": round(n / submit_s, 1),
        "task_submit_call": summarise_ns(submit_ns),
        "statuses": by_status,
        "results_wrong": wrong,
        "queue_to_claim": summarise_us(claim),
        "end_to_end": summarise_us(e2e),
        "claim_to_finish": summarise_us(run),
        "throughput_per_s": round(len(completed) / span_s, 1) if span_s > 0 else None,
        "first_created_to_last_finished_s": round(span_s, 2),
        "all_ended_after_s": round(drained_s, 2),
        "agents_used": len(per_agent),
        "tasks_per_agent": {"min": counts[0], "median": statistics.median(counts), "max": counts[-1]} if counts else {},
        "server_cpu_s": None if server_cpu is None else round(server_cpu, 2),
        "server_cpu_ms_per_task": None if server_cpu is None else round(server_cpu / n * 1e3, 2),
        "agents_cpu_s_incl_echo_commands": round(cpu_agents1 - cpu_agents0, 2),
        "agents_cpu_ms_per_task": round((cpu_agents1 - cpu_agents0) / n * 1e3, 1),
        "loadavg_before": load0,
        "loadavg_after": load1,
    }
    note(
        f"tasks: queue->claim p50 {out['queue_to_claim'].get('p50_ms')} ms, end to end p50 "
        f"{out['end_to_end'].get('p50_ms')} ms, {out['throughput_per_s']}/s, statuses {by_status}"
    )
    return out


# -- part 3: where a spawn's time goes -------------------------------------------------------------

PROBE = r"""
import sys, time
t0 = time.perf_counter()
import server.cli, server.worker.loop
from server.worker.client import FleetClient
t1 = time.perf_counter()
import asyncio, json, os
async def main():
    a = time.perf_counter()
    print("#PHASE client_setup", file=sys.stderr)
    client = FleetClient(os.environ["AGENTFLEET_URL"], os.environ["AGENTFLEET_TOKEN"])
    b = time.perf_counter()
    print("#PHASE first_call", file=sys.stderr)
    await client.call("task_claim", {"wait_s": 0})  # like the worker's first call (which long-polls)
    c = time.perf_counter()
    c_epoch = time.time()
    print("#PHASE second_call", file=sys.stderr)
    await client.call("agent_get", {"agent_id": os.environ["AGENTFLEET_AGENT_ID"]})  # no second heartbeat
    d = time.perf_counter()
    print("#PHASE end", file=sys.stderr)
    await client.aclose()
    return a, b, c, c_epoch, d
a, b, c, c_epoch, d = asyncio.run(main())
print(json.dumps({"imports": t1 - t0, "loop_start": a - t1, "client_setup": b - a, "first_call": c - b,
                  "second_call": d - c, "epoch_after_first_call": c_epoch}))
"""


def _timed_run(argv: list[str], env: dict[str, str], cwd: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    return time.perf_counter() - t0, done


def _stats_s(values: list[float]) -> dict[str, Any]:
    ordered = sorted(values)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1e3, 1),
        "min_ms": round(ordered[0] * 1e3, 1),
        "max_ms": round(ordered[-1] * 1e3, 1),
    }


def importtime_top(stderr: str, count: int = 15) -> list[dict[str, Any]]:
    """Top-level (and second-level) imports by cumulative µs from `python -X importtime` output."""
    rows = []
    pattern = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")
    for line in stderr.splitlines():
        m = pattern.match(line)
        if m:
            depth = (len(m.group(3)) - 1) // 2
            rows.append({"module": m.group(4), "depth": depth, "cumulative_ms": int(m.group(2)) / 1000})
    top = sorted((r for r in rows if r["depth"] <= 1), key=lambda r: -r["cumulative_ms"])[:count]
    total = sum(r["cumulative_ms"] for r in rows if r["depth"] == 0)
    return [{"total_ms": round(total, 1)}] + [
        {"module": r["module"], "depth": r["depth"], "cumulative_ms": round(r["cumulative_ms"], 1)} for r in top
    ]


def imports_by_phase(stderr: str) -> dict[str, Any]:
    """Top-level import time (ms) in each phase of one probe run under -X importtime: what is
    imported lazily by FleetClient() and by the first call, beside the imports up front."""
    pattern = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\S+)")  # depth 0: one space
    phase = "imports"
    totals: dict[str, float] = {}
    heaviest: dict[str, tuple[str, float]] = {}
    for line in stderr.splitlines():
        if line.startswith("#PHASE "):
            phase = line.split()[1]
            continue
        m = pattern.match(line)
        if m:
            cumulative = int(m.group(2)) / 1000
            totals[phase] = totals.get(phase, 0.0) + cumulative
            if cumulative > heaviest.get(phase, ("", 0.0))[1]:
                heaviest[phase] = (m.group(3), cumulative)
    return {
        phase: {"ms": round(total, 1), "heaviest": heaviest[phase][0], "heaviest_ms": round(heaviest[phase][1], 1)}
        for phase, total in totals.items()
    }


async def part_startup(admin: Any, url: str, args: argparse.Namespace) -> dict[str, Any]:
    py = sys.executable
    home = tempfile.mkdtemp(prefix="agentfleet-bench-startup-")
    env = {"HOME": home}  # the supervisor gives an agent little more (its url, token and id)
    runs = args.startup_runs
    results: dict[str, list[float]] = {"python_pass": [], "imports": [], "cli_worker_help": [], "probe_total": []}
    probe: dict[str, list[float]] = {
        "imports": [],
        "loop_start": [],
        "client_setup": [],
        "first_call": [],
        "second_call": [],
    }
    beat_after_first_call: list[float] = []
    try:
        loop = asyncio.get_running_loop()
        for _ in range(runs):
            for key, argv in (
                ("python_pass", [py, "-c", "pass"]),
                ("imports", [py, "-c", "import server.cli, server.worker.loop"]),
                ("cli_worker_help", [py, "-m", "server.cli", "worker", "--help"]),
            ):
                took, done = await loop.run_in_executor(None, _timed_run, argv, env, home)
                if done.returncode != 0:
                    raise RuntimeError(f"{argv} failed: {done.stderr[-2000:]}")
                results[key].append(took)
            got = await call(admin, "agent_spawn", profile="worker")  # external: the token comes back
            agent_id, token = got["agent"]["id"], got["token"]
            probe_env = {**env, "AGENTFLEET_URL": url, "AGENTFLEET_TOKEN": token, "AGENTFLEET_AGENT_ID": agent_id}
            took, done = await loop.run_in_executor(None, _timed_run, [py, "-c", PROBE], probe_env, home)
            if done.returncode != 0:
                raise RuntimeError(f"startup probe failed: {done.stderr[-2000:]}")
            results["probe_total"].append(took)
            timings = json.loads(done.stdout.strip().splitlines()[-1])
            for key in probe:
                probe[key].append(timings[key])
            agent = await call(admin, "agent_get", agent_id=agent_id)
            beat = iso_us(agent["last_heartbeat_at"])
            if beat is not None:
                # the door's heartbeat vs the moment the first call came back, on one machine clock
                beat_after_first_call.append(timings["epoch_after_first_call"] - beat / 1e6)
            with contextlib.suppress(ToolFailed):
                await call(admin, "agent_terminate", agent_id=agent_id)
        _, imp = await loop.run_in_executor(
            None, _timed_run, [py, "-X", "importtime", "-c", "import server.cli, server.worker.loop"], env, home
        )
        _, imp_help = await loop.run_in_executor(
            None, _timed_run, [py, "-X", "importtime", "-m", "server.cli", "worker", "--help"], env, home
        )
        got = await call(admin, "agent_spawn", profile="worker")
        probe_env = {
            **env,
            "AGENTFLEET_URL": url,
            "AGENTFLEET_TOKEN": got["token"],
            "AGENTFLEET_AGENT_ID": got["agent"]["id"],
        }
        _, imp_probe = await loop.run_in_executor(
            None, _timed_run, [py, "-X", "importtime", "-c", PROBE], probe_env, home
        )
        with contextlib.suppress(ToolFailed):
            await call(admin, "agent_terminate", agent_id=got["agent"]["id"])
    finally:
        shutil.rmtree(home, ignore_errors=True)
    out: dict[str, Any] = {
        "runs": runs,
        "how": "fresh processes, env {HOME} (+ URL/token for the probe), cwd a temp dir; wall time from the "
        "parent's subprocess.run, so fork/exec and exit are included",
        "python_c_pass": _stats_s(results["python_pass"]),
        "python_c_import_cli_and_worker": _stats_s(results["imports"]),
        "python_m_server_cli_worker_help": _stats_s(results["cli_worker_help"]),
        "probe_process_total": _stats_s(results["probe_total"]),
        "probe": {k: _stats_s(v) for k, v in probe.items()},
        "first_call_reply_after_heartbeat": _stats_s(beat_after_first_call),
        "importtime_import_cli_and_worker": importtime_top(imp.stderr),
        "importtime_cli_worker_help": importtime_top(imp_help.stderr, 8),
        "importtime_probe_by_phase_ms": imports_by_phase(imp_probe.stderr),
    }
    note(
        f"startup: python -c pass {out['python_c_pass']['median_ms']} ms, + imports "
        f"{out['python_c_import_cli_and_worker']['median_ms']} ms, probe imports "
        f"{out['probe']['imports']['median_ms']} ms, first call {out['probe']['first_call']['median_ms']} ms "
        f"(second {out['probe']['second_call']['median_ms']} ms)"
    )
    return out


# -- one run on one store --------------------------------------------------------------------------


async def run_parts(
    url: str, admin_token: str, server_pid: int, fleet: Fleet, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {"server_rss_kb_start": rss_kb(server_pid), "loadavg_start": load_average()}
    cpu0 = cpu_times()
    async with mcp_client(url, admin_token) as admin:
        try:
            if "spawn" in args.parts:
                out["spawn"] = await part_spawn(admin, fleet, args)
            if "fleet" in args.parts:
                out["fleet"] = await part_fleet(admin, fleet, server_pid, args)
            if "startup" in args.parts:
                out["startup"] = await part_startup(admin, url, args)
        finally:
            if fleet.live:  # a part failed half-way: stop what it left, at once
                note(f"stopping {len(fleet.live)} agents left alive")
                for agent_id in list(fleet.live):
                    with contextlib.suppress(Exception):
                        await call(admin, "agent_terminate", agent_id=agent_id, graceful=False, wait_s=10)
    out["server_rss_kb_end"] = rss_kb(server_pid)
    out["loadavg_end"] = load_average()
    out["machine_cpu_over_run"] = cpu_split(cpu0, cpu_times())
    return out


def run_store(args: argparse.Namespace, database_url: str | None) -> dict[str, Any]:
    import anyio

    admin = "afk_" + secrets.token_urlsafe(32)
    server_env = {"AGENTFLEET_RATE_LIMIT_PER_S": "0", **dict(item.split("=", 1) for item in args.server_env)}
    fleet = Fleet()
    store = store_kind(database_url)
    try:
        with serve_child(admin, database_url, server_env, note=note) as server:
            fleet.data_dir = server.tmp / "data"
            out = anyio.run(
                run_parts,
                server.base_url,
                admin,
                server.pid,
                fleet,
                args,
                backend="asyncio",
                backend_options={"use_uvloop": True},
            )
            log = server.stderr_tail(3000)
    finally:
        killed = fleet.kill_survivors()  # the server leaves its agents running when it stops
        if killed:
            note(f"killed {len(killed)} agent processes that outlived the server: {killed}")
    out = {"store": store, **out, "agent_processes_killed_by_bench_at_end": len(killed)}
    if fleet.stuck:
        out["slow_to_stop"] = {"count": len(fleet.stuck), "first_snapshots": fleet.stuck[:4]}
    if "Traceback" in log or " ERROR " in log:
        out["server_log_tail"] = log
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spawns", type=int, default=20, help="spawns measured with polling (default 20)")
    parser.add_argument("--quiet-spawns", type=int, default=10, help="extra spawns without polling (default 10)")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="agent_get polling period (default 10)")
    parser.add_argument("--spawn-gap-s", type=float, default=0.25, help="pause before each spawn (default 0.25)")
    parser.add_argument("--fleet", type=int, default=50, help="agents alive at once (default 50)")
    parser.add_argument(
        "--settle-s", type=float, default=5.0, help="idle wait, all alive, before the memory figures (default 5)"
    )
    parser.add_argument("--tasks", type=int, default=500, help="echo tasks through the fleet (default 500)")
    parser.add_argument("--rate", type=float, default=10.0, help="task submissions per second; 0 = as fast as possible")
    parser.add_argument("--submit-concurrency", type=int, default=8, help="task_submit calls in flight at most")
    parser.add_argument("--terminate-concurrency", type=int, default=10, help="agent_terminate calls in flight")
    parser.add_argument("--startup-runs", type=int, default=10, help="runs of each startup probe (default 10)")
    parser.add_argument("--parts", default="spawn,fleet,startup", help="any of spawn,fleet,startup")
    parser.add_argument("--database-url", help="a database to use (not emptied); default SQLite in a temp dir")
    parser.add_argument(
        "--store",
        choices=["sqlite", "postgresql"],
        default=None,
        help="postgresql: a scratch database on --pg-server, dropped afterwards",
    )
    parser.add_argument("--pg-server", default=DEFAULT_PG_SERVER, help=f"for --store postgresql ({DEFAULT_PG_SERVER})")
    parser.add_argument(
        "--server-env", action="append", default=[], metavar="KEY=VALUE", help="extra server environment (repeatable)"
    )
    args = parser.parse_args(argv)
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if args.parts - {"spawn", "fleet", "startup"}:
        parser.error(f"unknown parts: {sorted(args.parts - {'spawn', 'fleet', 'startup'})}")
    if args.spawns < 1 or args.fleet < 1 or args.tasks < 1:
        parser.error("--spawns, --fleet and --tasks must be >= 1")

    exit_on_sigterm()
    out: dict[str, Any] = {
        "bench": "process_agents",
        "profile": PROFILE,
        "parts": sorted(args.parts),
        "settings": {
            "spawns": args.spawns,
            "quiet_spawns": args.quiet_spawns,
            "fleet": args.fleet,
            "tasks": args.tasks,
            "rate_per_s": args.rate,
            "server_env": ["AGENTFLEET_RATE_LIMIT_PER_S=0", *args.server_env],
        },
        "date": time.strftime("%Y-%m-%d"),
        "loadavg_at_start": load_average(),
    }
    if args.store == "postgresql" and not args.database_url:
        why_not = pg_reachable(args.pg_server)
        if why_not:
            out["result"] = {"skipped": why_not}
        else:
            with pg_scratch_database(args.pg_server, "procs", migrate=False) as url:
                out["result"] = run_store(args, url)
    else:
        out["result"] = run_store(args, args.database_url)
    spawn = out["result"].get("spawn")
    if spawn:
        out["goal"] = spawn["goal"]
        out["goal_met"] = spawn["goal_met"]
    out["loadavg_at_end"] = load_average()
    out["machine"] = machine()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
