"""One claimed task, start to report: run the command, heartbeat the lease while it runs, enforce
the task's wall-clock `timeout_s`, and report what happened.

| what happened | report |
|---|---|
| exit 0, stdout is JSON | `task_complete(result=<it>)` |
| exit 0, stdout not JSON, or over the cap | `task_fail(retryable=False)`, saying so |
| non-zero exit, or killed by a signal | `task_fail(retryable=True)` with the status and stderr's tail |
| heartbeat answers `cancel_requested` | kill the group; `task_fail("cancelled", retryable=False)` |
| heartbeat answers lease_expired, conflict, permission_denied, not_found; 401 | kill the group; no report (not ours) |
| `timeout_s` passed | kill the group; `task_fail("timed out after N s", retryable=True)` |
| the command cannot be started | `task_fail(retryable=True)`: another worker's machine may have it |
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from server.worker.client import FleetClient, ProtocolError, ToolError, Unauthorized
from server.worker.command import Command, Finished
from server.worker.task_log import StderrToTaskLog

STDERR_QUOTE = 2000  # characters of stderr quoted in an error
STDOUT_QUOTE = 200  # characters of bad stdout quoted
MIN_HEARTBEAT_S = 0.5
LOST = frozenset({"lease_expired", "conflict", "permission_denied", "not_found"})

log = logging.getLogger("agentfleet.worker")


@dataclass(frozen=True)
class Cancelled:
    pass


@dataclass(frozen=True)
class Lost:
    why: str


@dataclass(frozen=True)
class TimedOut:
    after_s: int


# The trace context of the task being run (one task at a time per runner, but tasks never share it).
_task_trace: ContextVar[str | None] = ContextVar("agentfleet_worker_trace", default=None)


@dataclass(frozen=True)
class TaskRunner:
    client: FleetClient
    argv: Sequence[str]
    env: Mapping[str, str]  # the command's environment (without the task id)
    stdout_cap: int
    traced: bool = False  # this process exports spans: the run is a span in the task's trace

    async def run(self, task: dict[str, Any]) -> None:
        """The task's trace context (if the server traces) goes to the command as TRACEPARENT and
        with every call made for the task, so all of it lands in the task's trace."""
        traceparent = task.get("traceparent") if isinstance(task.get("traceparent"), str) else None
        if not self.traced:
            await self._run(task, traceparent)
            return
        from server import tracing

        attributes = {
            "agentfleet.task.id": task["id"],
            "agentfleet.task.type": task.get("type"),
            "agentfleet.task.attempt": task.get("attempts"),
            "agentfleet.agent.id": task.get("agent_id"),
        }
        with tracing.tracer.start_as_current_span(
            f"worker.run {task.get('type')}",
            context=tracing.context_from(traceparent),
            attributes={k: v for k, v in attributes.items() if v is not None},
        ) as span:
            await self._run(task, tracing.traceparent_of(span) or traceparent)

    async def _run(self, task: dict[str, Any], traceparent: str | None) -> None:
        task_id = task["id"]
        _task_trace.set(traceparent)
        started = time.monotonic()
        attempt = f"attempt {task.get('attempts')} of {task.get('max_attempts')}"
        log.info("claimed %s (type %s, %s)", task_id, task.get("type"), attempt)
        stderr = StderrToTaskLog(self.client, task_id, traceparent)
        env = {**self.env, "AGENTFLEET_TASK_ID": task_id}
        if traceparent is not None:
            env["TRACEPARENT"] = traceparent
        try:
            command = await Command.start(
                self.argv,
                json.dumps(task).encode(),
                env,
                self.stdout_cap,
                on_stderr_line=stderr.line,
            )
        except OSError as exc:
            await stderr.close()
            await self._fail(task_id, started, f"could not start the command {self.argv[0]!r}: {exc}", True)
            return
        try:
            verdict = await self._watch(task, command)
        finally:
            await stderr.close()  # while the attempt is still ours
        if isinstance(verdict, Finished):
            await self._report(task_id, started, verdict)
        elif isinstance(verdict, Cancelled):
            await self._fail(task_id, started, "cancelled", False)
        elif isinstance(verdict, TimedOut):
            await self._fail(task_id, started, f"timed out after {verdict.after_s} s", True)
        else:
            why = verdict.why
            log.warning("lost %s after %.2f s: %s; command killed, not reported", task_id, _since(started), why)

    async def _watch(self, task: dict[str, Any], command: Command) -> Finished | Cancelled | Lost | TimedOut:
        """Wait for the command, a heartbeat verdict or the deadline, whichever comes first."""
        exited = asyncio.ensure_future(command.wait())
        lease_s = task.get("lease_s") or 60
        beats = asyncio.ensure_future(self._heartbeats(task["id"], max(lease_s / 3, MIN_HEARTBEAT_S)))
        timeout_s = task.get("timeout_s")
        watched: set[asyncio.Future[Any]] = {exited, beats}
        deadline = asyncio.ensure_future(asyncio.sleep(timeout_s)) if timeout_s else None
        if deadline is not None:
            watched.add(deadline)
        try:
            done, _ = await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
            if exited in done:  # even if a verdict came at the same moment: the work is done
                return exited.result()
            verdict: Cancelled | Lost | TimedOut = beats.result() if beats in done else TimedOut(int(timeout_s))
            await command.kill()
            await exited
            return verdict
        finally:
            for future in watched:
                future.cancel()
            await asyncio.gather(*watched, return_exceptions=True)
            if command.process.returncode is None:  # left by an exception: never leave it running
                await command.kill()

    async def _heartbeats(self, task_id: str, every_s: float) -> Cancelled | Lost:
        while True:
            await asyncio.sleep(every_s)
            try:
                lease = await self.client.call_retrying(
                    "task_heartbeat", {"task_id": task_id}, traceparent=_task_trace.get()
                )
            except ToolError as exc:
                if exc.code in LOST:
                    return Lost(exc.text)
                log.warning("task_heartbeat %s refused: %s", task_id, exc.text)
                continue
            except Unauthorized as exc:
                return Lost(f"the token was refused ({exc})")
            except ProtocolError as exc:
                log.warning("task_heartbeat %s: %s", task_id, exc)
                continue
            if lease.get("cancel_requested"):
                return Cancelled()

    async def _report(self, task_id: str, started: float, finished: Finished) -> None:
        stderr = _tail(finished.stderr_tail)
        if finished.stdout_overflow:
            error = f"the command wrote more than {self.stdout_cap} bytes on stdout (the result limit); killed it"
            await self._fail(task_id, started, error + stderr, False)
            return
        if finished.returncode != 0:
            await self._fail(task_id, started, finished.status() + stderr, True)
            return
        try:
            result = json.loads(finished.stdout)
        except ValueError as exc:
            shown = finished.stdout[:STDOUT_QUOTE].decode("utf-8", errors="replace")
            error = f"stdout is not JSON ({exc}); exit status 0; stdout starts: {shown!r}"
            await self._fail(task_id, started, error + stderr, False)
            return
        try:
            await self.client.call_retrying(
                "task_complete", {"task_id": task_id, "result": result}, traceparent=_task_trace.get()
            )
        except Unauthorized as exc:
            log.warning("task_complete %s not recorded: %s", task_id, exc)
            return
        except ToolError as exc:
            if exc.code != "invalid_input":
                log.warning("task_complete %s refused after %.2f s: %s", task_id, _since(started), exc.text)
                return
            await self._fail(task_id, started, f"the server refused the result: {exc.text}", False)
            return
        log.info("completed %s in %.2f s", task_id, _since(started))

    async def _fail(self, task_id: str, started: float, error: str, retryable: bool) -> None:
        try:
            await self.client.call_retrying(
                "task_fail",
                {"task_id": task_id, "error": error, "retryable": retryable},
                traceparent=_task_trace.get(),
            )
        except ToolError as exc:
            log.warning("task_fail %s refused after %.2f s: %s", task_id, _since(started), exc.text)
            return
        except Unauthorized as exc:
            log.warning("task_fail %s not recorded: %s", task_id, exc)
            return
        first_line = error.split("\n", 1)[0]
        kind = "retryable" if retryable else "final"
        log.info("failed %s in %.2f s (%s): %s", task_id, _since(started), kind, first_line)


def _tail(stderr: str) -> str:
    stderr = stderr.strip()
    return f"\nstderr (last {STDERR_QUOTE} characters):\n{stderr[-STDERR_QUOTE:]}" if stderr else ""


def _since(started: float) -> float:
    return time.monotonic() - started
