"""The store side of running `a2a` agents: which ones this replica speaks for, that one's peer
answered (heard from: active again if it was silent), and that its peer cannot be reached
(unresponsive at once, what it held released, like the silent-agent sweep). Conditional updates
only, so a stale view of a row changes nothing. No A2A or HTTP here: server/runtime/a2a_peer.py
speaks the protocol and calls these."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, select, update

from server.clock import Clock
from server.domain.principal import Principal, Role
from server.domain.profile import Runtime
from server.domain.statuses import AgentStatus, agent_sources
from server.errors import InvalidInput
from server.services import audit
from server.services.agent_rows import heard_from
from server.services.agents import release_everything
from server.services.leases import LeaseService
from server.services.locks import LockService
from server.services.profiles import ProfileRegistry
from server.store.database import Database
from server.store.tables import agents

PEER_RUNTIME = Principal(Role.SYSTEM, "a2a-peers")
# Who the runtime speaks for: spawned, working or silent. `stopping` is a process agent's drain;
# an a2a agent is terminated at once.
_RUN = [AgentStatus.STARTING.value, AgentStatus.ACTIVE.value, AgentStatus.UNRESPONSIVE.value]
_TO_UNRESPONSIVE = [s.value for s in agent_sources(AgentStatus.UNRESPONSIVE)]
_ERROR_CHARS = 500


@dataclass(frozen=True)
class PeerAgent:
    """One a2a agent as the runtime sees it on a tick."""

    id: str
    profile: str
    url: str
    token_env: str | None
    max_concurrency: int
    heartbeat_timeout_s: int
    status: AgentStatus

    @property
    def principal(self) -> Principal:
        """The server acts for the agent: it claims, heartbeats and reports as the agent."""
        return Principal(Role.AGENT, self.id, profile=self.profile)


class PeerService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        profiles: ProfileRegistry,
        leases: LeaseService,
        locks: LockService,
        replica_id: str,
    ) -> None:
        self._db = db
        self._clock = clock
        self._profiles = profiles
        self._leases = leases
        self._locks = locks
        self.replica_id = replica_id

    async def assigned(self) -> list[PeerAgent]:
        """This replica's live a2a agents (spawn assigns each to the replica that fetched its card)."""
        rows = await self._db.read(self._assigned_tx)
        return [self._peer(row) for row in rows]

    def _assigned_tx(self, conn: Connection) -> list[Row[Any]]:
        return list(
            conn.execute(
                select(
                    agents.c.id,
                    agents.c.profile,
                    agents.c.profile_version,
                    agents.c.a2a_url,
                    agents.c.max_concurrency,
                    agents.c.heartbeat_timeout_s,
                    agents.c.status,
                )
                .where(
                    agents.c.runtime == Runtime.A2A.value,
                    agents.c.replica_id == self.replica_id,
                    agents.c.status.in_(_RUN),
                    agents.c.a2a_url.is_not(None),
                )
                .order_by(agents.c.id)
            )
        )

    def _peer(self, row: Row[Any]) -> PeerAgent:
        try:
            peer = self._profiles.resolve(f"{row.profile}@{row.profile_version}").a2a
        except InvalidInput:  # the profile file was removed since the spawn: no token to send
            peer = None
        return PeerAgent(
            id=row.id,
            profile=row.profile,
            url=row.a2a_url,
            token_env=peer.token_env if peer is not None else None,
            max_concurrency=row.max_concurrency,
            heartbeat_timeout_s=row.heartbeat_timeout_s,
            status=AgentStatus(row.status),
        )

    async def heard_from(self, agent_id: str) -> None:
        """Its peer answered: the agent is alive (and active again if it was silent or starting)."""
        await self._db.write(self._heard_from_tx, agent_id)

    def _heard_from_tx(self, conn: Connection, agent_id: str) -> None:
        heard_from(conn, agent_id, self._clock.now_us())

    async def unreachable(self, agent_id: str, url: str, error: str) -> bool:
        """Its peer cannot be reached: unresponsive now, not after the heartbeat timeout. Task
        leases go back to the queue, locks and budget holds are released. False when it was not
        starting or active (already unresponsive, or ended): nothing changes then."""
        changed, released = await self._db.write(self._unreachable_tx, agent_id, url, error)
        self._leases.announce_requeued(released)
        return changed

    def _unreachable_tx(self, conn: Connection, agent_id: str, url: str, error: str) -> tuple[bool, list[Any]]:
        now = self._clock.now_us()
        changed = conn.execute(
            update(agents)
            .where(agents.c.id == agent_id, agents.c.status.in_(_TO_UNRESPONSIVE))
            .values(status=AgentStatus.UNRESPONSIVE.value)
        ).rowcount
        if not changed:
            return False, []
        released = release_everything(conn, self._leases, self._locks, [agent_id], now, PEER_RUNTIME.id)
        audit.record(
            conn, now, PEER_RUNTIME, "agent.unresponsive", agent_id, {"a2a_url": url, "error": error[:_ERROR_CHARS]}
        )
        return True, released
