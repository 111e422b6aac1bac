"""Background work every replica runs: the lease reaper (task and lock leases) and cross-replica
wake-ups."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from server.loops.notify import listen_for_wakeups
from server.loops.reaper import run_reaper
from server.services.container import Services


@asynccontextmanager
async def background_loops(services: Services) -> AsyncIterator[None]:
    async with anyio.create_task_group() as group:
        group.start_soon(run_reaper, services)
        if services.db.dialect == "postgresql":
            group.start_soon(listen_for_wakeups, services)
        try:
            yield
        finally:
            services.signals.close()
            services.lock_signals.close()
            group.cancel_scope.cancel()
