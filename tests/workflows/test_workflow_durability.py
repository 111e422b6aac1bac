"""A workflow over a real `agentfleet serve`: a server killed mid-run carries on after a restart,
because a run's progress lives in the store and moves in the transactions that end its tasks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import TEST_PROFILES
from tests.helpers import call
from tests.workflows.test_workflow_steps import FAN_OUT, step

if TYPE_CHECKING:
    from tests.serving import FleetServer, ServeFactory

pytest_plugins = ["tests.serving"]

ENV = {"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES)}


async def finish(fleet: FleetServer, token: str, count: int) -> list[dict[str, Any]]:
    """Claim and complete `count` tasks as the agent, each with its item squared."""
    done = []
    async with fleet.mcp(token) as agent:
        for _ in range(count):
            task = (await call(agent, "task_claim", wait_s=5))["task"]
            assert task is not None
            result = task["payload"]["n"] ** 2 if "n" in task["payload"] else "joined"
            await call(agent, "task_complete", task_id=task["id"], result=result)
            done.append(task)
    return done


@pytest.mark.anyio
@pytest.mark.slow
async def test_a_run_carries_on_after_the_server_is_killed_mid_run(
    database_url: str, serve: ServeFactory, tmp_path: Path
) -> None:
    first = serve(database_url, data_dir=tmp_path / "data", env=ENV)
    async with first.mcp() as admin:
        token = (await call(admin, "agent_spawn", profile="worker"))["token"]
        run = await call(admin, "workflow_run", definition=FAN_OUT, inputs={"items": [1, 2, 3, 4, 5]})
    await finish(first, token, 2)
    first.kill()  # SIGKILL: nothing is flushed or handed over

    again = serve(database_url, data_dir=tmp_path / "data", env=ENV, port=first.port)
    async with again.mcp() as admin:
        halfway = await call(admin, "workflow_get", run_id=run["id"])
    assert step(halfway, "each")["tasks"] == {"completed": 2, "queued": 3}
    finished = await finish(again, token, 4)
    assert finished[-1]["payload"] == {"parts": [1, 4, 9, 16, 25]}  # the join, with every result in order
    async with again.mcp() as admin:
        done = await call(admin, "workflow_get", run_id=run["id"])
    assert done["status"] == "completed" and step(done, "join")["status"] == "completed"
