"""The task engine through the MCP client: routing, priorities, leases, retries, aging. Time is a
fake clock moved by the test; nothing sleeps."""

from __future__ import annotations

import anyio
import pytest

from server.clock import from_iso
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio


async def spawn(client, profile="worker", **extra):
    return await call(client, "agent_spawn", profile=profile, **extra)


async def claim(agent, **arguments):
    return (await call(agent, "task_claim", **arguments))["task"]


async def test_claims_follow_priority_then_fifo(fake_connect):
    async with fake_connect() as admin:
        worker = await spawn(admin)
        order = [("low", "l1"), ("normal", "n1"), ("critical", "c1"), ("high", "h1"), ("normal", "n2"), ("low", "l2")]
        for priority, name in order:
            await call(admin, "task_submit", type="t", payload={"name": name}, priority=priority)
    async with fake_connect(worker["token"]) as agent:
        taken = [(await claim(agent))["payload"]["name"] for _ in order]
        assert taken == ["c1", "h1", "n1", "n2", "l1", "l2"]
        empty = await call(agent, "task_claim")
    assert empty == {"task": None, "reason": "none_available"}


async def test_only_agents_with_the_capabilities_get_the_task(fake_connect):
    async with fake_connect() as admin:
        generalist = await spawn(admin, "default")
        developer = await spawn(admin, "developer")
        task = await call(admin, "task_submit", type="fix", capabilities=["code", "git"])
    async with fake_connect(generalist["token"]) as agent:
        assert await claim(agent) is None
    async with fake_connect(developer["token"]) as agent:
        assert (await claim(agent))["id"] == task["id"]


async def test_a_pinned_task_goes_only_to_its_agent(fake_connect):
    async with fake_connect() as admin:
        chosen = await spawn(admin)
        other = await spawn(admin)
        task = await call(admin, "task_submit", type="t", pinned_agent_id=chosen["agent"]["id"])
    async with fake_connect(other["token"]) as agent:
        assert await claim(agent) is None
    async with fake_connect(chosen["token"]) as agent:
        assert (await claim(agent))["id"] == task["id"]


async def test_an_agent_never_holds_more_than_max_concurrency(fake_connect):
    async with fake_connect() as admin:
        reviewer = await spawn(admin, "reviewer")  # max_concurrency 2
        for _ in range(3):
            await call(admin, "task_submit", type="review", capabilities=["review"])
    async with fake_connect(reviewer["token"]) as agent:
        first, second = await claim(agent), await claim(agent)
        assert (await call(agent, "task_claim", wait_s=5)) == {"task": None, "reason": "at_capacity"}
        await call(agent, "task_complete", task_id=first["id"], result={"ok": True})
        assert (await claim(agent)) is not None
        assert second["status"] == "running"


async def test_lease_lifecycle_heartbeat_complete_and_holder_rules(fake_connect, clock):
    async with fake_connect() as admin:
        holder = await spawn(admin)
        stranger = await spawn(admin)
        task = await call(admin, "task_submit", type="t", lease_s=30)
    async with fake_connect(holder["token"]) as agent, fake_connect(stranger["token"]) as other:
        leased = await claim(agent)
        assert leased["status"] == "running" and leased["agent_id"] == holder["agent"]["id"] and leased["attempts"] == 1
        assert from_iso(leased["lease_expires_at"]) == clock.now_us() + 30_000_000
        clock.advance(20)
        beat = await call(agent, "task_heartbeat", task_id=task["id"], progress=40, message="half way")
        assert beat["cancel_requested"] is False and from_iso(beat["lease_expires_at"]) == clock.now_us() + 30_000_000
        assert (await call_error(other, "task_complete", task_id=task["id"], result=1)).code == "permission_denied"
        assert (await call_error(other, "task_heartbeat", task_id=task["id"])).code == "permission_denied"
        done = await call(
            agent, "task_complete", task_id=task["id"], result={"answer": 42}, usage={"model": "m", "input_tokens": 10}
        )
        assert (
            done["status"] == "completed" and done["result"] == {"answer": 42} and done["usage"]["input_tokens"] == 10
        )
        again = await call_error(agent, "task_complete", task_id=task["id"], result=1)
        assert again.code == "conflict"
    async with fake_connect() as admin:
        shown = await call(admin, "task_get", task_id=task["id"])
    assert [(a["number"], a["agent_id"], a["outcome"]) for a in shown["attempt_history"]] == [
        (1, holder["agent"]["id"], "completed")
    ]


