"""The supervisor: every replica that serves HTTP runs the process agents assigned to it. Each tick
it reads their rows and makes the OS agree: start what is due, notice exits (restart with backoff
or fail), drain and kill what is stopping, kill leftovers of ended agents. The rows are the truth;
what it keeps in memory (Popen handles, when it sent SIGTERM) only speeds it up, so a restarted
server re-adopts running processes by pid and start time and loses nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import anyio

from server.domain.statuses import AgentStatus
from server.errors import FleetError
from server.runtime import process
from server.services.agents import Runner
from server.services.auth import new_agent_token
from server.services.autoscaling import AutoscaleService
from server.services.supervision import Supervised, SupervisionService, stop_grace_us
from server.settings import Settings

log = logging.getLogger("agentfleet.supervisor")
_TRIM_EVERY_TICKS = 20
_ENDED = (AgentStatus.TERMINATED, AgentStatus.FAILED)


class Supervisor:
    def __init__(self, supervision: SupervisionService, autoscaling: AutoscaleService, settings: Settings) -> None:
        self._store = supervision
        self._autoscaling = autoscaling
        self._settings = settings
        self._children: dict[str, process.Started] = {}  # processes this server started, by agent
        self._sigterm_sent: dict[str, int] = {}  # agent id -> when (clock µs) it was asked to stop
        self._exit_watches: dict[str, int] = {}  # agent id -> pidfd that wakes us when it exits
        self._doorbell = anyio.Event()
        self._ticks = 0

    def runner(self) -> Runner:
        return Runner(replica_id=self._store.replica_id, wake=self.wake, log_tails=self._log_tails)

    def _log_tails(self, agent_id: str) -> dict[str, str | None]:
        home = process.agent_home(self._settings.data_dir, agent_id)
        return {
            "stdout": process.log_tail(home, process.STDOUT_LOG),
            "stderr": process.log_tail(home, process.STDERR_LOG),
        }

    def wake(self) -> None:
        self._doorbell.set()

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except FleetError as exc:  # the store is briefly unavailable: try again next tick
                log.warning("supervisor: %s", exc)
            with anyio.move_on_after(self._settings.supervisor_interval_s):
                await self._doorbell.wait()
            self._doorbell = anyio.Event()

    async def tick(self) -> None:
        if self._autoscaling.active:
            for scaled in await self._autoscaling.rebalance(self._store.replica_id):
                log.info("autoscale %s: added %s, retiring %s", scaled.profile, scaled.added, scaled.retired)
        now = self._store.now_us()
        watched = await self._store.watched()
        for agent in watched:
            await self._look_after(agent, now)
        self._ticks += 1
        if self._ticks % _TRIM_EVERY_TICKS == 0:
            self._trim_logs(watched)

    # -- one agent ---------------------------------------------------------------------------
    async def _look_after(self, agent: Supervised, now: int) -> None:
        alive, how = self._alive(agent)
        if alive and agent.pid is not None:
            self._watch_exit(agent.id, agent.pid)
        if agent.status in _ENDED:
            await self._clean_up(agent, alive)
        elif agent.status is AgentStatus.STOPPING:
            await self._stop(agent, alive, now)
        elif agent.next_start_at is not None:
            await self._start_when_due(agent, alive, now)
        elif agent.pid is not None and not alive:
            self._forget(agent.id)
            process.kill_session(agent.pid)  # what it left running (a command mid-task) goes too
            outcome = await self._store.record_exit(agent.id, agent.pid, how)
            if outcome is not None:
                log.warning(
                    "agent %s %s; %s",
                    agent.id,
                    how,
                    "restart limit reached: failed" if outcome.failed else "restarting",
                )

    def _alive(self, agent: Supervised) -> tuple[bool, str]:
        """Is its process running, and if not, how did it end (known only for our own children)."""
        child = self._children.get(agent.id)
        if child is not None and child.pid == agent.pid:
            code = child.popen.poll()  # also reaps it
            return code is None, process.describe_exit(code)
        if child is not None:
            child.popen.poll()  # an older process of this agent: reap it
        if agent.pid is None:
            return False, ""
        return process.is_running(agent.pid, agent.pid_start or ""), process.describe_exit(None)

    async def _clean_up(self, agent: Supervised, alive: bool) -> None:
        """An ended agent whose process outlived it (a crash mid-stop, a start racing a terminate)."""
        if alive and agent.pid is not None:
            log.warning("agent %s is %s but its process %d runs: killing it", agent.id, agent.status, agent.pid)
            process.kill_session(agent.pid)
            return  # reaped and forgotten on a later tick
        self._forget(agent.id)
        await self._store.forget_process(agent.id)

    async def _stop(self, agent: Supervised, alive: bool, now: int) -> None:
        if not alive or agent.pid is None:
            self._forget(agent.id)
            if await self._store.finish_stop(agent.id):
                log.info("agent %s stopped", agent.id)
            return
        if agent.id not in self._sigterm_sent:
            process.signal_group(agent.pid, signal.SIGTERM)
            self._sigterm_sent[agent.id] = now
        if agent.stop_deadline is not None and now >= agent.stop_deadline:
            process.kill_session(agent.pid)

    async def _start_when_due(self, agent: Supervised, alive: bool, now: int) -> None:
        if alive and agent.pid is not None:  # agent_restart: stop the running process first
            asked = self._sigterm_sent.setdefault(agent.id, now)
            if asked == now:
                process.signal_group(agent.pid, signal.SIGTERM)
            if now >= asked + stop_grace_us(agent.profile):
                process.kill_session(agent.pid)
            return
        self._forget(agent.id)
        if agent.next_start_at is not None and agent.next_start_at <= now:
            await self._launch(agent)

    async def _launch(self, agent: Supervised) -> None:
        spec = agent.profile.process
        if spec is None:  # profile versions are immutable: a process agent's always has a command
            log.error("agent %s: profile %s has no process section", agent.id, agent.profile.ref)
            return
        token = new_agent_token()
        if not await self._store.begin_launch(agent.id, token):
            return
        try:
            plan = process.plan_launch(
                spec,
                agent.profile.limits,
                self._settings.data_dir,
                agent.id,
                self._settings.base_url,
                token,
                confined=self._settings.agent_confinement == "landlock",
            )
        except FleetError as exc:
            log.error("agent %s cannot be started safely: %s", agent.id, exc.message)
            await self._store.record_exit(agent.id, None, f"could not start: {exc.message}")
            return
        try:
            started = await anyio.to_thread.run_sync(process.start, plan)
        except OSError as exc:
            log.warning("agent %s could not start %s: %s", agent.id, plan.argv[0], exc)
            await self._store.record_exit(agent.id, None, f"could not start: {exc}")
            return
        self._children[agent.id] = started
        await self._store.record_started(agent.id, started.pid, started.identity)
        log.info("agent %s started: pid %d", agent.id, started.pid)

    def _watch_exit(self, agent_id: str, pid: int) -> None:
        """Wake the moment the process exits (a pidfd turns readable; Linux 5.3+), so an exit is
        handled at once rather than at the next tick, which stays the fallback."""
        if agent_id in self._exit_watches:
            return
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return
        asyncio.get_running_loop().add_reader(fd, self._exited, agent_id)
        self._exit_watches[agent_id] = fd

    def _exited(self, agent_id: str) -> None:
        self._unwatch(agent_id)
        self.wake()

    def _unwatch(self, agent_id: str) -> None:
        fd = self._exit_watches.pop(agent_id, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    def _forget(self, agent_id: str) -> None:
        child = self._children.pop(agent_id, None)
        if child is not None:
            child.popen.poll()
        self._sigterm_sent.pop(agent_id, None)
        self._unwatch(agent_id)

    def _trim_logs(self, watched: list[Supervised]) -> None:
        for agent in watched:
            home: Path = process.agent_home(self._settings.data_dir, agent.id)
            for name in (process.STDOUT_LOG, process.STDERR_LOG):
                process.trim_log(home / name, self._settings.agent_log_max_bytes)
