"""Waiting instead of polling, through MCP: task_get / workflow_get / task_wait / task_submit with
wait_s return when the work ends (made by another agent, or on another replica), or at the deadline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from tests.conftest import REPLICA_TEST, TEST_PROFILES
from tests.helpers import call, call_error

if TYPE_CHECKING:
    from tests.serving import ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = pytest.mark.anyio


async def _work(connect, token: str, result: dict, delay: float = 0.3, count: int = 1) -> None:
    """An agent that takes `count` tasks, one after another, and completes each with `result`."""
    async with connect(token) as agent:
        for _ in range(count):
            await anyio.sleep(delay)
            task = (await call(agent, "task_claim", wait_s=10))["task"]
            await call(agent, "task_complete", task_id=task["id"], result=result)


async def test_task_get_waits_for_another_agent_to_finish(connect):
    async with connect() as admin:
        worker = await call(admin, "agent_spawn", profile="worker", name="w")
        task = await call(admin, "task_submit", type="build")
        async with anyio.create_task_group() as group:
            group.start_soon(_work, connect, worker["token"], {"built": True})
            started = time.monotonic()
            done = await call(admin, "task_get", task_id=task["id"], wait_s=30)
            waited = time.monotonic() - started
    assert done["status"] == "completed" and done["result"] == {"built": True}
    assert waited < 10  # woken by the completion, not by the deadline


async def test_a_wait_ends_at_its_deadline_with_the_task_as_it_is(connect):
    async with connect() as admin:
        task = await call(admin, "task_submit", type="build", allow_unroutable=True)
        started = time.monotonic()
        same = await call(admin, "task_get", task_id=task["id"], wait_s=0.5)
    assert same["status"] == "queued" and 0.4 < time.monotonic() - started < 5


async def test_until_returns_when_the_task_starts(connect):
    async with connect() as admin:
        worker = await call(admin, "agent_spawn", profile="worker", name="w")
        task = await call(admin, "task_submit", type="build")

        async def claim_only() -> None:
            async with connect(worker["token"]) as agent:
                await anyio.sleep(0.3)
                await call(agent, "task_claim")

        async with anyio.create_task_group() as group:
            group.start_soon(claim_only)
            running = await call(admin, "task_get", task_id=task["id"], wait_s=30, until=["running"])
    assert running["status"] == "running"


async def test_submit_and_wait_is_one_call_delegation(connect):
    async with connect() as admin:
        worker = await call(admin, "agent_spawn", profile="worker", name="w")
        async with anyio.create_task_group() as group:
            group.start_soon(_work, connect, worker["token"], {"answer": 42})
            receipt = await call(admin, "task_submit", type="ask", payload={"q": "?"}, wait_s=30)
    assert receipt["status"] == "completed" and receipt["result"] == {"answer": 42}
    assert receipt["finished_at"] is not None and "payload" not in receipt


async def test_task_wait_any_and_all(connect):
    async with connect() as admin:
        worker = await call(admin, "agent_spawn", profile="worker", name="w")
        ids = [(await call(admin, "task_submit", type="part"))["id"] for _ in range(3)]
        async with anyio.create_task_group() as group:
            group.start_soon(_work, connect, worker["token"], {"ok": 1}, 0.2, 3)
            first = await call(admin, "task_wait", task_ids=ids, mode="any", wait_s=30)
            every = await call(admin, "task_wait", task_ids=ids, mode="all", wait_s=30)
    assert first["done"] and any(t["status"] == "completed" for t in first["tasks"])
    assert every["done"] and [t["status"] for t in every["tasks"]] == ["completed"] * 3
    assert [t["id"] for t in every["tasks"]] == ids


async def test_no_one_waits_on_a_task_they_may_not_see(connect):
    async with connect() as admin:
        task = await call(admin, "task_submit", type="secret-work", allow_unroutable=True)
        other = await call(admin, "agent_spawn", profile="worker", name="nosy")
    async with connect(other["token"]) as nosy:
        refused = await call_error(nosy, "task_get", task_id=task["id"], wait_s=5)
        refused_many = await call_error(nosy, "task_wait", task_ids=[task["id"]], wait_s=5)
        too_long = await call_error(nosy, "task_get", task_id=task["id"], wait_s=301)
    assert refused.code in {"not_found", "permission_denied"} and refused_many.code == refused.code
    assert too_long.code == "invalid_input"


async def test_workflow_run_can_wait_for_the_run_to_end(connect):
    definition = {"name": "one-step", "steps": [{"id": "only", "task": {"type": "step"}}]}
    async with connect() as admin:
        worker = await call(admin, "agent_spawn", profile="worker", name="w")
        async with anyio.create_task_group() as group:
            group.start_soon(_work, connect, worker["token"], {"step": "done"})
            run = await call(admin, "workflow_run", definition=definition, wait_s=30)
    assert run["status"] == "completed"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@REPLICA_TEST[2]
@pytest.mark.slow
async def test_a_wait_on_one_replica_ends_when_another_replica_completes(
    serve: ServeFactory, database_url: str, tmp_path: Path
):
    env = {"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES)}
    a = serve(database_url, data_dir=tmp_path / "a", env=env)
    b = serve(database_url, data_dir=tmp_path / "b", env=env)
    async with a.mcp() as on_a:
        worker = await call(on_a, "agent_spawn", profile="worker", name="w")
        task = await call(on_a, "task_submit", type="build")

        async def complete_on_b() -> None:
            async with b.mcp(worker["token"]) as agent:
                await anyio.sleep(0.5)
                claimed = (await call(agent, "task_claim", wait_s=10))["task"]
                await call(agent, "task_complete", task_id=claimed["id"], result={"where": "b"})

        async with anyio.create_task_group() as group:
            group.start_soon(complete_on_b)
            started = time.monotonic()
            done = await call(on_a, "task_get", task_id=task["id"], wait_s=60)
            waited = time.monotonic() - started
    assert done["status"] == "completed" and done["result"] == {"where": "b"}
    assert waited < 8  # the event from replica b woke it, well before any re-check


async def test_templates_can_be_discovered_and_read(connect):
    async with connect() as admin:
        listed = await call(admin, "workflow_template_list")
        names = {t["name"]: t for t in listed["templates"]}
        assert "research-review-report" in names
        shipped = names["research-review-report"]
        newest = await call(admin, "workflow_template_get", template="research-review-report")
        ranged = await call(
            admin, "workflow_template_get", template=f"research-review-report@^{shipped['versions'][0].split('.')[0]}"
        )
    assert newest["version"] == shipped["versions"][0] == ranged["version"]
    assert newest["steps"] == shipped["steps"] and set(shipped["inputs"]) <= set(newest["definition"]["inputs"])
