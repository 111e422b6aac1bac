"""Workflows through the MCP client with real (external) agents claiming and completing the step
tasks: data passing, conditions, fan-out and join, consensus, failure policies and cancel."""

from __future__ import annotations

from typing import Any

import pytest

from server.services.audit import verify_chain
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio

PIPELINE = {
    "name": "review-change",
    "inputs": {"topic": "string"},
    "steps": [
        {"id": "research", "task": {"type": "research", "payload": {"topic": "{{ inputs.topic }}"}}},
        {
            "id": "review",
            "depends_on": ["research"],
            "task": {
                "type": "review",
                "payload": {"text": "{{ steps.research.result.summary }}", "n": "{{ inputs.topic }}"},
            },
        },
    ],
}


async def spawn_worker(admin: Any, profile: str = "worker") -> str:
    return (await call(admin, "agent_spawn", profile=profile))["token"]


async def work_one(agent: Any, result: Any) -> dict[str, Any]:
    """Claim the next task and complete it with `result`; return the task as claimed."""
    claimed = (await call(agent, "task_claim"))["task"]
    assert claimed is not None, "no task to claim"
    await call(agent, "task_complete", task_id=claimed["id"], result=result)
    return claimed


def step(run: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in run["steps"] if s["id"] == step_id)


async def test_a_step_receives_its_upstream_result_and_the_run_completes(connect) -> None:
    async with connect() as admin:
        token = await spawn_worker(admin)
        run = await call(admin, "workflow_run", definition=PIPELINE, inputs={"topic": "caching"})
        assert run["status"] == "running"
        assert [(s["id"], s["status"]) for s in run["steps"]] == [("research", "running"), ("review", "pending")]
        async with connect(token) as agent:
            research = await work_one(agent, {"summary": "use an LRU"})
            assert research["payload"] == {"topic": "caching"}
            review = await work_one(agent, {"verdict": "ok"})
        assert review["payload"] == {"text": "use an LRU", "n": "caching"}
        done = await call(admin, "workflow_get", run_id=run["id"])
    assert done["status"] == "completed"
    assert step(done, "review")["result"] == {"verdict": "ok"}
    assert done["critical_path"]["steps"] == ["research", "review"]


def branch(step_id: str, task_type: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "task": {"type": task_type, "payload": {"step": step_id}}, **extra}


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        (
            {
                "name": "w",
                "steps": [
                    branch("a", "t", depends_on=["c"]),
                    branch("b", "t", depends_on=["a"]),
                    branch("c", "t", depends_on=["b"]),
                ],
            },
            "a -> c -> b -> a",
        ),
        ({"name": "w", "steps": [branch("a", "t", depends_on=["ghost"])]}, "ghost"),
        (
            {
                "name": "w",
                "steps": [branch("a", "t"), {"id": "b", "task": {"type": "t", "payload": "{{ steps.a.result }}"}}],
            },
            "steps.a",
        ),
        ({"name": "w", "steps": [{"id": "a", "task": {"type": "t", "payload": "{{ inputs.nope }}"}}]}, "nope"),
        ({"name": "w", "steps": [{"id": "a", "task": {"type": "t", "priority": "urgent"}}]}, "priority"),
        ({"name": "w", "steps": [branch("a", "t", when="steps.a.result ==")]}, "when"),
    ],
    ids=["cycle", "unknown-dependency", "not-upstream", "unknown-input", "bad-task-spec", "bad-condition"],
)
async def test_a_bad_definition_is_refused_and_creates_nothing(connect, definition, message) -> None:
    async with connect() as admin:
        await spawn_worker(admin)
        refused = await call_error(admin, "workflow_run", definition=definition)
        assert refused.code == "invalid_input" and message in refused.text, refused.text
        assert (await call(admin, "workflow_list"))["runs"] == []
        assert (await call(admin, "task_list"))["tasks"] == []


async def test_missing_and_mistyped_inputs_are_refused(connect) -> None:
    async with connect() as admin:
        missing = await call_error(admin, "workflow_run", definition=PIPELINE, inputs={})
        wrong = await call_error(admin, "workflow_run", definition=PIPELINE, inputs={"topic": 3})
    assert missing.code == wrong.code == "invalid_input"
    assert "topic" in missing.text and "topic" in wrong.text


