"""The store side of running process agents: which ones this replica runs, starting one (a fresh
token each time), recording its pid, its exit (restart with backoff, or failed), the end of a
graceful stop. Every change is a conditional update, so a stale view of a row changes nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, or_, select, update

from server.clock import MICROS, Clock
from server.domain.backoff import backoff_bound_ms
from server.domain.principal import Principal, Role
from server.domain.profile import Profile, Runtime
from server.domain.statuses import LIVE_AGENT_STATUSES, AgentStatus, agent_sources
from server.instruments import Instruments
from server.services import audit
from server.services.agents import release_everything
from server.services.auth import hash_token
from server.services.events import log as events
from server.services.leases import LeaseService
from server.services.locks import LockService
from server.services.profiles import ProfileRegistry
from server.store.database import Database
from server.store.tables import agents

SUPERVISOR = Principal(Role.SYSTEM, "supervisor")
_RUNNABLE = [AgentStatus.STARTING.value, AgentStatus.ACTIVE.value, AgentStatus.UNRESPONSIVE.value]
_LIVE = [s.value for s in LIVE_AGENT_STATUSES]
_TO_FAILED = [s.value for s in agent_sources(AgentStatus.FAILED)]


@dataclass(frozen=True)
class Supervised:
    """One process agent as the supervisor sees it on a tick."""

    id: str
    profile: Profile
    status: AgentStatus
    pid: int | None
    pid_start: str | None
    next_start_at: int | None
    stop_deadline: int | None


@dataclass(frozen=True)
class ExitOutcome:
    failed: bool
    restart_at: int | None


class SupervisionService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        profiles: ProfileRegistry,
        leases: LeaseService,
        locks: LockService,
        replica_id: str,
        instruments: Instruments | None = None,
    ) -> None:
        self._instruments = instruments or Instruments()
        self._db = db
        self._clock = clock
        self._profiles = profiles
        self._leases = leases
        self._locks = locks
        self.replica_id = replica_id

    # -- what to watch -------------------------------------------------------------------------
    async def watched(self) -> list[Supervised]:
        """This replica's process agents that are live or may still have a process; unassigned
        ones (spawned through a server that runs no processes) are taken on first."""
        if await self._db.read(self._unassigned_tx):
            await self._db.write(self._adopt_unassigned_tx)
        rows = await self._db.read(self._watched_tx)
        if any(not self._profiles.knows(f"{row.profile}@{row.profile_version}") for row in rows):
            await self._profiles.refresh()  # spawned from a version registered on another replica
        return [self._supervised(row) for row in rows]

    @staticmethod
    def _unassigned_tx(conn: Connection) -> bool:
        return (
            conn.execute(
                select(agents.c.id)
                .where(
                    agents.c.runtime == Runtime.PROCESS.value,
                    agents.c.replica_id.is_(None),
                    agents.c.status == AgentStatus.STARTING.value,
                )
                .limit(1)
            ).first()
            is not None
        )

    def _adopt_unassigned_tx(self, conn: Connection) -> None:
        conn.execute(
            update(agents)
            .where(
                agents.c.runtime == Runtime.PROCESS.value,
                agents.c.replica_id.is_(None),
                agents.c.status == AgentStatus.STARTING.value,
            )
            .values(replica_id=self.replica_id)
        )

    def _watched_tx(self, conn: Connection) -> list[Row[Any]]:
        return list(
            conn.execute(
                select(agents)
                .where(
                    agents.c.runtime == Runtime.PROCESS.value,
                    agents.c.replica_id == self.replica_id,
                    or_(agents.c.status.in_(_LIVE), agents.c.pid.is_not(None)),
                )
                .order_by(agents.c.id)
            )
        )

    def _supervised(self, row: Row[Any]) -> Supervised:
        return Supervised(
            id=row.id,
            profile=self._profiles.resolve(f"{row.profile}@{row.profile_version}"),
            status=AgentStatus(row.status),
            pid=row.pid,
            pid_start=row.pid_start,
            next_start_at=row.next_start_at,
            stop_deadline=row.stop_deadline,
        )

    # -- start ---------------------------------------------------------------------------------
    async def begin_launch(self, agent_id: str, token: str) -> bool:
        """Claim a due start: the row takes the new token's hash and forgets any old process.
        False when it is no longer due (terminated, restarted elsewhere, started already)."""
        return await self._db.write(self._begin_launch_tx, agent_id, token)

    def _begin_launch_tx(self, conn: Connection, agent_id: str, token: str) -> bool:
        now = self._clock.now_us()
        claimed = conn.execute(
            update(agents)
            .where(
                agents.c.id == agent_id,
                agents.c.replica_id == self.replica_id,
                agents.c.status.in_(_RUNNABLE),
                agents.c.next_start_at <= now,
            )
            .values(
                status=AgentStatus.STARTING.value,
                token_hash=hash_token(token),
                next_start_at=None,
                launched_at=now,
                pid=None,
                pid_start=None,
            )
        ).rowcount
        if claimed:
            audit.record(conn, now, SUPERVISOR, "agent.launch", agent_id, {"replica": self.replica_id})
            data = {"replica": self.replica_id}
            events.emit(conn, now, "agent.launched", agent_id, data, actor=SUPERVISOR, agent_id=agent_id)
        return bool(claimed)

    async def record_started(self, agent_id: str, pid: int, identity: str) -> None:
        await self._db.write(self._record_started_tx, agent_id, pid, identity)

    @staticmethod
    def _record_started_tx(conn: Connection, agent_id: str, pid: int, identity: str) -> None:
        # Written even if the agent was terminated meanwhile: the pid is how its process gets cleaned up.
        conn.execute(update(agents).where(agents.c.id == agent_id).values(pid=pid, pid_start=identity))

    # -- exits ---------------------------------------------------------------------------------
    async def record_exit(self, agent_id: str, pid: int | None, how: str) -> ExitOutcome | None:
        """The process ended without being asked to: restart after a backoff, or `failed` once the
        profile's max_restarts are used up. What it held is released at once (it cannot finish)."""
        outcome, released = await self._db.write(self._record_exit_tx, agent_id, pid, how)
        self._leases.announce_requeued(released)
        return outcome

    def _record_exit_tx(
        self, conn: Connection, agent_id: str, pid: int | None, how: str
    ) -> tuple[ExitOutcome | None, list[Any]]:
        now = self._clock.now_us()
        row = conn.execute(select(agents).where(agents.c.id == agent_id)).first()
        if row is None or row.pid != pid or row.status not in _RUNNABLE or row.next_start_at is not None:
            return None, []
        policy = self._profiles.pinned(conn, row.profile, row.profile_version).restart
        failed = row.restarts >= policy.max_restarts
        if failed:
            values: dict[str, Any] = {"status": AgentStatus.FAILED.value, "token_hash": None, "next_start_at": None}
        else:
            delay_ms = backoff_bound_ms(
                row.restarts + 1, int(policy.backoff_base_s * 1000), int(policy.backoff_cap_s * 1000)
            )
            values = {"restarts": row.restarts + 1, "next_start_at": now + delay_ms * 1000}
        changed = conn.execute(
            update(agents)
            .where(agents.c.id == agent_id, agents.c.status.in_(_TO_FAILED if failed else _RUNNABLE))
            .values(pid=None, pid_start=None, last_exit=how[:200], **values)
        ).rowcount
        if not changed:
            return None, []
        self._instruments.process_exited(row.profile, failed)
        released = release_everything(conn, self._leases, self._locks, [agent_id], now, SUPERVISOR.id)
        action = "agent.failed" if failed else "agent.exit"
        audit.record(conn, now, SUPERVISOR, action, agent_id, {"exit": how, "restarts": row.restarts})
        data = {"exit": how, "restarts": row.restarts}
        kind = "agent.failed" if failed else "agent.exited"
        events.emit(conn, now, kind, agent_id, data, actor=SUPERVISOR, agent_id=agent_id)
        return ExitOutcome(failed, values.get("next_start_at")), released

    async def finish_stop(self, agent_id: str) -> bool:
        """A stopping agent's process is gone: it is terminated and its token revoked."""
        ended, released = await self._db.write(self._finish_stop_tx, agent_id)
        self._leases.announce_requeued(released)
        return ended

    def _finish_stop_tx(self, conn: Connection, agent_id: str) -> tuple[bool, list[Any]]:
        now = self._clock.now_us()
        ended = conn.execute(
            update(agents)
            .where(agents.c.id == agent_id, agents.c.status == AgentStatus.STOPPING.value)
            .values(
                status=AgentStatus.TERMINATED.value,
                token_hash=None,
                terminated_at=now,
                pid=None,
                pid_start=None,
                stop_deadline=None,
            )
        ).rowcount
        if not ended:
            return False, []
        released = release_everything(conn, self._leases, self._locks, [agent_id], now, SUPERVISOR.id)
        audit.record(conn, now, SUPERVISOR, "agent.terminate", agent_id, {"stopped": True})
        return True, released

    async def forget_process(self, agent_id: str) -> None:
        """An ended agent's leftover process was killed: nothing of it remains to watch."""
        await self._db.write(self._forget_tx, agent_id)

    @staticmethod
    def _forget_tx(conn: Connection, agent_id: str) -> None:
        conn.execute(
            update(agents)
            .where(agents.c.id == agent_id, agents.c.status.not_in(_LIVE))
            .values(pid=None, pid_start=None, stop_deadline=None)
        )

    def now_us(self) -> int:
        return self._clock.now_us()


def stop_grace_us(profile: Profile) -> int:
    return int((profile.process.stop_timeout_s if profile.process else 10.0) * MICROS)
