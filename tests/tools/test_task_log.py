"""task_log through the MCP client: the holder of a task's current attempt appends lines, bounded
per attempt; task_get shows the tail; nobody else may write, and a refused call changes nothing."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from sqlalchemy import select

from server.services.task_logs import MAX_LINES_PER_ATTEMPT, TAIL_LINES
from server.store.tables import task_logs
from tests.helpers import call, call_error
from tests.tools.test_bad_input import snapshot

pytestmark = pytest.mark.anyio


async def claimed_task(admin: Any, agent: Any, **spec: Any) -> dict[str, Any]:
    await call(admin, "task_submit", type="build", **spec)
    task = (await call(agent, "task_claim"))["task"]
    assert task is not None
    return task


async def test_the_holder_logs_lines_and_text_and_task_get_shows_the_tail(connect: Any) -> None:
    async with connect() as admin:
        worker = await call(admin, "agent_spawn", profile="worker")
        other = await call(admin, "agent_spawn", profile="worker")
        async with connect(worker["token"]) as agent, connect(other["token"]) as stranger:
            task = await claimed_task(admin, agent)
            first = await call(agent, "task_log", task_id=task["id"], lines=["compiling", "linking"])
            assert first == {"task_id": task["id"], "attempt": 1, "appended": 2, "total": 2, "kept": 2}
            second = await call(
                agent, "task_log", task_id=task["id"], text="warning: slow disk\nretrying\n", level="warning"
            )
            assert (second["appended"], second["total"]) == (2, 4)

            refused = await call_error(stranger, "task_log", task_id=task["id"], lines=["not mine"])
            assert refused.code == "permission_denied"
            assert (await call_error(admin, "task_log", task_id=task["id"], lines=["admin"])).code == (
                "permission_denied"
            )
            shown = await call(admin, "task_get", task_id=task["id"])
            assert [(x["attempt"], x["seq"], x["level"], x["line"]) for x in shown["log_tail"]] == [
                (1, 1, "info", "compiling"),
                (1, 2, "info", "linking"),
                (1, 3, "warning", "warning: slow disk"),
                (1, 4, "warning", "retrying"),
            ]
            await call(agent, "task_complete", task_id=task["id"], result={})
            done = await call_error(agent, "task_log", task_id=task["id"], lines=["too late"])
            assert done.code == "conflict"
            queued = await call(admin, "task_submit", type="build")
            assert (await call(admin, "task_get", task_id=queued["id"]))["log_tail"] == []


async def test_each_attempt_keeps_its_newest_lines_and_the_tail_follows_the_retry(connect: Any, services: Any) -> None:
    async with connect() as admin:
        worker = await call(admin, "agent_spawn", profile="worker")
        async with connect(worker["token"]) as agent:
            task = await claimed_task(admin, agent, backoff_base_s=0.01, backoff_cap_s=0.01)
            for part in range(6):  # 1,200 lines in calls of 200
                lines = [f"line {part * 200 + i}" for i in range(200)]
                receipt = await call(agent, "task_log", task_id=task["id"], lines=lines)
            assert receipt["total"] == 1200 and receipt["kept"] == MAX_LINES_PER_ATTEMPT
            tail = (await call(admin, "task_get", task_id=task["id"]))["log_tail"]
            assert len(tail) == TAIL_LINES and tail[-1]["line"] == "line 1199" and tail[-1]["seq"] == 1200
            with services.db.engine.connect() as conn:
                kept = conn.execute(select(task_logs.c.seq).where(task_logs.c.task_id == task["id"])).scalars().all()
            assert sorted(kept) == list(range(201, 1201))  # the newest 1,000 in the store
            await call(agent, "task_fail", task_id=task["id"], error="flaky")
            stale = await call_error(agent, "task_log", task_id=task["id"], lines=["from the old attempt"])
            assert stale.code == "lease_expired"
            with anyio.fail_after(10):
                while (again := (await call(agent, "task_claim"))["task"]) is None:
                    await anyio.sleep(0.02)
            assert again["id"] == task["id"] and again["attempts"] == 2
            await call(agent, "task_log", task_id=task["id"], lines=["second attempt"])
            tail = (await call(admin, "task_get", task_id=task["id"]))["log_tail"]
            assert tail[-1] == {**tail[-1], "attempt": 2, "seq": 1, "line": "second attempt"}
            assert tail[-2]["attempt"] == 1 and tail[-2]["line"] == "line 1199"


async def test_bad_lines_from_the_holder_are_invalid_input_and_change_nothing(connect: Any, services: Any) -> None:
    async with connect() as admin:
        worker = await call(admin, "agent_spawn", profile="worker")
        async with connect(worker["token"]) as agent:
            task = await claimed_task(admin, agent)
            await call(agent, "task_log", task_id=task["id"], lines=["ok"])
            before = snapshot(services)
            for bad in (
                {"lines": ["nul \x00 byte"]},
                {"lines": ["x" * 4001]},
                {"lines": [{"not": "text"}]},
                {"text": "\ud800 lone surrogate"},
                {"text": "y" * 40_001},
                {"lines": [], "level": "info"},
                {"lines": ["fine"], "level": "LOUD"},
            ):
                failure = await call_error(agent, "task_log", task_id=task["id"], **bad)
                assert failure.code == "invalid_input", (bad, failure.text)
            assert snapshot(services) == before
