"""`agentfleet worker`: a pull worker. It works as an agent (its own token, or one it registers
with `agent_spawn` under an operator's token), long-polls `task_claim`, hands each task to the
command (server.worker.supervise), and drains on SIGTERM/SIGINT: no new claims, the running task
finishes and is reported, exit 0.

Exit codes: 0 drained, done (--max-tasks) or stopped by the fleet (`permission_denied` on a claim:
the agent is stopping or terminated; or HTTP 401 once a claim had gone through: its token was
revoked); 1 an answer it cannot read; 2 usage (no URL, token or command; a token the server never
accepted); 3 could not register.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from server.worker.client import Backoff, FleetClient, NeverReached, ProtocolError, ToolError, Unauthorized
from server.worker.supervise import TaskRunner

DRAINED, FAILED, USAGE, NOT_REGISTERED = 0, 1, 2, 3
UNREACHABLE = 3  # the server never answered at its URL
CLAIM_SLACK_S = 30.0  # a long-poll that takes this much longer than its wait_s: the server is gone
TERMINATE_TIMEOUT_S = 15.0
DEFAULT_OUTPUT_CAP = 262_144  # the server's default AGENTFLEET_MAX_PAYLOAD_BYTES

log = logging.getLogger("agentfleet.worker")
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerConfig:
    url: str
    token: str
    argv: Sequence[str]
    profile: str | None = None
    name: str | None = None
    wait_s: float = 20.0
    max_tasks: int | None = None
    traced: bool = False  # a tracer provider is installed: each task's run is a span of its trace

    def __repr__(self) -> str:  # never the token
        return f"WorkerConfig(url={self.url!r}, profile={self.profile!r}, argv={list(self.argv)!r})"


def run(config: WorkerConfig) -> int:
    for quiet in ("httpx", "httpcore"):  # a line per request otherwise
        logging.getLogger(quiet).setLevel(logging.WARNING)
    try:
        return asyncio.run(_main(config))
    except NeverReached as exc:
        log.error("giving up: %s", exc)
        return UNREACHABLE


async def _main(config: WorkerConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_signal, sig, stop)
    if config.profile is None:
        return await _work_as(config, config.token, stop)
    operator = FleetClient(config.url, config.token)
    try:
        registered = await _register(operator, config, stop)
        if registered is None:
            return DRAINED if stop.is_set() else NOT_REGISTERED
        agent_id, agent_token = registered
        try:
            return await _work_as(config, agent_token, stop)
        finally:
            await _terminate(operator, agent_id)
    finally:
        await operator.aclose()


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    if stop.is_set():
        log.info("%s again: still draining", sig.name)
        return
    log.info("%s: draining (no new claims; the running task finishes and is reported)", sig.name)
    stop.set()


async def _register(operator: FleetClient, config: WorkerConfig, stop: asyncio.Event) -> tuple[str, str] | None:
    # runtime=external: a profile the server runs itself is refused before any agent is made.
    arguments = {"profile": config.profile, "runtime": "external"} | ({"name": config.name} if config.name else {})
    try:
        spawned = await _unless_stopped(operator.call_retrying("agent_spawn", arguments), stop)
    except (ToolError, Unauthorized, ProtocolError) as exc:
        log.error("could not register an agent of profile %s: %s", config.profile, exc)
        return None
    if spawned is None:
        return None
    agent = spawned.get("agent") or {}
    if not spawned.get("token"):
        log.error("profile %s is not an external profile: the server runs its agents itself", config.profile)
        await _terminate(operator, agent.get("id"))
        return None
    log.info("registered agent %s (%s, profile %s)", agent.get("id"), agent.get("name"), agent.get("profile"))
    return agent["id"], spawned["token"]


async def _terminate(operator: FleetClient, agent_id: str | None) -> None:
    if not agent_id:
        return
    try:
        async with asyncio.timeout(TERMINATE_TIMEOUT_S):
            await operator.call_retrying("agent_terminate", {"agent_id": agent_id, "reason": "worker exited"})
        log.info("terminated agent %s", agent_id)
    except (TimeoutError, ToolError, Unauthorized, ProtocolError) as exc:
        log.warning("could not terminate agent %s: %s", agent_id, exc or "timed out")


async def _work_as(config: WorkerConfig, token: str, stop: asyncio.Event) -> int:
    client = FleetClient(config.url, token)
    env = {**os.environ, "AGENTFLEET_URL": config.url, "AGENTFLEET_TOKEN": token}  # never the operator's token
    cap = int(os.environ.get("AGENTFLEET_MAX_PAYLOAD_BYTES") or DEFAULT_OUTPUT_CAP)
    runner = TaskRunner(client, config.argv, env, cap, config.traced)
    try:
        return await _claim_loop(config, client, runner, stop)
    except ProtocolError as exc:
        log.error("giving up: %s", exc)
        return FAILED
    finally:
        await client.aclose()


async def _claim_loop(config: WorkerConfig, client: FleetClient, runner: TaskRunner, stop: asyncio.Event) -> int:
    handled = 0
    claimed_before = False  # a 401 after a claim went through: the agent was terminated; before: a wrong token
    refused = Backoff()
    while not stop.is_set():
        claim = client.call_retrying("task_claim", {"wait_s": config.wait_s}, timeout=config.wait_s + CLAIM_SLACK_S)
        try:
            answer = await _unless_stopped(claim, stop)
        except Unauthorized as exc:
            if claimed_before:  # terminated: its token is revoked
                log.info("the token is no longer accepted (agent terminated?): stopping (%s)", exc)
                return DRAINED
            log.error("the server refused the token: %s", exc)
            return USAGE
        except ToolError as exc:
            if exc.code == "permission_denied":  # the agent is stopping or terminated: the fleet stops us
                if claimed_before:
                    log.info("task_claim refused, stopping: %s", exc.text)
                else:  # or the token is not an agent's at all
                    hint = "if this is not an agent's token: with an operator's, pass --profile"
                    log.error("task_claim refused, stopping: %s (%s)", exc.text, hint)
                return DRAINED
            delay = refused.step()
            log.warning("task_claim refused (%s); retrying in %.1f s", exc.text, delay)
            await _unless_stopped(asyncio.sleep(delay), stop)
            continue
        if answer is None:  # stopped while waiting for work
            break
        claimed_before = True
        refused = Backoff()
        task = answer.get("task")
        if task is None:
            if answer.get("reason") == "at_capacity":  # leases it lost track of; they lapse in time
                await _unless_stopped(asyncio.sleep(1.0), stop)
            continue
        await runner.run(task)  # a drain lets it finish
        handled += 1
        if config.max_tasks is not None and handled >= config.max_tasks:
            log.info("done: %d task(s)", handled)
            return DRAINED
    log.info("drained after %d task(s)", handled)
    return DRAINED


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None once `stop` is set first (work is then cancelled). A result that
    arrives together with the stop still counts: a claimed task is never dropped."""
    job = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({job, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if job.done():
            return job.result()
        return None
    finally:
        stopped.cancel()
        if not job.done():
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)
