"""Autoscaling: a profile's `autoscale: {min, max, tasks_per_agent, scale_in_after_s}` keeps
between min and max process agents of it, one per tasks_per_agent tasks they could serve (queued
and claimable by its capabilities, or running on its agents). Scale-out spawns process agents the
supervisor then starts; scale-in retires agents idle for scale_in_after_s, draining them like a
graceful agent_terminate. The decision runs under the fleet-size turn, so replicas never both
add the same agent."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from sqlalchemy import Connection, func, select, text

from server.clock import MICROS, Clock
from server.domain.principal import Principal, Role
from server.domain.profile import Autoscale, Profile
from server.domain.statuses import AgentStatus, TaskStatus
from server.services import audit
from server.services.agents import AgentService, Launch
from server.services.profiles import ProfileRegistry
from server.store.database import Database
from server.store.dialect import json_subset
from server.store.tables import agents, task_attempts, tasks

AUTOSCALER = Principal(Role.SYSTEM, "autoscaler")
_SERVING = [AgentStatus.STARTING.value, AgentStatus.ACTIVE.value, AgentStatus.UNRESPONSIVE.value]


@dataclass(frozen=True)
class Scaled:
    profile: str
    added: list[str]
    retired: list[str]


def desired_agents(policy: Autoscale, demand: int) -> int:
    return min(policy.max, max(policy.min, math.ceil(demand / policy.tasks_per_agent)))


class AutoscaleService:
    def __init__(self, db: Database, clock: Clock, agents_service: AgentService, profiles: ProfileRegistry) -> None:
        self._db = db
        self._clock = clock
        self._agents = agents_service
        self._profiles = profiles
        self._servable = text(
            "SELECT COUNT(*) FROM orch_tasks WHERE status = 'queued' AND pinned_agent_id IS NULL "
            "AND ready_at <= :now AND " + json_subset(db.dialect, "orch_tasks.capabilities", ":caps")
        )

    @property
    def _scaled(self) -> list[tuple[Profile, Autoscale]]:
        """Each autoscaled name's policy, from the version spawns naming no version get (read from
        the registry each pass: a version registered or retired since start counts)."""
        return [(p, p.autoscale) for p in self._profiles.autoscaled() if p.autoscale is not None]

    @property
    def active(self) -> bool:
        return bool(self._scaled)

    async def rebalance(self, replica_id: str) -> list[Scaled]:
        """One pass over the autoscaled profiles: a read to see whether anything should change, a
        write (under the fleet-size turn, re-deciding there) only when something should."""
        changes = []
        await self._profiles.refresh()
        for profile, policy in self._scaled:
            if await self._db.read(self._plan_tx, profile, policy) != (0, 0):
                scaled = await self._db.write(self._rebalance_tx, profile, policy, replica_id)
                if scaled.added or scaled.retired:
                    changes.append(scaled)
        return changes

    def _plan_tx(self, conn: Connection, profile: Profile, policy: Autoscale) -> tuple[int, int]:
        """(agents to add, agents to retire) now."""
        now = self._clock.now_us()
        live = self._serving(conn, profile.name)
        want = desired_agents(policy, self._demand(conn, profile, live, now))
        if want > len(live):
            return want - len(live), 0
        if want < len(live):
            return 0, min(len(live) - want, len(self._idle(conn, live, now - int(policy.scale_in_after_s * MICROS))))
        return 0, 0

    def _rebalance_tx(self, conn: Connection, profile: Profile, policy: Autoscale, replica_id: str) -> Scaled:
        room = self._agents.fleet_room(conn)  # takes the turn first: the plan below cannot be raced
        add, retire = self._plan_tx(conn, profile, policy)
        now = self._clock.now_us()
        added = []
        for _ in range(min(add, room)):
            chosen, chosen_by = self._profiles.choose(profile.name)  # the rollout's pick, when there is one
            if chosen.runtime is not profile.runtime:  # only process agents are autoscaled
                chosen, chosen_by = profile, "newest"
            row = self._agents.spawn_in(
                conn,
                AUTOSCALER,
                chosen,
                sorted(chosen.capabilities),
                None,
                None,
                {"autoscaled": "true"},
                sorted(chosen.pools),
                Launch(replica_id=replica_id, next_start_at=now),
                chosen_by=chosen_by,
            )
            added.append(row.id)
        retired: list[str] = []
        if retire:
            idle = self._idle(conn, self._serving(conn, profile.name), now - int(policy.scale_in_after_s * MICROS))
            chosen = idle[:retire]
            stopping = self._agents.stop_processes(conn, chosen, now, graceful=True)
            ended = self._agents.end_now(conn, [a for a in chosen if a not in stopping], now)
            retired = [*stopping, *ended]
            for agent_id in retired:
                audit.record(conn, now, AUTOSCALER, "agent.scale_in", agent_id, {"profile": profile.ref})
        return Scaled(profile.ref, added, retired)

    @staticmethod
    def _serving(conn: Connection, profile_name: str) -> list[str]:
        return list(
            conn.execute(
                select(agents.c.id)
                .where(agents.c.profile == profile_name, agents.c.status.in_(_SERVING))
                .order_by(agents.c.id.desc())  # newest first: scale-in retires the youngest
            ).scalars()
        )

    def _demand(self, conn: Connection, profile: Profile, live: list[str], now: int) -> int:
        queued = conn.execute(
            self._servable, {"now": now, "caps": json.dumps(sorted(profile.capabilities))}
        ).scalar_one()
        running = (
            conn.execute(
                select(func.count())
                .select_from(tasks)
                .where(tasks.c.status == TaskStatus.RUNNING.value, tasks.c.agent_id.in_(live))
            ).scalar_one()
            if live
            else 0
        )
        return int(queued) + int(running)

    @staticmethod
    def _idle(conn: Connection, live: list[str], since: int) -> list[str]:
        """Agents holding no task, with no task ended and no process started after `since`."""
        if not live:
            return []
        busy = set(
            conn.execute(
                select(tasks.c.agent_id).where(tasks.c.status == TaskStatus.RUNNING.value, tasks.c.agent_id.in_(live))
            ).scalars()
        )
        recent = set(
            conn.execute(
                select(task_attempts.c.agent_id).where(
                    task_attempts.c.agent_id.in_(live), task_attempts.c.ended_at > since
                )
            ).scalars()
        )
        started = set(
            conn.execute(
                select(agents.c.id).where(
                    agents.c.id.in_(live), func.coalesce(agents.c.launched_at, agents.c.created_at) > since
                )
            ).scalars()
        )
        return [a for a in live if a not in busy | recent | started]
