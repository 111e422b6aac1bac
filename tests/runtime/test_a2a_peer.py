"""The a2a runtime against real peers: a2a-sdk agent servers on 127.0.0.1, served by uvicorn in the
test's event loop, and a real `agentfleet serve` driven over MCP as admin. Spawn reads the peer's
card; tasks go to the peer over SendMessage (streamed or polled) and come back completed, failed
by the retry policy, or cancelled with CancelTask; a peer that goes away makes its agent
unresponsive until it answers again."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn
from a2a.helpers import get_data_parts, get_text_parts, new_data_part, new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill
from google.protobuf.json_format import MessageToDict
from mcp import Client
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.helpers import call, call_error

if TYPE_CHECKING:
    from tests.serving import FleetServer, ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PROFILE = """\
name: peer
version: 1.0.0
description: A remote A2A agent; its URL is given at spawn.
runtime: a2a
max_concurrency: 2
limits: {heartbeat_timeout_s: 5}
"""
WAIT_S = 20.0


# -- the peer: an a2a-sdk agent server -------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PeerExecutor(AgentExecutor):
    """Echoes the task's data part back as its one artifact. Payload flags: hold (wait until
    released or cancelled), fail, ask (input-required), chatty (a text and a data part)."""

    def __init__(self, released: bool = False) -> None:
        self.received: list[dict[str, Any]] = []
        self.cancelled: list[str] = []
        self.release = asyncio.Event()
        if released:
            self.release.set()

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.message is not None
        task = context.current_task or new_task_from_user_message(context.message)
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work(updater.new_agent_message([new_text_part("on it")]))
        [data] = get_data_parts(context.message.parts)
        self.received.append(
            {
                "remote_id": task.id,
                "data": data,
                "texts": get_text_parts(context.message.parts),
                "metadata": MessageToDict(context.message.metadata),
            }
        )
        flags = data["payload"] if isinstance(data["payload"], dict) else {}
        if flags.get("hold"):
            await self.release.wait()
        if flags.get("fail"):
            await updater.failed(updater.new_agent_message([new_text_part("the peer gave up")]))
        elif flags.get("ask"):
            await updater.requires_input(updater.new_agent_message([new_text_part("which branch?")]))
        elif flags.get("chatty"):
            await updater.add_artifact([new_text_part("done"), new_data_part({"lines": 3})], name="report")
            await updater.complete()
        else:
            await updater.add_artifact([new_data_part({"echo": data["payload"], "type": data["type"]})])
            await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None
        self.cancelled.append(context.task_id)
        await TaskUpdater(event_queue, context.task_id, context.context_id or "").cancel()


class MethodLog:
    """ASGI wrapper noting the JSON-RPC method of every call (SendStreamingMessage or SendMessage)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.methods: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/a2a":
            await self.app(scope, receive, send)
            return
        body = bytearray()

        async def noting() -> dict[str, Any]:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if not message.get("more_body"):
                    self.methods.append(json.loads(body)["method"])
            return message

        await self.app(scope, noting, send)


def peer_card(base_url: str, streaming: bool, skills: list[AgentSkill]) -> AgentCard:
    return AgentCard(
        name="test peer",
        description="echoes, waits, fails or asks, as the payload says",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=f"{base_url}/a2a", protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=streaming),
        default_input_modes=["application/json", "text/plain"],
        default_output_modes=["application/json"],
        skills=skills,
    )


@dataclass
class Peer:
    url: str
    port: int
    executor: PeerExecutor
    handler: DefaultRequestHandler
    log: MethodLog
    server: uvicorn.Server
    serving: asyncio.Task[None]

    async def stop(self) -> None:
        """Like a crash for its clients: open streams are cut (after 0.2 s), new connections refused."""
        if self.serving.done():
            return
        self.server.should_exit = True
        await self.serving
        self.executor.release.set()  # let held executions end, so no task outlives the test
        await self.handler.aclose()


