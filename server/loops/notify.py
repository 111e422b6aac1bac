"""PostgreSQL LISTEN: work queued on another replica wakes claimers parked on this one."""

from __future__ import annotations

import json
import logging

import anyio
import psycopg
from sqlalchemy.engine import make_url

from server.services.container import Services
from server.store.dialect import TASK_CHANNEL

log = logging.getLogger("agentfleet.notify")


def libpq_url(sqlalchemy_url: str) -> str:
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def listen_for_tasks(services: Services) -> None:
    url = libpq_url(str(services.db.engine.url.render_as_string(hide_password=False)))
    delay = 0.5
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {TASK_CHANNEL}")
                delay = 0.5
                # Anything queued while we were not listening is found by the claimers' re-checks.
                services.signals.wake_all()
                async for note in conn.notifies():
                    _deliver(services, note.payload)
        except (psycopg.Error, OSError) as exc:
            log.warning("task notifications lost (%s); reconnecting in %.1fs", exc, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, 10.0)


def _deliver(services: Services, payload: str) -> None:
    try:
        body = json.loads(payload)
    except ValueError:
        return
    if body.get("o") == services.signals.origin:
        return  # our own commit: already announced in-process
    services.signals.task_ready(
        frozenset(body.get("c") or ()), body.get("p"), int(body.get("r") or 0), services.clock.now_us()
    )
