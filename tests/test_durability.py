"""A server killed with SIGKILL and restarted loses nothing it acknowledged (architecture: "The SQL
store is the only state")."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from tests.helpers import call

if TYPE_CHECKING:
    from tests.serving import FleetServer, ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PROFILES = ["developer", "reviewer", "researcher", "default", "developer"]
PRIORITIES = ["critical", "high", "normal", "low"]
BURST = 12
# Detail fields: agent_get / task_get (and some writes) fill them, lists and other writes leave them null.
DETAIL_ONLY = frozenset({"children", "attempt_history", "feedback", "log_tail"})


def _by_id(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["id"]: item for item in items}


def _differences(
    found: dict[str, Any], acknowledged: dict[str, Any], ignore: set[str] | frozenset[str] = frozenset()
) -> dict[str, tuple[Any, Any]]:
    """{field: (after restart, as acknowledged)} for every acknowledged field that differs."""
    return {
        k: (found.get(k), acknowledged.get(k))
        for k in acknowledged.keys() - ignore
        if found.get(k) != acknowledged.get(k)
    }


async def _acknowledge_work(
    server: FleetServer,
) -> tuple[dict[str, dict[str, Any]], dict[str, str], dict[str, dict[str, Any]], set[str]]:
    """Spawn agents, heartbeat some, terminate one, submit and cancel tasks, the last of them a
    concurrent burst. Returns (agents as last acknowledged, tokens, tasks as last acknowledged,
    ids of terminated agents)."""
    agents: dict[str, dict[str, Any]] = {}
    tokens: dict[str, str] = {}
    tasks: dict[str, dict[str, Any]] = {}
    async with server.mcp() as admin:
        for i, profile in enumerate(PROFILES):
            spawned = await call(
                admin, "agent_spawn", profile=profile, name=f"durable-{i}", labels={"batch": "durability", "n": str(i)}
            )
            agents[spawned["agent"]["id"]] = spawned["agent"]
            tokens[spawned["agent"]["id"]] = spawned["token"]
        ids = list(agents)
        for agent_id in ids[:2]:
            async with server.mcp(tokens[agent_id]) as agent:
                agents[agent_id] = await call(agent, "agent_heartbeat")
        terminated = set((await call(admin, "agent_terminate", agent_id=ids[2]))["terminated"])

        for i in range(8):
            payload = {"n": i, "nested": {"list": [1, 2.5, "três"], "flag": i % 2 == 0}}
            task = await call(
                admin,
                "task_submit",
                type=f"job.{i % 3}",
                priority=PRIORITIES[i % 4],
                payload=payload,
                capabilities=["code"] if i % 2 else [],
                max_attempts=1 + i % 5,
                idempotency_key=f"durable-{i}" if i < 3 else None,
            )
            tasks[task["id"]] = {**task, "payload": payload}  # the receipt acknowledges what was sent
        for task_id in list(tasks)[:2]:
            tasks[task_id] = await call(admin, "task_cancel", task_id=task_id, reason="durability check")
        async with server.mcp(tokens[ids[0]]) as agent:
            by_agent = await call(agent, "task_submit", type="child.work", payload={"from": "agent"})
            tasks[by_agent["id"]] = {**by_agent, "payload": {"from": "agent"}}

        async def submit(i: int) -> None:
            task = await call(admin, "task_submit", type="burst", payload={"i": i}, priority=PRIORITIES[i % 4])
            tasks[task["id"]] = {**task, "payload": {"i": i}}

        async with anyio.create_task_group() as group:  # acknowledged concurrently, then straight to SIGKILL
            for i in range(BURST):
                group.start_soon(submit, i)
    return agents, tokens, tasks, terminated


async def test_sigkill_then_restart_keeps_every_acknowledged_agent_and_task(
    database_url: str,
    serve: ServeFactory,
    tmp_path: Path,  # database_url first: servers stop before it is dropped
) -> None:
    data_dir = tmp_path / "data"
    first = serve(database_url, data_dir=data_dir)
    agents, tokens, tasks, terminated = await _acknowledge_work(first)
    assert first.kill() == -signal.SIGKILL

    second = serve(database_url, data_dir=data_dir)
    async with second.mcp() as admin:
        listed_agents = _by_id((await call(admin, "agent_list", limit=1000))["agents"])
        assert set(listed_agents) == set(agents)
        for agent_id, acknowledged in agents.items():
            if agent_id in terminated:
                assert listed_agents[agent_id]["status"] == "terminated"
                assert listed_agents[agent_id]["terminated_at"] is not None
                acknowledged = {
                    **acknowledged,
                    "status": "terminated",
                    "terminated_at": listed_agents[agent_id]["terminated_at"],
                }
            assert _differences(listed_agents[agent_id], acknowledged, DETAIL_ONLY) == {}, agent_id
            shown = await call(admin, "agent_get", agent_id=agent_id)
            assert _differences(shown, acknowledged, DETAIL_ONLY) == {}, agent_id
            assert shown["children"] == []

        listed_tasks = _by_id((await call(admin, "task_list", limit=500))["tasks"])
        assert set(listed_tasks) == set(tasks)
        for task_id, acknowledged in tasks.items():
            assert _differences(listed_tasks[task_id], acknowledged, DETAIL_ONLY) == {}, task_id
            shown = await call(admin, "task_get", task_id=task_id)
            assert _differences(shown, acknowledged, DETAIL_ONLY) == {}, task_id

        # The idempotency record survived too: resubmitting returns the same task, not a second one.
        first_key = next(t for t in tasks.values() if t["idempotency_key"] == "durable-2")
        again = await call(
            admin,
            "task_submit",
            type=first_key["type"],
            priority=first_key["priority"],
            payload=first_key["payload"],
            capabilities=first_key["capabilities"],
            max_attempts=first_key["max_attempts"],
            idempotency_key="durable-2",
        )
        assert again["id"] == first_key["id"]

    # Tokens issued before the crash still authenticate; a revoked one stays revoked.
    live_id = next(a for a in agents if a not in terminated)
    async with second.mcp(tokens[live_id]) as agent:
        assert (await call(agent, "agent_heartbeat"))["id"] == live_id
    [dead_id] = terminated
    async with second.http(tokens[dead_id]) as dead:
        assert (await dead.post("/mcp", json={})).status_code == 401
