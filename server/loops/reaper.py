"""Ends lapsed task and lock leases (and lock waits whose caller is gone), expired budget holds,
agents silent past their heartbeat timeout and undecided approvals past their time. Every replica
runs it; conditional updates (and SKIP LOCKED or the lock table's advisory lock on PostgreSQL)
make concurrent reapers harmless."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from server.errors import FleetError
from server.services.container import Services

log = logging.getLogger("agentfleet.reaper")


def _rounds(services: Services) -> list[tuple[Callable[[], Awaitable[int]], int, str]]:
    """Each sweep, the level to log what it ended at, and how to say it."""
    return [
        (services.leases.reap_once, logging.INFO, "ended %d lapsed task lease(s)"),
        (services.locks.sweep, logging.INFO, "ended %d lapsed lock lease(s) or wait(s)"),
        (services.budgets.sweep, logging.INFO, "expired %d budget hold(s)"),
        (services.agents.sweep_silent, logging.WARNING, "%d silent agent(s) are now unresponsive"),
        (services.approvals.sweep, logging.WARNING, "%d approval(s) expired undecided; the default applied"),
        (_prune_messages(services), logging.INFO, "pruned %d expired or old read message(s)"),
    ]


def _prune_messages(services: Services) -> Callable[[], Awaitable[int]]:
    async def prune() -> int:
        return await services.messages.prune(services.settings.message_retention_days)

    return prune


async def run_reaper(services: Services) -> None:
    interval = services.settings.reaper_interval_s
    sweeps = _rounds(services)
    while True:
        try:
            for sweep, level, message in sweeps:
                ended = await sweep()
                if ended:
                    log.log(level, message, ended)
        except FleetError as exc:  # the store is briefly unavailable: try again next round
            log.warning("reaper: %s", exc)
        await anyio.sleep(interval)
