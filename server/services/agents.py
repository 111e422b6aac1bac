"""Agents: spawn, list, get, terminate (cascading; graceful for processes), restart, heartbeat."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from sqlalchemy import BigInteger, Connection, Row, bindparam, cast, func, select, update

from server.clock import MICROS, Clock, to_iso
from server.domain.budget import POOL_NAME
from server.domain.capabilities import validate_capabilities
from server.domain.delegation import widened_fields
from server.domain.principal import REAPER, Principal
from server.domain.profile import Profile, Runtime
from server.domain.statuses import LIVE_AGENT_STATUSES, AgentStatus, agent_sources
from server.domain.views import AgentView, ProcessView, SpawnedAgent
from server.errors import Conflict, InvalidInput, NotFound, PermissionDenied, Unavailable
from server.ids import AGENT, new_id
from server.services import audit
from server.services.agent_rows import touch_agent
from server.services.auth import hash_token, new_agent_token
from server.services.budget_rows import applicable_to_child, refuse_if_blocked, release_holds_of
from server.services.events import log as events
from server.services.leases import LeaseService
from server.services.locks import LockService
from server.services.profiles import ProfileRegistry, admits
from server.store.database import Database
from server.store.dialect import take_turns
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
FLEET_SIZE_TURN = 0x61666C73  # the advisory lock spawns take on PostgreSQL to count the fleet
_STARTABLE = [s.value for s in agent_sources(AgentStatus.STARTING)]
_STOPPABLE = [s.value for s in agent_sources(AgentStatus.STOPPING)]


class PeerCards(Protocol):
    async def capabilities(self, url: str, token_env: str | None) -> list[str]:
        """The remote A2A agent's skills as capabilities; Unavailable when it cannot be reached."""
        ...


@dataclass(frozen=True)
class Runner:
    """This server runs process agents: its replica id, how to wake the supervisor when one is due
    to start or stop, and the ends of an agent's logs ({"stdout": …, "stderr": …})."""

    replica_id: str
    wake: Callable[[], None]
    log_tails: Callable[[str], dict[str, str | None]]


@dataclass(frozen=True)
class Launch:
    """What spawn adds to the row for a runtime: who runs it and from when."""

    replica_id: str | None = None
    next_start_at: int | None = None
    a2a_url: str | None = None
    token_hash: str | None = None


def process_view(row: Row[Any], tails: dict[str, str | None] | None = None) -> ProcessView | None:
    if row.runtime != Runtime.PROCESS:
        return None
    tails = tails or {}
    return ProcessView(
        replica_id=row.replica_id,
        pid=row.pid,
        restarts=row.restarts,
        last_exit=row.last_exit,
        launched_at=to_iso(row.launched_at),
        next_start_at=to_iso(row.next_start_at),
        stdout_tail=tails.get("stdout"),
        stderr_tail=tails.get("stderr"),
    )


def agent_view(
    row: Row[Any], children: list[str] | None = None, tails: dict[str, str | None] | None = None
) -> AgentView:
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
        process=process_view(row, tails),
        a2a_url=row.a2a_url,
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


def release_everything(
    conn: Connection, leases: LeaseService, locks: LockService, agent_ids: list[str], now: int, actor: str
) -> list[Any]:
    """What ended agents held goes back: task leases (requeued), locks, budget holds."""
    if not agent_ids:
        return []
    released = leases.release_held_by(conn, agent_ids, now)
    locks.release_for_agents(conn, agent_ids, now, actor)
    release_holds_of(conn, agent_ids, now)
    return released


