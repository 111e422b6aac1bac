"""Two `agentfleet serve` replicas on one PostgreSQL store: a stream opened on one sees every
change made through the other, woken by the store's trigger (migration 0009) and NOTIFY, and either
replica answers for the task."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from a2a.helpers import get_message_text
from a2a.types import GetTaskRequest, TaskState

from tests.a2a.support import claim, open_a2a, request_for, spawn_worker, tap
from tests.conftest import REPLICA_TEST, TEST_PROFILES
from tests.helpers import call

if TYPE_CHECKING:
    from tests.serving import ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = REPLICA_TEST

ENV = {"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES)}


def spec(capability: str) -> dict[str, object]:
    return {"type": "review", "payload": {"pr": 11}, "capabilities": [capability]}


async def test_a_stream_on_one_replica_sees_changes_made_on_the_other_at_once(
    database_url: str, serve: ServeFactory, tmp_path: Path
) -> None:
    a = serve(database_url, data_dir=tmp_path / "replica-a", env=ENV)
    b = serve(database_url, data_dir=tmp_path / "replica-b", env=ENV)
    capability, agent_token = await spawn_worker(a)
    async with (
        open_a2a(a, streaming=True) as on_a,
        tap(on_a.send_message(request_for(spec(capability)))) as stream,
        b.mcp(agent_token) as agent_on_b,
        b.mcp() as admin_on_b,
    ):
        task_id = (await stream.next()).task.id

        # Followers have no timer: a change on B reaches A's stream only by the store's notification.
        await claim(agent_on_b, task_id)
        assert await stream.next_state() == TaskState.TASK_STATE_WORKING
        await call(agent_on_b, "task_heartbeat", task_id=task_id, progress=50, message="half way")
        progress = await stream.next()
        assert get_message_text(progress.status_update.status.message) == "50% half way"
        await call(admin_on_b, "task_cancel", task_id=task_id, reason="not needed")
        await call(agent_on_b, "task_fail", task_id=task_id, error="stopping: cancel requested", retryable=False)
        assert await stream.next_state() == TaskState.TASK_STATE_CANCELED
        assert await stream.ended()

    async with open_a2a(b) as client_on_b:  # the other replica answers for the task too
        fetched = await client_on_b.get_task(GetTaskRequest(id=task_id))
    assert fetched.status.state == TaskState.TASK_STATE_CANCELED
