"""Lock queues and lock lifecycles through the MCP client: fairness, priority, 3-party deadlock,
expiry hand-off, release on agent termination and task end, resource-queued tasks, force-release."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from sqlalchemy import select

from server.store.tables import audit_log
from tests.helpers import call, call_error

if TYPE_CHECKING:
    from tests.serving import ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = pytest.mark.anyio


def ex(name):
    return {"name": name, "mode": "exclusive"}


def sh(name):
    return {"name": name, "mode": "shared"}


async def spawn_agents(connect, n, profile="worker"):
    async with connect() as admin:
        return [await call(admin, "agent_spawn", profile=profile) for _ in range(n)]


async def until_waiting(client, count, prefix=None):
    """Wait (bounded) until `count` requests are queued; returns lock_list's waiting entries."""
    with anyio.fail_after(10):
        while True:
            listed = (await call(client, "lock_list", **({"prefix": prefix} if prefix else {})))["locks"]
            waiting = [lock for lock in listed if lock["status"] == "waiting"]
            if len(waiting) >= count:
                return waiting
            await anyio.sleep(0.01)


async def test_a_waiting_exclusive_is_not_starved_by_later_shared_requests(connect):
    reader, writer, late = await spawn_agents(connect, 3)
    async with connect(reader["token"]) as r, connect(writer["token"]) as w, connect(late["token"]) as lr:
        first = await call(r, "lock_acquire", resources=[sh("db:main")])
        got = {}

        async def write():
            got["writer"] = await call(w, "lock_acquire", resources=[ex("db:main")], wait_s=20)

        async with anyio.create_task_group() as group:
            group.start_soon(write)
            await until_waiting(r, 1)
            # Shared would be compatible with the shared holder, but the exclusive waiter is ahead.
            refused = await call(lr, "lock_acquire", resources=[sh("db:main")])
            assert not refused["granted"]
            assert refused["conflicts"][0]["status"] == "waiting"
            assert refused["conflicts"][0]["holder"] == writer["agent"]["id"]
            await call(r, "lock_release", lock_id=first["lock_id"])
        assert got["writer"]["granted"]


async def test_higher_priority_waiters_go_first_then_fifo(connect):
    holder, *waiters = await spawn_agents(connect, 4)
    order = []
    async with connect(holder["token"]) as h:
        held = await call(h, "lock_acquire", resources=[ex("deploy:prod")])

        async def wait(agent, priority):
            async with connect(agent["token"]) as client:
                grant = await call(client, "lock_acquire", resources=[ex("deploy:prod")], wait_s=20, priority=priority)
                order.append(agent["agent"]["id"])
                await call(client, "lock_release", lock_id=grant["lock_id"])

        async with anyio.create_task_group() as group:
            for queued_so_far, (agent, priority) in enumerate(
                zip(waiters, ["normal", "normal", "critical"], strict=True)
            ):
                group.start_soon(wait, agent, priority)
                await until_waiting(h, queued_so_far + 1)
            queued = await until_waiting(h, 3)
            assert [lock["queue_position"] for lock in queued] == [1, 2, 3]
            assert [lock["holder"] for lock in queued] == [
                waiters[2]["agent"]["id"],
                *[a["agent"]["id"] for a in waiters[:2]],
            ]
            await call(h, "lock_release", lock_id=held["lock_id"])
    assert order == [waiters[2]["agent"]["id"], waiters[0]["agent"]["id"], waiters[1]["agent"]["id"]]


async def test_three_agent_cycle_is_refused_with_deadlock(connect):
    a, b, c = await spawn_agents(connect, 3)
    async with connect(a["token"]) as ca, connect(b["token"]) as cb, connect(c["token"]) as cc:
        for client, name in [(ca, "r:1"), (cb, "r:2"), (cc, "r:3")]:
            assert (await call(client, "lock_acquire", resources=[ex(name)]))["granted"]
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: call_error(ca, "lock_acquire", resources=[ex("r:2")], wait_s=3))
            await until_waiting(ca, 1)
            group.start_soon(lambda: call_error(cb, "lock_acquire", resources=[ex("r:3")], wait_s=3))
            await until_waiting(ca, 2)
            failure = await call_error(cc, "lock_acquire", resources=[ex("r:1")], wait_s=3)
            assert failure.code == "deadlock"
            for agent in (a, b, c):
                assert agent["agent"]["id"] in failure.text
            # Refused at once, and nothing of it was queued.
            assert len(await until_waiting(ca, 2)) == 2
            group.cancel_scope.cancel()


async def test_a_wait_behind_a_queued_request_that_waits_for_us_is_a_deadlock(connect):
    """B queues for {x, y} behind A's hold on y; A then asking for x would queue behind B: a cycle
    through the queue, not only through holders."""
    a, b = await spawn_agents(connect, 2)
    async with connect(a["token"]) as ca, connect(b["token"]) as cb:
        await call(ca, "lock_acquire", resources=[ex("q:y")])
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: call_error(cb, "lock_acquire", resources=[ex("q:x"), ex("q:y")], wait_s=3))
            await until_waiting(ca, 1)
            assert (await call_error(ca, "lock_acquire", resources=[ex("q:x")], wait_s=3)).code == "deadlock"
            group.cancel_scope.cancel()