@dataclass
class Peers:
    started: list[Peer] = field(default_factory=list)

    async def start(
        self,
        *,
        streaming: bool,
        skills: list[AgentSkill],
        port: int | None = None,
        executor: PeerExecutor | None = None,
    ) -> Peer:
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        executor = executor or PeerExecutor()
        card = peer_card(url, streaming, skills)
        handler = DefaultRequestHandler(agent_executor=executor, task_store=InMemoryTaskStore(), agent_card=card)
        app = MethodLog(Starlette(routes=[*create_agent_card_routes(card), *create_jsonrpc_routes(handler, "/a2a")]))
        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="critical", timeout_graceful_shutdown=0.2, lifespan="off"
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            assert not serving.done(), f"the peer did not start on port {port}"
            await asyncio.sleep(0.01)
        peer = Peer(url, port, executor, handler, app, server, serving)
        self.started.append(peer)
        return peer


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    made = Peers()
    yield made
    for peer in made.started:
        await peer.stop()


ECHO = AgentSkill(id="Echo Back", name="echo", description="echoes", tags=["Text Tools", "Échos", "!!!"])
POLLED = AgentSkill(id="poll-echo", name="echo, polled", description="echoes", tags=["text-tools"])


# -- the fleet ---------------------------------------------------------------------------------
@pytest.fixture
def fleet_env(tmp_path: Path) -> dict[str, str]:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "peer.yaml").write_text(PROFILE)
    # A replica id that survives a restart on another port: the restarted server runs its agents.
    return {"AGENTFLEET_PROFILES_DIR": str(profiles), "AGENTFLEET_REPLICA_ID": "peer-test"}


@pytest.fixture
def fleet(serve: ServeFactory, database_url: str, fleet_env: dict[str, str]) -> FleetServer:
    return serve(database_url, env=fleet_env)


Admin = Callable[[], AbstractAsyncContextManager[Client]]


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


async def task_in(admin: Client, task_id: str, *statuses: str) -> dict[str, Any]:
    async def status() -> dict[str, Any] | None:
        task = await call(admin, "task_get", task_id=task_id)
        return task if task["status"] in statuses else None

    return await eventually(status, f"task {task_id} to be {'/'.join(statuses)}")


async def agent_in(admin: Client, agent_id: str, status: str) -> dict[str, Any]:
    async def current() -> dict[str, Any] | None:
        agent = await call(admin, "agent_get", agent_id=agent_id)
        return agent if agent["status"] == status else None

    return await eventually(current, f"agent {agent_id} to be {status}")


async def received(peer: Peer, count: int) -> list[dict[str, Any]]:
    async def enough() -> list[dict[str, Any]] | None:
        return peer.executor.received if len(peer.executor.received) >= count else None

    return await eventually(enough, f"the peer to receive {count} task(s)")


async def sent_to(peer: Peer, task_id: str) -> dict[str, Any]:
    """What the peer received for our task `task_id` (the latest attempt)."""

    async def found() -> dict[str, Any] | None:
        mine = [r for r in peer.executor.received if r["metadata"].get("agentfleet_task_id") == task_id]
        return mine[-1] if mine else None

    return await eventually(found, f"the peer to receive task {task_id}")


async def spawn(admin: Client, peer: Peer) -> dict[str, Any]:
    spawned = await call(admin, "agent_spawn", profile="peer", a2a_url=peer.url)
    assert spawned["token"] is None  # the server acts for it
    return spawned["agent"]


