"""Rate limits (issue 9): one token bucket per principal, kept in the store and shared by replicas.

Time matters here, so every test runs on a FakeClock: a bucket refills only when the test says.
The `throttled` profile (tests/profiles/throttled.yaml) allows 1 call/s with a burst of 3."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator

import anyio
import pytest
from sqlalchemy import func, select

from server.services.audit import verify_chain
from server.services.container import Services, build_services
from server.store.tables import audit_log, rate_buckets, tasks
from tests.conftest import ADMIN_TOKEN, Connect, connector
from tests.helpers import ToolFailed, call, call_error

pytestmark = pytest.mark.anyio

RETRY = re.compile(r"retry in (\d+\.\d{3}) s")


@pytest.fixture
def limited(settings, clock) -> Iterator[Callable[..., tuple[Services, Connect]]]:
    """limited(**settings overrides) -> (services, connect) on the test's store and fake clock."""
    built: list[Services] = []

    def make(**overrides) -> tuple[Services, Connect]:
        services = build_services(dataclasses.replace(settings, **overrides), ADMIN_TOKEN, clock=clock)
        built.append(services)
        return services, connector(services)

    yield make
    for services in built:
        services.close()


def count(services: Services, table, *where) -> int:
    with services.db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def bucket(services: Services, principal: str):
    with services.db.engine.connect() as conn:
        return conn.execute(select(rate_buckets).where(rate_buckets.c.principal == principal)).first()


def retry_s(refusal: ToolFailed) -> float:
    assert refusal.code == "rate_limited", refusal.text
    found = RETRY.search(refusal.text)
    assert found is not None, refusal.text
    return float(found[1])


async def spawn(connect: Connect, profile: str) -> tuple[str, str]:
    async with connect() as admin:
        spawned = await call(admin, "agent_spawn", profile=profile)
    return spawned["agent"]["id"], spawned["token"]


async def test_a_throttled_agent_gets_its_burst_then_rate_limited(fake_time_services, fake_connect, clock):
    services = fake_time_services
    agent_id, token = await spawn(fake_connect, "throttled")
    async with fake_connect(token) as agent:
        for n in range(3):
            await call(agent, "task_submit", type="build", payload={"n": n})
        audit_rows = count(services, audit_log)
        before = bucket(services, agent_id)
        assert before.tokens == 0

        refused = await call_error(agent, "task_submit", type="build", payload={"n": 3}, reason="one more")
        assert retry_s(refused) == 1.0
        assert agent_id in refused.text
        # Nothing changed but one audit row: no task, and the bucket is as it was.
        assert count(services, tasks) == 3
        assert tuple(bucket(services, agent_id)) == tuple(before)
        assert count(services, audit_log) == audit_rows + 1
        async with fake_connect() as admin:
            [row] = (await call(admin, "audit_query", action="request.refused"))["entries"]
        assert row["principal"] == agent_id and row["role"] == "agent" and row["reason"] == "one more"
        assert row["detail"]["request"] == "task_submit" and row["detail"]["code"] == "rate_limited"

        clock.advance(0.5)  # half a token: still refused, and told to wait the other half
        assert retry_s(await call_error(agent, "fleet_status")) == 0.5
        clock.advance(0.5)  # the refused calls took nothing: a whole token now
        await call(agent, "task_submit", type="build", payload={"n": 4})
        assert retry_s(await call_error(agent, "task_get", task_id="tsk_0000000000000000000000000")) == 1.0

        clock.advance(3600)  # a long rest refills only up to the burst
        for _ in range(3):
            await call(agent, "fleet_status")
        await call_error(agent, "fleet_status")
    assert count(services, tasks) == 4
    assert count(services, audit_log, audit_log.c.action == "request.refused") == 4
    assert services.db.read_sync(verify_chain).intact


async def test_the_admin_is_never_limited(limited, clock):
    services, connect = limited(rate_limit_per_s=1, rate_limit_burst=1)
    async with connect() as admin:
        for n in range(12):
            await call(admin, "task_submit", type="build", payload={"n": n})
        second = await call(admin, "token_create", name="root2", role="admin")
    async with connect(second["token"]) as also_admin:  # an admin-role token is exempt as well
        for _ in range(5):
            await call(also_admin, "fleet_status")
    assert count(services, tasks) == 12
    assert count(services, rate_buckets) == 0
    assert count(services, audit_log, audit_log.c.action == "request.refused") == 0


async def test_rate_limit_per_s_zero_turns_limits_off(limited, clock):
    services, connect = limited(rate_limit_per_s=0, rate_limit_burst=1)
    async with connect() as admin:
        viewer = await call(admin, "token_create", name="watcher", role="viewer")
        spawned = await call(admin, "agent_spawn", profile="worker")
    async with connect(viewer["token"]) as watcher, connect(spawned["token"]) as worker:
        for n in range(8):
            await call(watcher, "fleet_status")
            await call(worker, "task_submit", type="build", payload={"n": n})
    assert count(services, tasks) == 8
    assert count(services, rate_buckets) == 0


