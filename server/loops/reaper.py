"""Ends lapsed task and lock leases (and lock waits whose caller is gone), expired budget holds,
agents silent past their heartbeat timeout and undecided approvals past their time. Every replica
runs it; conditional updates (and SKIP LOCKED or the lock table's advisory lock on PostgreSQL)
make concurrent reapers harmless."""

from __future__ import annotations

import logging

import anyio

from server.errors import FleetError
from server.services.container import Services

log = logging.getLogger("agentfleet.reaper")


async def run_reaper(services: Services) -> None:
    interval = services.settings.reaper_interval_s
    while True:
        try:
            ended = await services.leases.reap_once()
            if ended:
                log.info("ended %d lapsed task lease(s)", ended)
            ended = await services.locks.sweep()
            if ended:
                log.info("ended %d lapsed lock lease(s) or wait(s)", ended)
            ended = await services.budgets.sweep()
            if ended:
                log.info("expired %d budget hold(s)", ended)
            ended = await services.agents.sweep_silent()
            if ended:
                log.warning("%d agent(s) silent past their heartbeat timeout are now unresponsive", ended)
            ended = await services.approvals.sweep()
            if ended:
                log.warning("%d approval(s) expired undecided; their default decision applied", ended)
        except FleetError as exc:  # the store is briefly unavailable: try again next round
            log.warning("reaper: %s", exc)
        await anyio.sleep(interval)
