"""Background work every replica runs: the lease reaper (task and lock leases), cross-replica
wake-ups, notification deliveries and, on a server that serves HTTP, the supervisor of its
process agents and the runtime of its a2a agents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from server.loops.notify import listen_for_wakeups
from server.loops.reaper import run_reaper
from server.loops.triggers import run_triggers
from server.runtime.a2a_peer import PeerCardFetcher, PeerRuntime
from server.runtime.supervisor import Supervisor
from server.services.container import Services


@asynccontextmanager
async def background_loops(services: Services, supervise: bool = False) -> AsyncIterator[None]:
    """supervise: run process agents here. Only a server with an HTTP address can: its agents call
    back on AGENTFLEET_URL. Processes outlive the server and are re-adopted when it comes back."""
    async with anyio.create_task_group() as group:
        group.start_soon(run_reaper, services)
        group.start_soon(run_triggers, services)
        group.start_soon(services.notifications.run)
        if services.db.dialect == "postgresql":
            group.start_soon(listen_for_wakeups, services)
        if supervise:
            supervisor = Supervisor(services.supervision, services.autoscaling, services.settings)
            services.agents.runner = supervisor.runner()
            group.start_soon(supervisor.run)
            cards = PeerCardFetcher()
            services.agents.peers = cards
            peers = PeerRuntime(
                services.peers,
                services.leases,
                cards,
                services.settings.supervisor_interval_s,
                services.settings.max_payload_bytes,
            )
            group.start_soon(peers.run)
        try:
            yield
        finally:
            services.agents.runner = None
            services.agents.peers = None
            services.signals.close()
            services.lock_signals.close()
            services.events.bus.close()
            group.cancel_scope.cancel()
