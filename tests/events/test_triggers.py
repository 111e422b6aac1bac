"""Triggers through MCP: schedules on a fake clock (exactly once, catch-up, overlap, DST), event
triggers end to end through real agents, loops bounded by depth, replay, and who may make them."""

from __future__ import annotations

from datetime import UTC, datetime

import anyio
import pytest

from server.clock import MICROS
from server.services.container import build_services
from tests.conftest import ADMIN_TOKEN
from tests.events.support import settled
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio


def _at(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * MICROS)


async def test_an_interval_schedule_fires_once_per_due_time(fake_connect, fake_time_services, clock):
    runner = fake_time_services.trigger_runner
    async with fake_connect() as admin:
        made = await call(
            admin,
            "trigger_create",
            name="hourly-report",
            kind="schedule",
            interval_s=3600,
            task={"type": "report", "payload": {"due": "{{ body.due_at }}"}},
        )
        trigger = made["trigger"]
        assert made["secret"] is None and len(trigger["next_fire_times"]) == 5
        await runner.run_due_schedules()
        assert (await call(admin, "trigger_get", trigger="hourly-report"))["runs"] == []  # not due yet
        clock.advance(3600)
        await runner.run_due_schedules()
        await runner.run_due_schedules()  # the same due time again: nothing new
        got = await call(admin, "trigger_get", trigger=trigger["id"])
        tasks = await call(admin, "task_list", type="report")
    assert [r["status"] for r in got["runs"]] == ["created"] and got["fired"] == 1
    assert [t["id"] for t in tasks["tasks"]] == [got["runs"][0]["created_id"]]
    task_id = got["runs"][0]["created_id"]
    async with fake_connect() as admin:
        task = await call(admin, "task_get", task_id=task_id)
    assert task["payload"] == {"due": trigger["next_fire_times"][0]}
    assert got["next_fire_times"][0] == trigger["next_fire_times"][1]


@pytest.mark.parametrize(("policy", "created", "skipped"), [("one", 1, 1), ("all", 5, 0), ("skip", 0, 1)])
async def test_catch_up_after_downtime(fake_connect, fake_time_services, clock, policy, created, skipped):
    async with fake_connect() as admin:
        await call(
            admin,
            "trigger_create",
            name="every-minute",
            kind="schedule",
            interval_s=60,
            catch_up=policy,
            catch_up_limit=5,
            overlap="queue",
            task={"type": "tick"},
        )
        clock.advance(60 * 10 + 45)  # ten due times passed while nothing ran, the last 45 s ago
        await fake_time_services.trigger_runner.run_due_schedules()
        runs = (await call(admin, "trigger_get", trigger="every-minute"))["runs"]
    assert sum(r["status"] == "created" for r in runs) == created
    assert sum(r["status"] == "skipped" for r in runs) == skipped
    assert all("missed" in r["error"] for r in runs if r["status"] == "skipped")


async def test_overlap_skip_leaves_a_due_time_while_the_last_work_is_queued(fake_connect, fake_time_services, clock):
    runner = fake_time_services.trigger_runner
    async with fake_connect() as admin:
        await call(admin, "trigger_create", name="nightly", kind="schedule", interval_s=60, task={"type": "nightly"})
        clock.advance(60)
        await runner.run_due_schedules()
        clock.advance(60)
        await runner.run_due_schedules()
        runs = (await call(admin, "trigger_get", trigger="nightly"))["runs"]
    assert [r["status"] for r in runs] == ["skipped", "created"]
    assert runs[1]["created_id"] in runs[0]["error"]


async def test_a_cron_schedule_follows_its_time_zone_through_a_dst_change(fake_connect, fake_time_services, clock):
    clock._now = _at("2027-10-29T12:00:00")  # Europe/Berlin leaves summer time on 2027-10-31
    async with fake_connect() as admin:
        made = await call(
            admin,
            "trigger_create",
            name="berlin-morning",
            kind="schedule",
            cron="0 7 * * *",
            timezone="Europe/Berlin",
            task={"type": "morning"},
        )
    times = made["trigger"]["next_fire_times"][:4]
    # 07:00 in Berlin is 05:00 UTC in summer time and 06:00 UTC after the change.
    assert times == ["2027-10-30T05:00:00Z", "2027-10-31T06:00:00Z", "2027-11-01T06:00:00Z", "2027-11-02T06:00:00Z"]


async def test_a_dead_deploy_task_fires_an_event_trigger_through_real_agents(fake_connect, fake_time_services):
    async with fake_connect() as admin:
        await call(
            admin,
            "trigger_create",
            name="on-dead-deploy",
            kind="event",
            event_types=["task.dead", "task.failed"],
            filter="event.data.type == 'deploy'",
            task={"type": "investigate", "payload": {"task": "{{ event.subject }}", "why": "{{ event.data.error }}"}},
        )
        agent = await call(admin, "agent_spawn", profile="worker", name="deployer")
        deploy = await call(admin, "task_submit", type="deploy", max_attempts=1)
        other = await call(admin, "task_submit", type="build", max_attempts=1)
        async with fake_connect(agent["token"]) as worker:
            for _ in range(2):
                claimed = (await call(worker, "task_claim"))["task"]
                await call(worker, "task_fail", task_id=claimed["id"], error="boom", retryable=False)
        await settled(fake_time_services)
        await fake_time_services.trigger_runner.watch_events()
        await settled(fake_time_services)
        await fake_time_services.trigger_runner.watch_events()  # the same events again: nothing new
        runs = (await call(admin, "trigger_get", trigger="on-dead-deploy"))["runs"]
        assert [r["status"] for r in runs] == ["created"]
        made = await call(admin, "task_get", task_id=runs[0]["created_id"])
    assert made["type"] == "investigate" and made["payload"] == {"task": deploy["id"], "why": "boom"}
    assert other["id"] not in str(runs)


