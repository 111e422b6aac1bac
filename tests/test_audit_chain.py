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


def scalar_row(services, sql):
    with services.db.engine.connect() as conn:
        return conn.execute(text(sql)).one()


async def test_verify_passes_then_names_the_row_edited_by_hand(tmp_path, services, connect, database_url):
    _, task_id = await some_history(connect)
    env = cli_env(tmp_path, database_url)
    honest = run_cli("audit", "verify", env=env)
    assert honest.returncode == 0, honest.stderr
    assert "audit chain intact: 5 rows in" in honest.stdout
    claim_row = f"SELECT id, chain, seq FROM orch_audit WHERE subject = '{task_id}' AND action = 'task.claim'"
    edited = scalar_row(services, claim_row)
    execute(services, "UPDATE orch_audit SET principal = 'someone-else' WHERE id = :id", id=edited.id)
    broken = run_cli("audit", "verify", env=env)
    assert broken.returncode == 1
    expected = f"BROKEN at chain {edited.chain} seq {edited.seq} ({edited.id}): its content no longer matches its hash"
    assert expected in broken.stderr


async def test_a_deleted_row_or_a_renumbered_gap_breaks_the_next_link(tmp_path, services, connect, database_url):
    async with connect() as admin:
        for n in range(30):  # enough rows that some chain has two in a row, however many chains there are
            await call(admin, "task_submit", type="build", payload={"n": n})
    env = cli_env(tmp_path, database_url)
    pair = scalar_row(
        services,
        "SELECT a.id, a.chain, a.seq, b.id AS next_id FROM orch_audit a "
        "JOIN orch_audit b ON b.chain = a.chain AND b.seq = a.seq + 1 ORDER BY a.id LIMIT 1",
    )
    execute(services, "DELETE FROM orch_audit WHERE id = :id", id=pair.id)
    deleted = run_cli("audit", "verify", env=env)
    assert deleted.returncode == 1
    gap = f"chain {pair.chain} seq {pair.seq + 1} ({pair.next_id}): rows {pair.seq}..{pair.seq} before it are missing"
    assert gap in deleted.stderr
    # Renumbering to hide the gap leaves the next row pointing at the deleted row's hash.
    execute(services, "UPDATE orch_audit SET seq = seq - 1 WHERE chain = :c AND seq > :s", c=pair.chain, s=pair.seq)
    renumbered = run_cli("audit", "verify", env=env)
    assert renumbered.returncode == 1
    assert f"chain {pair.chain} seq {pair.seq} ({pair.next_id}): it does not link" in renumbered.stderr


async def test_concurrent_writers_extend_unbroken_chains(services, connect):
    async with connect() as admin:

        async def submit_many(lane):
            for n in range(10):
                await call(admin, "task_submit", type=f"lane-{lane}", payload={"n": n})

        async with anyio.create_task_group() as group:
            for lane in range(8):
                group.start_soon(submit_many, lane)
    report = services.db.read_sync(verify_chain)
    assert report.intact and report.rows == 80, report
    assert sum(seq for seq, _ in report.heads.values()) == 80  # each chain numbered 1..n without gaps


async def test_audit_query_filters_the_trail_for_the_admin_only(connect):
    agent_id, task_id = await some_history(connect)
    async with connect() as admin:
        everything = await call(admin, "audit_query")
        ids = [e["id"] for e in everything["entries"]]
        assert ids == sorted(ids, reverse=True) and len(ids) == 5
        about_task = await call(admin, "audit_query", subject=task_id)
        assert [e["action"] for e in about_task["entries"]] == ["task.complete", "task.claim", "task.submit"]
        by_agent = await call(admin, "audit_query", actor=agent_id)
        assert {e["action"] for e in by_agent["entries"]} == {"task.claim", "task.complete"}
        budgets = await call(admin, "audit_query", action="budget.set")
        assert budgets["entries"][0]["detail"]["limit_usd"] == "5.000000"
        first_page = await call(admin, "audit_query", limit=4)
        assert [e["id"] for e in first_page["entries"]] == ids[:4] and first_page["next_before_id"] == ids[3]
        rest = await call(admin, "audit_query", limit=4, before_id=first_page["next_before_id"])
        assert [e["id"] for e in rest["entries"]] == ids[4:] and rest["next_before_id"] is None
        when = everything["entries"][0]["at"]
        assert len((await call(admin, "audit_query", since=when))["entries"]) >= 1
        assert (await call(admin, "audit_query", until="2000-01-01T00:00:00Z"))["entries"] == []
    async with connect() as admin:
        spawned = await call(admin, "agent_spawn", profile="default")
    async with connect(spawned["token"]) as agent:
        assert (await call_error(agent, "audit_query")).code == "permission_denied"


async def test_a_refused_call_leaves_no_audit_row_behind_for_later_calls(services, connect):
    # The claim locks the task's resource (an audit row is staged), then its estimate does not fit
    # the agent's budget: everything rolls back, and no later transaction may inherit that row.
    async with connect() as admin:
        worker = await call(admin, "agent_spawn", profile="worker")
        await call(admin, "budget_set", scope=f"agent:{worker['agent']['id']}", limit_usd="1")
        await call(admin, "task_submit", type="flash", resources=[{"name": "device:one"}], estimated_cost_usd="5")
    async with connect(worker["token"]) as agent:
        assert (await call_error(agent, "task_claim")).code == "budget_exceeded"
    async with connect() as admin:
        for n in range(20):  # enough writes to come round to every pooled connection
            await call(admin, "task_submit", type="after", payload={"n": n})
        assert (await call(admin, "audit_query", action="lock.acquire"))["entries"] == []
        assert len((await call(admin, "audit_query", action="task.submit"))["entries"]) == 21
        [refusal] = (await call(admin, "audit_query", action="request.refused"))["entries"]
        assert refusal["detail"]["code"] == "budget_exceeded" and refusal["principal"] == worker["agent"]["id"]
    report = services.db.read_sync(verify_chain)
    assert report.intact and report.rows == 24, report  # spawn, budget, 21 submits, the refused claim
