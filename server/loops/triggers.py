"""The trigger loop every replica runs: due schedules, new events, ended absence windows. Woken by
the event bus (new events) and at least every tick (schedules come due with no event)."""

from __future__ import annotations

import logging
import time

import anyio

from server.errors import Unavailable
from server.services.container import Services

log = logging.getLogger("agentfleet.triggers")
TICK_S = 0.5
MIN_GAP_S = 0.05  # a busy log wakes the loop often; it need not run more often than this


async def run_triggers(services: Services) -> None:
    runner = services.trigger_runner
    bus = services.events.bus
    while not bus.closed:
        started = time.monotonic()
        try:
            await runner.run_due_schedules()
            await runner.watch_events()
        except Unavailable as exc:  # the store blinked: say so once a round, without a traceback
            log.warning("trigger round skipped: %s", exc)
        except Exception:  # the loop must outlive a bad round; the next round retries
            log.exception("trigger round failed; retrying")
        await bus.wait(TICK_S)
        spent = time.monotonic() - started
        if spent < MIN_GAP_S:
            await anyio.sleep(MIN_GAP_S - spent)
