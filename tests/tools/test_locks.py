"""Resource locks through the MCP client: modes, hierarchical names, semaphores, leases with a fake
clock, fencing tokens, fair queues, deadlock refusal, idempotent acquire, force-release."""

from __future__ import annotations

import anyio
import pytest

from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio


async def spawn(client, profile="worker"):
    return await call(client, "agent_spawn", profile=profile)


def ex(name):
    return {"name": name, "mode": "exclusive"}


def sh(name):
    return {"name": name, "mode": "shared"}


async def agents(fake_connect, n):
    async with fake_connect() as admin:
        return [await spawn(admin) for _ in range(n)]


async def test_exclusive_lock_is_granted_once_with_a_fencing_token(fake_connect):
    a, b = await agents(fake_connect, 2)
    async with fake_connect(a["token"]) as first, fake_connect(b["token"]) as second:
        grant = await call(first, "lock_acquire", resources=[ex("device:mobile1")], ttl_s=30)
        assert grant["granted"] is True
        assert grant["lock_id"].startswith("lck_")
        assert grant["fencing_tokens"] == {"device:mobile1": 1}
        refused = await call(second, "lock_acquire", resources=[ex("device:mobile1")], ttl_s=30)
        assert refused["granted"] is False
        assert refused["conflicts"][0]["holder"] == a["agent"]["id"]
        assert refused["conflicts"][0]["lock_id"] == grant["lock_id"]
        await call(first, "lock_release", lock_id=grant["lock_id"])
        again = await call(second, "lock_acquire", resources=[ex("device:mobile1")], ttl_s=30)
        assert again["granted"] is True
        assert again["fencing_tokens"] == {"device:mobile1": 2}


async def test_overlapping_paths_conflict_both_ways_and_siblings_do_not(fake_connect):
    a, b = await agents(fake_connect, 2)
    async with fake_connect(a["token"]) as first, fake_connect(b["token"]) as second:
        tree = await call(first, "lock_acquire", resources=[ex("repo:/src/**")])
        assert tree["granted"]
        inside = await call(second, "lock_acquire", resources=[ex("repo:/src/app.py")])
        assert not inside["granted"]
        assert inside["conflicts"][0]["blocked_by"] == "repo:/src/**"
        sibling = await call(second, "lock_acquire", resources=[ex("repo:/srcs/app.py"), ex("repo:/docs/**")])
        assert sibling["granted"]
        await call(first, "lock_release", lock_id=tree["lock_id"])
        file = await call(second, "lock_acquire", resources=[ex("repo:/src/app.py")])
        assert file["granted"]
        wider = await call(first, "lock_acquire", resources=[ex("repo:/src/**")])
        assert not wider["granted"]
        assert wider["conflicts"][0]["blocked_by"] == "repo:/src/app.py"


async def test_shared_holders_coexist_and_exclude_exclusive(fake_connect):
    a, b, c = await agents(fake_connect, 3)
    async with fake_connect(a["token"]) as one, fake_connect(b["token"]) as two, fake_connect(c["token"]) as three:
        r1 = await call(one, "lock_acquire", resources=[sh("db:prod")])
        r2 = await call(two, "lock_acquire", resources=[sh("db:prod")])
        assert r1["granted"] and r2["granted"]
        assert r2["fencing_tokens"]["db:prod"] > r1["fencing_tokens"]["db:prod"]
        writer = await call(three, "lock_acquire", resources=[ex("db:prod")])
        assert not writer["granted"]
        assert {c["holder"] for c in writer["conflicts"]} == {a["agent"]["id"], b["agent"]["id"]}


async def test_malformed_names_are_refused_and_change_nothing(fake_connect):
    (a,) = await agents(fake_connect, 1)
    async with fake_connect(a["token"]) as agent:
        for name in ["repo:/src/*", "a//b", "/abs", "trail/", "**", "a/../b", "has space", "x/**/y"]:
            failure = await call_error(agent, "lock_acquire", resources=[ex(name)])
            assert failure.code == "invalid_input", name
        overlap = await call_error(agent, "lock_acquire", resources=[ex("r:/a/**"), ex("r:/a/b")])
        assert overlap.code == "invalid_input"
        assert (await call(agent, "lock_list"))["locks"] == []


async def test_semaphore_admits_capacity_holders(fake_connect):
    holders = await agents(fake_connect, 4)
    async with fake_connect() as admin:
        pool = await call(admin, "resource_set", name="gpu:pool", capacity=3)
        assert pool["capacity"] == 3
    granted = []
    for holder in holders:
        async with fake_connect(holder["token"]) as agent:
            granted.append((await call(agent, "lock_acquire", resources=[ex("gpu:pool")]))["granted"])
    assert granted == [True, True, True, False]
    async with fake_connect(holders[0]["token"]) as agent:
        failure = await call_error(agent, "lock_acquire", resources=[sh("gpu:pool")])
        assert failure.code == "invalid_input"
        assert (await call_error(agent, "resource_set", name="gpu:other", capacity=2)).code == "permission_denied"


