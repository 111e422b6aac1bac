"""How long a start takes: `agentfleet serve` until /healthz answers, and `agentfleet serve --stdio`
until its first `tools/list` is answered (what Claude Desktop pays at every launch), beside
`python -c pass` and a bare `import mcp` measured in the same run (this machine's speed swings).

    python bench/startup.py [--rounds 5]

Goals (issue 18): /healthz within 2 s of start, the first stdio tools/list within 3 s."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import REPO_ROOT, free_port, load_average, machine, make_note

note = make_note("startup")
HEALTH_GOAL_S, STDIO_GOAL_S = 2.0, 3.0
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def seconds_of(argv: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - started


def to_healthz(data_dir: Path) -> float:
    port = free_port()
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(timeout=0.5) as http:
            while server.poll() is None:
                try:
                    if http.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    time.sleep(0.01)
        raise RuntimeError("the server exited before answering /healthz")
    finally:
        server.terminate()
        server.wait(20)


def to_first_tools_list(data_dir: Path) -> float:
    started = time.monotonic()
    stdio = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--stdio", "--data-dir", str(data_dir)],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert stdio.stdin is not None and stdio.stdout is not None
    try:
        stdio.stdin.write(json.dumps(INITIALIZE) + "\n")
        stdio.stdin.flush()
        stdio.stdout.readline()
        stdio.stdin.write(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n")
        stdio.stdin.write(json.dumps(LIST) + "\n")
        stdio.stdin.flush()
        answer = json.loads(stdio.stdout.readline())
        assert answer.get("id") == 2 and answer["result"]["tools"], answer
        return time.monotonic() - started
    finally:
        stdio.terminate()
        stdio.wait(20)


def summary(samples: list[float]) -> dict[str, Any]:
    return {"median_s": round(statistics.median(samples), 3), "max_s": round(max(samples), 3), "runs": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    load_before = load_average()
    results: dict[str, list[float]] = {"python_pass": [], "import_mcp": [], "healthz": [], "stdio_tools_list": []}
    with tempfile.TemporaryDirectory(prefix="agentfleet-bench-") as scratch:
        for n in range(rounds):
            note(f"round {n + 1}/{rounds}")
            results["python_pass"].append(seconds_of([sys.executable, "-c", "pass"]))
            results["import_mcp"].append(seconds_of([sys.executable, "-c", "import mcp"]))
            results["healthz"].append(to_healthz(Path(scratch) / f"http-{n}"))
            results["stdio_tools_list"].append(to_first_tools_list(Path(scratch) / f"stdio-{n}"))
    report = {name: summary([round(s, 3) for s in samples]) for name, samples in results.items()}
    health, stdio = report["healthz"]["median_s"], report["stdio_tools_list"]["median_s"]
    print(
        json.dumps(
            {
                "bench": "startup",
                "loadavg_at_start": load_before,
                "loadavg_at_end": load_average(),
                **report,
                "goals": {
                    "healthz_goal_s": HEALTH_GOAL_S,
                    "healthz_met": health <= HEALTH_GOAL_S,
                    "stdio_goal_s": STDIO_GOAL_S,
                    "stdio_met": stdio <= STDIO_GOAL_S,
                },
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