async def test_settings_limit_operator_tokens_and_agents_each_in_their_own_bucket(limited, clock):
    services, connect = limited(rate_limit_per_s=1, rate_limit_burst=2)
    async with connect() as admin:
        operator = await call(admin, "token_create", name="ops", role="operator")
        viewer = await call(admin, "token_create", name="eyes", role="viewer")
        spawned = await call(admin, "agent_spawn", profile="worker")
    async with connect(operator["token"]) as ops, connect(viewer["token"]) as eyes:
        await call(ops, "task_submit", type="build")
        await call(ops, "fleet_status")
        refused = await call_error(ops, "task_submit", type="build")
        assert retry_s(refused) == 1.0 and "ops" in refused.text and "burst 2" in refused.text
        for _ in range(2):  # another principal, another bucket
            await call(eyes, "fleet_status")
        assert (await call_error(eyes, "fleet_status")).code == "rate_limited"
        async with connect(spawned["token"]) as worker:  # no profile limits: the settings apply
            await call(worker, "agent_heartbeat")
            await call(worker, "agent_heartbeat")
            assert (await call_error(worker, "agent_heartbeat")).code == "rate_limited"
        clock.advance(1)
        await call(ops, "task_submit", type="build")
        assert (await call_error(ops, "task_submit", type="build")).code == "rate_limited"
    assert count(services, tasks) == 2
    assert {row.principal for row in _buckets(services)} == {"ops", "eyes", spawned["agent"]["id"]}


def _buckets(services: Services):
    with services.db.engine.connect() as conn:
        return conn.execute(select(rate_buckets)).all()


async def test_a_profile_overrides_the_settings(limited, clock):
    _, connect = limited(rate_limit_per_s=1000, rate_limit_burst=1000)
    _, token = await spawn(connect, "throttled")
    async with connect(token) as agent:
        for _ in range(3):
            await call(agent, "fleet_status")
        assert (await call_error(agent, "fleet_status")).code == "rate_limited"


async def test_resource_reads_draw_from_the_same_bucket(fake_connect, clock):
    agent_id, token = await spawn(fake_connect, "throttled")
    async with fake_connect(token) as agent:
        for _ in range(3):
            read = await agent.read_resource(f"agentfleet://agents/{agent_id}")
            assert agent_id in read.contents[0].text
        assert (await call_error(agent, "fleet_status")).code == "rate_limited"
        with pytest.raises(Exception) as refused:  # noqa: B017 - the SDK's error type for a failed read
            await agent.read_resource(f"agentfleet://agents/{agent_id}")
    assert "rate_limited" in str(refused.value) and "retry in" in str(refused.value)
    async with fake_connect() as admin:
        refusals = (await call(admin, "audit_query", actor=agent_id, action="request.refused"))["entries"]
    assert [(r["detail"]["request"], r["subject"]) for r in refusals] == [
        ("agent_get", agent_id),
        ("fleet_status", "fleet_status"),
    ]


@pytest.mark.parametrize("calls,burst", [(24, 5)])
async def test_concurrent_calls_by_one_agent_never_overdraw_the_bucket(limited, clock, calls, burst):
    """Two server instances on one store (replicas), one agent calling through both at once:
    exactly `burst` calls get through, because taking a token is one conditional upsert. The
    first round races to create the bucket, the second (after a refill) to update it."""
    services, connect = limited(rate_limit_per_s=1, rate_limit_burst=burst)
    _, other_connect = limited(rate_limit_per_s=1, rate_limit_burst=burst)
    agent_id, token = await spawn(connect, "worker")

    async def burst_round(first, second, round_no: int) -> list[str]:
        outcomes: list[str] = []

        async def submit(client, n: int) -> None:
            result = await client.call_tool("task_submit", {"type": "build", "payload": {"round": round_no, "n": n}})
            outcomes.append(result.content[0].text.split(":", 1)[0] if result.is_error else "ok")

        async with anyio.create_task_group() as group:
            for n in range(calls):
                group.start_soon(submit, first if n % 2 else second, n)
        return sorted(outcomes)

    expected = ["ok"] * burst + ["rate_limited"] * (calls - burst)
    async with connect(token) as first, other_connect(token) as second:
        assert await burst_round(first, second, 1) == expected
        assert bucket(services, agent_id).tokens == 0
        clock.advance(3600)
        assert await burst_round(first, second, 2) == expected

    assert count(services, tasks) == 2 * burst
    assert bucket(services, agent_id).tokens == 0
    refusals = count(services, audit_log, audit_log.c.action == "request.refused", audit_log.c.principal == agent_id)
    assert refusals == 2 * (calls - burst)
    assert services.db.read_sync(verify_chain).intact