CONDITIONAL = {
    "name": "triage",
    "steps": [
        branch("check", "check"),
        branch("fix", "fix", depends_on=["check"], when="steps.check.result.broken == true"),
        branch("announce", "announce", depends_on=["check"], when="steps.check.result.broken == false"),
        branch("after_fix", "verify", depends_on=["fix"]),
        branch("close", "close", depends_on=["fix", "announce"]),
    ],
}


async def test_when_skips_a_branch_and_what_follows_only_that_branch(connect) -> None:
    async with connect() as admin:
        token = await spawn_worker(admin)
        run = await call(admin, "workflow_run", definition=CONDITIONAL)
        async with connect(token) as agent:
            await work_one(agent, {"broken": False})
            announce = await work_one(agent, "announced")
            assert announce["type"] == "announce"
            close = await work_one(agent, "closed")  # one branch ran: the join runs
            assert close["type"] == "close"
            assert (await call(agent, "task_claim"))["task"] is None
        done = await call(admin, "workflow_get", run_id=run["id"])
    assert done["status"] == "completed"
    statuses = {s["id"]: s["status"] for s in done["steps"]}
    assert statuses == {
        "check": "completed",
        "fix": "skipped",
        "announce": "completed",
        "after_fix": "skipped",
        "close": "completed",
    }
    assert "is false" in step(done, "fix")["error"]
    assert step(done, "after_fix")["error"] == "every step it depends on was skipped"


FAN_OUT = {
    "name": "per-item",
    "inputs": {"items": "list"},
    "steps": [
        {
            "id": "each",
            "for_each": "{{ inputs.items }}",
            "task": {"type": "square", "payload": {"n": "{{ item }}", "at": "{{ index }}"}},
        },
        {
            "id": "join",
            "depends_on": ["each"],
            "task": {"type": "sum", "payload": {"parts": "{{ steps.each.result }}"}},
        },
    ],
}


async def test_a_fan_out_of_100_is_joined_with_every_result_in_item_order(connect) -> None:
    items = list(range(100))
    async with connect() as admin:
        token = await spawn_worker(admin)
        run = await call(admin, "workflow_run", definition=FAN_OUT, inputs={"items": items})
        assert step(run, "each")["tasks"] == {"queued": 100}
        async with connect(token) as agent:
            claimed = []
            for _ in range(2):  # two batches of 50: the worker profile holds at most 64 leases
                batch = [(await call(agent, "task_claim"))["task"] for _ in range(50)]
                for task in reversed(batch):  # finish out of order: the join's order comes from the items
                    await call(agent, "task_complete", task_id=task["id"], result=task["payload"]["n"] ** 2)
                claimed += batch
            join = await work_one(agent, "summed")
        done = await call(admin, "workflow_get", run_id=run["id"])
    assert sorted(t["payload"]["at"] for t in claimed) == items
    assert join["payload"]["parts"] == [n * n for n in items]
    assert step(done, "each")["result"] == [n * n for n in items] and done["status"] == "completed"
    assert step(done, "each")["tasks"] == {"completed": 100}


def vote_definition(combine: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "vote",
        "steps": [
            {
                "id": "judge",
                "consensus": {"agents": 3, "combine": combine, "compare": "verdict", **extra},
                "task": {"type": "judge", "payload": {"claim": "water is wet"}},
            },
            {
                "id": "report",
                "depends_on": ["judge"],
                "task": {"type": "report", "payload": "{{ steps.judge.result.value }}"},
            },
        ],
    }


async def test_consensus_needs_distinct_agents_and_reports_the_majority_and_the_disagreement(connect) -> None:
    async with connect() as admin:
        tokens = [await spawn_worker(admin) for _ in range(3)]
        run = await call(admin, "workflow_run", definition=vote_definition("majority"))
        verdicts = ["yes", "no", "yes"]
        async with connect(tokens[0]) as first:
            vote = (await call(first, "task_claim"))["task"]
            assert (await call(first, "task_claim"))["task"] is None  # not a second vote for the same agent
            await call(first, "task_complete", task_id=vote["id"], result={"verdict": verdicts[0], "by": 0})
        for n in (1, 2):
            async with connect(tokens[n]) as agent:
                await work_one(agent, {"verdict": verdicts[n], "by": n})
        async with connect(tokens[0]) as first:
            report = await work_one(first, "reported")
        done = await call(admin, "workflow_get", run_id=run["id"])
    judged = step(done, "judge")["result"]
    assert judged["decided"] is True and judged["value"] == {"verdict": "yes", "by": 0}
    assert judged["disagreement"] is True
    assert judged["votes"] == [{"value": "yes", "count": 2}, {"value": "no", "count": 1}]
    assert len(set(judged["agents"])) == 3
    assert report["payload"] == {"verdict": "yes", "by": 0}


