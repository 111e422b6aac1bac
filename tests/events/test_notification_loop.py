"""The delivery loop inside a real `agentfleet serve`: an event committed over MCP reaches the
receiver without anyone asking, a failing receiver is retried on the loop's timer, and two replicas
on one PostgreSQL store deliver each event once."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest

from tests.conftest import REPLICA_TEST
from tests.events.receiver import receiver
from tests.helpers import call

if TYPE_CHECKING:
    from tests.serving import ServeFactory

pytest_plugins = ["tests.serving"]

# Backoff of a few tens of milliseconds: retries come due while the test waits.
FAST_RETRIES = {"AGENTFLEET_NOTIFY_BACKOFF_BASE_MS": "20", "AGENTFLEET_NOTIFY_BACKOFF_CAP_MS": "100"}
SECRET = "loop-secret"


async def settled(client, count: int) -> dict:
    """The deliveries once `count` of them are recorded delivered (the receiver answers before the
    outcome is written)."""
    with anyio.fail_after(20):
        while True:
            page = await call(client, "notification_deliveries", status="delivered", limit=100)
            if len(page["deliveries"]) >= count:
                return page
            await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_the_loop_delivers_retries_and_keeps_order(serve: ServeFactory, database_url: str):
    server = serve(database_url, env=FAST_RETRIES)
    async with receiver(answers=[500, 502]) as hook, server.mcp() as admin:
        await call(
            admin, "notification_channel_create", name="live", url=hook.url, event_types=["task.*"], secret=SECRET
        )
        task = await call(admin, "task_submit", type="build")
        await call(admin, "task_cancel", task_id=task["id"])
        got = await hook.wait_for(2)
        page = await settled(admin, 2)
    assert [r.status for r in hook.got] == [500, 502, 200, 200]
    assert [r.json["type"] for r in got] == ["task.submitted", "task.cancelled"]
    assert all(r.signed_with(SECRET) for r in hook.got)
    assert sorted((d["event_type"], d["attempts"], d["status"]) for d in page["deliveries"]) == [
        ("task.cancelled", 1, "delivered"),
        ("task.submitted", 3, "delivered"),
    ]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@REPLICA_TEST[0]
@REPLICA_TEST[2]
async def test_two_replicas_deliver_each_event_once(serve: ServeFactory, database_url: str, tmp_path: Path):
    a = serve(database_url, data_dir=tmp_path / "replica-a")
    b = serve(database_url, data_dir=tmp_path / "replica-b")
    async with receiver() as hook, a.mcp() as on_a, b.mcp() as on_b:
        await call(on_a, "notification_channel_create", name="both", url=hook.url, event_types=["task.submitted"])
        ids = []
        for number in range(20):
            replica = on_a if number % 2 else on_b
            ids.append((await call(replica, "task_submit", type=f"n{number}"))["id"])
        await hook.wait_for(20, timeout=60)
        page = await settled(on_b, 20)
    assert [r.json["subject"] for r in hook.got] == ids or sorted(r.json["subject"] for r in hook.got) == sorted(ids)
    assert len(hook.got) == 20 and len(page["deliveries"]) == 20


@pytest.mark.anyio
@pytest.mark.slow
async def test_sigkill_during_a_burst_loses_nothing(serve: ServeFactory, database_url: str):
    """Killed mid-burst and restarted on the same store, the server delivers every event; the one
    in flight at the kill may arrive twice (at least once), and the order holds."""
    env = {**FAST_RETRIES, "AGENTFLEET_NOTIFY_TIMEOUT_S": "1"}  # a lapsed claim is free 6 s later
    server = serve(database_url, env=env)
    async with receiver(delay_s=0.03) as hook:
        async with server.mcp() as admin:
            await call(admin, "notification_channel_create", name="burst", url=hook.url, event_types=["task.submitted"])
            ids = [(await call(admin, "task_submit", type=f"b{n}"))["id"] for n in range(30)]
        await hook.wait_for(5)
        server.kill()
        assert len(hook.accepted) < len(ids)  # killed mid-burst
        restarted = serve(database_url, env=env)
        with anyio.fail_after(60):
            while {r.json["subject"] for r in hook.accepted} != set(ids):
                await anyio.sleep(0.1)
        async with restarted.mcp() as admin:
            page = await settled(admin, len(ids))
    subjects = [r.json["subject"] for r in hook.accepted]
    assert list(dict.fromkeys(subjects)) == ids  # in order, every one
    assert len(subjects) - len(ids) <= 1  # only the delivery in flight at the kill can repeat
    assert len(page["deliveries"]) == len(ids)
