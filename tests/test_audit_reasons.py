"""Audit reasons and digests (issue 9): the `reason` a caller gives is kept in its audit rows, rows
carry sha256 digests of their subject before and after the change, and the hash chain covers both,
so editing, adding or clearing a reason by hand breaks verification at that row."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text

from server.domain.audit_chain import state_digest
from server.services.audit import verify_chain
from server.store.tables import approvals, audit_log, budgets, tasks, tokens
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio


def audit_row(services, action: str, subject: str):
    with services.db.engine.connect() as conn:
        return conn.execute(select(audit_log).where(audit_log.c.action == action, audit_log.c.subject == subject)).one()


def stored(services, table, row_id: str):
    with services.db.engine.connect() as conn:
        return conn.execute(select(table).where(table.c.id == row_id)).one()


def execute(services, sql: str, **params) -> None:
    with services.db.engine.begin() as conn:
        conn.execute(text(sql), params)


def verify(services):
    return services.db.read_sync(verify_chain)


async def entries(client, **filters) -> list[dict]:
    return (await call(client, "audit_query", **filters))["entries"]


async def test_reasons_given_to_mutating_tools_appear_in_audit_query(services, connect):
    async with connect() as admin:
        spawned = await call(admin, "agent_spawn", profile="worker", reason="need a builder")
        agent_id = spawned["agent"]["id"]
        kept = await call(admin, "task_submit", type="build", reason="nightly build")
        plain = await call(admin, "task_submit", type="build")  # no reason: none recorded, none carried over
        await call(admin, "task_cancel", task_id=kept["id"], reason="superseded by #42")
        gated = await call(admin, "task_submit", type="deploy", requires_approval=True, reason="release 1.2")
        assert gated["status"] == "pending_approval"
        [pending] = (await call(admin, "approval_list", status="pending"))["approvals"]
        await call(admin, "approval_decide", approval_id=pending["id"], decision="approve", note="tests are green")
    async with connect(spawned["token"]) as agent:
        grant = await call(
            agent, "lock_acquire", resources=[{"name": "repo:/src/**", "mode": "exclusive"}], reason="refactor src"
        )
        assert grant["granted"]
        await call(agent, "lock_release", lock_id=grant["lock_id"], reason="refactor done")

    async with connect() as admin:
        reasons = {(e["action"], e["subject"]): e["reason"] for e in await entries(admin)}
    assert reasons == {
        ("agent.spawn", agent_id): "need a builder",
        ("task.submit", kept["id"]): "nightly build",
        ("task.submit", plain["id"]): None,
        ("task.cancel", kept["id"]): "superseded by #42",
        ("task.submit", gated["id"]): "release 1.2",
        ("approval.decide", pending["id"]): "tests are green",
        ("lock.acquire", grant["lock_id"]): "refactor src",
        ("lock.release", grant["lock_id"]): "refactor done",
    }
    assert verify(services).intact  # the reasons are hashed into the chain and it checks out


async def test_a_refused_call_keeps_its_reason_and_an_overlong_reason_is_refused(services, connect):
    async with connect() as admin:
        viewer = await call(admin, "token_create", name="auditor", role="viewer")
        too_long = await call_error(admin, "task_submit", type="build", reason="x" * 2001)
        assert too_long.code == "invalid_input"
        assert (await call(admin, "task_submit", type="build", reason="y" * 2000))["status"] == "queued"
    async with connect(viewer["token"]) as auditor:
        refused = await call_error(auditor, "task_submit", type="build", reason="just looking")
    assert refused.code == "permission_denied"
    async with connect() as admin:
        [row] = await entries(admin, action="request.refused")
        submits = await entries(admin, action="task.submit")
    assert (row["principal"], row["role"], row["reason"]) == ("auditor", "viewer", "just looking")
    assert row["detail"]["code"] == "permission_denied" and row["detail"]["request"] == "task_submit"
    assert [e["reason"] for e in submits] == ["y" * 2000]


async def test_digests_match_the_subject_rows_before_and_after(services, connect):
    async with connect() as admin:
        task = await call(admin, "task_submit", type="build")
        await call(admin, "task_cancel", task_id=task["id"], reason="wrong branch")
        first = await call(admin, "budget_set", scope="global", limit_usd="10")
        second = await call(admin, "budget_set", scope="global", limit_usd="25", reason="bigger quarter")
        issued = await call(admin, "token_create", name="digest-check", role="viewer")
        gated = await call(admin, "task_submit", type="deploy", requires_approval=True)
        [pending] = (await call(admin, "approval_list", status="pending"))["approvals"]
        await call(admin, "approval_decide", approval_id=pending["id"], decision="reject", note="not today")
        shown = {e["id"]: e for e in await entries(admin)}
    assert first["id"] == second["id"]

    submitted = audit_row(services, "task.submit", task["id"])
    cancelled = audit_row(services, "task.cancel", task["id"])
    assert submitted.before_digest is None and submitted.after_digest is not None
    assert cancelled.before_digest == submitted.after_digest  # nothing touched the task in between
    assert cancelled.after_digest == state_digest(stored(services, tasks, task["id"]))
    assert cancelled.after_digest != cancelled.before_digest

    budget_rows = audit_log.c.action == "budget.set"
    with services.db.engine.connect() as conn:
        set_first, set_second = conn.execute(select(audit_log).where(budget_rows).order_by(audit_log.c.id)).all()
    assert set_first.before_digest is None  # the budget did not exist
    assert set_second.before_digest == set_first.after_digest
    assert set_second.after_digest == state_digest(stored(services, budgets, first["id"]))
    assert set_second.after_digest != set_second.before_digest

    created = audit_row(services, "token.create", issued["details"]["id"])
    assert created.after_digest == state_digest(stored(services, tokens, issued["details"]["id"]))
    decided = audit_row(services, "approval.decide", pending["id"])
    assert decided.after_digest == state_digest(stored(services, approvals, pending["id"]))
    assert decided.before_digest not in (None, decided.after_digest)
    assert audit_row(services, "task.submit", gated["id"]).after_digest is not None

    # audit_query shows the same digests the store holds
    for row in (cancelled, set_second, decided):
        entry = shown[row.id]
        assert (entry["before_digest"], entry["after_digest"]) == (row.before_digest, row.after_digest)
    assert verify(services).intact


async def history_with_reasons(services, connect):
    """A few rows, some with a reason and some without; returns (row with a reason, row without)."""
    async with connect() as admin:
        for n in range(6):  # several rows, so on PostgreSQL more than one chain is in play
            await call(admin, "task_submit", type="build", payload={"n": n})
        task = await call(admin, "task_submit", type="build", reason="the one to forge")
        budget = await call(admin, "budget_set", scope="global", limit_usd="5")
        for n in range(6):
            await call(admin, "task_submit", type="test", payload={"n": n})
    assert verify(services).intact
    return audit_row(services, "task.submit", task["id"]), audit_row(services, "budget.set", budget["id"])


def broken_at(row) -> str:
    return f"chain {row.chain} seq {row.seq} ({row.id}): its content no longer matches its hash"


async def test_editing_a_reason_by_hand_breaks_the_chain_at_that_row(services, connect):
    with_reason, _ = await history_with_reasons(services, connect)
    assert with_reason.reason == "the one to forge"
    execute(services, "UPDATE orch_audit SET reason = 'a better story' WHERE id = :id", id=with_reason.id)
    report = verify(services)
    assert report.broken_at == broken_at(with_reason)
    execute(services, "UPDATE orch_audit SET reason = :r WHERE id = :id", r=with_reason.reason, id=with_reason.id)
    assert verify(services).intact  # put back exactly: the chain checks out again


async def test_clearing_a_reason_breaks_the_chain(services, connect):
    with_reason, _ = await history_with_reasons(services, connect)
    execute(services, "UPDATE orch_audit SET reason = NULL WHERE id = :id", id=with_reason.id)
    assert verify(services).broken_at == broken_at(with_reason)


async def test_adding_a_reason_to_a_row_that_had_none_breaks_the_chain(services, connect):
    _, without_reason = await history_with_reasons(services, connect)
    assert without_reason.reason is None
    execute(services, "UPDATE orch_audit SET reason = 'approved by the board' WHERE id = :id", id=without_reason.id)
    assert verify(services).broken_at == broken_at(without_reason)


async def test_editing_a_digest_breaks_the_chain(services, connect):
    _, budget_set = await history_with_reasons(services, connect)
    assert budget_set.after_digest is not None
    execute(services, "UPDATE orch_audit SET after_digest = :d WHERE id = :id", d="0" * 64, id=budget_set.id)
    assert verify(services).broken_at == broken_at(budget_set)
