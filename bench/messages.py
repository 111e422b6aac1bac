"""Messaging: how soon a parked receiver hears of a send, what a send costs, and a fan-out.

    python bench/messages.py [--rounds 300] [--fanout 1000] [--no-pg] [--pg-url postgresql://…]

In process, through the service layer (uvloop off, one event loop), on SQLite and PostgreSQL:
- send_to_parked_receiver: a receiver parked in message_inbox(wait_s) and a sender; p50/p99 from
  the send's call to the receiver's answer, and process CPU per send+receive.
- fanout: one message to `label:` N agents — one transaction — its time and the rows it wrote.
- inbox_at_depth: an inbox fetch (newest 50 unread) with 10,000 messages stored in it.

stdout carries one JSON object; the load average is printed beside the figures (this machine is
shared, and its wall clock swings)."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import DEFAULT_PG_SERVER, load_average, machine, make_note, pg_reachable, pg_scratch_database, summarise_ns

note = make_note("messages")
ADMIN = "afk_bench-admin-token-0123456789abcdefghijklmnopqrs"


async def _agents(services: Any, count: int, labels: dict[str, str]) -> list[Any]:
    from server.domain.principal import ADMIN as ADMIN_PRINCIPAL

    made = []
    for n in range(count):
        spawned = await services.agents.spawn(ADMIN_PRINCIPAL, "default", f"m{n}", (), None, labels)
        made.append(spawned)
    return made


def _principal_of(spawned: Any) -> Any:
    from server.domain.principal import Principal, Role

    agent = spawned.agent
    return Principal(Role.AGENT, agent.id, agent.profile)


async def _run(database_url: str | None, rounds: int, fanout: int) -> dict[str, Any]:
    from server.clock import SystemClock
    from server.domain.principal import ADMIN as ADMIN_PRINCIPAL
    from server.services.container import build_services
    from server.services.messages.service import Outgoing
    from server.settings import Settings

    data_dir = Path(tempfile.mkdtemp(prefix="agentfleet-bench-messages-"))
    settings = Settings(data_dir=data_dir, database_url=database_url, max_agents=fanout + 10)
    services = build_services(settings, ADMIN, SystemClock())
    try:
        (receiver_row,) = await _agents(services, 1, {"bench": "pair"})
        receiver = _principal_of(receiver_row)
        samples: list[int] = []
        cpu_before = time.process_time()
        for n in range(rounds):
            parked = asyncio.ensure_future(services.messages.inbox(receiver, wait_s=10))
            await asyncio.sleep(0.002)  # let it park
            started = time.perf_counter_ns()
            await services.messages.send(ADMIN_PRINCIPAL, Outgoing(to=[receiver.id], body=f"ping {n}"))
            page = await parked
            samples.append(time.perf_counter_ns() - started)
            await services.messages.ack(receiver, [m.id for m in page.messages])
        cpu_per = (time.process_time() - cpu_before) / rounds * 1e6
        await _agents(services, fanout, {"bench": "fan"})
        started = time.perf_counter_ns()
        sent = await services.messages.send(ADMIN_PRINCIPAL, Outgoing(to=["label:bench=fan"], body="all hands"))
        fan_ms = (time.perf_counter_ns() - started) / 1e6
        depth = 10_000
        for start in range(0, depth, 500):
            await services.db.write(_bulk_inbox, receiver.id, start, 500)
        fetches = []
        for _ in range(50):
            started = time.perf_counter_ns()
            await services.messages.inbox(receiver, limit=50)
            fetches.append(time.perf_counter_ns() - started)
        return {
            "send_to_parked_receiver": {
                "latency": summarise_ns(samples),
                "process_cpu_us_per_send_and_receive": round(cpu_per, 1),
            },
            "fanout": {"recipients": sent.recipients, "ms": round(fan_ms, 1)},
            "inbox_at_depth": {"messages_in_inbox": depth, "fetch": summarise_ns(fetches)},
        }
    finally:
        services.close()


def _bulk_inbox(conn: Any, recipient: str, start: int, count: int) -> None:
    from server.ids import MESSAGE, THREAD, new_id
    from server.store.tables import inbox, messages

    rows, boxes = [], []
    now = int(time.time() * 1e6)
    for n in range(start, start + count):
        message_id, thread = new_id(MESSAGE), new_id(THREAD)
        rows.append(
            dict(
                id=message_id,
                thread_id=thread,
                sender="admin",
                sender_role="admin",
                subject=None,
                body=f"bulk {n}",
                importance="normal",
                reply_to=None,
                attachments=[],
                ack_required=False,
                recipients=[recipient],
                created_at=now,
                expires_at=None,
            )
        )
        boxes.append(dict(recipient=recipient, message_id=message_id, thread_id=thread, sender="admin", created_at=now))
    conn.execute(messages.insert(), rows)
    conn.execute(inbox.insert(), boxes)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--fanout", type=int, default=1000)
    parser.add_argument("--pg-url", default=DEFAULT_PG_SERVER)
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {"bench": "messages", "machine": machine(), "loadavg_at_start": load_average()}
    note("SQLite")
    out["sqlite"] = asyncio.run(_run(None, args.rounds, args.fanout))
    reason = None if args.no_pg else pg_reachable(args.pg_url)
    if reason is not None or args.no_pg:
        out["postgresql"] = {"skipped": reason or "--no-pg"}
    else:
        with pg_scratch_database(args.pg_url, "messages") as url:
            note("PostgreSQL")
            out["postgresql"] = asyncio.run(_run(url, args.rounds, args.fanout))
    out["loadavg_at_end"] = load_average()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
