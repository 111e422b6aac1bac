"""Two `agentfleet serve` replicas on one PostgreSQL store keep one lock table: agents spread over
both contend for overlapping resources and the independent checker finds no conflicting holders,
no semaphore over capacity and no fencing token out of order; and a waiter parked on one replica
is granted by a release on the other and woken by NOTIFY, not by its periodic re-check.

PostgreSQL only: replicas share a store only there (SQLite is one server's file)."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from tests.conftest import REPLICA_TEST, TEST_PROFILES
from tests.helpers import call
from tests.lock_history import EXCLUSIVE, Record
from tests.test_lock_contention import SEMAPHORES, Tally, assert_clean_history, contend, new_seed

if TYPE_CHECKING:
    from tests.serving import FleetServer, ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = REPLICA_TEST

# Tests name database_url before serve: set up first, torn down last, so each PostgreSQL test
# database outlives the servers using it.
ENV = {"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES)}
AGENTS_PER_REPLICA = 6
ROUNDS = 20
RECHECK_S = "30"  # a parked waiter re-reads its lock only after 15..45 s without a wake-up
PARK_WAIT_S = 20
WAKE_DEADLINE_S = 5.0  # far under the 15 s earliest re-check: only NOTIFY explains a wake in time
POLL_S = 0.05


def two_replicas(
    serve: ServeFactory, database_url: str, tmp_path: Path, env: dict[str, str]
) -> tuple[FleetServer, FleetServer]:
    """Replicas A and B: one store and admin token, their own data dirs and ports; started side
    by side (each start is ~2 s of imports, one core each)."""
    with ThreadPoolExecutor(2) as pool:
        starting = [pool.submit(serve, database_url, data_dir=tmp_path / f"replica-{x}", env=env) for x in "ab"]
        a, b = (future.result() for future in starting)
    assert a.port != b.port
    return a, b


async def test_agents_on_two_replicas_never_hold_conflicting_locks(
    database_url: str, serve: ServeFactory, tmp_path: Path
) -> None:
    a, b = two_replicas(serve, database_url, tmp_path, ENV)
    seed = new_seed()
    async with a.mcp() as admin:
        spawned = [
            await call(admin, "agent_spawn", profile="worker", name=f"contender-{i}")
            for i in range(2 * AGENTS_PER_REPLICA)
        ]
        for name, capacity in SEMAPHORES.items():
            await call(admin, "resource_set", name=name, capacity=capacity)
    replica_of = [a, b] * AGENTS_PER_REPLICA
    records: list[Record] = []
    tallies = [Tally() for _ in spawned]
    lock_ids: dict[str, list[str]] = {a.name: [], b.name: []}

    async def agent(i: int) -> None:
        server = replica_of[i]
        mine: list[Record] = []
        async with server.mcp(spawned[i]["token"]) as client:
            await contend(client, spawned[i]["agent"]["id"], random.Random(seed + i), ROUNDS, mine, tallies[i])
        records.extend(mine)
        lock_ids[server.name].extend(r.label for r in mine)

    started = time.monotonic()
    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            for i in range(len(spawned)):
                group.start_soon(agent, i)
    total = Tally()
    for tally in tallies:
        total.add(tally)
    print(f"\nseed {seed}: {total} in {time.monotonic() - started:.1f} s")
    assert lock_ids[a.name] and lock_ids[b.name], "grants did not come through both replicas"
    assert_clean_history(records, total, seed)
    for server in (a, b):  # every grant released, every timed-out request withdrawn
        async with server.mcp() as admin:
            assert (await call(admin, "lock_list"))["locks"] == [], f"seed {seed}: locks left behind on {server.name}"


async def test_a_release_on_one_replica_wakes_a_waiter_parked_on_the_other(
    database_url: str, serve: ServeFactory, tmp_path: Path
) -> None:
    # Re-checks every 15..45 s, the holder's lease 120 s: a waiter on B granted within the deadline
    # below was granted by A's releasing transaction and woken by its NOTIFY reaching B's LISTEN.
    a, b = two_replicas(serve, database_url, tmp_path, {**ENV, "AGENTFLEET_CLAIM_RECHECK_S": RECHECK_S})
    resource = [{"name": "device:handoff", "mode": EXCLUSIVE}]
    async with a.mcp() as admin:
        holder = await call(admin, "agent_spawn", profile="worker", name="holder")
        waiter = await call(admin, "agent_spawn", profile="worker", name="waiter")
    result: dict[str, Any] = {}
    returned = anyio.Event()

    async def park_on_b() -> None:
        async with b.mcp(waiter["token"]) as client:
            result["grant"] = await call(client, "lock_acquire", resources=resource, ttl_s=60, wait_s=PARK_WAIT_S)
            result["at"] = time.monotonic()
            returned.set()

    async with a.mcp(holder["token"]) as on_a:
        held = await call(on_a, "lock_acquire", resources=resource, ttl_s=120)
        assert held["granted"] and held["fencing_tokens"] == {"device:handoff": 1}
        async with anyio.create_task_group() as group:
            group.start_soon(park_on_b)
            with anyio.fail_after(15):
                while True:
                    listed = (await call(on_a, "lock_list", prefix="device:handoff"))["locks"]
                    if any(lock["status"] == "waiting" for lock in listed):
                        break
                    await anyio.sleep(POLL_S)
            await anyio.sleep(0.5)  # past the waiter's first read: it is parked on its wake-up
            returned_early = returned.is_set()
            released_at = time.monotonic()
            released = await call(on_a, "lock_release", lock_id=held["lock_id"])
            with anyio.move_on_after(WAKE_DEADLINE_S):  # a correctness deadline, not a latency goal
                await returned.wait()
            group.cancel_scope.cancel()  # not woken: give up on the wait, and say so below
        assert released["status"] == "released", released
        listed = (await call(on_a, "lock_list", prefix="device:handoff"))["locks"]
    assert not returned_early, f"the waiter returned before the release: {result}"
    assert returned.is_set(), (
        f"the waiter parked on replica B was not woken within {WAKE_DEADLINE_S:.0f} s of the release on "
        "replica A: the cross-replica grant wake-up (NOTIFY) was lost"
    )
    woken_after = result["at"] - released_at
    grant = result["grant"]
    assert grant["granted"], grant
    assert grant["fencing_tokens"] == {"device:handoff": 2}, grant
    assert grant["lock"]["granted_at"] != grant["lock"]["created_at"], "granted without queueing?"
    # The releasing transaction made the grant: B's waiter holds it now, nobody waits.
    assert [(lock["id"], lock["status"]) for lock in listed] == [(grant["lock_id"], "held")]
    assert woken_after < WAKE_DEADLINE_S, woken_after
    print(f"\nwoken {woken_after * 1000:.0f} ms after the release on the other replica")
