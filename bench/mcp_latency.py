"""MCP tool-call latency over Streamable HTTP: task_submit and fleet_status beside an empty tool.

    python bench/mcp_latency.py [--calls 2000] [--warmup 200] [--modes legacy,auto]
                                [--database-url postgresql://user@host:5432/db]

The script starts the real app (create_app + uvicorn with uvloop/httptools, as `agentfleet serve`
does) in a child process, registers an empty tool `bench_noop` on that same MCP server, then drives
sequential `tools/call` requests from one `mcp.Client` per protocol era and reports p50/p99 per tool.
Goal (issue): task_submit p50 <= 1.5 x bench_noop p50.

stdout carries exactly one JSON object; progress notes go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

GOAL_RATIO = 1.5
NOOP = "bench_noop"
TOOLS = (NOOP, "task_submit", "fleet_status")
TOKEN_ENV = "AGENTFLEET_BENCH_ADMIN_TOKEN"
PROTOCOLS = {"legacy": "2025-11-25", "auto": "2026-07-28"}
HEALTH_DEADLINE_S = 60.0
STOP_DEADLINE_S = 15.0


def note(message: str) -> None:
    print(f"[mcp_latency] {message}", file=sys.stderr, flush=True)


# -- server child ----------------------------------------------------------------------------------


def add_noop(mcp: Any) -> None:
    """The baseline: a tool that does nothing, on the same server, through the same stack."""

    @mcp.tool(name=NOOP)
    async def bench_noop() -> dict[str, Any]:
        """Does nothing (benchmark baseline)."""
        return {"ok": True}


def serve(args: argparse.Namespace) -> int:
    # Before MCPServer is built: it calls logging.basicConfig itself.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from server.http.app import create_app
    from server.http.serve import uvicorn_server
    from server.services.container import build_services
    from server.settings import load_settings

    token = os.environ[TOKEN_ENV]
    # env={}: the bench's settings come from its flags only, never from the caller's AGENTFLEET_*.
    settings = load_settings(
        env={},
        data_dir=args.data_dir,
        database_url=args.database_url,
        host="127.0.0.1",
        port=args.port,
        admin_token=token,
        log_level="warning",
    )
    services = build_services(settings, token)
    try:
        app = create_app(services, configure_mcp=add_noop)
        uvicorn_server(app, settings).run()
    finally:
        services.close()
    return 0


# -- parent: child management ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(proc: subprocess.Popen[bytes], base_url: str) -> None:
    import httpx2

    deadline = time.monotonic() + HEALTH_DEADLINE_S
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server child exited with code {proc.returncode} before it was healthy")
        try:
            if httpx2.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx2.TransportError as exc:
            last_error = repr(exc)
        time.sleep(0.05)
    raise RuntimeError(f"server not healthy after {HEALTH_DEADLINE_S:.0f}s: {last_error}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully, then services.close()
    try:
        proc.wait(timeout=STOP_DEADLINE_S)
    except subprocess.TimeoutExpired:
        note("server child ignored SIGTERM; killing it")
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def server_child(database_url: str | None, token: str) -> Iterator[str]:
    data_dir = tempfile.mkdtemp(prefix="agentfleet-bench-")
    port = free_port()
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", "--port", str(port), "--data-dir", data_dir]
    if database_url:
        cmd += ["--database-url", database_url]
    proc: subprocess.Popen[bytes] | None = None
    try:
        # The child's stdout goes to our stderr: our stdout holds only the JSON result.
        proc = subprocess.Popen(
            cmd,
            stdout=sys.stderr,
            env={**os.environ, TOKEN_ENV: token},
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        base_url = f"http://127.0.0.1:{port}"
        wait_healthy(proc, base_url)
        note(f"server child pid {proc.pid} healthy at {base_url}")
        yield base_url
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(data_dir, ignore_errors=True)


# -- parent: measuring -----------------------------------------------------------------------------


def tool_args(tool: str, i: int) -> dict[str, Any]:
    if tool == "task_submit":
        return {"type": "bench", "payload": {"n": i}}
    return {}


def percentile(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile, in milliseconds."""
    rank = max(1, min(len(sorted_ns), int(-(-q * len(sorted_ns) // 100))))
    return sorted_ns[rank - 1] / 1e6


def summarise(samples: list[int]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(percentile(ordered, 50), 3),
        "p90_ms": round(percentile(ordered, 90), 3),
        "p99_ms": round(percentile(ordered, 99), 3),
        "mean_ms": round(statistics.fmean(ordered) / 1e6, 3),
        "min_ms": round(ordered[0] / 1e6, 3),
        "max_ms": round(ordered[-1] / 1e6, 3),
    }


async def run_mode(base_url: str, token: str, mode: str, calls: int, warmup: int) -> dict[str, Any]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    counter = 0
    tasks_seen: list[int] = []
    samples: dict[str, list[int]] = {tool: [] for tool in TOOLS}

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    async with http, Client(streamable_http_client(f"{base_url}/mcp", http_client=http), mode=mode) as client:
        protocol = client.protocol_version

        async def call(tool: str) -> int:
            nonlocal counter
            counter += 1
            args = tool_args(tool, counter)
            started = time.perf_counter_ns()
            result = await client.call_tool(tool, args)
            elapsed = time.perf_counter_ns() - started
            if result.is_error or result.structured_content is None:
                text = result.content[0].text if result.content else "no content"
                raise RuntimeError(f"{tool} failed in mode {mode}: {text}")
            if tool == "fleet_status":
                # fleet_status scans the task table, so its cost grows with the rows in the store.
                tasks_seen.append(result.structured_content["totals"]["tasks"])
            return elapsed

        # Round-robin, rotating which tool goes first, so drift and after-effects of one call
        # (GC, WAL checkpoints, pool churn) fall on every tool alike.
        for i in range(warmup):
            for tool in TOOLS[i % 3 :] + TOOLS[: i % 3]:
                await call(tool)
        for i in range(calls):
            for tool in TOOLS[i % 3 :] + TOOLS[: i % 3]:
                samples[tool].append(await call(tool))

    result: dict[str, Any] = {
        "protocol_version": protocol,
        "store_tasks": {"first": tasks_seen[0], "last": tasks_seen[-1]},
    }
    for tool in TOOLS:
        result[tool] = summarise(samples[tool])
    noop_p50 = result[NOOP]["p50_ms"]
    ratio = result["task_submit"]["p50_ms"] / noop_p50
    result["task_submit_p50_ratio"] = round(ratio, 3)
    result["fleet_status_p50_ratio"] = round(result["fleet_status"]["p50_ms"] / noop_p50, 3)
    result["goal_ratio"] = GOAL_RATIO
    result["goal_met"] = ratio <= GOAL_RATIO
    return result


def store_name(database_url: str | None) -> str:
    if not database_url:
        return "sqlite"
    from server.store.database import is_sqlite

    return "sqlite" if is_sqlite(database_url) else "postgresql"


def bench(args: argparse.Namespace) -> int:
    import anyio

    from server.services.auth import new_admin_token

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in PROTOCOLS]
    if unknown or not modes:
        raise SystemExit(f"--modes takes a comma list of {sorted(PROTOCOLS)}; got {args.modes!r}")
    token = new_admin_token()
    results: dict[str, Any] = {}
    load_before = os.getloadavg()
    with server_child(args.database_url, token) as base_url:
        for mode in modes:
            note(
                f"mode={mode}: {args.warmup} warm-up and {args.calls} measured calls per tool "
                f"({', '.join(TOOLS)}), round-robin"
            )
            results[mode] = anyio.run(
                run_mode, base_url, token, mode, args.calls, args.warmup, backend_options={"use_uvloop": True}
            )
            r = results[mode]
            note(
                f"mode={mode} ({r['protocol_version']}): "
                + "; ".join(f"{t} p50 {r[t]['p50_ms']} ms p99 {r[t]['p99_ms']} ms" for t in TOOLS)
                + f"; task_submit/noop p50 = {r['task_submit_p50_ratio']} "
                + ("(goal met)" if r["goal_met"] else f"(goal <= {GOAL_RATIO} MISSED)")
            )
    out = {
        "bench": "mcp_latency",
        "store": store_name(args.database_url),
        "calls": args.calls,
        "warmup": args.warmup,
        "transport": "streamable-http, uvicorn uvloop+httptools, server in a child process",
        "results": results,
        "goal": f"task_submit p50 <= {GOAL_RATIO} x {NOOP} p50",
        "goal_met": all(r["goal_met"] for r in results.values()),
        "machine": {
            **machine(),
            # Other work on the machine inflates every figure (the ratio less so): check these.
            "loadavg_1m_before": round(load_before[0], 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
        },
    }
    print(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per tool (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up rounds, not measured (default 200)")
    parser.add_argument("--database-url", help="postgresql://… (default: SQLite in a temporary data dir)")
    parser.add_argument(
        "--modes", default="legacy,auto", help="protocol eras: legacy (2025-11-25), auto (2026-07-28); default both"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.calls < 1 or args.warmup < 0:
        parser.error("--calls must be >= 1 and --warmup >= 0")
    # Run from a checkout without installing: the repo root holds `server` and `tools`.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    if args.serve:
        return serve(args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