async def test_an_expired_lease_is_handed_to_the_waiter(connect):
    a, b = await spawn_agents(connect, 2)
    async with connect(a["token"]) as ca, connect(b["token"]) as cb:
        old = await call(ca, "lock_acquire", resources=[ex("slot:1")], ttl_s=1)
        with anyio.fail_after(8):
            new = await call(cb, "lock_acquire", resources=[ex("slot:1")], wait_s=6)
        assert new["granted"]
        assert new["fencing_tokens"]["slot:1"] > old["fencing_tokens"]["slot:1"]
        assert (await call_error(ca, "lock_renew", lock_id=old["lock_id"])).code == "lease_expired"


async def test_terminating_an_agent_frees_its_locks_for_waiters(connect):
    a, b = await spawn_agents(connect, 2)
    got = {}
    async with connect() as admin, connect(a["token"]) as ca, connect(b["token"]) as cb:
        await call(ca, "lock_acquire", resources=[ex("device:t1"), sh("repo:/docs/**")])

        async def wait():
            got["grant"] = await call(cb, "lock_acquire", resources=[ex("device:t1")], wait_s=20)

        async with anyio.create_task_group() as group:
            group.start_soon(wait)
            await until_waiting(admin, 1)
            await call(admin, "agent_terminate", agent_id=a["agent"]["id"])
        assert got["grant"]["granted"]
        held = (await call(admin, "lock_list", holder=a["agent"]["id"]))["locks"]
        assert held == []


async def test_admin_force_release_is_audited_and_the_holder_learns_of_it(connect, services):
    (a,) = await spawn_agents(connect, 1)
    async with connect() as admin, connect(a["token"]) as ca:
        held = await call(ca, "lock_acquire", resources=[ex("device:stuck")], ttl_s=600)
        released = await call(admin, "lock_release", lock_id=held["lock_id"])
        assert released["status"] == "released"
        assert released["ended_by"] == "admin"
        assert (await call_error(ca, "lock_renew", lock_id=held["lock_id"])).code == "lease_expired"
        assert (await call(ca, "lock_acquire", resources=[ex("device:stuck")]))["granted"]
    with services.db.engine.connect() as conn:
        rows = conn.execute(select(audit_log).where(audit_log.c.subject == held["lock_id"])).all()
    actions = {row.action: row for row in rows}
    assert actions["lock.force_release"].principal == "admin"
    assert actions["lock.force_release"].detail["holder"] == a["agent"]["id"]


async def test_another_agent_cannot_release_or_renew_my_lock(connect):
    a, b = await spawn_agents(connect, 2)
    async with connect(a["token"]) as ca, connect(b["token"]) as cb:
        held = await call(ca, "lock_acquire", resources=[ex("device:mine")])
        assert (await call_error(cb, "lock_release", lock_id=held["lock_id"])).code == "permission_denied"
        assert (await call_error(cb, "lock_renew", lock_id=held["lock_id"])).code == "permission_denied"
        assert not (await call(cb, "lock_acquire", resources=[ex("device:mine")]))["granted"]
    async with connect() as admin:  # the admin may force-release a lock, but not extend someone's lease
        renewing = await call_error(admin, "lock_renew", lock_id=held["lock_id"], ttl_s=600)
        assert renewing.code == "permission_denied" and "not yours" in renewing.text
        assert (await call(admin, "lock_release", lock_id=held["lock_id"]))["status"] == "released"


async def test_a_task_scoped_lock_ends_with_the_task(connect):
    a, b = await spawn_agents(connect, 2)
    async with connect() as admin, connect(a["token"]) as ca, connect(b["token"]) as cb:
        task = await call(admin, "task_submit", type="t")
        assert (await call(ca, "task_claim"))["task"]["id"] == task["id"]
        held = await call(ca, "lock_acquire", resources=[ex("repo:/src/**")], task_id=task["id"])
        assert held["lock"]["task_id"] == task["id"]
        assert not (await call(cb, "lock_acquire", resources=[ex("repo:/src/a.py")]))["granted"]
        await call(ca, "task_complete", task_id=task["id"], result={})
        assert (await call(cb, "lock_acquire", resources=[ex("repo:/src/a.py")]))["granted"]
        other = await call(admin, "task_submit", type="t")
        failure = await call_error(cb, "lock_acquire", resources=[ex("x:1")], task_id=other["id"])
        assert failure.code == "permission_denied"  # queued, not leased to the caller: nothing of it is said
        assert "queued" not in failure.text