async def test_a_trigger_on_its_own_firings_stops_at_its_depth(fake_connect, fake_time_services):
    runner = fake_time_services.trigger_runner
    async with fake_connect() as admin:
        await call(
            admin,
            "trigger_create",
            name="echo",
            kind="event",
            event_types=["trigger.fired"],
            max_depth=2,
            task={"type": "echo"},
        )
        await call(admin, "trigger_fire", trigger="echo")
        for _ in range(6):
            await settled(fake_time_services)
            await runner.watch_events()
        runs = (await call(admin, "trigger_get", trigger="echo"))["runs"]
    assert len(runs) == 3  # the manual fire, then two generations of echoes, then no deeper


async def test_absence_fires_once_per_window_without_the_expected_event(fake_connect, fake_time_services, clock):
    runner = fake_time_services.trigger_runner
    async with fake_connect() as admin:
        await call(
            admin,
            "trigger_create",
            name="no-reports",
            kind="absence",
            event_types=["task.completed"],
            filter="event.data.type == 'report'",
            within_s=600,
            task={"type": "page", "payload": {"since": "{{ body.window_ends_at }}"}},
        )
        clock.advance(300)
        await settled(fake_time_services)
        await runner.watch_events()
        clock.advance(301)
        await settled(fake_time_services)
        await runner.watch_events()
        await settled(fake_time_services)
        await runner.watch_events()
        runs = (await call(admin, "trigger_get", trigger="no-reports"))["runs"]
    assert [r["reason"] for r in runs] == ["absence"]


async def test_a_matching_event_restarts_the_absence_window(fake_connect, fake_time_services, clock):
    runner = fake_time_services.trigger_runner
    async with fake_connect() as admin:
        await call(
            admin,
            "trigger_create",
            name="heartbeat-watch",
            kind="absence",
            event_types=["task.submitted"],
            within_s=600,
            task={"type": "page"},
        )
        clock.advance(500)
        await call(admin, "task_submit", type="sign-of-life")
        await settled(fake_time_services)
        await runner.watch_events()
        clock.advance(500)  # 1000 s since creation, but only 500 s since the last sign of life
        await settled(fake_time_services)
        await runner.watch_events()
        quiet = (await call(admin, "trigger_get", trigger="heartbeat-watch"))["runs"]
        clock.advance(200)
        await settled(fake_time_services)
        await runner.watch_events()
        fired = (await call(admin, "trigger_get", trigger="heartbeat-watch"))["runs"]
    assert quiet == [] and len(fired) == 1


async def test_replay_reruns_past_events_once(fake_connect, fake_time_services):
    runner = fake_time_services.trigger_runner
    async with fake_connect() as admin:
        start = (await call(admin, "event_list"))["next_cursor"]
        await call(admin, "task_submit", type="ingest")
        await call(admin, "task_submit", type="ingest")
        await call(
            admin,
            "trigger_create",
            name="ingest-follow",
            kind="event",
            event_types=["task.submitted"],
            filter="event.data.type == 'ingest'",
            task={"type": "index", "payload": {"of": "{{ event.subject }}"}},
        )
        await settled(fake_time_services)
        await runner.watch_events()  # made after the submits: it starts from now and sees nothing
        assert (await call(admin, "trigger_get", trigger="ingest-follow"))["runs"] == []
        await settled(fake_time_services)
        first = await call(admin, "event_replay", trigger="ingest-follow", after_cursor=start)
        again = await call(admin, "event_replay", trigger="ingest-follow", after_cursor=start)
    assert first["examined"] == 2 and len(first["fired"]) == 2
    assert again["examined"] == 2 and again["fired"] == []


async def test_a_firing_the_owner_may_not_do_is_recorded_as_failed(fake_connect):
    async with fake_connect() as admin:
        await call(
            admin,
            "trigger_create",
            name="needs-input",
            kind="webhook",
            task={"type": "triage", "payload": {"title": "{{ body.issue.title }}"}},
        )
        run = await call(admin, "trigger_fire", trigger="needs-input", input={"no_issue": True})
        tasks = await call(admin, "task_list", type="triage")
    assert run["status"] == "failed" and "body.issue.title" in run["error"]
    assert tasks["tasks"] == []


async def test_agents_need_a_profile_that_names_the_trigger_tools(fake_connect):
    async with fake_connect() as admin:
        plain = await call(admin, "agent_spawn", profile="worker", name="plain")
    async with fake_connect(plain["token"]) as agent:
        refused = await call_error(
            agent, "trigger_create", name="mine", kind="schedule", interval_s=60, task={"type": "x"}
        )
        listed = {tool.name for tool in (await agent.list_tools()).tools}
    assert refused.code == "permission_denied" and "permissions.tools" in refused.text
    assert "trigger_create" not in listed


@pytest.mark.parametrize("database_url", ["postgresql", "sqlite"], indirect=True)
async def test_two_replicas_fire_each_due_time_once(fake_connect, fake_time_services, settings, clock):
    other = build_services(settings, ADMIN_TOKEN, clock, run_migrations=False)
    try:
        async with fake_connect() as admin:
            for n in range(60):
                await call(admin, "trigger_create", name=f"s{n}", kind="schedule", interval_s=60, task={"type": "t"})
            clock.advance(60)
            async with anyio.create_task_group() as group:
                for runner in (fake_time_services.trigger_runner, other.trigger_runner) * 2:
                    group.start_soon(runner.run_due_schedules)
            listed = await call(admin, "trigger_list")
            tasks = await call(admin, "task_list", type="t", limit=500)
    finally:
        other.close()
    assert [t["fired"] for t in listed["triggers"]] == [1] * 60
    assert len(tasks["tasks"]) == 60
