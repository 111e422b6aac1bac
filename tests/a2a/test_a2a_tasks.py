"""A2A tasks followed through their life over a real `agentfleet serve`: an A2A client submits and
streams, an agent works the task over MCP, and every change reaches the stream as it happens.
Also blocking sends, SubscribeToTask, CancelTask, ListTasks and who may see what."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import pytest
from a2a.helpers import get_message_text
from a2a.types import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    SubscribeToTaskRequest,
    TaskNotCancelableError,
    TaskNotFoundError,
    TaskState,
)
from google.protobuf.json_format import MessageToDict

from tests.a2a.support import claim, open_a2a, request_for, send, spawn_worker, state_names, tap
from tests.helpers import call

if TYPE_CHECKING:
    from tests.serving import FleetServer

pytest_plugins = ["tests.serving"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SUBMITTED = TaskState.TASK_STATE_SUBMITTED
WORKING = TaskState.TASK_STATE_WORKING
COMPLETED = TaskState.TASK_STATE_COMPLETED


def spec(capability: str, **extra: object) -> dict[str, object]:
    return {"type": "review", "payload": {"pr": 7}, "capabilities": [capability], **extra}


BINDINGS = ["JSONRPC", "HTTP+JSON"]
DEFAULT_HTTPX_TIMEOUT_S = 5.0


@pytest.mark.parametrize("binding", BINDINGS)
async def test_a_stream_sees_each_state_as_an_mcp_agent_moves_the_task(module_fleet: FleetServer, binding: str) -> None:
    capability, agent_token = await spawn_worker(module_fleet)
    async with (
        open_a2a(module_fleet, streaming=True, binding=binding) as client,
        tap(client.send_message(request_for(spec(capability)))) as stream,
        module_fleet.mcp(agent_token) as agent,
    ):
        first = await stream.next()
        assert first.WhichOneof("payload") == "task" and first.task.status.state == SUBMITTED
        task_id = first.task.id

        await claim(agent, task_id)
        assert await stream.next_state() == WORKING

        await call(agent, "task_heartbeat", task_id=task_id, progress=40, message="reading the diff")
        progress = await stream.next()
        assert progress.status_update.status.state == WORKING
        assert get_message_text(progress.status_update.status.message) == "40% reading the diff"

        await call(agent, "task_complete", task_id=task_id, result={"verdict": "approve", "comments": 2})
        artifact = await stream.next()
        assert artifact.WhichOneof("payload") == "artifact_update"
        assert artifact.artifact_update.artifact.name == "result"
        [part] = artifact.artifact_update.artifact.parts
        assert MessageToDict(part)["data"] == {"verdict": "approve", "comments": 2}
        assert await stream.next_state() == COMPLETED
        assert await stream.ended()


async def test_a_blocking_send_answers_with_the_final_state_when_the_work_is_quick(module_fleet: FleetServer) -> None:
    capability, agent_token = await spawn_worker(module_fleet)
    async with open_a2a(module_fleet) as client, module_fleet.mcp(agent_token) as agent:

        async def work() -> None:
            claimed = await call(agent, "task_claim", wait_s=5)
            await call(agent, "task_complete", task_id=claimed["task"]["id"], result={"ok": True})

        async with anyio.create_task_group() as group:
            group.start_soon(work)
            task = await send(client, spec(capability), return_immediately=False)
    assert task.status.state == COMPLETED
    assert MessageToDict(task.artifacts[0].parts[0])["data"] == {"ok": True}


async def test_a_blocking_send_returns_the_task_as_it_stands_when_nobody_takes_it(module_fleet: FleetServer) -> None:
    async with open_a2a(module_fleet) as client:
        task = await send(client, spec("nobody-has-this", allow_unroutable=True), return_immediately=False)
    assert task.status.state == SUBMITTED  # after AGENTFLEET_A2A_BLOCK_S, not forever


async def test_subscribe_follows_a_task_from_where_it_stands(module_fleet: FleetServer) -> None:
    capability, agent_token = await spawn_worker(module_fleet)
    async with open_a2a(module_fleet) as client, module_fleet.mcp(agent_token) as agent:
        task = await send(client, spec(capability))
        await claim(agent, task.id)
        async with (
            open_a2a(module_fleet, streaming=True) as streaming,
            tap(streaming.subscribe(SubscribeToTaskRequest(id=task.id))) as stream,
        ):
            assert await stream.next_state() == WORKING  # the snapshot first
            await call(agent, "task_fail", task_id=task.id, error="flaky network", retryable=True)
            assert await stream.next_state() == SUBMITTED  # queued again for another attempt
            retry = stream.seen[-1].status_update
            assert "attempt 1 of 3" in get_message_text(retry.status.message)
            assert retry.metadata["orchestratorStatus"] == "queued"


async def test_subscribing_to_a_finished_task_is_refused(module_fleet: FleetServer) -> None:
    async with open_a2a(module_fleet) as client:
        task = await send(client, spec("nobody-has-this", allow_unroutable=True))
        await client.cancel_task(CancelTaskRequest(id=task.id))
    async with open_a2a(module_fleet, streaming=True) as streaming:
        with pytest.raises(Exception, match="TASK_STATE_CANCELED"):
            async for _ in streaming.subscribe(SubscribeToTaskRequest(id=task.id)):
                pass


async def test_an_approval_shows_as_input_required_in_the_stream_and_the_stream_goes_on(
    module_fleet: FleetServer,
) -> None:
    capability, agent_token = await spawn_worker(module_fleet)
    async with (
        open_a2a(module_fleet, streaming=True) as client,
        tap(client.send_message(request_for(spec(capability, requires_approval=True)))) as stream,
        module_fleet.mcp() as admin,
        module_fleet.mcp(agent_token) as agent,
    ):
        first = await stream.next()
        assert first.task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        assert "waiting for approval" in get_message_text(first.task.status.message)
        waiting = await call(admin, "task_get", task_id=first.task.id)
        await call(admin, "approval_decide", approval_id=waiting["approval"]["id"], decision="approve")
        assert await stream.next_state() == SUBMITTED
        await claim(agent, first.task.id)
        assert await stream.next_state() == WORKING
        await call(agent, "task_complete", task_id=first.task.id, result="done")
        assert (await stream.next()).WhichOneof("payload") == "artifact_update"
        assert await stream.next_state() == COMPLETED


@pytest.mark.parametrize("binding", BINDINGS)
async def test_cancel_task_cancels_the_orchestrator_task(module_fleet: FleetServer, binding: str) -> None:
    capability, agent_token = await spawn_worker(module_fleet)
    async with (
        open_a2a(module_fleet, binding=binding) as client,
        module_fleet.mcp() as admin,
        module_fleet.mcp(agent_token) as agent,
    ):
        queued = await send(client, spec(capability))
        cancelled = await client.cancel_task(CancelTaskRequest(id=queued.id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        assert (await call(admin, "task_get", task_id=queued.id))["status"] == "cancelled"
        with pytest.raises(TaskNotCancelableError):
            await client.cancel_task(CancelTaskRequest(id=queued.id))

        running = await send(client, spec(capability))
        await claim(agent, running.id)
        asked = await client.cancel_task(CancelTaskRequest(id=running.id))
        # A running task is cancelled cooperatively: its agent learns it on its next heartbeat.
        assert asked.status.state == WORKING and asked.metadata["cancelRequested"] is True
        beat = await call(agent, "task_heartbeat", task_id=running.id)
        assert beat["cancel_requested"] is True


async def test_a_caller_sees_and_cancels_only_its_own_tasks_and_the_admin_sees_all(module_fleet: FleetServer) -> None:
    _, first_token = await spawn_worker(module_fleet)
    _, second_token = await spawn_worker(module_fleet)
    async with open_a2a(module_fleet, first_token) as first, open_a2a(module_fleet, second_token) as second:
        mine = [await send(first, spec("nobody-has-this", allow_unroutable=True)) for _ in range(3)]
        theirs = await send(second, spec("nobody-has-this", allow_unroutable=True))

        listed = await first.list_tasks(ListTasksRequest())
        assert [t.id for t in listed.tasks] == [t.id for t in reversed(mine)]  # newest first
        assert listed.total_size == 3
        with pytest.raises(TaskNotFoundError):
            await first.get_task(GetTaskRequest(id=theirs.id))
        with pytest.raises(TaskNotFoundError):
            await first.cancel_task(CancelTaskRequest(id=theirs.id))
        assert (await second.get_task(GetTaskRequest(id=theirs.id))).status.state == SUBMITTED

        page = await first.list_tasks(ListTasksRequest(page_size=2))
        assert [t.id for t in page.tasks] == [mine[2].id, mine[1].id] and page.next_page_token
        rest = await first.list_tasks(ListTasksRequest(page_size=2, page_token=page.next_page_token))
        assert [t.id for t in rest.tasks] == [mine[0].id] and not rest.next_page_token

        await first.cancel_task(CancelTaskRequest(id=mine[1].id))
        cancelled = await first.list_tasks(ListTasksRequest(status=TaskState.TASK_STATE_CANCELED))
        assert [t.id for t in cancelled.tasks] == [mine[1].id] and cancelled.total_size == 1
        submitted = await first.list_tasks(ListTasksRequest(status=SUBMITTED))
        assert [t.id for t in submitted.tasks] == [mine[2].id, mine[0].id]

    async with open_a2a(module_fleet) as admin:
        everything = {t.id for t in (await admin.list_tasks(ListTasksRequest(page_size=100))).tasks}
    assert {t.id for t in [*mine, theirs]} <= everything


async def test_a_follow_up_message_joins_the_task_history(module_fleet: FleetServer) -> None:
    async with open_a2a(module_fleet) as client:
        task = await send(client, spec("nobody-has-this", allow_unroutable=True))
        follow_up = request_for("please hurry", task_id=task.id, context_id=task.context_id)
        responses = [r async for r in client.send_message(follow_up)]
        [answer] = responses
        assert answer.task.id == task.id and answer.task.status.state == SUBMITTED
        # The SDK trap: a follow-up naming the task but no context joins the task's own context.
        [bare] = [r async for r in client.send_message(request_for("no context given", task_id=task.id))]
        assert bare.task.id == task.id and bare.task.context_id == task.context_id
        fetched = await client.get_task(GetTaskRequest(id=task.id))
        assert [get_message_text(m) for m in fetched.history][-2:] == ["please hurry", "no context given"]
        assert {m.context_id for m in fetched.history} == {task.context_id}

        with pytest.raises(Exception, match="is not the context"):
            async for _ in client.send_message(request_for("wrong", task_id=task.id, context_id="ctx-other")):
                pass
        await client.cancel_task(CancelTaskRequest(id=task.id))
        with pytest.raises(Exception, match="TASK_STATE_CANCELED"):
            async for _ in client.send_message(request_for("too late", task_id=task.id)):
                pass
        assert state_names([(await client.get_task(GetTaskRequest(id=task.id))).status.state]) == ["canceled"]


@pytest.mark.parametrize("binding", BINDINGS)
async def test_the_fleet_status_skill_answers_with_a_message_and_queues_nothing(
    module_fleet: FleetServer, binding: str
) -> None:
    await spawn_worker(module_fleet)
    async with open_a2a(module_fleet, binding=binding) as client, module_fleet.mcp() as admin:
        before = await call(admin, "fleet_status")
        responses = [r async for r in client.send_message(request_for({"skill": "fleet-status"}))]
        after = await call(admin, "fleet_status")
    [response] = responses
    assert response.WhichOneof("payload") == "message"
    text, data = response.message.parts
    assert text.text.startswith("fleet: ")
    reported = MessageToDict(data)["data"]
    assert reported["agents"]["active"] + reported["agents"]["starting"] >= 1  # the worker spawned above
    assert reported["totals"]["tasks"] == before["totals"]["tasks"] == after["totals"]["tasks"]


async def test_a_quiet_stream_outlives_the_default_client_timeout(module_fleet: FleetServer) -> None:
    """The server pings idle streams, so a client with httpx's default 5 s read timeout keeps
    listening to a task nobody has claimed yet."""
    capability, agent_token = await spawn_worker(module_fleet)
    async with (
        open_a2a(module_fleet, streaming=True, timeout_s=DEFAULT_HTTPX_TIMEOUT_S) as client,
        tap(client.send_message(request_for(spec(capability)))) as stream,
        module_fleet.mcp(agent_token) as agent,
    ):
        task_id = (await stream.next()).task.id
        await anyio.sleep(DEFAULT_HTTPX_TIMEOUT_S + 2)
        await claim(agent, task_id)
        assert await stream.next_state() == WORKING


async def test_an_idempotency_key_sent_twice_answers_with_the_first_task(module_fleet: FleetServer) -> None:
    _, agent_token = await spawn_worker(module_fleet)
    once = spec("nobody-has-this", allow_unroutable=True, idempotency_key="a2a-replay-1")
    async with open_a2a(module_fleet) as client, open_a2a(module_fleet, agent_token) as other:
        first = await send(client, once)
        again = await send(client, once)
        assert again.id == first.id and again.status.state == SUBMITTED
        stranger = await send(other, once)  # someone else's key: refused, nothing shared
        assert stranger.status.state == TaskState.TASK_STATE_REJECTED
        assert get_message_text(stranger.status.message).startswith("conflict")
        assert [t.id for t in (await other.list_tasks(ListTasksRequest())).tasks] == [stranger.id]


async def test_the_run_workflow_skill_starts_a_run_and_answers_with_it(module_fleet: FleetServer) -> None:
    async with module_fleet.mcp() as admin:
        await call(admin, "agent_spawn", profile="researcher")  # the template's first step needs `research`
    request = {"skill": "run-workflow", "template": "research-review-report@^1", "inputs": {"topic": "queues"}}
    async with open_a2a(module_fleet) as client, module_fleet.mcp() as admin:
        [response] = [r async for r in client.send_message(request_for(request))]
        assert response.WhichOneof("payload") == "message"
        run = MessageToDict(response.message.parts[1])["data"]
        assert run["id"].startswith("wfr_") and run["template"] == "research-review-report@1.0.0"
        assert (await call(admin, "workflow_get", run_id=run["id"]))["status"] == "running"
        with pytest.raises(Exception, match="not_found: no workflow template nothing-here"):
            async for _ in client.send_message(request_for({"skill": "run-workflow", "template": "nothing-here"})):
                pass
