"""SIGKILL in the middle of a claim/complete storm: a restarted server on the same store loses no
acknowledged task and no acknowledged completion, every task still ends completed exactly once,
and leases held at the kill come back through the reaper (architecture: "The SQL store is the
only state"; "Concurrency claims are tested with concurrency: … SIGKILL mid-load")."""

from __future__ import annotations

import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.pool import NullPool

from server.store.database import normalize_url
from server.store.tables import task_attempts, tasks
from tests.conftest import TEST_PROFILES
from tests.helpers import call
from tests.workers.mcp_claimer import DISCONNECTED, ClaimerProcess

if TYPE_CHECKING:
    from tests.serving import FleetServer, ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TASKS = 200
WORKERS = 3
KILL_AFTER = 40  # acknowledged completions before the SIGKILL: mid-storm, well before the end
ABANDONED = 3  # tasks the test claims and never finishes: certainly running at the kill
LEASE_S = 5  # the shortest lease task_submit allows: lapsed leases come back fast
SUBMIT_LANES = 8
ENV = {"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES), "AGENTFLEET_REAPER_INTERVAL_S": "0.2"}
STORM_DEADLINE_S = 60.0
DRAIN_DEADLINE_S = 90.0
EXIT_DEADLINE_S = 30.0
POLL_S = 0.1


@contextmanager
def store_reader(database_url: str) -> Iterator[Engine]:
    """A plain engine on the server's store, for reading only (no BEGIN IMMEDIATE on SQLite: reading
    must not take the write lock from the server under test)."""
    engine = create_engine(normalize_url(database_url), poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def statuses(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(tasks.c.id, tasks.c.status)).all())


def attempt_history(engine: Engine) -> dict[str, list[tuple[int, str, str | None]]]:
    """task id -> [(attempt number, agent id, outcome)] in attempt order."""
    history: dict[str, list[tuple[int, str, str | None]]] = defaultdict(list)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                task_attempts.c.task_id, task_attempts.c.number, task_attempts.c.agent_id, task_attempts.c.outcome
            ).order_by(task_attempts.c.task_id, task_attempts.c.number)
        )
        for task_id, number, agent_id, outcome in rows:
            history[task_id].append((number, agent_id, outcome))
    return dict(history)


async def submit_all(server: FleetServer) -> list[str]:
    """Submit TASKS tasks over MCP HTTP from several concurrent lanes; return the acknowledged ids."""
    acknowledged: list[str] = []

    async def lane(start: int) -> None:
        async with server.mcp() as admin:
            for i in range(start, TASKS, SUBMIT_LANES):
                task = await call(
                    admin,
                    "task_submit",
                    type="storm",
                    payload={"i": i},
                    lease_s=LEASE_S,
                    max_attempts=10,
                    backoff_base_s=0.05,
                    backoff_cap_s=0.5,
                )
                acknowledged.append(task["id"])

    async with anyio.create_task_group() as group:
        for start in range(SUBMIT_LANES):
            group.start_soon(lane, start)
    return acknowledged


async def wait_until(condition: Any, deadline_s: float, what: str, explain: Any = lambda: "") -> None:
    """Poll `condition()` until true; fail with `what` (and `explain()`) after deadline_s."""
    deadline = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {deadline_s:.0f} s\n{explain()}")
        await anyio.sleep(POLL_S)


def outputs(claimers: list[ClaimerProcess]) -> str:
    return "\n".join(c.output() for c in claimers)