# -- tests -------------------------------------------------------------------------------------
async def test_spawn_reads_the_card_and_tasks_complete_streamed_and_polled(fleet: FleetServer, peers: Peers) -> None:
    streamed = await peers.start(streaming=True, skills=[ECHO])
    polled = await peers.start(streaming=False, skills=[POLLED])
    async with fleet.mcp() as admin:
        # A peer that is not there, or not an A2A agent: refused, and nothing is created.
        nobody = f"http://127.0.0.1:{free_port()}"
        refused = await call_error(admin, "agent_spawn", profile="peer", a2a_url=nobody)
        assert refused.code == "unavailable" and "cannot be reached" in refused.text
        not_a_card = await call_error(admin, "agent_spawn", profile="peer", a2a_url=f"{streamed.url}/elsewhere")
        assert not_a_card.code == "invalid_input" and "HTTP 404" in not_a_card.text
        missing = await call_error(admin, "agent_spawn", profile="peer")  # the profile names no URL
        assert missing.code == "invalid_input"
        assert (await call(admin, "agent_list"))["agents"] == []
        assert (await call(admin, "audit_query", action="agent.spawn"))["entries"] == []

        agent = await spawn(admin, streamed)
        assert agent["runtime"] == "a2a" and agent["a2a_url"] == streamed.url
        assert agent["capabilities"] == ["echo-back", "echos", "text-tools"]  # ids and tags, normalised
        other = await spawn(admin, polled)
        assert other["capabilities"] == ["poll-echo", "text-tools"]
        await agent_in(admin, agent["id"], "active")  # the runtime reached its peer
        await agent_in(admin, other["id"], "active")

        payload = {"n": 3, "words": ["a", "b"], "nested": {"ok": True}}
        first = await call(admin, "task_submit", type="echo", payload=payload, capabilities=["echo-back"])
        second = await call(admin, "task_submit", type="echo", payload="say hi", capabilities=["poll-echo"])
        third = await call(admin, "task_submit", type="report", payload={"chatty": True}, capabilities=["poll-echo"])

        done = await task_in(admin, first["id"], "completed", "failed", "dead")
        assert done["status"] == "completed", done
        assert done["agent_id"] == agent["id"] and done["attempts"] == 1
        assert done["result"] == {"echo": payload, "type": "echo"}  # one data part: its content
        assert type(done["result"]["echo"]["n"]) is int  # not 3.0, though protobuf carried a double
        [sent] = streamed.executor.received
        assert sent["data"] == {"type": "echo", "payload": {"n": 3.0, "words": ["a", "b"], "nested": {"ok": True}}}
        assert sent["texts"] == [] and sent["metadata"]["agentfleet_task_id"] == first["id"]

        done = await task_in(admin, second["id"], "completed", "failed", "dead")
        assert done["status"] == "completed", done
        assert done["agent_id"] == other["id"]
        assert done["result"] == {"echo": "say hi", "type": "echo"}
        done = await task_in(admin, third["id"], "completed", "failed", "dead")
        assert done["result"] == {
            "artifacts": [{"name": "report", "parts": [{"text": "done"}, {"data": {"lines": 3}}]}],
            "text": "done",
        }
        texts = {r["data"]["type"]: r["texts"] for r in polled.executor.received}
        assert texts == {"echo": ["say hi"], "report": []}  # a string payload also goes as text
        assert streamed.executor.cancelled == [] and polled.executor.cancelled == []
        # Streamed where the card offers it; otherwise sent, then followed with GetTask.
        assert "SendStreamingMessage" in streamed.log.methods and "SendMessage" not in streamed.log.methods
        assert "SendMessage" in polled.log.methods and "GetTask" in polled.log.methods
        assert "SendStreamingMessage" not in polled.log.methods


