"""The event log through MCP: every change appends in its own transaction, readers follow it by
cursor, wait for the next event, and see only what they may."""

from __future__ import annotations

import anyio
import pytest

from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio


async def test_a_task_cycle_appends_its_events_in_order(connect):
    async with connect() as admin:
        start = (await call(admin, "event_list", types=["task.*"]))["next_cursor"]
        agent = await call(admin, "agent_spawn", profile="worker", name="w")
        task = await call(admin, "task_submit", type="build", payload={"ref": "main"})
        async with connect(agent["token"]) as worker:
            claimed = await call(worker, "task_claim")
            assert claimed["task"]["id"] == task["id"]
            await call(worker, "task_heartbeat", task_id=task["id"], progress=50, message="half")
            await call(worker, "task_complete", task_id=task["id"], result={"ok": True})
        page = await call(admin, "event_list", types=["task.*"], after_cursor=start)
    kinds = [e["type"] for e in page["events"]]
    assert kinds == ["task.submitted", "task.claimed", "task.progress", "task.completed"]
    assert {e["subject"] for e in page["events"]} == {task["id"]}
    assert page["events"][1]["agent_id"] == agent["agent"]["id"] and page["events"][1]["data"]["type"] == "build"
    assert page["events"][2]["data"]["progress"] == 50
    cursors = [e["cursor"] for e in page["events"]]
    assert cursors == sorted(cursors) and page["next_cursor"] >= cursors[-1]


async def test_a_rolled_back_change_leaves_no_event(connect):
    async with connect() as admin:
        before = await call(admin, "event_list", types=["*"])
        failed = await call_error(admin, "task_submit", type="build", pinned_agent_id="agt_0000000000000000000000000")
        assert failed.code in {"not_found", "invalid_input"}
        after = await call(admin, "event_list", types=["*"], after_cursor=before["next_cursor"])
    assert [e for e in after["events"] if e["type"].startswith("task.")] == []


async def test_wait_returns_as_soon_as_a_matching_event_commits(connect):
    async with connect() as admin:
        head = (await call(admin, "event_list", types=["task.cancelled"]))["next_cursor"]
        task = await call(admin, "task_submit", type="build")
        result: dict = {}

        async def follow() -> None:
            result.update(
                await call(admin, "event_list", types=["task.cancelled"], after_cursor=head, wait_s=30)
            )

        async with anyio.create_task_group() as group:
            group.start_soon(follow)
            await anyio.sleep(0.3)
            assert result == {}  # still waiting: a submitted task is no cancelled one
            with anyio.fail_after(10):
                await call(admin, "task_cancel", task_id=task["id"])
    assert [e["subject"] for e in result["events"]] == [task["id"]]


async def test_an_agent_sees_its_own_events_and_not_others(connect):
    async with connect() as admin:
        start = (await call(admin, "event_list"))["next_cursor"]
        mine = await call(admin, "agent_spawn", profile="worker", name="mine")
        other = await call(admin, "agent_spawn", profile="worker", name="other")
        async with connect(mine["token"]) as agent:
            own = await call(agent, "task_submit", type="note")
            seen = await call(agent, "event_list", after_cursor=start)
    subjects = {e["subject"] for e in seen["events"]}
    assert own["id"] in subjects and mine["agent"]["id"] in subjects
    assert other["agent"]["id"] not in subjects


async def test_bad_cursor_and_type_pattern_are_refused(connect):
    async with connect() as admin:
        bad_cursor = await call_error(admin, "event_list", after_cursor="not-a-cursor")
        bad_type = await call_error(admin, "event_list", types=["task;drop"])
    assert bad_cursor.code == "invalid_input"
    assert bad_type.code == "invalid_input" and "task.*" in bad_type.text
