"""Agents on two `agentfleet serve` replicas sharing PostgreSQL complete a fan-out's tasks at once:
every step advances exactly once (the run's row lock), so the join runs once with every result."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from tests.conftest import REPLICA_TEST, TEST_PROFILES
from tests.helpers import call
from tests.workflows.test_workflow_steps import FAN_OUT, step

if TYPE_CHECKING:
    from tests.serving import FleetServer, ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = REPLICA_TEST

ENV = {"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES)}


async def test_agents_on_two_replicas_advance_each_step_exactly_once(
    database_url: str, serve: ServeFactory, tmp_path: Path
) -> None:
    a = serve(database_url, data_dir=tmp_path / "replica-a", env=ENV)
    b = serve(database_url, data_dir=tmp_path / "replica-b", env=ENV)
    items = list(range(40))
    async with a.mcp() as admin:
        tokens = [(await call(admin, "agent_spawn", profile="worker"))["token"] for _ in range(6)]
        run = await call(admin, "workflow_run", definition=FAN_OUT, inputs={"items": items})

    async def drain(fleet: FleetServer, token: str) -> None:
        async with fleet.mcp(token) as agent:
            while True:
                task = (await call(agent, "task_claim", wait_s=1))["task"]
                if task is None:
                    return
                result = task["payload"]["n"] ** 2 if "n" in task["payload"] else "joined"
                await call(agent, "task_complete", task_id=task["id"], result=result)

    async with anyio.create_task_group() as group:
        for n, token in enumerate(tokens):
            group.start_soon(drain, (a, b)[n % 2], token)

    async with b.mcp() as admin:
        done = await call(admin, "workflow_get", run_id=run["id"])
        joins = (await call(admin, "task_list", type="sum"))["tasks"]
    assert done["status"] == "completed"
    assert step(done, "each")["result"] == [n * n for n in items]
    assert [j["payload"]["parts"] for j in joins] == [[n * n for n in items]]  # one join, not two
