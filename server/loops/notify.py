"""PostgreSQL LISTEN on two channels: work queued on another replica wakes a claimer parked on this
one (the payload says which capabilities it needs), and new events on the log wake what they
concern here: lock waiters, A2A streams, event followers (server/services/events/wakeups.py)."""

from __future__ import annotations

import json
import logging

import anyio
import psycopg

from server.services.container import Services
from server.services.events.log import EVENT_CHANNEL
from server.store.dialect import TASK_CHANNEL, listen

log = logging.getLogger("agentfleet.notify")


async def listen_for_wakeups(services: Services) -> None:
    delay = 0.5
    while True:
        try:
            channels = [TASK_CHANNEL, EVENT_CHANNEL]
            async for channel, payload in listen(services.db.engine, channels):
                if not channel:  # subscribed: anything changed while we were not is found by re-checks
                    delay = 0.5
                    services.signals.wake_all()
                    services.wakeups.subscribed()
                    continue
                if channel == EVENT_CHANNEL:
                    services.wakeups.notified(payload)
                else:
                    _deliver(services, payload)
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