async def test_unanimous_consensus_fails_at_the_first_disagreement(connect) -> None:
    async with connect() as admin:
        tokens = [await spawn_worker(admin) for _ in range(3)]
        run = await call(admin, "workflow_run", definition=vote_definition("unanimous"))
        for n, verdict in enumerate(["yes", "no"]):
            async with connect(tokens[n]) as agent:
                await work_one(agent, {"verdict": verdict})
        done = await call(admin, "workflow_get", run_id=run["id"])
        remaining = await call(admin, "task_list", status="cancelled")
    assert done["status"] == "failed"
    assert step(done, "judge")["status"] == "failed" and step(done, "judge")["result"]["disagreement"] is True
    assert step(done, "report")["status"] == "cancelled"
    assert len(remaining["tasks"]) == 1  # the third vote was never needed


def parallel(on_failure: str) -> dict[str, Any]:
    return {
        "name": "parallel",
        "on_failure": on_failure,
        "steps": [
            branch("flaky", "flaky"),
            branch("slow", "slow"),
            branch("after_flaky", "after", depends_on=["flaky"]),
            branch("after_slow", "after", depends_on=["slow"]),
        ],
    }


async def test_fail_fast_cancels_the_running_siblings_and_fails_the_run(connect) -> None:
    async with connect() as admin:
        token = await spawn_worker(admin)
        run = await call(admin, "workflow_run", definition=parallel("fail_fast"))
        async with connect(token) as agent:
            flaky = (await call(agent, "task_claim"))["task"]
            slow = (await call(agent, "task_claim"))["task"]
            await call(agent, "task_fail", task_id=flaky["id"], error="broken input", retryable=False)
            beat = await call(agent, "task_heartbeat", task_id=slow["id"])
            assert beat["cancel_requested"] is True  # the sibling is asked to stop
            assert (await call(agent, "task_claim"))["task"] is None
        done = await call(admin, "workflow_get", run_id=run["id"])
    assert done["status"] == "failed" and "flaky" in done["error"]
    assert {s["id"]: s["status"] for s in done["steps"]} == {
        "flaky": "failed",
        "slow": "cancelled",
        "after_flaky": "cancelled",
        "after_slow": "cancelled",
    }


async def test_continue_lets_independent_steps_finish_and_skips_what_depends_on_the_failure(connect) -> None:
    async with connect() as admin:
        token = await spawn_worker(admin)
        run = await call(admin, "workflow_run", definition=parallel("continue"))
        async with connect(token) as agent:
            flaky = (await call(agent, "task_claim"))["task"]
            await call(agent, "task_fail", task_id=flaky["id"], error="broken input", retryable=False)
            await work_one(agent, "slow done")
            after = await work_one(agent, "after done")
            assert after["payload"] == {"step": "after_slow"}
        done = await call(admin, "workflow_get", run_id=run["id"])
    assert done["status"] == "failed"
    assert {s["id"]: s["status"] for s in done["steps"]} == {
        "flaky": "failed",
        "slow": "completed",
        "after_flaky": "skipped",
        "after_slow": "completed",
    }


async def test_task_retries_apply_inside_a_step(connect) -> None:
    async with connect() as admin:
        token = await spawn_worker(admin)
        definition = {
            "name": "retry",
            "steps": [{"id": "a", "task": {"type": "t", "max_attempts": 2, "backoff_base_s": 0.01}}],
        }
        run = await call(admin, "workflow_run", definition=definition)
        async with connect(token) as agent:
            first = (await call(agent, "task_claim"))["task"]
            await call(agent, "task_fail", task_id=first["id"], error="blip")
            again = (await call(agent, "task_claim", wait_s=5))["task"]
            assert again["id"] == first["id"] and again["attempts"] == 2
            await call(agent, "task_complete", task_id=again["id"], result="ok")
        assert (await call(admin, "workflow_get", run_id=run["id"]))["status"] == "completed"