async def test_sigkill_mid_storm_loses_no_acknowledged_task_or_completion(
    database_url: str, serve: ServeFactory, tmp_path: Path
) -> None:
    # database_url first: it is set up first and torn down last, after the servers have stopped.
    data_dir, logs = tmp_path / "data", tmp_path / "claimers"
    first = serve(database_url, data_dir=data_dir, env=ENV)
    async with first.mcp() as admin:
        spawned = [await call(admin, "agent_spawn", profile="worker", name=f"storm-{i}") for i in range(WORKERS)]
        stalled = await call(admin, "agent_spawn", profile="worker", name="stalled")
    workers = [(a["agent"]["id"], a["token"]) for a in spawned]
    submitted = await submit_all(first)
    assert len(set(submitted)) == TASKS

    storm = [ClaimerProcess(first.url("/mcp"), token, logs, f"storm-{i}") for i, (_, token) in enumerate(workers)]
    stop_file = tmp_path / "all-done"
    drain: list[ClaimerProcess] = []
    try:

        def acked() -> int:
            return sum(len(c.tasks("completed")) for c in storm)

        async with first.mcp(stalled["token"]) as agent:
            await wait_until(
                lambda: acked() >= KILL_AFTER,
                STORM_DEADLINE_S,
                f"{KILL_AFTER} completions were not acknowledged",
                lambda: outputs(storm) + first.output(),
            )
            # Leases that will still be held at the kill, whatever the claimers happen to hold then.
            abandoned = {(await call(agent, "task_claim"))["task"]["id"] for _ in range(ABANDONED)}
        assert first.kill() == -signal.SIGKILL
        assert len(abandoned) == ABANDONED
        await wait_until(
            lambda: all(c.returncode is not None for c in storm),
            EXIT_DEADLINE_S,
            "the storm's claimers did not notice the server died",
            lambda: outputs(storm),
        )
        for claimer in storm:
            assert claimer.returncode == DISCONNECTED, claimer.output()
        acked_before_kill = [
            (task_id, agent_id)
            for (agent_id, _), c in zip(workers, storm, strict=True)
            for task_id in c.tasks("completed")
        ]
        assert KILL_AFTER <= len(acked_before_kill) < TASKS - ABANDONED, "the kill did not land mid-storm"
        with store_reader(database_url) as engine:
            at_kill = statuses(engine)
        running_at_kill = {task_id for task_id, status in at_kill.items() if status == "running"}
        assert abandoned <= running_at_kill

        second = serve(database_url, data_dir=data_dir, env=ENV)  # a restart on the same store and data dir
        drain = [
            ClaimerProcess(second.url("/mcp"), token, logs, f"drain-{i}", stop_file=stop_file)
            for i, (_, token) in enumerate(workers)
        ]
        with store_reader(database_url) as engine:

            def all_completed() -> bool:
                if any(c.returncode is not None for c in drain):
                    pytest.fail(f"a claimer stopped before the queue was drained\n{outputs(drain)}")
                return Counter(statuses(engine).values()) == {"completed": TASKS}

            await wait_until(
                all_completed,
                DRAIN_DEADLINE_S,
                "the restarted server did not finish every task",
                lambda: f"statuses: {Counter(statuses(engine).values())}\n{outputs(drain)}{second.output()}",
            )
            stop_file.touch()
            await wait_until(
                lambda: all(c.returncode is not None for c in drain),
                EXIT_DEADLINE_S,
                "the claimers did not stop once the work was done",
                lambda: outputs(drain),
            )
            for claimer in drain:
                assert claimer.returncode == 0, claimer.output()
            final = statuses(engine)
            history = attempt_history(engine)
    finally:
        for claimer in storm + drain:
            claimer.kill()

    # Every acknowledged task exists, and nothing else does.
    assert set(final) == set(submitted)
    # Every task ended completed, with exactly one `completed` attempt and no attempt left open.
    assert set(final.values()) == {"completed"}
    for task_id in submitted:
        outcomes = [outcome for _, _, outcome in history[task_id]]
        assert outcomes.count("completed") == 1, (task_id, history[task_id])
        assert outcomes[-1] == "completed", (task_id, history[task_id])
        assert set(outcomes) <= {"completed", "expired"}, (task_id, history[task_id])
    completed_by = {
        task_id: next(agent for _, agent, outcome in attempts if outcome == "completed")
        for task_id, attempts in history.items()
    }

    # Every completion acknowledged before the kill is in the store, by the agent that was told so.
    for task_id, agent_id in acked_before_kill:
        assert completed_by[task_id] == agent_id, (
            "acknowledged as completed by this agent before the kill, "
            f"but the store says otherwise: {task_id} {agent_id}",
            history[task_id],
        )
    acked_after = [
        (task_id, agent_id) for (agent_id, _), c in zip(workers, drain, strict=True) for task_id in c.tasks("completed")
    ]
    acked_all = Counter(task_id for task_id, _ in acked_before_kill + acked_after)
    assert set(acked_all.values()) == {1}, f"completions acknowledged twice: {acked_all.most_common(3)}"
    for task_id, agent_id in acked_after:
        assert completed_by[task_id] == agent_id, (task_id, history[task_id])
    # Completions that no claimer heard about: only those in flight at the kill (one per claimer).
    unheard = set(submitted) - set(acked_all)
    assert len(unheard) <= WORKERS, unheard
    assert all(completed_by[t] in {a for a, _ in workers} for t in unheard)

    # Leases held at the kill came back through the reaper: their history shows the lapse.
    for task_id in running_at_kill:
        outcomes = [outcome for _, _, outcome in history[task_id]]
        assert "expired" in outcomes, (task_id, history[task_id])
    for task_id in abandoned:
        assert history[task_id][0][1:] == (stalled["agent"]["id"], "expired"), history[task_id]
    # And no other lease lapsed, except where a claimer was told so (a completion refused as late).
    refused = {task_id for c in storm + drain for task_id in c.tasks("complete_refused")}
    lapsed = {task_id for task_id, attempts in history.items() if any(o == "expired" for _, _, o in attempts)}
    assert lapsed <= running_at_kill | refused, lapsed - running_at_kill - refused