async def test_a_lapsed_lease_is_refused_then_reaped_and_retried(fake_connect, fake_time_services, clock):
    async with fake_connect() as admin:
        first = await spawn(admin)
        second = await spawn(admin)
        task = await call(admin, "task_submit", type="t", lease_s=10, backoff_base_s=5, backoff_cap_s=5)
    async with fake_connect(first["token"]) as agent:
        await claim(agent)
        clock.advance(11)
        assert (await call_error(agent, "task_complete", task_id=task["id"], result=1)).code == "lease_expired"
        assert await fake_time_services.leases.reap_once() == 1
        assert (await call_error(agent, "task_heartbeat", task_id=task["id"])).code == "lease_expired"
    async with fake_connect(second["token"]) as agent:
        assert await claim(agent) is None  # backing off: ready within 5 s
        clock.advance(5)
        retried = await claim(agent)
        assert retried["id"] == task["id"] and retried["attempts"] == 2
    async with fake_connect() as admin:
        shown = await call(admin, "task_get", task_id=task["id"])
    assert [a["outcome"] for a in shown["attempt_history"]] == ["expired", None]


async def test_retryable_failures_back_off_exponentially_then_the_task_is_dead(fake_connect, clock):
    async with fake_connect() as admin:
        worker = await spawn(admin)
        task = await call(admin, "task_submit", type="t", max_attempts=3, backoff_base_s=2, backoff_cap_s=3)
    async with fake_connect(worker["token"]) as agent:
        for attempt, bound in [(1, 2), (2, 3)]:  # full jitter in [0, min(cap, base * 2^(n-1))]
            await claim(agent)
            failed = await call(agent, "task_fail", task_id=task["id"], error=f"boom {attempt}")
            assert failed["status"] == "queued" and failed["error"] == f"boom {attempt}"
            delay = from_iso(failed["ready_at"]) - clock.now_us()
            assert 0 <= delay <= bound * 1_000_000
            clock.advance(bound)
        await claim(agent)
        dead = await call(agent, "task_fail", task_id=task["id"], error="boom 3")
        assert dead["attempt_history"] is None  # only task_get carries the history
        dead = await call(agent, "task_get", task_id=task["id"])
    assert dead["status"] == "dead" and "no attempts left" in dead["error"]
    assert [a["outcome"] for a in dead["attempt_history"]] == ["failed", "failed", "failed"]
    assert [a["error"] for a in dead["attempt_history"]] == ["boom 1", "boom 2", "boom 3"]


async def test_a_non_retryable_failure_is_final(fake_connect):
    async with fake_connect() as admin:
        worker = await spawn(admin)
        task = await call(admin, "task_submit", type="t")
    async with fake_connect(worker["token"]) as agent:
        await claim(agent)
        failed = await call(agent, "task_fail", task_id=task["id"], error="bad input", retryable=False)
    assert failed["status"] == "failed" and failed["attempts"] == 1


async def test_not_before_delays_a_task(fake_connect, clock):
    from server.clock import to_iso

    async with fake_connect() as admin:
        worker = await spawn(admin)
        await call(admin, "task_submit", type="t", not_before=to_iso(clock.now_us() + 60_000_000))
    async with fake_connect(worker["token"]) as agent:
        assert await claim(agent) is None
        clock.advance(59)
        assert await claim(agent) is None
        clock.advance(1)
        assert await claim(agent) is not None


async def test_aging_lets_old_low_work_overtake_fresh_critical_work(fake_connect, clock):
    async with fake_connect() as admin:
        worker = await spawn(admin)
        old = await call(admin, "task_submit", type="t", priority="low")
        clock.advance(3 * 600 - 1)  # default aging step: 600 s per priority level
        await call(admin, "task_submit", type="t", priority="critical")
        clock.advance(2)
        fresh = await call(admin, "task_submit", type="t", priority="critical")
    async with fake_connect(worker["token"]) as agent:
        first = await claim(agent)  # submitted 1 s after `old` had aged three levels: still ahead of it
        assert first["id"] not in (old["id"], fresh["id"])
        assert (await claim(agent))["id"] == old["id"]
        assert (await claim(agent))["id"] == fresh["id"]


