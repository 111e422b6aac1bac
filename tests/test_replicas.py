"""Two `agentfleet serve` replicas on one PostgreSQL store act as one fleet: claimers on both share
the queue without a task ever being claimed twice, and work submitted on one replica wakes a claim
parked on the other (LISTEN/NOTIFY), not a periodic re-check.

PostgreSQL only: replicas share a store only there (SQLite is one server's file)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from server.services.audit import verify_chain
from server.store.database import normalize_url
from server.store.tables import audit_log, task_attempts, tasks
from tests.conftest import REPLICA_TEST, TEST_PROFILES
from tests.helpers import call
from tests.workers.mcp_claimer import ClaimerProcess

if TYPE_CHECKING:
    from tests.serving import FleetServer, ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = REPLICA_TEST

# Tests name database_url before serve: set up first, torn down last, so each PostgreSQL test
# database outlives the servers using it.
ENV = {"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES)}
TASKS = 300
CLAIMERS_PER_REPLICA = 2
SUBMIT_LANES = 4  # per replica
READY_DEADLINE_S = 60.0
DRAIN_DEADLINE_S = 120.0
WAKE_DEADLINE_S = 10.0  # well under the 30 s re-check and the 25 s wait
POLL_S = 0.1


def two_replicas(
    serve: ServeFactory, database_url: str, tmp_path: Path, env: dict[str, str]
) -> tuple[FleetServer, FleetServer]:
    """Replicas A and B: one store and admin token, their own data dirs and ports."""
    a = serve(database_url, data_dir=tmp_path / "replica-a", env=env)
    b = serve(database_url, data_dir=tmp_path / "replica-b", env=env)
    assert a.port != b.port
    return a, b


async def submit(server: FleetServer, numbers: range, ids: list[str]) -> None:
    async with anyio.create_task_group() as group:
        for lane in range(SUBMIT_LANES):
            group.start_soon(_submit_lane, server, numbers[lane::SUBMIT_LANES], ids)


async def _submit_lane(server: FleetServer, numbers: range, ids: list[str]) -> None:
    async with server.mcp() as admin:
        for i in numbers:
            ids.append((await call(admin, "task_submit", type="replicated", payload={"i": i}))["id"])


async def wait_for(condition: Any, deadline_s: float, what: str, explain: Any) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {deadline_s:.0f} s\n{explain()}")
        await anyio.sleep(POLL_S)


async def test_claimers_on_two_replicas_complete_each_task_exactly_once(
    database_url: str, serve: ServeFactory, tmp_path: Path
) -> None:
    a, b = two_replicas(serve, database_url, tmp_path, ENV)
    async with a.mcp() as admin:
        spawned = [
            await call(admin, "agent_spawn", profile="worker", name=f"replicated-{i}")
            for i in range(2 * CLAIMERS_PER_REPLICA)
        ]
    # The claimers start up (and wait for "go") while the work is submitted.
    replica_of = [a] * CLAIMERS_PER_REPLICA + [b] * CLAIMERS_PER_REPLICA
    claimers = [
        ClaimerProcess(
            server.url("/mcp"), agent["token"], tmp_path / "claimers", f"claimer-{i}", wait_s=0.5, wait_for_go=True
        )
        for i, (server, agent) in enumerate(zip(replica_of, spawned, strict=True))
    ]

    def explain() -> str:
        return "\n".join(c.output() for c in claimers)

    try:
        submitted: list[str] = []
        async with anyio.create_task_group() as group:  # half the work arrives through each replica
            group.start_soon(submit, a, range(0, TASKS, 2), submitted)
            group.start_soon(submit, b, range(1, TASKS, 2), submitted)
        assert len(set(submitted)) == TASKS
        # All connected before any claims, so neither replica's pair drains the queue alone.
        await wait_for(
            lambda: all(c.events("ready") or c.returncode is not None for c in claimers),
            READY_DEADLINE_S,
            "the claimers did not connect",
            explain,
        )
        for claimer in claimers:
            claimer.go()
        await wait_for(
            lambda: all(c.returncode is not None for c in claimers),
            DRAIN_DEADLINE_S,
            "the claimers did not drain the queue",
            explain,
        )
    finally:
        for claimer in claimers:
            claimer.kill()
    for claimer in claimers:
        assert claimer.returncode == 0, claimer.output()

    claims = [
        (agent["agent"]["id"], task_id, server.name)
        for server, agent, claimer in zip(replica_of, spawned, claimers, strict=True)
        for task_id in claimer.tasks("claimed")
    ]
    per_task = Counter(task_id for _, task_id, _ in claims)
    assert set(per_task) == set(submitted), "a task was never claimed (or a claim named an unknown task)"
    twice = [task_id for task_id, n in per_task.items() if n > 1]
    assert not twice, f"{len(twice)} tasks claimed more than once, e.g. {twice[:5]}"
    per_replica = Counter(server for _, _, server in claims)
    assert per_replica[a.name] > 0 and per_replica[b.name] > 0, per_replica
    for claimer in claimers:  # and each claim's completion was acknowledged to its claimer
        assert claimer.tasks("claimed") == claimer.tasks("completed"), claimer.output()

    engine = create_engine(normalize_url(database_url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = {row.id: row for row in conn.execute(select(tasks.c.id, tasks.c.status, tasks.c.agent_id))}
            attempts = conn.execute(
                select(task_attempts.c.task_id, task_attempts.c.agent_id, task_attempts.c.outcome)
            ).all()
            chain = verify_chain(conn)
            audited = conn.execute(select(func.count()).select_from(audit_log)).scalar_one()
    finally:
        engine.dispose()
    # Both replicas wrote the audit trail at once: unbroken chains, no seq taken twice or skipped.
    assert chain.intact and chain.rows == audited >= 3 * TASKS, chain
    assert sum(seq for seq, _ in chain.heads.values()) == audited
    assert set(rows) == set(submitted)
    assert Counter(row.status for row in rows.values()) == {"completed": TASKS}
    assert Counter(task_id for task_id, _, _ in attempts) == Counter(submitted), "not one attempt row per task"
    holder = {task_id: agent_id for agent_id, task_id, _ in claims}
    for task_id, agent_id, outcome in attempts:
        assert (agent_id, outcome) == (holder[task_id], "completed"), task_id
        assert rows[task_id].agent_id == holder[task_id], task_id


async def test_work_submitted_on_one_replica_wakes_a_claim_parked_on_the_other(
    database_url: str, serve: ServeFactory, tmp_path: Path
) -> None:
    # The safety re-check comes only every 30 s and the claim waits 25 s: a wake-up within the
    # deadline below can only have come from B's NOTIFY reaching A's LISTEN.
    a, b = two_replicas(serve, database_url, tmp_path, {**ENV, "AGENTFLEET_CLAIM_RECHECK_S": "30"})
    async with b.mcp() as admin_b:
        spawned = await call(admin_b, "agent_spawn", profile="worker", name="parked")
        agent_id = spawned["agent"]["id"]
        claimed: dict[str, Any] = {}
        returned = anyio.Event()

        async def park_on_a() -> None:
            async with a.mcp(spawned["token"]) as agent:
                claimed.update(await call(agent, "task_claim", wait_s=25))
                returned.set()

        async with anyio.create_task_group() as group:
            group.start_soon(park_on_a)
            # The claim's first try marks the agent active; it parks right after, in the same request.
            with anyio.fail_after(15):
                while (await call(admin_b, "agent_get", agent_id=agent_id))["status"] != "active":
                    await anyio.sleep(POLL_S)
            await anyio.sleep(0.5)  # grace for the re-check that directly follows parking
            returned_early = returned.is_set()
            task = await call(admin_b, "task_submit", type="wake", payload={"from": "replica B"})
            with anyio.move_on_after(WAKE_DEADLINE_S):  # a correctness deadline, not a latency goal
                await returned.wait()
            group.cancel_scope.cancel()  # not woken: give up on the claim, and say so below
    assert not returned_early, f"the claim returned before any work existed: {claimed}"
    assert returned.is_set(), (
        f"the claim parked on replica A was not woken within {WAKE_DEADLINE_S:.0f} s of "
        "the submit on replica B: the cross-replica wake-up (LISTEN/NOTIFY) was lost"
    )
    assert claimed["task"] is not None, claimed
    assert claimed["task"]["id"] == task["id"]
    assert claimed["task"]["agent_id"] == agent_id
