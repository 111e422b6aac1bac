"""Driving a real `agentfleet serve` over A2A with the a2a-sdk client: opening clients, sending,
and reading a stream event by event while the test moves the task through MCP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from a2a.client import A2ACardResolver, Client, ClientConfig, create_client
from a2a.helpers import new_data_part, new_message, new_text_message
from a2a.types import Part, Role, SendMessageRequest, StreamResponse, Task, TaskState
from anyio.streams.memory import MemoryObjectReceiveStream

from tests.helpers import call

if TYPE_CHECKING:
    from mcp import Client as McpClient

    from tests.serving import FleetServer

# Under AGENTFLEET_CLAIM_RECHECK_S (10 s), a follower's backstop re-read: an event this soon came from
# the change notification itself.
EVENT_TIMEOUT_S = 8


@asynccontextmanager
async def open_a2a(
    fleet: FleetServer,
    token: str | None = None,
    streaming: bool = False,
    binding: str = "JSONRPC",
    timeout_s: float = 30,
) -> AsyncIterator[Client]:
    """An A2A client discovered from the fleet's card, for the admin or for `token`'s principal,
    over the JSON-RPC or the HTTP+JSON binding."""
    async with fleet.http(token or fleet.admin_token) as http:
        http.timeout = httpx.Timeout(timeout_s)
        card = await A2ACardResolver(http, fleet.base_url).get_agent_card()
        config = ClientConfig(httpx_client=http, streaming=streaming, supported_protocol_bindings=[binding])
        client = await create_client(card, client_config=config)
        try:
            yield client
        finally:
            await client.close()


def request_for(
    content: str | Part | dict[str, Any], return_immediately: bool = True, **fields: Any
) -> SendMessageRequest:
    if isinstance(content, str):
        message = new_text_message(content, role=Role.ROLE_USER)
    elif isinstance(content, dict):
        message = new_message([new_data_part(content)], role=Role.ROLE_USER)
    else:
        message = new_message([content], role=Role.ROLE_USER)
    for name, value in fields.items():
        setattr(message, name, value)
    request = SendMessageRequest(message=message)
    request.configuration.return_immediately = return_immediately
    return request


async def send(client: Client, content: str | Part | dict[str, Any], return_immediately: bool = True) -> Task:
    """SendMessage (non-streaming); the one response must be a Task."""
    responses = [r async for r in client.send_message(request_for(content, return_immediately))]
    assert len(responses) == 1, responses
    [response] = responses
    assert response.WhichOneof("payload") == "task", response
    return response.task


class EventTap:
    """Reads a stream in the background so the test can act between events."""

    def __init__(self, events: MemoryObjectReceiveStream[StreamResponse]) -> None:
        self._events = events
        self.seen: list[StreamResponse] = []

    async def next(self) -> StreamResponse:
        with anyio.fail_after(EVENT_TIMEOUT_S):
            event = await self._events.receive()
        self.seen.append(event)
        return event

    async def next_state(self) -> int:
        """The state carried by the next event (a Task or a status update)."""
        event = await self.next()
        kind = event.WhichOneof("payload")
        assert kind in ("task", "status_update"), event
        return getattr(event, kind).status.state

    async def ended(self) -> bool:
        """True once the server closed the stream (no further event)."""
        with anyio.fail_after(EVENT_TIMEOUT_S):
            try:
                event = await self._events.receive()
            except anyio.EndOfStream:
                return True
        self.seen.append(event)
        return False


@asynccontextmanager
async def tap(stream: AsyncIterator[StreamResponse]) -> AsyncIterator[EventTap]:
    send_events, receive_events = anyio.create_memory_object_stream[StreamResponse](100)

    async def pump() -> None:
        async with send_events:
            async for event in stream:
                await send_events.send(event)

    async with anyio.create_task_group() as group:
        group.start_soon(pump)
        yield EventTap(receive_events)
        group.cancel_scope.cancel()


def state_names(states: list[int]) -> list[str]:
    return [TaskState.Name(s).removeprefix("TASK_STATE_").lower() for s in states]


async def spawn_worker(fleet: FleetServer) -> tuple[str, str]:
    """An external agent with a capability of its own: (capability, its token)."""
    capability = f"a2a-{uuid.uuid4().hex[:8]}"
    async with fleet.mcp() as admin:
        spawned = await call(admin, "agent_spawn", profile="specialist", capabilities=[capability])
    return capability, spawned["token"]


async def claim(agent: McpClient, task_id: str) -> dict[str, Any]:
    claimed = await call(agent, "task_claim", wait_s=5)
    assert claimed["task"] is not None and claimed["task"]["id"] == task_id, claimed
    return claimed["task"]