class AgentService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        profiles: ProfileRegistry,
        leases: LeaseService,
        locks: LockService,
        max_agents: int = 1000,
    ) -> None:
        self._db = db
        self._clock = clock
        self._profiles = profiles
        self._leases = leases
        self._locks = locks
        self._max_agents = max_agents
        # Set by the supervisor of a server that runs processes (`agentfleet serve`), and by the
        # A2A peer runtime; without them such agents wait for a server that has one.
        self.runner: Runner | None = None
        self.peers: PeerCards | None = None

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
        a2a_url: str | None = None,
        runtime: Runtime | None = None,
    ) -> SpawnedAgent:
        await self._profiles.refresh()  # a version registered on another replica a moment ago counts
        chosen, chosen_by = self._profiles.choose(profile)
        if runtime is not None and chosen.runtime is not runtime:
            raise InvalidInput(
                f"profile {chosen.ref} has runtime {chosen.runtime.value}, not {runtime.value}"
                + ("; the server runs its agents itself" if chosen.runtime is Runtime.PROCESS else "")
            )
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
            if a2a_url is not None:  # the server would fetch any URL it names, internal hosts included
                raise PermissionDenied("a2a_url is for admins and operators; an agent spawns peers its profiles name")
            self._check_spawn_list(principal, chosen)
            parent_id = principal.agent_id
        token = new_agent_token()
        launch, peer_skills = await self._launch_for(chosen, token, a2a_url)
        row = await self._db.write(
            self.spawn_in,
            principal,
            chosen,
            sorted({*chosen.capabilities, *extra, *peer_skills}),
            name,
            parent_id,
            labels,
            sorted({*chosen.pools, *pools}),
            launch,
            frozenset(extra),
            chosen_by,
        )
        if launch.next_start_at is not None and self.runner is not None:
            self.runner.wake()
        return SpawnedAgent(agent=agent_view(row), token=token if chosen.runtime is Runtime.EXTERNAL else None)

    async def _launch_for(self, chosen: Profile, token: str, a2a_url: str | None) -> tuple[Launch, list[str]]:
        if a2a_url is not None and chosen.runtime is not Runtime.A2A:
            raise InvalidInput(f"a2a_url applies to a2a agents; profile {chosen.ref} has runtime {chosen.runtime}")
        if chosen.runtime is Runtime.EXTERNAL:
            return Launch(token_hash=hash_token(token)), []
        if chosen.runtime is Runtime.PROCESS:
            # The process gets a fresh token at each start; none is handed to the spawner.
            replica = self.runner.replica_id if self.runner is not None else None
            return Launch(replica_id=replica, next_start_at=self._clock.now_us()), []
        url = a2a_url or (chosen.a2a.url if chosen.a2a is not None else None)
        if url is None:
            raise InvalidInput(f"profile {chosen.ref} names no A2A agent: pass a2a_url")
        if self.peers is None or self.runner is None:
            raise Unavailable("a2a agents are run by `agentfleet serve` (HTTP); this server does not run them")
        skills = await self.peers.capabilities(url, chosen.a2a.token_env if chosen.a2a is not None else None)
        return Launch(replica_id=self.runner.replica_id, a2a_url=url), validate_capabilities(skills)

    def spawn_in(  # also the autoscaler's, inside its own transaction
        self,
        conn: Connection,
        principal: Principal,
        chosen: Profile,
        capabilities: list[str],
        name: str | None,
        parent_id: str | None,
        labels: dict[str, str],
        pools: list[str],
        launch: Launch,
        extra_capabilities: frozenset[str] = frozenset(),
        chosen_by: str = "exact",
    ) -> Row[Any]:
        now = self._clock.now_us()
        depth = 0
        if parent_id is not None:
            depth = self._check_parent(conn, parent_id, chosen)
            if principal.agent_id is not None:
                self._check_added_capabilities(conn, parent_id, extra_capabilities)
        refuse_if_blocked(applicable_to_child(conn, parent_id, chosen.name, pools), now, "spawn")
        self._check_fleet_size(conn)
        agent_id = new_id(AGENT)
        conn.execute(
            agents.insert().values(
                id=agent_id,
                name=name or f"{chosen.name}-{agent_id[-6:].lower()}",
                profile=chosen.name,
                profile_version=chosen.version,
                runtime=chosen.runtime.value,
                capabilities=capabilities,
                parent_id=parent_id,
                depth=depth,
                status=AgentStatus.STARTING.value,
                token_hash=launch.token_hash,
                created_by=principal.id,
                created_at=now,
                labels=labels,
                max_concurrency=chosen.max_concurrency,
                pools=pools,
                heartbeat_timeout_s=chosen.limits.heartbeat_timeout_s,
                replica_id=launch.replica_id,
                next_start_at=launch.next_start_at,
                a2a_url=launch.a2a_url,
                runs_payloads=chosen.executes_payload,
            )
        )
        audit.record(
            conn,
            now,
            principal,
            "agent.spawn",
            agent_id,
            {"profile": chosen.ref, "parent_id": parent_id, "runtime": chosen.runtime.value, "chosen_by": chosen_by},
        )
        data = {"profile": chosen.ref, "parent_id": parent_id, "runtime": chosen.runtime.value}
        events.emit(conn, now, "agent.spawned", agent_id, data, actor=principal, agent_id=agent_id, owner=principal.id)
        return conn.execute(select(agents).where(agents.c.id == agent_id)).one()

    def fleet_room(self, conn: Connection) -> int:
        """How many more agents the fleet may have, counted under a turn every spawner takes."""
        take_turns(conn, FLEET_SIZE_TURN)
        live = conn.execute(select(func.count()).select_from(agents).where(agents.c.status.in_(_LIVE))).scalar_one()
        return max(0, self._max_agents - live)

    def _check_fleet_size(self, conn: Connection) -> None:
        if not self.fleet_room(conn):
            raise Conflict(
                f"the fleet already has {self._max_agents} live agents, as many as AGENTFLEET_MAX_AGENTS allows; "
                "terminate some, or raise the setting"
            )

    def _check_spawn_list(self, principal: Principal, chosen: Profile) -> None:
        """An agent spawns only profiles its own profile names: none unless it says so, and a
        process agent (code this server runs) only when named outright."""
        try:
            spawner = self._profiles.resolve(principal.profile or "")
        except InvalidInput:
            raise PermissionDenied(
                f"your profile {principal.profile} is no longer installed; it may spawn nothing"
            ) from None
        if not any(admits(entry, chosen) for entry in spawner.spawn):
            allowed = ", ".join(spawner.spawn) or "none"
            raise PermissionDenied(f"profile {spawner.ref} may not spawn {chosen.ref}; its spawn list: {allowed}")

    @staticmethod
    def _check_added_capabilities(conn: Connection, parent_id: str, extra: frozenset[str]) -> None:
        """Capabilities an agent adds to its child are ones it has itself: a child must not be
        routed work its parent could never receive."""
        own = frozenset(conn.execute(select(agents.c.capabilities).where(agents.c.id == parent_id)).scalar() or ())
        beyond = sorted(extra - own)
        if beyond:
            raise PermissionDenied(f"a child may not get capabilities its parent lacks: {', '.join(beyond)}")

    def _check_parent(self, conn: Connection, parent_id: str, chosen: Profile) -> int:
        # FOR UPDATE serializes concurrent spawns under one parent on PostgreSQL, so the
        # children count below cannot be raced past; SQLite's write lock already does.
        parent = conn.execute(select(agents).where(agents.c.id == parent_id).with_for_update()).first()
        if parent is None:
            raise NotFound(f"no agent {parent_id}")
        if parent.status not in _LIVE:
            raise Conflict(f"parent {parent_id} is {parent.status}; only a live agent can have children")
        parent_profile = self._profiles.pinned(conn, parent.profile, parent.profile_version)
        widened = widened_fields(parent_profile, chosen)
        if widened:
            raise PermissionDenied(
                f"a child of {parent_id} ({parent_profile.ref}) may not have more power than it: "
                f"profile {chosen.ref} widens {', '.join(widened)}"
            )
        limits = parent_profile.limits
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
        return agent_view(row, children, self._log_tails(row))

    def _log_tails(self, row: Row[Any]) -> dict[str, str | None] | None:
        """The ends of a process agent's logs, when they are on this server's disk."""
        runner = self.runner
        if row.runtime != Runtime.PROCESS or runner is None or row.replica_id != runner.replica_id:
            return None
        return runner.log_tails(row.id)

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
    async def terminate(
        self,
        principal: Principal,
        agent_id: str,
        cascade: bool = True,
        graceful: bool = True,
        wait_s: float = 0,
    ) -> tuple[list[str], list[str]]:
        """End the agent (and its live descendants). A process agent whose process runs is
        `stopping` first: it claims nothing more, gets SIGTERM (or, not graceful, SIGKILL) from its
        supervisor, and is terminated when the process is gone, which this waits up to wait_s for.
        Returns (terminated, still stopping)."""
        ended, stopping, released = await self._db.write(self._terminate_tx, principal, agent_id, cascade, graceful)
        self._leases.announce_requeued(released)
        if not stopping:
            return ended, []
        if self.runner is not None:
            self.runner.wake()
        still = await self._wait_ended(stopping, wait_s) if wait_s > 0 else stopping
        return [*ended, *[a for a in stopping if a not in still]], still

    def _terminate_tx(
        self, conn: Connection, principal: Principal, agent_id: str, cascade: bool, graceful: bool
    ) -> tuple[list[str], list[str], list[Any]]:
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
        stopping = self.stop_processes(conn, targets, now, graceful)
        ended = self.end_now(conn, [t for t in targets if t not in stopping], now)
        released = release_everything(conn, self._leases, self._locks, ended, now, principal.id)
        for ended_id in [*ended, *stopping]:
            action = "agent.terminate" if ended_id in ended else "agent.stop"
            audit.record(conn, now, principal, action, ended_id, {"cascade_from": agent_id, "graceful": graceful})
            kind = "agent.terminated" if ended_id in ended else "agent.stopping"
            events.emit(conn, now, kind, ended_id, {"cascade_from": agent_id}, actor=principal, agent_id=ended_id)
        return [agent_id, *sorted(set(ended) - {agent_id})] if agent_id in ended else sorted(ended), stopping, released

    def stop_processes(self, conn: Connection, targets: list[str], now: int, graceful: bool) -> list[str]:
        """Process agents with a running process drain: `stopping` until their process exits."""
        rows = conn.execute(
            select(agents.c.id, agents.c.status, agents.c.profile, agents.c.profile_version).where(
                agents.c.id.in_(targets),
                agents.c.runtime == Runtime.PROCESS.value,
                agents.c.pid.is_not(None),
                agents.c.status.in_([*_STOPPABLE, AgentStatus.STOPPING.value]),
            )
        ).all()
        stopping = []
        for row in rows:
            if row.status == AgentStatus.STOPPING and graceful:
                stopping.append(row.id)  # already draining: keep its deadline
                continue
            spec = self._profiles.pinned(conn, row.profile, row.profile_version).process
            grace_us = int(spec.stop_timeout_s * MICROS) if graceful and spec is not None else 0
            stopped = conn.execute(
                update(agents)
                .where(agents.c.id == row.id, agents.c.pid.is_not(None))
                .values(status=AgentStatus.STOPPING.value, stop_deadline=now + grace_us, next_start_at=None)
            ).rowcount
            if stopped:
                stopping.append(row.id)
        return stopping

    @staticmethod
    def end_now(conn: Connection, targets: list[str], now: int) -> list[str]:
        if not targets:
            return []
        sources = [s.value for s in agent_sources(AgentStatus.TERMINATED) if s is not AgentStatus.STOPPING]
        return list(
            conn.execute(
                update(agents)
                .where(agents.c.id.in_(targets), agents.c.status.in_(sources))
                .values(status=AgentStatus.TERMINATED.value, token_hash=None, terminated_at=now, next_start_at=None)
                .returning(agents.c.id)
            ).scalars()
        )

    async def _wait_ended(self, agent_ids: list[str], timeout_s: float, poll_s: float = 0.1) -> list[str]:
        """Wait until these agents are terminated (or the time is up); the ones still not ended."""
        waiting = list(agent_ids)
        with anyio.move_on_after(timeout_s):
            while waiting:
                waiting = await self._db.read(self._not_ended_tx, waiting)
                if waiting:
                    await anyio.sleep(poll_s)
        return waiting

    @staticmethod
    def _not_ended_tx(conn: Connection, agent_ids: list[str]) -> list[str]:
        return list(
            conn.execute(
                select(agents.c.id)
                .where(agents.c.id.in_(agent_ids), agents.c.status != AgentStatus.TERMINATED.value)
                .order_by(agents.c.id)
            ).scalars()
        )

    async def restart(self, principal: Principal, agent_id: str) -> AgentView:
        """Restart a process agent in place: same id, a new process and token. Revives a failed one."""
        row = await self._db.write(self._restart_tx, principal, agent_id)
        if self.runner is not None:
            self.runner.wake()
        return agent_view(row)

    def _restart_tx(self, conn: Connection, principal: Principal, agent_id: str) -> Row[Any]:
        now = self._clock.now_us()
        row = conn.execute(select(agents).where(agents.c.id == agent_id)).first()
        if row is None:
            raise NotFound(f"no agent {agent_id}")
        if not (principal.can_operate or _is_self_or_ancestor(conn, principal, agent_id)):
            raise PermissionDenied(f"agent {agent_id} is not yours to restart: only its ancestors or an operator")
        if row.runtime != Runtime.PROCESS:
            raise InvalidInput(f"agent {agent_id} has runtime {row.runtime}; only process agents can be restarted")
        restarted = conn.execute(
            update(agents)
            .where(agents.c.id == agent_id, agents.c.status.in_(_STARTABLE + [AgentStatus.STARTING.value]))
            .values(status=AgentStatus.STARTING.value, next_start_at=now, restarts=0)
            .returning(*agents.c)
        ).first()
        if restarted is None:
            raise Conflict(f"agent {agent_id} is {row.status}; only a live or failed agent can be restarted")
        audit.record(conn, now, principal, "agent.restart", agent_id, {"from": row.status})
        events.emit(conn, now, "agent.restarted", agent_id, {"from": row.status}, actor=principal, agent_id=agent_id)
        return restarted

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
        released = release_everything(conn, self._leases, self._locks, silent, now, REAPER.id)
        for agent_id in silent:
            audit.record(conn, now, REAPER, "agent.unresponsive", agent_id, {})
            events.emit(conn, now, "agent.unresponsive", agent_id, {}, actor=REAPER, agent_id=agent_id)
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
