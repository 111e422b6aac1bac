"""A2A tasks live in the SQL store: they survive a server restart, and a stream opened after it
picks the task up where it stands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from a2a.types import GetTaskRequest, ListTasksRequest, SubscribeToTaskRequest, TaskState

from tests.a2a.support import claim, open_a2a, send, spawn_worker, tap
from tests.conftest import TEST_PROFILES
from tests.helpers import call

if TYPE_CHECKING:
    from tests.serving import ServeFactory

pytest_plugins = ["tests.serving"]

ENV = {"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES)}


def spec(capability: str) -> dict[str, object]:
    return {"type": "review", "payload": {"pr": 9}, "capabilities": [capability]}


@pytest.mark.anyio
@pytest.mark.slow
async def test_an_a2a_task_survives_a_restart_and_its_stream_picks_up_after_it(
    database_url: str, serve: ServeFactory, tmp_path: Path
) -> None:
    first = serve(database_url, data_dir=tmp_path / "data", env=ENV)
    capability, agent_token = await spawn_worker(first)
    async with open_a2a(first) as client:
        task = await send(client, "review after the restart")
        submitted = await send(client, spec(capability))
    first.stop()

    again = serve(database_url, data_dir=tmp_path / "data", env=ENV, port=first.port)
    async with open_a2a(again) as client:
        fetched = await client.get_task(GetTaskRequest(id=submitted.id))
        assert fetched.context_id == submitted.context_id
        assert fetched.status.state == TaskState.TASK_STATE_SUBMITTED
        assert len(fetched.history) == 1
        listed = await client.list_tasks(ListTasksRequest())
        assert [t.id for t in listed.tasks][:2] == [submitted.id, task.id]

    async with (
        open_a2a(again, streaming=True) as streaming,
        tap(streaming.subscribe(SubscribeToTaskRequest(id=submitted.id))) as stream,
        again.mcp(agent_token) as agent,
    ):
        assert await stream.next_state() == TaskState.TASK_STATE_SUBMITTED
        await claim(agent, submitted.id)
        assert await stream.next_state() == TaskState.TASK_STATE_WORKING
        await call(agent, "task_complete", task_id=submitted.id, result={"lgtm": True})
        assert (await stream.next()).WhichOneof("payload") == "artifact_update"
        assert await stream.next_state() == TaskState.TASK_STATE_COMPLETED
