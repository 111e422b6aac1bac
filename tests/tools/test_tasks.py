"""Task tools through the in-process MCP client."""

from __future__ import annotations

import pytest

from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio


async def test_submit_returns_a_receipt_and_get_shows_the_queued_task(connect):
    async with connect() as admin:
        receipt = await call(
            admin,
            "task_submit",
            type="review",
            payload={"pr": 42, "files": ["a.py"]},
            capabilities=["test", "code"],
            priority="high",
        )
        assert receipt["id"].startswith("tsk_")
        assert receipt["status"] == "queued" and receipt["priority"] == "high"
        assert receipt["capabilities"] == ["code", "test"] and receipt["unroutable"] is False
        assert "payload" not in receipt  # the receipt does not echo what was sent
        task = await call(admin, "task_get", task_id=receipt["id"])
    assert {k: task[k] for k in receipt} == receipt
    assert task["payload"] == {"pr": 42, "files": ["a.py"]}
    assert task["submitted_by"] == "admin" and task["attempts"] == 0 and task["max_attempts"] == 3
    assert task["attempt_history"] == []


async def test_idempotency_key_returns_the_same_task_and_refuses_another_spec(connect):
    async with connect() as admin:
        first = await call(admin, "task_submit", type="build", payload={"ref": "main"}, idempotency_key="build-main-1")
        again = await call(admin, "task_submit", type="build", payload={"ref": "main"}, idempotency_key="build-main-1")
        assert again["id"] == first["id"]
        clash = await call_error(
            admin, "task_submit", type="build", payload={"ref": "dev"}, idempotency_key="build-main-1"
        )
        assert clash.code == "conflict" and first["id"] in clash.text
        listed = await call(admin, "task_list")
    assert [t["id"] for t in listed["tasks"]] == [first["id"]]


async def test_cancel_of_a_queued_task_is_immediate_and_final(connect):
    async with connect() as admin:
        task = await call(admin, "task_submit", type="build")
        cancelled = await call(admin, "task_cancel", task_id=task["id"], reason="not needed")
        assert cancelled["status"] == "cancelled"
        assert cancelled["error"] == "cancelled by admin: not needed"
        assert cancelled["finished_at"] is not None
        twice = await call_error(admin, "task_cancel", task_id=task["id"])
    assert twice.code == "conflict" and "already cancelled" in twice.text


async def test_task_list_pages_newest_first_and_filters(connect):
    async with connect() as admin:
        ids = [(await call(admin, "task_submit", type="a" if i % 2 else "b"))["id"] for i in range(5)]
        page1 = await call(admin, "task_list", limit=2)
        page2 = await call(admin, "task_list", limit=2, cursor=page1["next_cursor"])
        page3 = await call(admin, "task_list", limit=2, cursor=page2["next_cursor"])
        assert [t["id"] for t in page1["tasks"] + page2["tasks"] + page3["tasks"]] == ids[::-1]
        assert page3["next_cursor"] is None
        only_a = await call(admin, "task_list", type="a")
        assert {t["id"] for t in only_a["tasks"]} == {ids[1], ids[3]}
        await call(admin, "task_cancel", task_id=ids[0])
        cancelled = await call(admin, "task_list", status="cancelled")
    assert [t["id"] for t in cancelled["tasks"]] == [ids[0]]


async def test_pinning_needs_a_live_agent(connect):
    async with connect() as admin:
        agent = await call(admin, "agent_spawn", profile="default")
        pinned = await call(admin, "task_submit", type="build", pinned_agent_id=agent["agent"]["id"])
        assert pinned["pinned_agent_id"] == agent["agent"]["id"]
        await call(admin, "agent_terminate", agent_id=agent["agent"]["id"])
        refused = await call_error(admin, "task_submit", type="build", pinned_agent_id=agent["agent"]["id"])
        assert refused.code == "conflict"
        unknown = await call_error(admin, "task_submit", type="build", pinned_agent_id="agt_NOPE")
    assert unknown.code == "not_found"


async def test_agents_see_and_cancel_only_their_own_tasks(connect):
    async with connect() as admin:
        agent = await call(admin, "agent_spawn", profile="default")
        admins_task = await call(admin, "task_submit", type="build")
    async with connect(agent["token"]) as as_agent:
        own = await call(as_agent, "task_submit", type="review")
        assert (await call(as_agent, "task_get", task_id=own["id"]))["submitted_by"] == agent["agent"]["id"]
        assert [t["id"] for t in (await call(as_agent, "task_list"))["tasks"]] == [own["id"]]
        assert (await call_error(as_agent, "task_get", task_id=admins_task["id"])).code == "permission_denied"
        assert (await call_error(as_agent, "task_cancel", task_id=admins_task["id"])).code == "permission_denied"
        assert (await call(as_agent, "task_cancel", task_id=own["id"]))["status"] == "cancelled"


async def test_fleet_status_counts_agents_and_tasks(connect):
    async with connect() as admin:
        await call(admin, "agent_spawn", profile="default")
        await call(admin, "agent_spawn", profile="default")
        await call(admin, "task_submit", type="x", priority="critical")
        await call(admin, "task_submit", type="x", priority="low")
        cancelled = await call(admin, "task_submit", type="x", priority="low")
        await call(admin, "task_cancel", task_id=cancelled["id"])
        status = await call(admin, "fleet_status")
    assert status["agents"]["starting"] == 2
    assert status["tasks"]["queued"] == {"critical": 1, "high": 0, "normal": 0, "low": 1}
    assert status["tasks"]["cancelled"]["low"] == 1
    assert status["totals"] == {"agents": 2, "tasks": 3}


async def test_resources_show_agents_and_tasks(connect):
    import json

    async with connect() as admin:
        agent = await call(admin, "agent_spawn", profile="default")
        task = await call(admin, "task_submit", type="build", payload={"x": 1})
        templates = {t.uri_template for t in (await admin.list_resource_templates()).resource_templates}
        assert templates == {"agentfleet://agents/{agent_id}", "agentfleet://tasks/{task_id}"}
        agent_doc = json.loads(
            (await admin.read_resource(f"agentfleet://agents/{agent['agent']['id']}")).contents[0].text
        )
        task_doc = json.loads((await admin.read_resource(f"agentfleet://tasks/{task['id']}")).contents[0].text)
    assert agent_doc["id"] == agent["agent"]["id"] and agent_doc["children"] == []
    assert task_doc["payload"] == {"x": 1}
