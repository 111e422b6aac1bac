"""Agents: spawn, list, get, terminate (cascading), heartbeat."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Connection, Row, bindparam, cast, func, select, update

from server.clock import MICROS, Clock, to_iso
from server.domain.budget import POOL_NAME
from server.domain.capabilities import validate_capabilities
from server.domain.principal import REAPER, Principal
from server.domain.statuses import LIVE_AGENT_STATUSES, AgentStatus, agent_sources
from server.domain.views import AgentView, SpawnedAgent
from server.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from server.ids import AGENT, new_id
from server.services import audit
from server.services.agent_rows import touch_agent
from server.services.auth import hash_token, new_agent_token
from server.services.budget_rows import applicable_to_child, refuse_if_blocked, release_holds_of
from server.services.leases import LeaseService
from server.services.locks import LockService
from server.services.profiles import ProfileRegistry
from server.store.database import Database
from server.store.tables import agents

NAME = re.compile(r"^[\w .:@/-]{1,200}$")
POOL = re.compile(POOL_NAME)
_LIVE = [s.value for s in LIVE_AGENT_STATUSES]
# Heard from (or spawned, if never heard from) longer ago than its heartbeat timeout.
_QUIET = [
    agents.c.status.in_([s.value for s in agent_sources(AgentStatus.UNRESPONSIVE)]),
    # BIGINT before multiplying: a timeout above ~35 minutes in microseconds overflows PostgreSQL's int4.
    func.coalesce(agents.c.last_heartbeat_at, agents.c.created_at)
    + cast(agents.c.heartbeat_timeout_s, BigInteger) * MICROS
    < bindparam("now", type_=BigInteger),
]
_SILENT = select(agents.c.id).where(*_QUIET)
_GO_SILENT = update(agents).where(*_QUIET).values(status=AgentStatus.UNRESPONSIVE.value).returning(agents.c.id)


def agent_view(row: Row[Any], children: list[str] | None = None) -> AgentView:
    return AgentView(
        id=row.id,
        name=row.name,
        profile=f"{row.profile}@{row.profile_version}",
        runtime=row.runtime,
        capabilities=list(row.capabilities),
        parent_id=row.parent_id,
        depth=row.depth,
        status=row.status,
        created_at=to_iso(row.created_at),
        last_heartbeat_at=to_iso(row.last_heartbeat_at),
        terminated_at=to_iso(row.terminated_at),
        labels=dict(row.labels),
        pools=list(row.pools),
        children=children,
    )


def _visible(conn: Connection, principal: Principal, agent_id: str) -> bool:
    """Admin, operator and viewer see every agent; an agent sees itself and its descendants."""
    if principal.sees_all or agent_id == principal.id:
        return True
    current: str | None = agent_id
    for _ in range(64):
        current = conn.execute(select(agents.c.parent_id).where(agents.c.id == current)).scalar()
        if current is None:
            return False
        if current == principal.id:
            return True
    return False


def _is_self_or_ancestor(conn: Connection, principal: Principal, agent_id: str) -> bool:
    return principal.agent_id is not None and _visible(conn, principal, agent_id)


def descendants(conn: Connection, root_id: str) -> list[str]:
    """Every agent below root, breadth first."""
    found: list[str] = []
    frontier = [root_id]
    while frontier:
        frontier = list(conn.execute(select(agents.c.id).where(agents.c.parent_id.in_(frontier))).scalars())
        found.extend(frontier)
    return found


class AgentService:
    def __init__(
        self, db: Database, clock: Clock, profiles: ProfileRegistry, leases: LeaseService, locks: LockService
    ) -> None:
        self._db = db
        self._clock = clock
        self._profiles = profiles
        self._leases = leases
        self._locks = locks

    # -- spawn ---------------------------------------------------------------------------------
    async def spawn(
        self,
        principal: Principal,
        profile: str,
        name: str | None = None,
        capabilities: Sequence[str] = (),
        parent_id: str | None = None,
        labels: dict[str, str] | None = None,
        pools: Sequence[str] = (),
    ) -> SpawnedAgent:
        chosen = self._profiles.resolve(profile)
        extra = validate_capabilities(capabilities)
        bad_pools = [p for p in pools if not POOL.match(p)]
        if bad_pools or len(pools) > 16:
            raise InvalidInput(f"pools: up to 16 names of lowercase letters, digits and _.- ; got {bad_pools or pools}")
        labels = dict(labels or {})
        if len(labels) > 32 or any(len(k) > 64 or len(str(v)) > 256 for k, v in labels.items()):
            raise InvalidInput("labels: at most 32, keys up to 64 and values up to 256 characters")
        if name is not None and not NAME.match(name):
            raise InvalidInput("name: 1-200 characters of letters, digits, space and ._:@/-")
        if principal.agent_id is not None:
            if parent_id not in (None, principal.agent_id):
                raise PermissionDenied("an agent may spawn children only under itself; omit parent_id")
            parent_id = principal.agent_id
        token = new_agent_token()
        row = await self._db.write(
            self._spawn_tx,
            principal,
            chosen.name,
            chosen.version,
            chosen.runtime.value,
            sorted({*chosen.capabilities, *extra}),
            name,
            parent_id,
            labels,
            token,
            chosen.max_concurrency,
            sorted({*chosen.pools, *pools}),
            chosen.limits.heartbeat_timeout_s,
        )
        return SpawnedAgent(agent=agent_view(row), token=token)

    def _spawn_tx(
        self,
        conn: Connection,
        principal: Principal,
        profile: str,
        version: str,
        runtime: str,
        capabilities: list[str],
        name: str | None,
        parent_id: str | None,
        labels: dict[str, str],
        token: str,
        max_concurrency: int,
        pools: list[str],
        heartbeat_timeout_s: int,
    ) -> Row[Any]:
        now = self._clock.now_us()
        depth = 0
        if parent_id is not None:
            depth = self._check_parent(conn, parent_id)
        refuse_if_blocked(applicable_to_child(conn, parent_id, profile, pools), now, "spawn")
        agent_id = new_id(AGENT)
        conn.execute(
            agents.insert().values(
                id=agent_id,
                name=name or f"{profile}-{agent_id[-6:].lower()}",
                profile=profile,
                profile_version=version,
                runtime=runtime,
                capabilities=capabilities,
                parent_id=parent_id,
                depth=depth,
                status=AgentStatus.STARTING.value,
                token_hash=hash_token(token),
                created_by=principal.id,
                created_at=now,
                labels=labels,
                max_concurrency=max_concurrency,
                pools=pools,
                heartbeat_timeout_s=heartbeat_timeout_s,
            )
        )
        audit.record(
            conn, now, principal, "agent.spawn", agent_id, {"profile": f"{profile}@{version}", "parent_id": parent_id}
        )
        return conn.execute(select(agents).where(agents.c.id == agent_id)).one()

    def _check_parent(self, conn: Connection, parent_id: str) -> int:
        # FOR UPDATE serializes concurrent spawns under one parent on PostgreSQL, so the
        # children count below cannot be raced past; SQLite's write lock already does.
        parent = conn.execute(select(agents).where(agents.c.id == parent_id).with_for_update()).first()
        if parent is None:
            raise NotFound(f"no agent {parent_id}")
        if parent.status not in _LIVE:
            raise Conflict(f"parent {parent_id} is {parent.status}; only a live agent can have children")
        limits = self._profiles.resolve(f"{parent.profile}@{parent.profile_version}").limits
        live_children = conn.execute(
            select(func.count()).select_from(agents).where(agents.c.parent_id == parent_id, agents.c.status.in_(_LIVE))
        ).scalar_one()
        if live_children >= limits.max_children:
            raise Conflict(
                f"parent {parent_id} already has {live_children} live children; its profile "
                f"allows {limits.max_children}"
            )
        if parent.depth + 1 > limits.max_depth:
            raise Conflict(
                f"a child of {parent_id} would be at depth {parent.depth + 1}; its profile "
                f"allows depth {limits.max_depth}"
            )
        return parent.depth + 1

    # -- read ----------------------------------------------------------------------------------
    async def get(self, principal: Principal, agent_id: str) -> AgentView:
        return await self._db.read(self._get_tx, principal, agent_id)

    def _get_tx(self, conn: Connection, principal: Principal, agent_id: str) -> AgentView:
        row = conn.execute(select(agents).where(agents.c.id == agent_id)).first()
        if row is None:
            raise NotFound(f"no agent {agent_id}")
        if not _visible(conn, principal, agent_id):
            raise PermissionDenied(f"agent {agent_id} is not you or one of your descendants")
        children = list(
            conn.execute(select(agents.c.id).where(agents.c.parent_id == agent_id).order_by(agents.c.id)).scalars()
        )
        return agent_view(row, children)

    async def list(
        self,
        principal: Principal,
        status: AgentStatus | None = None,
        profile: str | None = None,
        parent_id: str | None = None,
        limit: int = 100,
    ) -> list[AgentView]:
        return await self._db.read(self._list_tx, principal, status, profile, parent_id, limit)

    def _list_tx(
        self,
        conn: Connection,
        principal: Principal,
        status: AgentStatus | None,
        profile: str | None,
        parent_id: str | None,
        limit: int,
    ) -> list[AgentView]:
        query = select(agents).order_by(agents.c.id).limit(limit)
        if status is not None:
            query = query.where(agents.c.status == status.value)
        if profile is not None:
            query = query.where(agents.c.profile == profile.partition("@")[0])
        if parent_id is not None:
            query = query.where(agents.c.parent_id == parent_id)
        if not principal.sees_all:
            query = query.where(agents.c.id.in_([principal.id, *descendants(conn, principal.id)]))
        return [agent_view(row) for row in conn.execute(query)]

    # -- lifecycle -----------------------------------------------------------------------------
    async def terminate(self, principal: Principal, agent_id: str, cascade: bool = True) -> list[str]:
        ended, released = await self._db.write(self._terminate_tx, principal, agent_id, cascade)
        self._leases.announce_requeued(released)
        return ended

    def _terminate_tx(
        self, conn: Connection, principal: Principal, agent_id: str, cascade: bool
    ) -> tuple[list[str], list[Any]]:
        now = self._clock.now_us()
        row = conn.execute(select(agents.c.status).where(agents.c.id == agent_id)).first()
        if row is None:
            raise NotFound(f"no agent {agent_id}")
        if not (principal.can_operate or _is_self_or_ancestor(conn, principal, agent_id)):
            raise PermissionDenied(f"agent {agent_id} is not yours to end: only itself, its ancestors or an operator")
        if row.status == AgentStatus.TERMINATED:
            raise Conflict(f"agent {agent_id} is already terminated")
        below = descendants(conn, agent_id)
        live_below = (
            list(conn.execute(select(agents.c.id).where(agents.c.id.in_(below), agents.c.status.in_(_LIVE))).scalars())
            if below
            else []
        )
        if live_below and not cascade:
            raise Conflict(
                f"agent {agent_id} has live children {live_below}; pass cascade=true or terminate them first"
            )
        targets = [agent_id, *live_below]
        sources = [s.value for s in agent_sources(AgentStatus.TERMINATED)]
        ended = (
            conn.execute(
                update(agents)
                .where(agents.c.id.in_(targets), agents.c.status.in_(sources))
                .values(status=AgentStatus.TERMINATED.value, token_hash=None, terminated_at=now)
                .returning(agents.c.id)
            )
            .scalars()
            .all()
        )
        released = self._leases.release_held_by(conn, list(ended), now)
        self._locks.release_for_agents(conn, list(ended), now, principal.id)
        release_holds_of(conn, list(ended), now)
        for ended_id in ended:
            audit.record(conn, now, principal, "agent.terminate", ended_id, {"cascade_from": agent_id})
        return [agent_id, *sorted(set(ended) - {agent_id})], released

    # -- supervision ---------------------------------------------------------------------------
    async def sweep_silent(self) -> int:
        """Agents silent past their heartbeat timeout become unresponsive; what they held (task
        leases, locks, budget holds) is released so the work can go on elsewhere. Any later call
        with their token makes them active again. Safe on every replica: conditional updates."""
        if not await self._db.read(self._anything_silent_tx, self._clock.now_us()):
            return 0  # the usual case: a read, not a turn at the write lock every reaper round
        silent, released = await self._db.write(self._sweep_silent_tx)
        self._leases.announce_requeued(released)
        return len(silent)

    @staticmethod
    def _anything_silent_tx(conn: Connection, now: int) -> bool:
        return conn.execute(_SILENT.limit(1), {"now": now}).first() is not None

    def _sweep_silent_tx(self, conn: Connection) -> tuple[list[str], list[Any]]:
        now = self._clock.now_us()
        silent = list(conn.execute(_GO_SILENT, {"now": now}).scalars())
        if not silent:
            return [], []
        released = self._leases.release_held_by(conn, silent, now)
        self._locks.release_for_agents(conn, silent, now, REAPER.id)
        release_holds_of(conn, silent, now)
        for agent_id in silent:
            audit.record(conn, now, REAPER, "agent.unresponsive", agent_id, {})
        return silent, released

    async def heartbeat(self, principal: Principal) -> AgentView:
        if principal.agent_id is None:
            raise InvalidInput("agent_heartbeat must be called with an agent's token; the admin is not an agent")
        return await self._db.write(self._heartbeat_tx, principal)

    def _heartbeat_tx(self, conn: Connection, principal: Principal) -> AgentView:
        result = touch_agent(conn, principal.id, self._clock.now_us())
        if result is None:
            raise Conflict(f"agent {principal.id} is not live; it cannot heartbeat")
        return agent_view(result)
