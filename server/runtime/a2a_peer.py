"""The `a2a` runtime: agents that stand for remote A2A agents (peers).

`PeerCardFetcher` (server/runtime/a2a_card.py) reads a peer's agent card; spawn turns the card's
skills into the agent's capabilities. server/runtime/a2a_results.py converts tasks to messages and
artifacts to results. `PeerRuntime` runs on every server that serves HTTP: for each live a2a agent assigned
to this replica it keeps one driver that claims work as the agent and hands each task to the peer.
The store side (which agents, heard from, unreachable) is server/services/peers.py.

What is sent: one `SendMessage` per attempt, a user message whose data part is
`{"type": <task type>, "payload": <payload>}`, plus a text part when the payload is a string (or
`{"text": "..."}`), and metadata `agentfleet_task_id` / `agentfleet_attempt`. When the card says
`capabilities.streaming` it is streamed (SendStreamingMessage) and the events are followed;
otherwise it is sent with `return_immediately` and the remote task is polled with `GetTask`
(0.25 s, doubling to 2 s). Up to the agent's max_concurrency tasks are with the peer at once.

While the peer works, our lease is renewed every lease_s/3. Then:

| what happens | what the runtime does |
|---|---|
| remote `completed` | task_complete(result) |
| remote `failed` or `rejected` | task_fail(retryable=True) with the peer's message: the task's retry policy applies |
| remote `canceled` (not asked by us) | task_fail(retryable=False) |
| remote `input-required` / `auth-required` | CancelTask, then task_fail(retryable=False): nobody here answers |
| the peer answers a Message instead of a task | task_complete with the message's parts as the result |
| the peer answers with an A2A error | task_fail(retryable=True) |
| heartbeat answers `cancel_requested` (task_cancel) | CancelTask; task_fail("cancelled"): the task ends cancelled |
| the task's `timeout_s` passes | CancelTask; task_fail(retryable=True, "timed out after N s") |
| the lease is lost (lapsed, agent terminated) | CancelTask; no report (the task is not ours any more) |
| the agent is terminated | its driver stops: CancelTask for every task with the peer |
| this server shuts down | CancelTask, task_fail(retryable=True) so the task is retried at once |
| the peer cannot be reached | see below |

Result shape: when the remote task's artifacts hold exactly one part and it is a data part, the
result is that data (e.g. `{"echo": ...}`). Otherwise it is
`{"artifacts": [{"name": ..., "parts": [{"text": ...} | {"data": ...} | {"url": ..., "media_type": ...} |
{"raw": <base64>, "media_type": ...}]}], "text": "<every text part, joined by newlines>"}`.
Whole numbers come back as ints (protobuf carries them as doubles). A result larger than
AGENTFLEET_MAX_PAYLOAD_BYTES fails the task (not retryable).

Unreachable: a transport failure (connection refused or reset, a timeout, HTTP 502/503/504) on any
call marks the agent unresponsive at once (its leases go back to the queue, its locks and budget
holds are released; audit `agent.unresponsive`). The driver then re-reads the card with backoff
(1 s doubling to 30 s); once the card reads and the endpoint answers, the agent is active again and
claims work. Every answer from the peer records that the agent was heard from (at most once a
second); an idle agent's peer is pinged (GetTask of a made-up id: task-not-found is an answer)
every heartbeat_timeout_s/3 (1-20 s), so a silent peer is noticed before the agent would be swept.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import httpx
from a2a.client import A2AClientTimeoutError, Client, ClientCallContext, ClientConfig, create_client
from a2a.helpers import get_message_text
from a2a.types import (
    Artifact,
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    SendMessageRequest,
    StreamResponse,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
)
from a2a.utils.errors import A2AError
from anyio.abc import TaskGroup
from google.protobuf.json_format import ParseError

from server.domain.task_spec import payload_size
from server.domain.views import TaskView
from server.errors import Conflict, FleetError, InvalidInput, LeaseExpired, NotFound, PermissionDenied, Unavailable
from server.runtime.a2a_card import BINDINGS, CARD_TIMEOUT_S, ERROR_CHARS, PeerCardFetcher, describe_error
from server.runtime.a2a_results import result_of, task_message
from server.services.leases import LeaseService
from server.services.peers import PeerAgent, PeerService

log = logging.getLogger("agentfleet.peers")
T = TypeVar("T")

CALL_TIMEOUT_S = 10.0  # every call but the streamed SendMessage, which may stay quiet for long
RETRY_FIRST_S = 1.0
RETRY_CAP_S = 30.0
POLL_FIRST_S = 0.25
POLL_CAP_S = 2.0
HEARD_EVERY_S = 1.0
CLEANUP_S = 3.0  # CancelTask and the report when a driver stops
AT_CAPACITY_PAUSE_S = 1.0
PING_TASK_ID = "agentfleet-ping"
GATEWAY_ERRORS = frozenset({502, 503, 504})
NOTE_CHARS = 200

_STOP = frozenset(
    {
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_REJECTED,
        TaskState.TASK_STATE_INPUT_REQUIRED,
        TaskState.TASK_STATE_AUTH_REQUIRED,
    }
)
_INTERRUPTED = frozenset({TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED})


class PeerUnreachable(Exception):
    """The peer did not answer: connection refused or reset, a timeout, a gateway error."""


class PeerRefused(Exception):
    """The peer answered, with an error."""


def _state_name(state: int) -> str:
    return TaskState.Name(state).removeprefix("TASK_STATE_").lower().replace("_", "-")


def _status_text(status: TaskStatus) -> str:
    return get_message_text(status.message).strip() if status.HasField("message") else ""


def _transport_failure(exc: BaseException) -> bool:
    """Did the peer not answer at all (as opposed to answering with an error)?"""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, httpx.TransportError | A2AClientTimeoutError):
            return True
        if isinstance(seen, httpx.HTTPStatusError) and seen.response.status_code in GATEWAY_ERRORS:
            return True
        seen = seen.__cause__
    return False


def _failure(exc: BaseException) -> PeerUnreachable | PeerRefused:
    return PeerUnreachable(describe_error(exc)) if _transport_failure(exc) else PeerRefused(describe_error(exc))


def _call_context() -> ClientCallContext:
    return ClientCallContext(timeout=CALL_TIMEOUT_S)


# -- one attempt -------------------------------------------------------------------------------
@dataclass
class _Attempt:
    """One claimed task while the peer works on it: what we know of the remote task."""

    task: TaskView
    started: float = field(default_factory=time.monotonic)
    remote_id: str | None = None
    state: int = TaskState.TASK_STATE_UNSPECIFIED
    status: TaskStatus = field(default_factory=TaskStatus)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    note: str | None = None  # the peer's latest status text, passed on as the progress message

    def observe(self, event: StreamResponse) -> None:
        kind = event.WhichOneof("payload")
        if kind == "task":
            self.observe_task(event.task)
        elif kind == "status_update":
            self.remote_id = self.remote_id or event.status_update.task_id
            self._status(event.status_update.status)
        elif kind == "artifact_update":
            self.remote_id = self.remote_id or event.artifact_update.task_id
            self._artifact(event.artifact_update)

    def observe_task(self, task: Task) -> None:
        self.remote_id = task.id
        self._status(task.status)
        for artifact in task.artifacts:
            self.artifacts[artifact.artifact_id] = _copy(artifact)

    def _status(self, status: TaskStatus) -> None:
        self.state = status.state
        self.status.CopyFrom(status)
        said = _status_text(status)
        if said:
            self.note = said[:NOTE_CHARS]

    def _artifact(self, update: TaskArtifactUpdateEvent) -> None:
        known = self.artifacts.get(update.artifact.artifact_id)
        if update.append and known is not None:
            known.parts.extend(update.artifact.parts)
        else:
            self.artifacts[update.artifact.artifact_id] = _copy(update.artifact)

    def as_task(self) -> Task:
        """The remote task as the stream told it (for peers that cannot answer GetTask)."""
        task = Task(id=self.remote_id or "", artifacts=list(self.artifacts.values()))
        task.status.CopyFrom(self.status)
        return task


def _copy(artifact: Artifact) -> Artifact:
    copied = Artifact()
    copied.CopyFrom(artifact)
    return copied


@dataclass(frozen=True)
class _Remote:
    task: Task  # reached a terminal or interrupted state


@dataclass(frozen=True)
class _Answered:
    message: Message  # the peer answered with a message, no task


@dataclass(frozen=True)
class _CancelRequested:
    pass


@dataclass(frozen=True)
class _TimedOut:
    after_s: int


@dataclass(frozen=True)
class _Lost:
    why: str


@dataclass(frozen=True)
class _Refused:
    why: str


@dataclass(frozen=True)
class _Unreachable:
    why: str


_Verdict = _Remote | _Answered | _CancelRequested | _TimedOut | _Lost | _Refused | _Unreachable


@dataclass
class _Link:
    """One agent's connection to its peer, from a card read to its first transport failure."""

    http: httpx.AsyncClient
    client: Client
    streaming: bool
    scope: anyio.CancelScope | None = None  # the session's: cancelled when the link breaks
    down: str | None = None  # why it broke


