"""Supervision of agents by their heartbeats: any call with an agent's token is a sign of life; an
agent silent past its profile's heartbeat timeout becomes unresponsive, and its task leases, locks
and budget holds are released so the work goes on elsewhere. Driven by the fake clock and the
reaper's sweep (`services.agents.sweep_silent`, which every replica's reaper runs each second)."""

from __future__ import annotations

import time

import pytest

from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio
TIMEOUT_S = 60  # tests/profiles/worker.yaml: limits.heartbeat_timeout_s


async def spawn(admin, profile="worker"):
    spawned = await call(admin, "agent_spawn", profile=profile)
    return spawned["agent"]["id"], spawned["token"]


async def status_of(admin, agent_id):
    return (await call(admin, "agent_get", agent_id=agent_id))["status"]


async def test_any_call_is_a_heartbeat(fake_connect, clock):
    async with fake_connect() as admin:
        agent_id, token = await spawn(admin)
        assert await status_of(admin, agent_id) == "starting"
    clock.advance(5)
    async with fake_connect(token) as agent:
        await call(agent, "fleet_status")  # not agent_heartbeat: any tool counts
    async with fake_connect() as admin:
        seen = await call(admin, "agent_get", agent_id=agent_id)
    assert seen["status"] == "active" and seen["last_heartbeat_at"] == "2026-01-01T00:00:05Z"


async def test_a_silent_agent_becomes_unresponsive_and_what_it_held_goes_on_elsewhere(
    fake_connect, fake_time_services, clock
):
    sweep = fake_time_services.agents.sweep_silent
    async with fake_connect() as admin:
        await call(admin, "budget_set", scope="global", limit_usd="100")
        silent_id, silent_token = await spawn(admin)
        task = await call(
            admin,
            "task_submit",
            type="flash",
            lease_s=3600,  # so only silence, not the lease, can end the attempt
            resources=[{"name": "device:phone"}],
            estimated_cost_usd="2",
        )
    async with fake_connect(silent_token) as silent:
        claimed = (await call(silent, "task_claim"))["task"]
        assert claimed["id"] == task["id"]
        own_lock = await call(silent, "lock_acquire", resources=[{"name": "device:scanner"}], ttl_s=3600)
        hold = await call(silent, "budget_reserve", amount_usd="1", ttl_s=3600)
        clock.advance(40)
        await call(silent, "fleet_status")  # heard from at t=40
    clock.advance(TIMEOUT_S - 1)  # t=99: 59 s of silence
    async with fake_connect() as admin:
        other_id, other_token = await spawn(admin)  # fresh: it has not been silent long
    assert await sweep() == 0
    async with fake_connect() as admin:
        assert await status_of(admin, silent_id) == "active"
        assert (await call(admin, "budget_status", scope="global"))["budgets"][0]["budget"]["reserved_usd"] == (
            "3.000000"
        )
    clock.advance(2)  # t=101: 61 s of silence
    assert await sweep() == 1
    assert await sweep() == 0  # once
    async with fake_connect() as admin:
        assert await status_of(admin, silent_id) == "unresponsive"
        requeued = await call(admin, "task_get", task_id=task["id"])
        assert requeued["status"] == "queued" and requeued["attempt_history"][0]["agent_id"] == silent_id
        assert (await call(admin, "lock_list", holder=silent_id))["locks"] == []
        budget = (await call(admin, "budget_status", scope="global"))["budgets"][0]["budget"]
        assert budget["reserved_usd"] == "0.000000"
        [row] = (await call(admin, "audit_query", action="agent.unresponsive"))["entries"]
        assert (row["subject"], row["principal"]) == (silent_id, "reaper")
    async with fake_connect(other_token) as other:  # the work, its device and the money go on elsewhere
        taken = (await call(other, "task_claim"))["task"]
        assert taken["id"] == task["id"] and taken["locks"][0]["name"] == "device:phone"
        assert (await call(other, "lock_acquire", resources=[{"name": "device:scanner"}]))["granted"]
        await call(other, "task_complete", task_id=task["id"], result={"ok": True})
    async with fake_connect(silent_token) as silent:  # it comes back: active again, its old work is gone
        late = await call_error(silent, "task_complete", task_id=task["id"], result={"late": True})
        assert late.code in ("permission_denied", "conflict")
        settled = await call(silent, "budget_release", hold_id=hold["id"])  # already settled: same answer
        assert settled["status"] == "settled" and settled["spent_usd"] == "0.000000"
        assert (await call_error(silent, "lock_renew", lock_id=own_lock["lock_id"])).code == "lease_expired"
    async with fake_connect() as admin:
        assert await status_of(admin, silent_id) == "active"
        assert (await call(admin, "task_get", task_id=task["id"]))["result"] == {"ok": True}
        assert await status_of(admin, other_id) == "active"


async def test_an_agent_never_heard_from_goes_unresponsive_after_its_timeout_from_spawn(
    fake_connect, fake_time_services, clock
):
    async with fake_connect() as admin:
        agent_id, _ = await spawn(admin)
        slow_id, _ = await spawn(admin, profile="developer")  # heartbeat_timeout_s: 120
    clock.advance(TIMEOUT_S + 1)
    assert await fake_time_services.agents.sweep_silent() == 1
    async with fake_connect() as admin:
        assert await status_of(admin, agent_id) == "unresponsive"
        assert await status_of(admin, slow_id) == "starting"  # its profile allows it longer
    clock.advance(60)
    assert await fake_time_services.agents.sweep_silent() == 1
    async with fake_connect() as admin:
        assert await status_of(admin, slow_id) == "unresponsive"
        terminated = await call(admin, "agent_terminate", agent_id=agent_id)
    assert agent_id in terminated["terminated"]


async def test_a_terminated_agent_is_not_swept(fake_connect, fake_time_services, clock):
    async with fake_connect() as admin:
        agent_id, _ = await spawn(admin)
        await call(admin, "agent_terminate", agent_id=agent_id)
    clock.advance(TIMEOUT_S * 10)
    assert await fake_time_services.agents.sweep_silent() == 0
    async with fake_connect() as admin:
        assert await status_of(admin, agent_id) == "terminated"


async def test_a_long_poll_answers_within_half_the_heartbeat_timeout(connect):
    """A parked claim is silence to the supervisor: it must come back (empty) in time for the
    agent's next call to count as its heartbeat, whatever wait_s it asked for."""
    async with connect() as admin:
        _, token = await spawn(admin, profile="quick-heartbeat")  # heartbeat_timeout_s: 5
    async with connect(token) as agent:
        started = time.monotonic()
        answer = await call(agent, "task_claim", wait_s=60)
        waited = time.monotonic() - started
    assert answer["task"] is None and answer["reason"] == "none_available"
    assert waited < 30, f"a 60 s long-poll by an agent with a 5 s heartbeat timeout took {waited:.1f} s"


async def test_a_day_long_heartbeat_timeout_is_honoured(fake_connect, fake_time_services, clock):
    """A day in microseconds does not fit a 32-bit integer: the sweep must do its arithmetic in BIGINT."""
    async with fake_connect() as admin:
        agent_id, _ = await spawn(admin, profile="patient")
    clock.advance(86_400 - 1)
    assert await fake_time_services.agents.sweep_silent() == 0
    clock.advance(2)
    assert await fake_time_services.agents.sweep_silent() == 1
    async with fake_connect() as admin:
        assert await status_of(admin, agent_id) == "unresponsive"
