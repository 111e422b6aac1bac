"""Many concurrent claimers — asyncio tasks in one process and several OS processes — over many
tasks: no task is ever held by two agents at once, and each completes exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import anyio
import pytest
from sqlalchemy import func, select

from server.store.tables import task_attempts, tasks
from tests.helpers import call

pytestmark = pytest.mark.anyio


def assert_each_task_done_exactly_once(services, expected: int, claims: list[tuple[str, str]]) -> None:
    """claims: (agent_id, task_id) for every successful claim observed by the claimers."""
    claimed_ids = Counter(task_id for _, task_id in claims)
    assert len(claimed_ids) == expected and set(claimed_ids.values()) == {1}, "a task was claimed twice"
    with services.db.engine.connect() as conn:
        statuses = dict(conn.execute(select(tasks.c.status, func.count()).group_by(tasks.c.status)).all())
        assert statuses == {"completed": expected}
        per_task = conn.execute(
            select(task_attempts.c.task_id, func.count(), func.min(task_attempts.c.outcome)).group_by(
                task_attempts.c.task_id
            )
        ).all()
        holders = dict(conn.execute(select(tasks.c.id, tasks.c.agent_id)).all())
    assert len(per_task) == expected
    assert all(count == 1 and outcome == "completed" for _, count, outcome in per_task)
    assert all(holders[task_id] == agent_id for agent_id, task_id in claims)


async def test_asyncio_claimers_share_the_queue_without_double_claims(connect, services):
    agents_n, tasks_n = 12, 300
    async with connect() as admin:
        spawned = [await call(admin, "agent_spawn", profile="worker") for _ in range(agents_n)]
        for i in range(tasks_n):
            await call(admin, "task_submit", type="unit", payload={"i": i})
    claims: list[tuple[str, str]] = []

    async def claimer(agent) -> None:
        async with connect(agent["token"]) as client:
            while True:
                got = (await call(client, "task_claim", wait_s=0.2))["task"]
                if got is None:
                    return
                claims.append((agent["agent"]["id"], got["id"]))
                await call(client, "task_complete", task_id=got["id"], result={"i": got["payload"]["i"]})

    with anyio.fail_after(240):
        async with anyio.create_task_group() as group:
            for agent in spawned:
                group.start_soon(claimer, agent)
    assert_each_task_done_exactly_once(services, tasks_n, claims)
    busy = Counter(agent_id for agent_id, _ in claims)
    assert len(busy) > 1, "one claimer took everything: there was no contention to test"


async def test_os_process_claimers_share_the_queue_without_double_claims(connect, services, database_url):
    processes_n, agents_per_process, tasks_n = 4, 3, 400
    async with connect() as admin:
        spawned = [await call(admin, "agent_spawn", profile="worker") for _ in range(processes_n * agents_per_process)]
        for i in range(tasks_n):
            await call(admin, "task_submit", type="unit", payload={"i": i})
    by_tail = {a["token"][-6:]: a["agent"]["id"] for a in spawned}
    groups = [spawned[i::processes_n] for i in range(processes_n)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.workers.service_claimer", database_url, *[a["token"] for a in group]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for group in groups
    ]
    claims: list[tuple[str, str]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        for line in out.splitlines():
            record = json.loads(line)
            claims.extend((by_tail[record["token_tail"]], task_id) for task_id in record["completed"])
    assert_each_task_done_exactly_once(services, tasks_n, claims)
    assert len({agent_id for agent_id, _ in claims}) > processes_n, "claims did not spread across processes"