# -- one agent ---------------------------------------------------------------------------------
class _Driver:
    """Claims work as one a2a agent and hands it to the agent's peer, until the agent ends."""

    def __init__(self, runtime: PeerRuntime, agent: PeerAgent) -> None:
        self._rt = runtime
        self.agent = agent
        self.scope = anyio.CancelScope()
        self.ended = False  # terminated: remote tasks are cancelled, nothing is reported
        self.finished = False
        self.last_ok = 0.0  # monotonic time of the peer's last answer
        self._recorded_at = -math.inf
        self._probe_s = min(20.0, max(1.0, agent.heartbeat_timeout_s / 3))

    def stop(self) -> None:
        """The agent is no longer live: cancel what the peer works on, and stop."""
        self.ended = True
        self.scope.cancel()

    async def run(self) -> None:
        try:
            with self.scope:
                await self._run()
        finally:
            self.finished = True

    async def _run(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            try:
                link = await self._connect()
            except PeerUnreachable as exc:
                await self._unreachable(str(exc))
            except FleetError as exc:  # the store is briefly unavailable
                log.warning("a2a agent %s: %s", self.agent.id, exc)
            except Exception:  # top level for this agent: a bug must not end its loop
                log.exception("a2a agent %s: connecting to %s failed", self.agent.id, self.agent.url)
            else:
                delay = RETRY_FIRST_S
                try:
                    await self._session(link)
                except Exception:  # top level for this agent, as above
                    log.exception("a2a agent %s: its session with %s failed", self.agent.id, self.agent.url)
                finally:
                    with anyio.CancelScope(shield=True):
                        await link.http.aclose()
                if link.down is not None:
                    await self._unreachable(link.down)
            await anyio.sleep(delay)
            delay = min(delay * 2, RETRY_CAP_S)

    async def _unreachable(self, why: str) -> None:
        try:
            if await self._rt.peers.unreachable(self.agent.id, self.agent.url, why):
                log.warning("a2a agent %s is unresponsive: its peer %s: %s", self.agent.id, self.agent.url, why)
        except FleetError as exc:
            log.warning("a2a agent %s: %s", self.agent.id, exc)

    async def _connect(self) -> _Link:
        """Read the card, build a client, and check that the endpoint answers."""
        try:
            headers = self._rt.cards.headers(self.agent.token_env)
        except InvalidInput as exc:
            raise PeerUnreachable(exc.message) from exc
        timeout = httpx.Timeout(CALL_TIMEOUT_S, connect=CARD_TIMEOUT_S, read=None)
        http = httpx.AsyncClient(headers=headers, timeout=timeout, follow_redirects=True)
        try:
            try:
                card = await self._rt.cards.read(http, self.agent.url)
            except (Unavailable, InvalidInput) as exc:
                raise PeerUnreachable(exc.message) from exc
            streaming = card.capabilities.streaming
            config = ClientConfig(httpx_client=http, streaming=streaming, supported_protocol_bindings=BINDINGS)
            try:
                client = await create_client(card, client_config=config)
            except ValueError as exc:  # no interface the client can use
                raise PeerUnreachable(f"cannot talk to {self.agent.url}: {exc}") from exc
            link = _Link(http, client, streaming)
            await self._ping(link)
            return link
        except BaseException:
            with anyio.CancelScope(shield=True):
                await http.aclose()
            raise

    async def _heard(self) -> None:
        now = time.monotonic()
        self.last_ok = now
        if now - self._recorded_at >= HEARD_EVERY_S:
            self._recorded_at = now
            try:
                await self._rt.peers.heard_from(self.agent.id)
            except FleetError as exc:  # the store is briefly unavailable: the next answer records it
                log.warning("a2a agent %s: %s", self.agent.id, exc)

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            result = await call
        except (A2AError, ValueError, ParseError) as exc:
            failure = _failure(exc)
            if isinstance(failure, PeerRefused):
                await self._heard()  # it answered, if only to refuse
            raise failure from exc
        await self._heard()
        return result

    async def _ping(self, link: _Link, remote_id: str | None = None) -> None:
        """Does the endpoint answer? GetTask of the remote task, or of a made-up id (task-not-found
        is an answer too). Raises PeerUnreachable if not."""
        request = GetTaskRequest(id=remote_id or PING_TASK_ID)
        with suppress(PeerRefused):
            await self._call(link.client.get_task(request, context=_call_context()))

    @staticmethod
    def _broken(link: _Link, why: str) -> None:
        if link.down is None:
            link.down = why
        if link.scope is not None:
            link.scope.cancel()

    # -- claiming ---------------------------------------------------------------------------
    async def _session(self, link: _Link) -> None:
        """Claim and run tasks until the peer fails (link.down says why). When the agent ends, the
        runtime stops the driver (terminated agents' claims are refused meanwhile)."""
        slots = anyio.Semaphore(self.agent.max_concurrency)
        async with anyio.create_task_group() as group:
            link.scope = group.cancel_scope
            while link.down is None:
                await slots.acquire()
                try:
                    task = await self._claim(link)
                except PeerUnreachable as exc:
                    slots.release()
                    self._broken(link, str(exc))
                    break
                if task is None:
                    slots.release()
                    continue
                group.start_soon(self._run_task, link, task, slots, name=f"a2a task {task.id}")

    async def _claim(self, link: _Link) -> TaskView | None:
        if time.monotonic() - self.last_ok >= self._probe_s:
            await self._ping(link)
        try:
            claimed = await self._rt.leases.claim(self.agent.principal, self._probe_s)
        except PermissionDenied as exc:  # terminated: the runtime stops this driver on its next tick
            log.info("a2a agent %s could not claim: %s", self.agent.id, exc)
            await anyio.sleep(AT_CAPACITY_PAUSE_S)
            return None
        except FleetError as exc:  # the store is briefly unavailable, a budget blocks: later
            log.warning("a2a agent %s could not claim: %s", self.agent.id, exc)
            await anyio.sleep(AT_CAPACITY_PAUSE_S)
            return None
        if claimed.reason == "at_capacity":  # leases of an earlier run of this server, until they lapse
            await anyio.sleep(AT_CAPACITY_PAUSE_S)
        return claimed.task

    # -- one task ---------------------------------------------------------------------------
    async def _run_task(self, link: _Link, task: TaskView, slots: anyio.Semaphore) -> None:
        attempt = _Attempt(task)
        try:
            verdict = await self._race(link, attempt)
            await self._settle(link, attempt, verdict)
        except anyio.get_cancelled_exc_class():
            with anyio.move_on_after(CLEANUP_S, shield=True):
                await self._abandon(link, attempt)
            raise
        except Exception:  # top level for one task: its lease lapses and the reaper retries it
            log.exception("a2a agent %s: task %s failed in the runtime", self.agent.id, task.id)
        finally:
            slots.release()

    async def _race(self, link: _Link, attempt: _Attempt) -> _Verdict:
        """The peer's work against our lease: whichever has something to say first decides."""
        verdicts: list[_Verdict] = []

        async def first(step: Any) -> None:
            try:
                verdict = await step(link, attempt)
            except PeerUnreachable as exc:
                verdict = _Unreachable(str(exc))
            except PeerRefused as exc:
                verdict = _Refused(str(exc))
            if not verdicts:
                verdicts.append(verdict)
            group.cancel_scope.cancel()

        async with anyio.create_task_group() as group:
            group.start_soon(first, self._exchange)
            group.start_soon(first, self._keep)
        return verdicts[0]

    async def _exchange(self, link: _Link, attempt: _Attempt) -> _Verdict:
        """Send the task; follow the stream, or poll, until the remote task stops."""
        request = SendMessageRequest(message=task_message(attempt.task))
        if not link.streaming:
            request.configuration.return_immediately = True
        last: StreamResponse | None = None
        try:
            async with aclosing(link.client.send_message(request)) as events:
                async for event in events:
                    await self._heard()
                    if event.WhichOneof("payload") == "message":
                        return _Answered(event.message)
                    attempt.observe(event)
                    last = event
                    if attempt.state in _STOP:
                        break
        except (A2AError, ValueError, ParseError) as exc:
            raise _failure(exc) from exc
        if attempt.remote_id is None:
            raise PeerRefused("the peer's answer named no task")
        if last is not None and last.WhichOneof("payload") == "task" and attempt.state in _STOP:
            return _Remote(last.task)  # the whole task, artifacts and all
        return await self._poll(link, attempt)

    async def _poll(self, link: _Link, attempt: _Attempt) -> _Verdict:
        delay = POLL_FIRST_S
        while True:
            request = GetTaskRequest(id=attempt.remote_id or "")
            try:
                task = await self._call(link.client.get_task(request, context=_call_context()))
            except PeerRefused:
                if attempt.state in _STOP:  # it streamed to the end but keeps no tasks to get
                    return _Remote(attempt.as_task())
                raise
            attempt.observe_task(task)
            if task.status.state in _STOP:
                return _Remote(task)
            await anyio.sleep(delay)
            delay = min(delay * 2, POLL_CAP_S)

    async def _keep(self, link: _Link, attempt: _Attempt) -> _Verdict:
        """Renew the lease every lease_s/3 (more often if the peer must be pinged sooner); watch
        for task_cancel, the task's timeout, and a peer gone quiet."""
        task = attempt.task
        every = min(task.lease_s / 3, self._probe_s)
        deadline = attempt.started + task.timeout_s if task.timeout_s else math.inf
        while True:
            await anyio.sleep(max(0.0, min(every, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                return _TimedOut(task.timeout_s or 0)
            try:
                lease = await self._rt.leases.heartbeat(self.agent.principal, task.id, None, attempt.note)
            except (LeaseExpired, Conflict, NotFound, PermissionDenied) as exc:
                return _Lost(exc.message)
            except FleetError as exc:  # the store is briefly unavailable; the lease has time left
                log.warning("a2a agent %s: heartbeat of %s: %s", self.agent.id, task.id, exc)
            else:
                if lease.cancel_requested:
                    return _CancelRequested()
            if time.monotonic() - self.last_ok >= self._probe_s:
                await self._ping(link, attempt.remote_id)

    # -- reporting --------------------------------------------------------------------------
    async def _settle(self, link: _Link, attempt: _Attempt, verdict: _Verdict) -> None:
        task = attempt.task
        if isinstance(verdict, _Remote):
            await self._settle_remote(link, attempt, verdict.task)
        elif isinstance(verdict, _Answered):
            await self._complete(task, result_of([Artifact(name="message", parts=verdict.message.parts)]))
        elif isinstance(verdict, _CancelRequested):
            await self._cancel_remote(link, attempt)
            await self._fail(task, "cancelled", retryable=False)
        elif isinstance(verdict, _TimedOut):
            await self._cancel_remote(link, attempt)
            await self._fail(task, f"timed out after {verdict.after_s} s; the peer's task was cancelled", True)
        elif isinstance(verdict, _Lost):
            await self._cancel_remote(link, attempt)
            log.info("a2a agent %s lost %s: %s", self.agent.id, task.id, verdict.why)
        elif isinstance(verdict, _Refused):
            await self._fail(task, f"the peer {self.agent.url} answered with an error: {verdict.why}", True)
        else:
            self._broken(link, verdict.why)

    async def _settle_remote(self, link: _Link, attempt: _Attempt, remote: Task) -> None:
        task = attempt.task
        state = remote.status.state
        said = _status_text(remote.status)
        ended = f"the peer's task {remote.id} ended {_state_name(state)}" + (f": {said}" if said else "")
        if state == TaskState.TASK_STATE_COMPLETED:
            await self._complete(task, result_of(remote.artifacts))
        elif state in (TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_REJECTED):
            await self._fail(task, ended, retryable=True)
        elif state == TaskState.TASK_STATE_CANCELED:
            await self._fail(task, ended, retryable=False)
        else:  # input-required, auth-required: an interrupted task nobody here can resume
            await self._cancel_remote(link, attempt)
            await self._fail(
                task,
                f"the peer's task {remote.id} is {_state_name(state)}"
                + (f" ({said})" if said else "")
                + "; agentfleet cannot answer a peer's questions, so the peer's task was cancelled",
                retryable=False,
            )

    async def _abandon(self, link: _Link, attempt: _Attempt) -> None:
        """This task's work stops unfinished: the peer is gone (nothing to do; its leases were
        released), the agent ended (cancel the remote task), or this server stops (cancel it and
        give the task back for a retry)."""
        if link.down is not None:
            return
        await self._cancel_remote(link, attempt)
        if not self.ended:
            await self._fail(attempt.task, "the agentfleet server stopped; the peer's task was cancelled", True)

    async def _cancel_remote(self, link: _Link, attempt: _Attempt) -> None:
        if attempt.remote_id is None or link.down is not None or attempt.state in _STOP - _INTERRUPTED:
            return
        try:
            await self._call(link.client.cancel_task(CancelTaskRequest(id=attempt.remote_id), context=_call_context()))
        except (PeerRefused, PeerUnreachable) as exc:  # done already, or gone: nothing more to do
            log.info("a2a agent %s: CancelTask %s: %s", self.agent.id, attempt.remote_id, exc)

    async def _complete(self, task: TaskView, result: Any) -> None:
        size = payload_size(result)
        if size > self._rt.max_result_bytes:
            await self._fail(
                task,
                f"the peer's result is {size} bytes; the limit is {self._rt.max_result_bytes} "
                "(AGENTFLEET_MAX_PAYLOAD_BYTES)",
                retryable=False,
            )
            return
        try:
            await self._rt.leases.complete(self.agent.principal, task.id, result)
        except FleetError as exc:  # lapsed or cancelled meanwhile: not ours to report any more
            log.info("a2a agent %s could not complete %s: %s", self.agent.id, task.id, exc)

    async def _fail(self, task: TaskView, error: str, retryable: bool) -> None:
        try:
            await self._rt.leases.fail(self.agent.principal, task.id, error[:ERROR_CHARS], retryable)
        except FleetError as exc:
            log.info("a2a agent %s could not fail %s: %s", self.agent.id, task.id, exc)


# -- all agents --------------------------------------------------------------------------------
class PeerRuntime:
    """Runs this replica's a2a agents: one driver per live agent, stopped when the agent ends."""

    def __init__(
        self,
        peers: PeerService,
        leases: LeaseService,
        cards: PeerCardFetcher,
        interval_s: float = 0.5,
        max_result_bytes: int = 256 * 1024,
    ) -> None:
        self.peers = peers
        self.leases = leases
        self.cards = cards
        self.max_result_bytes = max_result_bytes
        self._interval_s = interval_s
        self._drivers: dict[str, _Driver] = {}

    async def run(self) -> None:
        async with anyio.create_task_group() as group:
            while True:
                try:
                    await self.tick(group)
                except FleetError as exc:  # the store is briefly unavailable: next tick
                    log.warning("a2a peers: %s", exc)
                await anyio.sleep(self._interval_s)

    async def tick(self, group: TaskGroup) -> None:
        assigned = {agent.id: agent for agent in await self.peers.assigned()}
        for agent_id in [a for a in self._drivers if a not in assigned]:
            self._drivers.pop(agent_id).stop()
        for agent in assigned.values():
            driver = self._drivers.get(agent.id)
            if driver is None or driver.finished:
                driver = self._drivers[agent.id] = _Driver(self, agent)
                group.start_soon(driver.run, name=f"a2a agent {agent.id}")
