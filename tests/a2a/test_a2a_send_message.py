"""A2A against a real `agentfleet serve`: the a2a-sdk client over httpx, a bearer token on the
httpx client, and MCP over HTTP to check that both protocols see the same orchestrator tasks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import pytest
from a2a.client import A2ACardResolver, Client, ClientConfig, create_client
from a2a.helpers import get_message_text, new_data_part, new_message, new_text_message
from a2a.types import (
    AgentCard,
    GetTaskRequest,
    Part,
    Role,
    SendMessageRequest,
    Task,
    TaskNotFoundError,
    TaskState,
)

from tests.helpers import call, call_error

if TYPE_CHECKING:
    from tests.serving import FleetServer

pytest_plugins = ["tests.serving"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REVIEW_SPEC = {"type": "review", "payload": {"pr": 42}, "capabilities": ["review"], "priority": "high"}
OpenA2A = Callable[..., AbstractAsyncContextManager[Client]]


@pytest.fixture
def a2a(shared_fleet: FleetServer) -> OpenA2A:
    """a2a(token=None) -> a non-streaming A2A client for the admin, or for `token`'s principal."""

    @asynccontextmanager
    async def open_client(token: str | None = None) -> AsyncIterator[Client]:
        async with shared_fleet.http(token or shared_fleet.admin_token) as http:
            card = await A2ACardResolver(http, shared_fleet.base_url).get_agent_card()
            client = await create_client(card, client_config=ClientConfig(httpx_client=http, streaming=False))
            try:
                yield client
            finally:
                await client.close()

    return open_client


async def send(client: Client, content: str | Part) -> Task:
    """SendMessage (non-streaming) as the user, with a text or another part; the one response
    must be a Task."""
    if isinstance(content, str):
        message = new_text_message(content, role=Role.ROLE_USER)
    else:
        message = new_message([content], role=Role.ROLE_USER)
    responses = [r async for r in client.send_message(SendMessageRequest(message=message))]
    assert len(responses) == 1, responses
    [response] = responses
    assert response.WhichOneof("payload") == "task", response
    return response.task


async def get_task(client: Client, task_id: str) -> Task:
    return await client.get_task(GetTaskRequest(id=task_id))


async def test_agent_card_publishes_skills_bearer_auth_and_both_endpoints(shared_fleet: FleetServer) -> None:
    async with shared_fleet.http() as anonymous:  # the card is public
        card: AgentCard = await A2ACardResolver(anonymous, shared_fleet.base_url).get_agent_card()
    assert card.name == "agentfleet orchestrator"
    assert {skill.id for skill in card.skills} == {"submit-task", "run-workflow", "fleet-status"}
    assert card.capabilities.streaming
    scheme = card.security_schemes["bearer"]
    assert scheme.WhichOneof("scheme") == "http_auth_security_scheme"
    assert scheme.http_auth_security_scheme.scheme.lower() == "bearer"
    assert [list(req.schemes) for req in card.security_requirements] == [["bearer"]]
    endpoints = {(i.protocol_binding, i.url, i.protocol_version) for i in card.supported_interfaces}
    assert endpoints == {
        ("JSONRPC", f"{shared_fleet.base_url}/a2a", "1.0"),
        ("HTTP+JSON", f"{shared_fleet.base_url}/a2a/rest", "1.0"),
    }


async def test_a_data_part_task_spec_becomes_an_orchestrator_task(shared_fleet: FleetServer, a2a: OpenA2A) -> None:
    async with a2a() as client:
        task = await send(client, new_data_part(REVIEW_SPEC))
        assert task.id.startswith("tsk_")
        assert task.status.state == TaskState.TASK_STATE_SUBMITTED

        async with shared_fleet.mcp() as admin:
            orchestrated = await call(admin, "task_get", task_id=task.id)
        assert orchestrated["id"] == task.id
        assert orchestrated["type"] == "review" and orchestrated["status"] == "queued"
        assert orchestrated["payload"] == {"pr": 42}
        assert type(orchestrated["payload"]["pr"]) is int  # not 42.0, though protobuf carried a double
        assert orchestrated["priority"] == "high" and orchestrated["capabilities"] == ["review"]
        assert orchestrated["submitted_by"] == "admin"

        fetched = await get_task(client, task.id)
        assert fetched.id == task.id and fetched.context_id == task.context_id
        assert fetched.status.state == TaskState.TASK_STATE_SUBMITTED

        async with shared_fleet.mcp() as admin:
            cancelled = await call(admin, "task_cancel", task_id=task.id, reason="changed my mind")
        assert cancelled["status"] == "cancelled"
        mirrored = await get_task(client, task.id)
        assert mirrored.status.state == TaskState.TASK_STATE_CANCELED  # the A2A view follows the orchestrator
        assert "changed my mind" in get_message_text(mirrored.status.message)


