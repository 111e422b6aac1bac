"""PostgreSQL LISTEN: work queued, or a lock granted, on another replica wakes the claimers and
lock waiters parked on this one; a change to an A2A task, made anywhere, wakes its streams."""

from __future__ import annotations

import json
import logging

import anyio
import psycopg

from server.services.container import Services
from server.services.events.log import EVENT_CHANNEL
from server.store.dialect import LOCK_CHANNEL, TASK_CHANGE_CHANNEL, TASK_CHANNEL, listen

log = logging.getLogger("agentfleet.notify")


async def listen_for_wakeups(services: Services) -> None:
    delay = 0.5
    while True:
        try:
            channels = [TASK_CHANNEL, LOCK_CHANNEL, TASK_CHANGE_CHANNEL, EVENT_CHANNEL]
            async for channel, payload in listen(services.db.engine, channels):
                if not channel:  # subscribed: anything changed while we were not is found by re-checks
                    delay = 0.5
                    services.signals.wake_all()
                    services.task_changes.wake_all()
                    services.events.bus.wake()
                    continue
                if channel == EVENT_CHANNEL:
                    services.events.bus.wake()
                    continue
                if channel == TASK_CHANGE_CHANNEL:
                    services.task_changes.wake([payload])
                elif channel == LOCK_CHANNEL:
                    _deliver_grants(services, payload)
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


def _deliver_grants(services: Services, payload: str) -> None:
    try:
        granted = json.loads(payload).get("g") or []
    except (ValueError, AttributeError):
        return
    services.lock_signals.wake([str(lock_id) for lock_id in granted])
