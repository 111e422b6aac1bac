"""Event -> notification delivered: how long after an event is committed its webhook arrives.

    python bench/notify_latency.py [--store sqlite|postgresql] [--database-url postgresql://…]
                                   [--events 300] [--warmup 20] [--interval-ms 10] [--burst 200]

What runs: a real `agentfleet serve` child (uvicorn, its delivery loop running as in production)
on a temporary SQLite file, or a scratch PostgreSQL database (`--store postgresql`), and a
webhook receiver in this process (Starlette on uvicorn, 127.0.0.1, answering 200 at once). The
admin makes one signed channel for `task.submitted` and submits tasks over MCP:

- paced: --events tasks, one every --interval-ms (after --warmup untimed ones);
- burst: --burst tasks submitted as fast as one MCP session can, then drained.

Latency per event = the receiver's wall clock when the POST arrives minus the event's `at` (the
server's wall clock when the change was made; same machine, same clock). It includes the commit,
the wake-up of the delivery loop, queueing (one transaction), the claim (one transaction), the
HTTP POST and nothing of the receiver's work. The burst also reports events/s delivered (a
channel sends one at a time, in order). `uptime` and the load average are in the output: other
work on this shared machine skews every number.

stdout carries exactly one JSON object; progress notes go to stderr. Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_PG_SERVER,
    call,
    exit_on_sigterm,
    free_port,
    load_average,
    machine,
    make_note,
    mcp_client,
    pg_scratch_database,
    serve_child,
    store_kind,
    summarise_ns,
)

note = make_note("notify_latency")
ADMIN_TOKEN = "afk_bench-notify-latency-0123456789abcdefghijklmnop"


def at_ns(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1_000_000) * 1000


class Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[str, int] = {}  # task id -> arrival (wall clock, ns)
        self.latencies: dict[str, int] = {}
        self.changed = asyncio.Event()
        self.posts = 0

    async def hook(self, request: Any) -> Any:
        from starlette.responses import Response

        arrived = time.time_ns()
        body = json.loads(await request.body())
        self.posts += 1
        subject = body["subject"]
        if subject not in self.arrivals:
            self.arrivals[subject] = arrived
            self.latencies[subject] = arrived - at_ns(body["at"])
        self.changed.set()
        return Response("ok")

    async def wait_for(self, ids: list[str], timeout_s: float = 120) -> None:
        async with asyncio.timeout(timeout_s):
            while not all(i in self.arrivals for i in ids):
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def receiving(receiver: Receiver):  # noqa: ANN201
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Route

    port = free_port()
    app = Starlette(routes=[Route("/hook", receiver.hook, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.should_exit = True
        await serving


async def run(args: argparse.Namespace, database_url: str | None) -> dict[str, Any]:
    receiver = Receiver()
    with serve_child(ADMIN_TOKEN, database_url, note=note) as child:
        async with receiving(receiver) as url, mcp_client(child.base_url, ADMIN_TOKEN) as admin:
            await call(
                admin, "notification_channel_create", name="bench", url=url, event_types=["task.submitted"], secret="s"
            )
            warm = [(await call(admin, "task_submit", type="warmup"))["id"] for _ in range(args.warmup)]
            await receiver.wait_for(warm)
            note(f"paced: {args.events} events, one every {args.interval_ms} ms")
            paced = []
            for _ in range(args.events):
                paced.append((await call(admin, "task_submit", type="paced"))["id"])
                await asyncio.sleep(args.interval_ms / 1000)
            await receiver.wait_for(paced)
            note(f"burst: {args.burst} events")
            started = time.time_ns()
            burst = [(await call(admin, "task_submit", type="burst"))["id"] for _ in range(args.burst)]
            submitted = time.time_ns()
            await receiver.wait_for(burst)
            drained = max(receiver.arrivals[i] for i in burst)
    return {
        "paced": summarise_ns([receiver.latencies[i] for i in paced]),
        "burst": {
            **summarise_ns([receiver.latencies[i] for i in burst]),
            "submit_s": round((submitted - started) / 1e9, 3),
            "drain_s": round((drained - started) / 1e9, 3),
            "delivered_per_s": round(len(burst) / ((drained - started) / 1e9), 1),
        },
        "posts": receiver.posts,
        "duplicates": receiver.posts - len(receiver.arrivals),
    }


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--database-url")
    parser.add_argument("--pg-server", default=DEFAULT_PG_SERVER)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--interval-ms", type=float, default=10)
    parser.add_argument("--burst", type=int, default=200)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = args.database_url
        if args.store == "postgresql" and url is None:
            url = stack.enter_context(pg_scratch_database(args.pg_server, "notify_latency", migrate=False))
        load_before = load_average()
        results = asyncio.run(run(args, url))
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    print(
        json.dumps(
            {
                "bench": "notify_latency",
                "store": store_kind(url),
                "events": args.events,
                "interval_ms": args.interval_ms,
                **results,
                "load_before": load_before,
                "load_after": load_average(),
                "uptime": uptime,
                "machine": machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
