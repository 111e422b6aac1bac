"""Triggers: how fast a webhook becomes a task, and how fast a burst of due schedules fires.

    python bench/triggers.py [--webhooks 300] [--schedules 1000] [--pg-url postgresql://…] [--no-pg]

- webhook: a real `agentfleet serve` (SQLite, and PostgreSQL when reachable); N signed JSON POSTs
  to /hooks/<name>, one after another. A 202 comes back once the task exists (the firing and the
  task are one transaction), so the POST's latency is webhook -> task created. p50/p99, and the
  server's CPU per webhook.
- schedule_burst (PostgreSQL): two real `agentfleet serve` replicas on one store, each running its
  trigger loop; N interval schedules all due in the same second. Reports the time from that second
  until every one has fired, and checks that none fired twice. Goal: 1,000 within 2 s.

stdout carries exactly one JSON object; progress notes go to stderr. Each figure is printed beside
the load average: this machine is shared and its wall clock swings 2-3x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from _common import (
    DEFAULT_PG_SERVER,
    load_average,
    machine,
    make_note,
    pg_reachable,
    pg_scratch_database,
    proc_cpu_s,
    serve_child,
    summarise_ns,
)

note = make_note("triggers")
ADMIN = "afk_bench-admin-token-0123456789abcdefghijklmnopqrs"
SCHEDULE_GOAL_S = 2.0


def run_webhooks(database_url: str | None, count: int) -> dict[str, Any]:
    from server.domain.webhook_signature import sign

    with serve_child(ADMIN, database_url, note=note) as server:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        with httpx.Client(base_url=server.base_url, timeout=60) as http:
            secret = _make_webhook(http, headers)
            samples: list[int] = []
            cpu_before = proc_cpu_s(server.pid) or 0.0
            for n in range(count):
                body = json.dumps({"n": n, "sha": uuid.uuid4().hex}).encode()
                hook_headers = {"x-hub-signature-256": sign(secret, body), "x-github-delivery": uuid.uuid4().hex}
                started = time.perf_counter_ns()
                response = http.post("/hooks/bench-hook", content=body, headers=hook_headers)
                samples.append(time.perf_counter_ns() - started)
                if response.status_code != 202:
                    raise RuntimeError(f"webhook answered {response.status_code}: {response.text}")
            cpu = (proc_cpu_s(server.pid) or 0.0) - cpu_before
    return {"latency": summarise_ns(samples), "server_cpu_us_per_webhook": round(cpu / count * 1e6, 1)}


def _make_webhook(http: httpx.Client, headers: dict[str, str]) -> str:
    """trigger_create through MCP's JSON-RPC over plain HTTP (stateless POSTs are enough here)."""
    import asyncio as _asyncio

    from _common import call, mcp_client

    async def make() -> str:
        async with mcp_client(str(http.base_url).rstrip("/"), ADMIN) as client:
            made = await call(
                client,
                "trigger_create",
                name="bench-hook",
                kind="webhook",
                task={"type": "bench-webhook", "payload": {"n": "{{ body.n }}"}},
            )
            return str(made["secret"])

    return _asyncio.run(make())


def run_schedule_burst(database_url: str, count: int) -> dict[str, Any]:
    """Two real `agentfleet serve` replicas on one PostgreSQL store, each running its trigger loop."""
    from sqlalchemy import func, select

    from server.clock import MICROS, SystemClock
    from server.domain.principal import ADMIN as ADMIN_PRINCIPAL
    from server.domain.trigger import TriggerKind
    from server.services.container import build_services
    from server.services.events.triggers import TriggerSpec
    from server.settings import Settings
    from server.store.tables import trigger_runs, triggers

    settings = Settings(
        data_dir=Path(f"/tmp/agentfleet-bench-triggers-{uuid.uuid4().hex[:6]}"), database_url=database_url
    )
    maker = build_services(settings, ADMIN, SystemClock())
    interval = 3600
    try:

        async def create_all() -> None:
            spec = TriggerSpec({"interval_s": interval, "overlap": "queue"}, {"task": {"type": "bench-tick"}})
            for n in range(count):
                await maker.triggers.create(ADMIN_PRINCIPAL, f"tick-{n}", TriggerKind.SCHEDULE, spec, True, None)

        asyncio.run(create_all())
        with (
            serve_child(ADMIN, database_url, note=note) as first,
            serve_child(ADMIN, database_url, note=note) as second,
        ):
            # All due in one second, a few seconds from now (each schedule counts from its anchor).
            due_us = (int(time.time()) + 4) * MICROS
            with maker.db.engine.begin() as conn:
                conn.execute(triggers.update().values(next_due_at=due_us, created_at=due_us - interval * MICROS))
            cpu_before = [proc_cpu_s(first.pid) or 0.0, proc_cpu_s(second.pid) or 0.0]
            fired_at = None
            deadline = time.time() + 90
            while time.time() < deadline:
                with maker.db.engine.connect() as conn:
                    fired = conn.execute(select(func.count()).select_from(trigger_runs)).scalar_one()
                if fired >= count:
                    fired_at = time.time()
                    break
                time.sleep(0.02)
            time.sleep(1.0)  # a late duplicate would show itself now
            cpu = (proc_cpu_s(first.pid) or 0.0) - cpu_before[0] + (proc_cpu_s(second.pid) or 0.0) - cpu_before[1]
            with maker.db.engine.connect() as conn:
                runs = conn.execute(select(func.count()).select_from(trigger_runs)).scalar_one()
                distinct = conn.execute(select(func.count(func.distinct(trigger_runs.c.trigger_id)))).scalar_one()
        elapsed = None if fired_at is None else round(fired_at - due_us / MICROS, 3)
        return {
            "schedules": count,
            "replicas": 2,
            "seconds_from_due_to_all_fired": elapsed,
            "runs": runs,
            "fired_exactly_once": runs == count == distinct,
            "servers_cpu_ms_per_schedule": round(cpu / count * 1000, 3),
            "goal_s": SCHEDULE_GOAL_S,
            "goal_met": elapsed is not None and elapsed <= SCHEDULE_GOAL_S and runs == count,
        }
    finally:
        maker.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--webhooks", type=int, default=300)
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--pg-url", default=DEFAULT_PG_SERVER)
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {"bench": "triggers", "machine": machine(), "loadavg_at_start": load_average()}
    note("webhooks on SQLite")
    out["webhook_sqlite"] = run_webhooks(None, args.webhooks)
    reason = None if args.no_pg else pg_reachable(args.pg_url)
    if args.no_pg or reason is not None:
        out["postgresql"] = {"skipped": reason or "--no-pg"}
    else:
        with pg_scratch_database(args.pg_url, "hooks") as url:
            note("webhooks on PostgreSQL")
            out["webhook_postgresql"] = run_webhooks(url, args.webhooks)
        with pg_scratch_database(args.pg_url, "burst") as url:
            note(f"{args.schedules} schedules due in one second, two replicas")
            out["schedule_burst_postgresql"] = run_schedule_burst(url, args.schedules)
    out["loadavg_at_end"] = load_average()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