async def test_workflow_cancel_cancels_its_tasks_and_only_its_submitter_or_an_operator_may(connect) -> None:
    async with connect() as admin:
        token = await spawn_worker(admin)
        other = await spawn_worker(admin)
        run = await call(admin, "workflow_run", definition=parallel("continue"))
        async with connect(token) as agent:
            running = (await call(agent, "task_claim"))["task"]
        async with connect(other) as stranger:
            refused = await call_error(stranger, "workflow_cancel", run_id=run["id"])
            assert refused.code == "not_found"  # not theirs to see either
        cancelled = await call(admin, "workflow_cancel", run_id=run["id"], reason="wrong branch")
        assert cancelled["status"] == "cancelled" and "wrong branch" in cancelled["error"]
        assert all(s["status"] == "cancelled" for s in cancelled["steps"])
        tasks = {t["id"]: t for t in (await call(admin, "task_list"))["tasks"]}
        assert tasks[running["id"]]["cancel_requested"] is True
        assert sum(t["status"] == "cancelled" for t in tasks.values()) == 1  # the queued one
        again = await call_error(admin, "workflow_cancel", run_id=run["id"])
        assert again.code == "conflict"


async def test_a_step_that_cannot_be_submitted_fails_whole_and_leaves_no_half_made_tasks(connect, services) -> None:
    definition = {
        "name": "oversized",
        "inputs": {"items": "list"},
        "steps": [
            branch("first", "prepare"),
            {
                "id": "each",
                "depends_on": ["first"],
                "for_each": "{{ inputs.items }}",
                "task": {"type": "t", "payload": "{{ item }}"},
            },
        ],
    }
    items = ["small", "also small", "x" * 300_000]  # the third is over AGENTFLEET_MAX_PAYLOAD_BYTES
    async with connect() as admin:
        token = await spawn_worker(admin)
        run = await call(admin, "workflow_run", definition=definition, inputs={"items": items})
        async with connect(token) as agent:
            await work_one(agent, "prepared")  # the agent's completion succeeds though the next step cannot start
        done = await call(admin, "workflow_get", run_id=run["id"])
        tasks = (await call(admin, "task_list"))["tasks"]
        audited = (await call(admin, "audit_query", action="task.submit"))["entries"]
    assert done["status"] == "failed" and step(done, "each")["status"] == "failed"
    assert "payload" in step(done, "each")["error"]
    assert [t["type"] for t in tasks] == ["prepare"]  # none of the fan-out's first two tasks was kept
    assert [e["subject"] for e in audited] == [t["id"] for t in tasks]  # nor audit rows for them
    assert services.db.read_sync(verify_chain).intact


async def test_a_first_step_that_cannot_start_refuses_the_run(connect) -> None:
    definition = {"name": "nowhere", "steps": [{"id": "a", "task": {"type": "t", "capabilities": ["nobody-has-this"]}}]}
    async with connect() as admin:
        refused = await call_error(admin, "workflow_run", definition=definition)
        assert refused.code == "invalid_input" and "step 'a' cannot start" in refused.text
        assert (await call(admin, "workflow_list"))["runs"] == []


async def test_first_k_consensus_decides_when_k_agree_and_cancels_the_rest(connect) -> None:
    async with connect() as admin:
        tokens = [await spawn_worker(admin) for _ in range(3)]
        run = await call(admin, "workflow_run", definition=vote_definition("first_k", k=2, agents=4))
        for token, verdict in zip(tokens, ["yes", "no", "yes"], strict=True):
            async with connect(token) as agent:
                await work_one(agent, {"verdict": verdict})
        done = await call(admin, "workflow_get", run_id=run["id"])
    judged = step(done, "judge")
    assert judged["status"] == "completed" and judged["result"]["value"] == {"verdict": "yes"}
    assert judged["result"]["received"] == 3 and judged["tasks"] == {"completed": 3, "cancelled": 1}


async def test_a_step_may_override_the_workflow_failure_policy(connect) -> None:
    definition = parallel("continue")
    definition["steps"][0]["on_failure"] = "fail_fast"  # flaky stops the run though the workflow continues
    async with connect() as admin:
        token = await spawn_worker(admin)
        run = await call(admin, "workflow_run", definition=definition)
        async with connect(token) as agent:
            flaky = (await call(agent, "task_claim"))["task"]
            await call(agent, "task_fail", task_id=flaky["id"], error="broken", retryable=False)
        done = await call(admin, "workflow_get", run_id=run["id"])
        listed = await call(admin, "workflow_list", status="failed", name="parallel")
    assert done["status"] == "failed" and step(done, "slow")["status"] == "cancelled"
    assert [r["id"] for r in listed["runs"]] == [run["id"]]
    assert listed["runs"][0]["steps"] == {"failed": 1, "cancelled": 3}