async def test_task_cancel_sends_cancel_task_and_the_task_ends_cancelled(fleet: FleetServer, peers: Peers) -> None:
    streamed = await peers.start(streaming=True, skills=[ECHO])
    polled = await peers.start(streaming=False, skills=[POLLED])
    async with fleet.mcp() as admin:
        # Streamed, at capacity (2 of 2: it claims nothing, so claims do not keep it alive): the
        # streams are quiet while the peer works, yet the agent stays active past its 5 s heartbeat
        # timeout, because the runtime pings the peer and records that it answered.
        agent = await spawn(admin, streamed)
        held = [
            await call(admin, "task_submit", type="wait", payload={"hold": True}, capabilities=["echo-back"], lease_s=5)
            for _ in range(2)
        ]
        sent = await received(streamed, 2)
        await asyncio.sleep(6)  # longer than the heartbeat timeout: nothing may change meanwhile
        for task in held:
            running = await call(admin, "task_get", task_id=task["id"])
            assert running["status"] == "running" and running["attempts"] == 1, running
            assert running["agent_id"] == agent["id"] and running["progress_message"] == "on it"
        assert (await call(admin, "agent_get", agent_id=agent["id"]))["status"] == "active"

        for task in held:
            await call(admin, "task_cancel", task_id=task["id"], reason="not needed")
        for task in held:
            ended = await task_in(admin, task["id"], "cancelled", "failed", "completed", "queued", "dead")
            assert ended["status"] == "cancelled", ended
        assert sorted(streamed.executor.cancelled) == sorted(r["remote_id"] for r in sent)  # CancelTask reached it

        # Polled, max_concurrency 2: two tasks reach the peer, the third waits for a free slot.
        agent = await spawn(admin, polled)
        held = [
            await call(admin, "task_submit", type="wait", payload={"hold": True}, capabilities=["poll-echo"], lease_s=5)
            for _ in range(3)
        ]
        await received(polled, 2)
        await asyncio.sleep(1)  # time enough for a third claim, were it allowed
        assert len(polled.executor.received) == 2
        waiting = [t for t in held if (await call(admin, "task_get", task_id=t["id"]))["status"] == "queued"]
        assert len(waiting) == 1
        for task in held:  # cancelling a running one frees a slot for the waiting one
            await call(admin, "task_cancel", task_id=task["id"])
        for task in held:
            assert (await task_in(admin, task["id"], "cancelled", "failed", "completed"))["status"] == "cancelled"
        sent_ids = [r["remote_id"] for r in polled.executor.received]
        assert len(sent_ids) in (2, 3)  # the third was sent only if a slot freed before its cancel
        assert sorted(polled.executor.cancelled) == sorted(sent_ids)

        after = await call(admin, "task_submit", type="echo", payload={"x": 1}, capabilities=["poll-echo"])
        done = await task_in(admin, after["id"], "completed", "failed", "dead")
        assert done["result"] == {"echo": {"x": 1}, "type": "echo"}

        # Terminating the agent cancels what its peer works on; the task goes back to the queue.
        last = await call(admin, "task_submit", type="wait", payload={"hold": True}, capabilities=["poll-echo"])
        sent = await sent_to(polled, last["id"])
        await call(admin, "agent_terminate", agent_id=agent["id"])
        await eventually(lambda: _true(sent["remote_id"] in polled.executor.cancelled), "CancelTask after terminate")
        assert (await call(admin, "task_get", task_id=last["id"]))["status"] == "queued"


async def _true(value: bool) -> bool:
    return value


async def test_remote_failure_follows_the_retry_policy_and_questions_fail_the_task(
    fleet: FleetServer, peers: Peers
) -> None:
    peer = await peers.start(streaming=True, skills=[ECHO])
    async with fleet.mcp() as admin:
        await spawn(admin, peer)
        failing = await call(
            admin,
            "task_submit",
            type="doomed",
            payload={"fail": True},
            capabilities=["echo-back"],
            max_attempts=2,
            backoff_base_s=0.01,
            backoff_cap_s=0.05,
        )
        asking = await call(admin, "task_submit", type="question", payload={"ask": True}, capabilities=["echo-back"])
        slow = await call(
            admin,
            "task_submit",
            type="slow",
            payload={"hold": True},
            capabilities=["echo-back"],
            timeout_s=1,
            max_attempts=1,
        )

        dead = await task_in(admin, failing["id"], "dead", "failed", "completed")
        assert dead["status"] == "dead" and dead["attempts"] == 2, dead  # retried once, then out of attempts
        assert "ended failed: the peer gave up" in dead["error"]
        failed = await task_in(admin, asking["id"], "failed", "dead", "completed", "queued")
        assert failed["status"] == "failed" and failed["attempts"] == 1, failed  # not retryable
        assert "input-required (which branch?)" in failed["error"]
        asked = next(r for r in peer.executor.received if r["data"]["type"] == "question")
        assert asked["remote_id"] in peer.executor.cancelled  # the interrupted remote task is not left waiting
        assert sum(r["data"]["type"] == "doomed" for r in peer.executor.received) == 2

        timed_out = await task_in(admin, slow["id"], "dead", "failed", "completed")
        assert timed_out["status"] == "dead" and "timed out after 1 s" in timed_out["error"], timed_out
        held = next(r for r in peer.executor.received if r["data"]["type"] == "slow")
        assert held["remote_id"] in peer.executor.cancelled


