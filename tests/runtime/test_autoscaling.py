"""Autoscaling on a fake clock: a profile's `autoscale` makes the supervisor spawn real process
agents as servable work queues up (never above max), and retire idle ones (drained, down to min)
only after scale_in_after_s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import yaml
from sqlalchemy import select

from server.clock import FakeClock
from server.runtime import process
from server.runtime.supervisor import Supervisor
from server.services.container import Services, build_services
from server.settings import Settings
from server.store.tables import agents, audit_log
from tests.conftest import ADMIN_TOKEN, connector
from tests.helpers import call

pytestmark = pytest.mark.anyio

NAPPER = """\
name: napper
version: 1.0.0
description: Sleeps; scaled by demand for naps.
runtime: process
capabilities: [nap]
process:
  command: [python, -c, "import time; time.sleep(600)"]
  stop_timeout_s: 2
autoscale: {min: 1, max: 3, tasks_per_agent: 2, scale_in_after_s: 30}
limits: {heartbeat_timeout_s: 3600}
"""


@pytest.fixture
def scaled(tmp_path: Path, database_url: str, clock: FakeClock) -> Iterator[tuple[Services, Supervisor]]:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "napper.yaml").write_text(NAPPER)
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, admin_token=ADMIN_TOKEN, profiles_dir=profiles
    )
    services = build_services(settings, ADMIN_TOKEN, clock=clock)
    supervisor = Supervisor(services.supervision, services.autoscaling, settings)
    services.agents.runner = supervisor.runner()
    yield services, supervisor
    with services.db.engine.connect() as conn:  # no process outlives the test
        for row in conn.execute(agents.select()):
            if row.pid is not None:
                process.signal_group(row.pid, process.signal.SIGKILL)
    services.close()


async def serving(services: Services) -> list[dict]:
    async with connector(services)() as admin:
        listed = await call(admin, "agent_list", profile="napper", limit=100)
    return [a for a in listed["agents"] if a["status"] in ("starting", "active", "stopping")]


async def settle(supervisor: Supervisor, services: Services, until, rounds: int = 100) -> list[dict]:
    """Tick (real time passes for processes to start or exit; the fake clock stands still)."""
    for _ in range(rounds):
        await supervisor.tick()
        agents = await serving(services)
        if until(agents):
            return agents
        await anyio.sleep(0.05)
    raise AssertionError(f"the fleet never settled: {agents}")


def running(agent: dict) -> bool:
    pid = agent["process"]["pid"]
    return pid is not None and process.identity(pid) is not None


async def test_scales_out_with_demand_up_to_max_and_in_after_idling_down_to_min(scaled, clock: FakeClock):
    services, supervisor = scaled
    # min 1: one agent even with no work.
    agents = await settle(supervisor, services, lambda a: len(a) == 1 and all(map(running, a)))
    first = agents[0]["id"]
    assert agents[0]["labels"] == {"autoscaled": "true"}

    async with connector(services)() as admin:
        tasks = [await call(admin, "task_submit", type="nap", capabilities=["nap"]) for _ in range(5)]
    # 5 servable tasks, 2 per agent: 3 agents (ceil 2.5), all started as real processes.
    agents = await settle(supervisor, services, lambda a: len(a) == 3 and all(map(running, a)))
    pids = {a["id"]: a["process"]["pid"] for a in agents}

    async with connector(services)() as admin:
        for _ in range(6):
            await call(admin, "task_submit", type="nap", capabilities=["nap"])
    for _ in range(5):
        await supervisor.tick()
    assert len(await serving(services)) == 3, "max is 3 whatever the queue"

    async with connector(services)() as admin:
        for task in (await call(admin, "task_list", status="queued", limit=100))["tasks"]:
            await call(admin, "task_cancel", task_id=task["id"])
    assert len(tasks) == 5
    # No demand, but nobody is retired before scale_in_after_s of idleness.
    clock.advance(29)
    for _ in range(3):
        await supervisor.tick()
    assert len(await serving(services)) == 3

    clock.advance(2)
    agents = await settle(supervisor, services, lambda a: len(a) == 1)
    assert agents[0]["id"] == first, "the youngest agents retire first"
    retired = [agent_id for agent_id in pids if agent_id != first]
    async with connector(services)() as admin:
        for agent_id in retired:
            gone = await call(admin, "agent_get", agent_id=agent_id)
            assert gone["status"] == "terminated"
            assert process.identity(pids[agent_id]) is None, "a retired agent's process is gone"
        audit = await call(admin, "audit_query", action="agent.scale_in", limit=10)
    assert sorted(row["subject"] for row in audit["entries"]) == sorted(retired)
    assert running(agents[0])


async def test_scale_out_follows_the_rollout_of_a_version_registered_at_runtime(scaled):
    services, _ = scaled
    async with connector(services)() as admin:
        await call(admin, "profile_register", definition=yaml.safe_load(NAPPER) | {"version": "1.1.0"})
        await call(admin, "profile_rollout_set", name="napper", versions={"1.0.0": 50, "1.1.0": 50})
        for _ in range(6):
            await call(admin, "task_submit", type="nap", capabilities=["nap"])
    services.profiles.rng.seed(7)
    changes = await services.autoscaling.rebalance("replica-test")
    assert len(changes) == 1 and len(changes[0].added) == 3  # max 3
    with services.db.engine.connect() as conn:
        versions = {
            row.id: row.profile_version
            for row in conn.execute(select(agents.c.id, agents.c.profile_version).where(agents.c.profile == "napper"))
        }
        chosen = [
            detail["chosen_by"]
            for detail in conn.execute(
                select(audit_log.c.detail).where(
                    audit_log.c.action == "agent.spawn", audit_log.c.subject.in_(changes[0].added)
                )
            ).scalars()
        ]
    assert set(versions) == set(changes[0].added)
    assert set(versions.values()) <= {"1.0.0", "1.1.0"} and chosen == ["rollout"] * 3
    services.profiles.rng.seed(7)
    expected = [services.profiles.choose("napper")[0].version for _ in range(3)]
    assert sorted(versions.values()) == sorted(expected)  # the seeded rollout's picks, recorded per agent
