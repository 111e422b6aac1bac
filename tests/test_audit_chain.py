"""The audit trail is hash-chained: `agentfleet audit verify` passes on an honest store, names the
first bad row after an edit or a deletion by hand, and concurrent writers never break the chain.
`audit_query` reads the trail through MCP (admin only)."""

from __future__ import annotations

import anyio
import pytest
from sqlalchemy import text

from server.services.audit import verify_chain
from tests.helpers import call, call_error
from tests.test_cli import run_cli

pytestmark = pytest.mark.anyio


def cli_env(tmp_path, database_url):
    return {"AGENTFLEET_DATA_DIR": str(tmp_path / "d"), "AGENTFLEET_DATABASE_URL": database_url}


async def some_history(connect):
    """A few state changes of different kinds; returns the agent and task ids."""
    async with connect() as admin:
        agent = await call(admin, "agent_spawn", profile="worker")
        task = await call(admin, "task_submit", type="build")
        await call(admin, "budget_set", scope="global", limit_usd="5")
    async with connect(agent["token"]) as worker:
        claimed = await call(worker, "task_claim")
        await call(worker, "task_complete", task_id=claimed["task"]["id"], result={"ok": True})
    return agent["agent"]["id"], task["id"]


def execute(services, sql, **params):
    with services.db.engine.begin() as conn:
        conn.execute(text(sql), params)


async def test_verify_passes_then_names_the_row_edited_by_hand(tmp_path, services, connect, database_url):
    await some_history(connect)
    env = cli_env(tmp_path, database_url)
    honest = run_cli("audit", "verify", env=env)
    assert honest.returncode == 0, honest.stderr
    assert "audit chain intact: 5 rows, head seq 5" in honest.stdout
    with services.db.engine.connect() as conn:
        third = conn.execute(text("SELECT id FROM orch_audit WHERE seq = 3")).scalar_one()
    execute(services, "UPDATE orch_audit SET principal = 'someone-else' WHERE seq = 3")
    edited = run_cli("audit", "verify", env=env)
    assert edited.returncode == 1
    assert f"BROKEN at seq 3 ({third}): its content no longer matches its hash" in edited.stderr
    assert "2 rows before it check out" in edited.stderr


async def test_a_deleted_row_or_a_rehashed_edit_breaks_the_next_link(tmp_path, services, connect, database_url):
    await some_history(connect)
    env = cli_env(tmp_path, database_url)
    execute(services, "DELETE FROM orch_audit WHERE seq = 2")
    deleted = run_cli("audit", "verify", env=env)
    assert deleted.returncode == 1 and "BROKEN at seq 3" in deleted.stderr and "rows 2..2" in deleted.stderr
    # Renumbering to hide the gap, and even recomputing the edited row's own hash, leaves the link
    # from the row after it pointing at the old hash.
    execute(services, "UPDATE orch_audit SET seq = seq - 1 WHERE seq > 2")
    renumbered = run_cli("audit", "verify", env=env)
    assert renumbered.returncode == 1 and "BROKEN at seq 2" in renumbered.stderr
    assert "does not link to the row before it" in renumbered.stderr


async def test_concurrent_writers_extend_one_unbroken_chain(services, connect):
    async with connect() as admin:

        async def submit_many(lane):
            for n in range(10):
                await call(admin, "task_submit", type=f"lane-{lane}", payload={"n": n})

        async with anyio.create_task_group() as group:
            for lane in range(8):
                group.start_soon(submit_many, lane)
    report = services.db.read_sync(verify_chain)
    assert report.intact and report.rows == report.head_seq == 80, report


async def test_audit_query_filters_the_trail_for_the_admin_only(connect):
    agent_id, task_id = await some_history(connect)
    async with connect() as admin:
        everything = await call(admin, "audit_query")
        seqs = [e["seq"] for e in everything["entries"]]
        assert seqs == [5, 4, 3, 2, 1]
        about_task = await call(admin, "audit_query", subject=task_id)
        assert [e["action"] for e in about_task["entries"]] == ["task.complete", "task.claim", "task.submit"]
        by_agent = await call(admin, "audit_query", actor=agent_id)
        assert {e["action"] for e in by_agent["entries"]} == {"task.claim", "task.complete"}
        budgets = await call(admin, "audit_query", action="budget.set")
        assert budgets["entries"][0]["detail"]["limit_usd"] == "5.000000"
        first_page = await call(admin, "audit_query", limit=4)
        assert len(first_page["entries"]) == 4 and first_page["next_before_seq"] == first_page["entries"][-1]["seq"]
        rest = await call(admin, "audit_query", limit=4, before_seq=first_page["next_before_seq"])
        assert [e["seq"] for e in rest["entries"]] == [1] and rest["next_before_seq"] is None
        when = everything["entries"][0]["at"]
        assert len((await call(admin, "audit_query", since=when))["entries"]) >= 1
        assert (await call(admin, "audit_query", until="2000-01-01T00:00:00Z"))["entries"] == []
    async with connect() as admin:
        spawned = await call(admin, "agent_spawn", profile="default")
    async with connect(spawned["token"]) as agent:
        assert (await call_error(agent, "audit_query")).code == "permission_denied"