async def test_an_unreachable_peer_makes_the_agent_unresponsive_until_it_answers_again(
    fleet: FleetServer, peers: Peers
) -> None:
    streamed = await peers.start(streaming=True, skills=[ECHO])
    polled = await peers.start(streaming=False, skills=[POLLED])
    async with fleet.mcp() as admin:
        work = {}
        for peer, capability in ((streamed, "echo-back"), (polled, "poll-echo")):
            agent = await spawn(admin, peer)
            task = await call(admin, "task_submit", type="wait", payload={"hold": True}, capabilities=[capability])
            work[peer.url] = (agent, task)
            await received(peer, 1)

        for peer in (streamed, polled):  # a cut stream, and a refused GetTask poll
            await peer.stop()
        for peer in (streamed, polled):
            agent, task = work[peer.url]
            await agent_in(admin, agent["id"], "unresponsive")
            requeued = await call(admin, "task_get", task_id=task["id"])
            assert requeued["status"] == "queued" and requeued["attempts"] == 1, requeued  # back to the queue
            [entry] = (await call(admin, "audit_query", action="agent.unresponsive", subject=agent["id"]))["entries"]
            assert entry["principal"] == "a2a-peers" and entry["role"] == "system"
            assert entry["detail"]["a2a_url"] == peer.url

        # The same peers come back (not holding this time): the agents are active, the work completes.
        for peer, skill in ((streamed, ECHO), (polled, POLLED)):
            agent, task = work[peer.url]
            streaming = peer is streamed
            back = await peers.start(
                streaming=streaming, skills=[skill], port=peer.port, executor=PeerExecutor(released=True)
            )
            await agent_in(admin, agent["id"], "active")
            done = await task_in(admin, task["id"], "completed", "failed", "dead")
            assert done["status"] == "completed" and done["attempts"] == 2, done
            assert done["result"] == {"echo": {"hold": True}, "type": "wait"}
            assert len(back.executor.received) == 1


async def test_a_server_that_stops_cancels_the_peer_task_and_retries_it_when_back(
    serve: ServeFactory, database_url: str, fleet_env: dict[str, str], fleet: FleetServer, peers: Peers
) -> None:
    peer = await peers.start(streaming=True, skills=[ECHO])
    async with fleet.mcp() as admin:
        agent = await spawn(admin, peer)
        task = await call(admin, "task_submit", type="wait", payload={"hold": True}, capabilities=["echo-back"])
        [sent] = await received(peer, 1)

    # SIGTERM: the runtime cancels the remote task and gives ours back. (In a thread: the peer
    # answers from this event loop.)
    await asyncio.to_thread(fleet.stop)
    assert peer.executor.cancelled == [sent["remote_id"]]
    peer.executor.release.set()  # from now on the peer finishes what it gets

    again = await asyncio.to_thread(serve, database_url, env=fleet_env)
    async with again.mcp() as admin:
        done = await task_in(admin, task["id"], "completed", "failed", "dead")
        assert done["status"] == "completed" and done["agent_id"] == agent["id"], done
        assert done["attempts"] == 2 and done["result"] == {"echo": {"hold": True}, "type": "wait"}
        history = (await call(admin, "task_get", task_id=task["id"]))["attempt_history"]
        assert "the agentfleet server stopped" in (history[0]["error"] or ""), history