async def test_resource_tasks_run_one_at_a_time_with_their_fencing_tokens(connect):
    a, b = await spawn_agents(connect, 2)
    async with connect() as admin, connect(a["token"]) as ca, connect(b["token"]) as cb:
        first = await call(admin, "task_submit", type="flash", resources=[ex("device:mobile1")])
        second = await call(admin, "task_submit", type="flash", resources=[ex("device:mobile1")])
        free = await call(admin, "task_submit", type="other")
        claimed = (await call(ca, "task_claim"))["task"]
        assert claimed["id"] == first["id"]
        assert claimed["resources"] == [ex("device:mobile1")]
        assert [(item["name"], item["fence"]) for item in claimed["locks"]] == [("device:mobile1", 1)]
        # The second needs the same device: B is handed the next task it can run instead.
        assert (await call(cb, "task_claim"))["task"]["id"] == free["id"]
        assert (await call(cb, "task_claim"))["task"] is None
        shown = await call(ca, "task_get", task_id=first["id"])
        assert shown["locks"][0]["fence"] == 1
        await call(ca, "task_complete", task_id=first["id"], result={})
        next_one = (await call(cb, "task_claim"))["task"]
        assert next_one["id"] == second["id"]
        assert next_one["locks"][0]["fence"] == 2


async def test_a_resource_task_waits_for_a_direct_lock_holder_and_is_woken(connect):
    a, b = await spawn_agents(connect, 2)
    async with connect() as admin, connect(a["token"]) as ca, connect(b["token"]) as cb:
        held = await call(ca, "lock_acquire", resources=[ex("device:busy")])
        task = await call(admin, "task_submit", type="flash", resources=[ex("device:busy")])
        assert (await call(cb, "task_claim"))["task"] is None
        got = {}

        async def claim():
            got["claim"] = await call(cb, "task_claim", wait_s=20)

        # Parked claims re-check every 5-15 s (AGENTFLEET_CLAIM_RECHECK_S=10, jittered): only the
        # release's wake-up can answer within 4 s.
        with anyio.fail_after(4):
            async with anyio.create_task_group() as group:
                group.start_soon(claim)
                await anyio.sleep(0.2)  # let the claim park
                await call(ca, "lock_release", lock_id=held["lock_id"])
        assert got["claim"]["task"]["id"] == task["id"]


async def test_a_lapsed_resource_task_releases_its_locks_for_the_retry(fake_connect, fake_time_services, clock):
    a, b = await spawn_agents(fake_connect, 2)
    async with fake_connect() as admin, fake_connect(a["token"]) as ca, fake_connect(b["token"]) as cb:
        task = await call(
            admin,
            "task_submit",
            type="flash",
            resources=[ex("device:d")],
            lease_s=10,
            backoff_base_s=0.01,
            backoff_cap_s=0.01,
        )
        first = (await call(ca, "task_claim"))["task"]
        assert not (await call(cb, "lock_acquire", resources=[ex("device:d")]))["granted"]
        clock.advance(11)
        assert await fake_time_services.leases.reap_once() == 1
        clock.advance(1)
        retry = (await call(cb, "task_claim"))["task"]
        assert retry["id"] == task["id"]
        assert retry["locks"][0]["fence"] > first["locks"][0]["fence"]
        assert (await call_error(ca, "task_complete", task_id=task["id"])).code == "permission_denied"


async def test_a_waiting_request_can_be_withdrawn(connect):
    a, b = await spawn_agents(connect, 2)
    async with connect(a["token"]) as ca, connect(b["token"]) as cb:
        await call(ca, "lock_acquire", resources=[ex("device:w")])
        async with anyio.create_task_group() as group:
            failures = []

            async def wait():
                failures.append(await call_error(cb, "lock_acquire", resources=[ex("device:w")], wait_s=20))

            group.start_soon(wait)
            (waiting,) = await until_waiting(cb, 1)
            withdrawn = await call(cb, "lock_release", lock_id=waiting["id"])
            assert withdrawn["status"] == "cancelled"
        assert failures[0].code == "conflict"


@pytest.mark.slow
async def test_fencing_tokens_keep_rising_across_a_sigkill(database_url: str, serve: ServeFactory, tmp_path: Path):
    data_dir = tmp_path / "data"
    first = serve(database_url, data_dir=data_dir)
    async with first.mcp() as admin:
        agent = await call(admin, "agent_spawn", profile="default")
    async with first.mcp(agent["token"]) as client:
        for _ in range(3):
            grant = await call(client, "lock_acquire", resources=[ex("device:k")], ttl_s=600)
            await call(client, "lock_release", lock_id=grant["lock_id"])
        held = await call(client, "lock_acquire", resources=[ex("device:k")], ttl_s=600)
    assert held["fencing_tokens"] == {"device:k": 4}
    assert first.kill() == -signal.SIGKILL

    second = serve(database_url, data_dir=data_dir)
    async with second.mcp(agent["token"]) as client:
        listed = (await call(client, "lock_list"))["locks"]
        assert [(lock["id"], lock["status"]) for lock in listed] == [(held["lock_id"], "held")]
        assert not (await call(client, "lock_acquire", resources=[ex("device:k")]))["granted"]
        await call(client, "lock_release", lock_id=held["lock_id"])
        again = await call(client, "lock_acquire", resources=[ex("device:k")])
    assert again["fencing_tokens"] == {"device:k": 5}
