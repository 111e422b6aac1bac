# ruff: noqa: F811 - the a2a fixture is imported by name, as pytest finds it
"""A2A has the limits MCP has: an over-size body is 413, an over-size or unstorable message is an
A2A error with nothing of it stored, and a ListTasks page is bounded in bytes."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
from a2a.helpers import new_data_part
from a2a.types import ListTasksRequest

from tests.a2a.test_a2a_send_message import a2a, send  # noqa: F401 - the fixture, and the helper
from tests.helpers import call

if TYPE_CHECKING:
    from tests.serving import FleetServer

pytest_plugins = ["tests.serving"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def fresh_agent(shared_fleet: FleetServer) -> str:
    """An agent sees only the A2A tasks it sent: a clean slate on the shared server."""
    async with shared_fleet.mcp() as admin:
        return (await call(admin, "agent_spawn", profile="default", name=f"a2a-{uuid.uuid4().hex[:8]}"))["token"]


async def listed(client) -> list:
    return list((await client.list_tasks(ListTasksRequest())).tasks)


async def test_an_over_size_body_is_413_before_anything_is_parsed(shared_fleet: FleetServer) -> None:
    token = await fresh_agent(shared_fleet)
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"pad": "' + b"x" * (5 << 20) + b'"}}'
    async with shared_fleet.http(token) as http:
        for path in ("/a2a", "/a2a/rest/message:send"):
            answer = await http.post(path, content=body, headers={"content-type": "application/json"})
            assert answer.status_code == 413, (path, answer.status_code, answer.text[:200])


@pytest.mark.parametrize("text", ["x" * 400_000, "a NUL \x00 in the text"], ids=["over-size-message", "nul-byte"])
async def test_a_message_over_the_limit_or_unstorable_is_refused_and_nothing_is_kept(
    shared_fleet: FleetServer,
    a2a,
    text: str,
) -> None:
    token = await fresh_agent(shared_fleet)
    async with a2a(token) as client:
        with pytest.raises(Exception) as refused:
            await send(client, text)
        assert "invalid_input" in str(refused.value)
        assert await listed(client) == []  # no rejected task was recorded either


async def test_a_list_tasks_page_is_bounded_in_bytes(shared_fleet: FleetServer, a2a) -> None:
    token = await fresh_agent(shared_fleet)
    async with a2a(token) as client:
        for i in range(6):
            await send(client, f"{i} " + "y" * 200_000)  # each task keeps its ~200 KB message
        first = await client.list_tasks(ListTasksRequest())
        assert 0 < len(first.tasks) < 6 and first.next_page_token
        assert first.ByteSize() < 2 * 1024 * 1024
        rest = await client.list_tasks(ListTasksRequest(page_token=first.next_page_token))
    seen = [t.id for t in first.tasks] + [t.id for t in rest.tasks]
    assert len(seen) == 6 and len(set(seen)) == 6


async def test_a_nul_byte_deep_in_a_task_spec_is_refused_and_nothing_is_kept(shared_fleet: FleetServer, a2a) -> None:
    token = await fresh_agent(shared_fleet)
    async with a2a(token) as client:
        with pytest.raises(Exception) as refused:
            await send(client, new_data_part({"type": "review", "payload": {"pr": "42\x00"}}))
        assert "invalid_input" in str(refused.value) and "NUL" in str(refused.value)
        assert await listed(client) == []
