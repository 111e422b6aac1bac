"""Acting on another agent's things, through any argument that names them, is refused with
permission_denied or not_found, and the answer says nothing of their state, type or holder."""

from __future__ import annotations

import pytest

from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio

SECRET_TYPE = "quarterly-payroll"
WORKFLOW = {"name": "w", "steps": [{"id": "a", "task": {"type": "wf-step", "capabilities": ["general"]}}]}


async def test_another_agents_tasks_holds_locks_and_runs_leak_nothing(connect):
    async with connect() as admin:
        owner = await call(admin, "agent_spawn", profile="worker", name="owner")
        other = await call(admin, "agent_spawn", profile="worker", name="other")
        await call(admin, "task_submit", type=SECRET_TYPE, capabilities=["general"], idempotency_key="payroll-q3")
    async with connect(owner["token"]) as mine:
        running = (await call(mine, "task_claim"))["task"]
        hold = await call(mine, "budget_reserve", amount_usd="1")
        lock = await call(
            mine, "lock_acquire", resources=[{"name": "repo:/payroll", "mode": "exclusive"}], task_id=running["id"]
        )
        run = await call(mine, "workflow_run", definition=WORKFLOW)
    attempts = {
        "task_get": {"task_id": running["id"]},
        "task_heartbeat": {"task_id": running["id"]},
        "task_complete": {"task_id": running["id"], "result": {"ok": True}},
        "task_fail": {"task_id": running["id"], "error": "x"},
        "task_cancel": {"task_id": running["id"]},
        "lock_acquire": {"resources": [{"name": "repo:/elsewhere", "mode": "exclusive"}], "task_id": running["id"]},
        "usage_record": {
            "model": "m",
            "input_tokens": 1,
            "output_tokens": 1,
            "cost_usd": "0.01",
            "task_id": running["id"],
        },
        "budget_release": {"hold_id": hold["id"]},
        "lock_release": {"lock_id": lock["lock_id"]},
        "lock_renew": {"lock_id": lock["lock_id"]},
        "workflow_get": {"run_id": run["id"]},
        "workflow_cancel": {"run_id": run["id"]},
        "agent_get": {"agent_id": owner["agent"]["id"]},
        "agent_terminate": {"agent_id": owner["agent"]["id"]},
        "agent_restart": {"agent_id": owner["agent"]["id"]},
    }
    telltales = ("owner", "running", "queued", "held", "granted", SECRET_TYPE)
    leaks = {}
    async with connect(other["token"]) as intruder:
        for tool, arguments in attempts.items():
            refused = await call_error(intruder, tool, **arguments)
            said = [word for word in telltales if word in refused.text]
            if not tool.startswith("agent_") and owner["agent"]["id"] in refused.text:
                said.append("the holder's id")
            if refused.code not in ("permission_denied", "not_found") or said:
                leaks[tool] = refused.text
        taken = await call_error(
            intruder, "task_submit", type="x", capabilities=["general"], idempotency_key="payroll-q3"
        )
        if taken.code != "conflict" or running["id"] in taken.text or SECRET_TYPE in taken.text:
            leaks["task_submit(idempotency_key)"] = taken.text
    assert not leaks, leaks