async def test_plain_text_becomes_a_text_task(shared_fleet: FleetServer, a2a: OpenA2A) -> None:
    async with a2a() as client:
        task = await send(client, "Summarise the open incidents")
    assert task.id.startswith("tsk_") and task.status.state == TaskState.TASK_STATE_SUBMITTED
    async with shared_fleet.mcp() as admin:
        orchestrated = await call(admin, "task_get", task_id=task.id)
    assert orchestrated["type"] == "text"
    assert orchestrated["payload"] == {"text": "Summarise the open incidents"}
    assert orchestrated["priority"] == "normal"


@pytest.mark.parametrize(
    "spec",
    [
        {**REVIEW_SPEC, "priority": "urgent"},
        {**REVIEW_SPEC, "colour": "blue"},
        {"payload": {"pr": 42}},
        {**REVIEW_SPEC, "max_attempts": "3"},
        {**REVIEW_SPEC, "requires_approval": "yes"},
    ],
    ids=["bad-priority", "unknown-field", "no-type", "text-for-integer", "text-for-boolean"],
)
async def test_a_bad_task_spec_is_rejected_with_invalid_input_and_queues_nothing(
    shared_fleet: FleetServer, a2a: OpenA2A, spec: dict[str, object]
) -> None:
    async with a2a() as client:
        task = await send(client, new_data_part(spec))
        assert task.status.state == TaskState.TASK_STATE_REJECTED
        reason = get_message_text(task.status.message)
        assert reason.startswith("invalid_input"), reason
        assert (await get_task(client, task.id)).status.state == TaskState.TASK_STATE_REJECTED
    async with shared_fleet.mcp() as admin:
        missing = await call_error(admin, "task_get", task_id=task.id)
    assert missing.code == "not_found"  # no half-made orchestrator task behind the rejection


async def test_an_agent_cannot_see_a2a_tasks_it_did_not_create(shared_fleet: FleetServer, a2a: OpenA2A) -> None:
    async with shared_fleet.mcp() as admin:
        spawned = await call(admin, "agent_spawn", profile="developer")
    async with a2a() as as_admin:
        admins = await send(as_admin, new_data_part(REVIEW_SPEC))
    async with a2a(spawned["token"]) as as_agent:
        with pytest.raises(TaskNotFoundError):
            await get_task(as_agent, admins.id)
        own = await send(as_agent, "run the linters")
        assert (await get_task(as_agent, own.id)).status.state == TaskState.TASK_STATE_SUBMITTED
    async with shared_fleet.mcp() as admin:
        assert (await call(admin, "task_get", task_id=own.id))["submitted_by"] == spawned["agent"]["id"]


async def test_a2a_needs_a_valid_bearer_token(shared_fleet: FleetServer) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "tsk_0"}}
    async with shared_fleet.http() as anonymous:
        assert (await anonymous.post("/a2a", json=body, headers={"A2A-Version": "1.0"})).status_code == 401
    async with shared_fleet.http("afa_wrong") as stranger:
        assert (await stranger.post("/a2a", json=body, headers={"A2A-Version": "1.0"})).status_code == 401
        assert (await stranger.get("/a2a/rest/tasks", headers={"A2A-Version": "1.0"})).status_code == 401
    async with shared_fleet.http() as anonymous:
        assert (await anonymous.get("/a2a/rest/tasks/tsk_0", headers={"A2A-Version": "1.0"})).status_code == 401


async def test_a_task_waiting_for_approval_is_input_required_until_decided(
    shared_fleet: FleetServer, a2a: OpenA2A
) -> None:
    async with a2a() as client:
        task = await send(client, new_data_part({**REVIEW_SPEC, "requires_approval": True}))
        assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        async with shared_fleet.mcp() as admin:
            waiting = await call(admin, "task_get", task_id=task.id)
            assert waiting["status"] == "pending_approval"
            await call(admin, "approval_decide", approval_id=waiting["approval"]["id"], decision="approve")
        assert (await get_task(client, task.id)).status.state == TaskState.TASK_STATE_SUBMITTED


async def test_a2a_calls_pass_the_same_role_check_as_mcp_and_refusals_are_audited(
    shared_fleet: FleetServer, a2a: OpenA2A
) -> None:
    async with shared_fleet.mcp() as admin:
        viewer = await call(admin, "token_create", name="a2a-viewer", role="viewer")
    async with a2a(viewer["token"]) as as_viewer:
        with pytest.raises(Exception, match="permission_denied: task_submit is for"):
            await send(as_viewer, "deploy everything")
    async with shared_fleet.mcp() as admin:
        refusals = (await call(admin, "audit_query", actor="a2a-viewer", action="request.refused"))["entries"]
        tasks = (await call(admin, "task_list", type="text"))["tasks"]
    assert [r["detail"]["code"] for r in refusals] == ["permission_denied"]
    assert all(t["submitted_by"] != "a2a-viewer" for t in tasks)