async def test_lapsed_lease_is_taken_over_and_the_old_holder_gets_lease_expired(fake_connect, clock):
    a, b = await agents(fake_connect, 2)
    async with fake_connect(a["token"]) as first, fake_connect(b["token"]) as second:
        old = await call(first, "lock_acquire", resources=[ex("deploy:slot")], ttl_s=10)
        clock.advance(5)
        renewed = await call(first, "lock_renew", lock_id=old["lock_id"], ttl_s=10)
        assert renewed["status"] == "held"
        clock.advance(9)
        assert not (await call(second, "lock_acquire", resources=[ex("deploy:slot")]))["granted"]
        clock.advance(2)
        new = await call(second, "lock_acquire", resources=[ex("deploy:slot")], ttl_s=10)
        assert new["granted"]
        assert new["fencing_tokens"]["deploy:slot"] > old["fencing_tokens"]["deploy:slot"]
        assert (await call_error(first, "lock_renew", lock_id=old["lock_id"])).code == "lease_expired"
        assert (await call_error(first, "lock_release", lock_id=old["lock_id"])).code == "lease_expired"


async def test_repeated_request_id_returns_the_same_lock(fake_connect):
    (a,) = await agents(fake_connect, 1)
    async with fake_connect(a["token"]) as agent:
        first = await call(agent, "lock_acquire", resources=[ex("device:x")], request_id="req-1")
        again = await call(agent, "lock_acquire", resources=[ex("device:x")], request_id="req-1")
        assert again["lock_id"] == first["lock_id"]
        assert again["fencing_tokens"] == first["fencing_tokens"]
        other = await call_error(agent, "lock_acquire", resources=[ex("device:y")], request_id="req-1")
        assert other.code == "conflict"
        listed = (await call(agent, "lock_list"))["locks"]
        assert [lock["id"] for lock in listed] == [first["lock_id"]]


async def test_waiter_is_granted_on_release(connect):
    async with connect() as admin:
        a, b = await spawn(admin), await spawn(admin)
    async with connect(a["token"]) as first, connect(b["token"]) as second:
        held = await call(first, "lock_acquire", resources=[ex("device:z")])
        result = {}

        async def wait_for_it():
            result["grant"] = await call(second, "lock_acquire", resources=[ex("device:z")], wait_s=20)

        async with anyio.create_task_group() as group:
            group.start_soon(wait_for_it)
            with anyio.fail_after(10):
                while True:
                    listed = (await call(first, "lock_list", prefix="device:z"))["locks"]
                    if any(lock["status"] == "waiting" for lock in listed):
                        break
                    await anyio.sleep(0.01)
            waiting = [lock for lock in listed if lock["status"] == "waiting"]
            assert waiting[0]["queue_position"] == 1
            await call(first, "lock_release", lock_id=held["lock_id"])
        assert result["grant"]["granted"]
        assert result["grant"]["fencing_tokens"]["device:z"] == 2


async def test_wait_times_out_with_queue_position(connect):
    async with connect() as admin:
        a, b = await spawn(admin), await spawn(admin)
    async with connect(a["token"]) as first, connect(b["token"]) as second:
        await call(first, "lock_acquire", resources=[ex("device:q")])
        failure = await call_error(second, "lock_acquire", resources=[ex("device:q")], wait_s=0.2)
        assert failure.code == "lock_timeout"
        assert "number 1 in the queue" in failure.text
        assert [lock["status"] for lock in (await call(first, "lock_list"))["locks"]] == ["held"]


async def test_two_agent_deadlock_is_refused(connect):
    async with connect() as admin:
        a, b = await spawn(admin), await spawn(admin)
    async with connect(a["token"]) as first, connect(b["token"]) as second:
        await call(first, "lock_acquire", resources=[ex("r:one")])
        await call(second, "lock_acquire", resources=[ex("r:two")])
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: call_error(first, "lock_acquire", resources=[ex("r:two")], wait_s=2))
            with anyio.fail_after(10):
                while not any(lock["status"] == "waiting" for lock in (await call(first, "lock_list"))["locks"]):
                    await anyio.sleep(0.01)
            failure = await call_error(second, "lock_acquire", resources=[ex("r:one")], wait_s=5)
            assert failure.code == "deadlock"
            assert a["agent"]["id"] in failure.text and b["agent"]["id"] in failure.text
            assert "r:one" in failure.text and "r:two" in failure.text
            group.cancel_scope.cancel()