async def test_cancel_of_a_running_task_is_cooperative_then_forced(fake_connect, fake_time_services, clock):
    async with fake_connect() as admin:
        worker = await spawn(admin)
        polite = await call(admin, "task_submit", type="t", lease_s=10)
        stubborn = await call(admin, "task_submit", type="t", lease_s=10)
    async with fake_connect(worker["token"]) as agent:
        await claim(agent)
        await claim(agent)
    async with fake_connect() as admin:
        for task in (polite, stubborn):
            requested = await call(admin, "task_cancel", task_id=task["id"])
            assert requested["status"] == "running" and requested["cancel_requested"] is True
    async with fake_connect(worker["token"]) as agent:
        beat = await call(agent, "task_heartbeat", task_id=polite["id"])
        assert beat["cancel_requested"] is True
        ended = await call(agent, "task_fail", task_id=polite["id"], error="stopped on request")
        assert ended["status"] == "cancelled"
    clock.advance(11)
    assert await fake_time_services.leases.reap_once() == 1
    async with fake_connect() as admin:
        forced = await call(admin, "task_get", task_id=stubborn["id"])
    assert forced["status"] == "cancelled" and forced["attempt_history"][0]["outcome"] == "cancelled"


async def test_terminating_an_agent_requeues_its_work_at_once(fake_connect):
    async with fake_connect() as admin:
        doomed = await spawn(admin)
        heir = await spawn(admin)
        task = await call(admin, "task_submit", type="t")
    async with fake_connect(doomed["token"]) as agent:
        await claim(agent)
    async with fake_connect() as admin:
        await call(admin, "agent_terminate", agent_id=doomed["agent"]["id"])
        requeued = await call(admin, "task_get", task_id=task["id"])
        assert requeued["status"] == "queued" and requeued["attempt_history"][0]["outcome"] == "released"
    async with fake_connect(heir["token"]) as agent:
        assert (await claim(agent))["id"] == task["id"]


async def test_unroutable_tasks_are_refused_or_queued_visibly(fake_connect):
    async with fake_connect() as admin:
        refused = await call_error(admin, "task_submit", type="t", capabilities=["gpu", "general"])
        assert refused.code == "invalid_input" and "['gpu']" in refused.text
        queued = await call(admin, "task_submit", type="t", capabilities=["gpu"], allow_unroutable=True)
        assert queued["unroutable"] is True
        assert (await call(admin, "fleet_status"))["unroutable"] == 1
        gpu_box = await spawn(admin, capabilities=["gpu"])
        # Now a live agent provides it: no flag needed.
        await call(admin, "task_submit", type="t", capabilities=["gpu"])
    async with fake_connect(gpu_box["token"]) as agent:
        assert (await claim(agent))["id"] == queued["id"]
    async with fake_connect() as admin:
        assert (await call(admin, "fleet_status"))["unroutable"] == 0


async def test_a_parked_claim_wakes_when_matching_work_arrives(fake_connect, fake_time_services):
    async with fake_connect() as admin:
        worker = await spawn(admin)
        coder = await spawn(admin, "developer")
    got: dict[str, dict] = {}

    async def park(name, token):
        async with fake_connect(token) as agent:
            got[name] = await call(agent, "task_claim", wait_s=30)

    with anyio.fail_after(20):  # a deadline for the test, not a timing assertion
        async with anyio.create_task_group() as group:
            group.start_soon(park, "worker", worker["token"])
            group.start_soon(park, "coder", coder["token"])
            while fake_time_services.signals.parked < 2:
                await anyio.sleep(0.01)
            async with fake_connect() as admin:
                code_task = await call(admin, "task_submit", type="t", capabilities=["code"])
                general_task = await call(admin, "task_submit", type="t")
    assert got["coder"]["task"]["id"] == code_task["id"]
    assert got["worker"]["task"]["id"] == general_task["id"]


async def test_a_long_poll_with_nothing_to_do_returns_empty_after_wait_s(fake_connect):
    async with fake_connect() as admin:
        worker = await spawn(admin)
    async with fake_connect(worker["token"]) as agent:
        with anyio.fail_after(10):
            result = await call(agent, "task_claim", wait_s=0.2)
    assert result == {"task": None, "reason": "none_available"}


async def test_a_stopping_agent_cannot_claim_or_be_revived_by_calling_in(fake_connect, fake_time_services):
    from sqlalchemy import update

    from server.store.tables import agents

    async with fake_connect() as admin:
        worker = await spawn(admin)
        await call(admin, "task_submit", type="t")
    with fake_time_services.db.engine.begin() as conn:  # the supervisor's drain step (issue 4) does this
        conn.execute(update(agents).where(agents.c.id == worker["agent"]["id"]).values(status="stopping"))
    async with fake_connect(worker["token"]) as agent:
        assert (await call_error(agent, "task_claim")).code == "permission_denied"
        assert (await call_error(agent, "agent_heartbeat")).code == "conflict"
    async with fake_connect() as admin:
        assert (await call(admin, "agent_get", agent_id=worker["agent"]["id"]))["status"] == "stopping"
        assert (await call(admin, "fleet_status"))["tasks"]["queued"]["normal"] == 1
