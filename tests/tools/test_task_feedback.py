"""task_feedback: good/bad or 1-5 on finished work, one per principal per task, changeable,
shown on task_get, audited; refused (changing nothing) to whoever may not read the task."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from server.store.tables import audit_log, task_feedback
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio


async def finished_task(admin, connect, submitter_token: str | None = None, complete: bool = True) -> tuple[str, str]:
    """(task id, the token of the worker that ran it)."""
    worker = await call(admin, "agent_spawn", profile="worker")
    if submitter_token is None:
        task = await call(admin, "task_submit", type="review", capabilities=["general"])
    else:
        async with connect(submitter_token) as submitter:
            task = await call(submitter, "task_submit", type="review", capabilities=["general"])
    async with connect(worker["token"]) as as_worker:
        claimed = (await call(as_worker, "task_claim"))["task"]
        assert claimed["id"] == task["id"]
        if complete:
            await call(as_worker, "task_complete", task_id=task["id"], result={"ok": True})
        else:
            await call(as_worker, "task_fail", task_id=task["id"], error="broke", retryable=False)
    return task["id"], worker["token"]


def feedback_rows(services) -> int:
    with services.db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(task_feedback)).scalar_one()


async def test_feedback_is_one_per_principal_changeable_and_shown_on_task_get(connect, services):
    async with connect() as admin:
        task_id, _ = await finished_task(admin, connect)
        operator = (await call(admin, "token_create", name="ops", role="operator"))["token"]
        first = await call(admin, "task_feedback", task_id=task_id, rating="good", note="clear", tags=["fast"])
        assert first["rating"] == "good" and first["principal"] == "admin" and first["tags"] == ["fast"]
        changed = await call(admin, "task_feedback", task_id=task_id, rating=2, note="missed a bug", reason="re-read")
        assert changed["rating"] == 2 and changed["created_at"] == first["created_at"]
    async with connect(operator) as as_operator:
        await call(as_operator, "task_feedback", task_id=task_id, rating="bad")
    async with connect() as admin:
        shown = await call(admin, "task_get", task_id=task_id)
    assert [(f["principal"], f["rating"], f["note"]) for f in shown["feedback"]] == [
        ("admin", 2, "missed a bug"),
        ("ops", "bad", None),
    ]
    assert feedback_rows(services) == 2
    with services.db.engine.connect() as conn:
        audited = conn.execute(
            select(audit_log.c.principal, audit_log.c.detail, audit_log.c.reason)
            .where(audit_log.c.action == "task.feedback")
            .order_by(audit_log.c.at)
        ).all()
    assert [(a.principal, a.detail["rating"], a.detail["changed"]) for a in audited] == [
        ("admin", "good", False),
        ("admin", 2, True),
        ("ops", "bad", False),
    ]
    assert audited[1].reason == "re-read"


async def test_a_reviewing_agent_rates_what_it_submitted_but_never_its_own_work(connect, services):
    async with connect() as admin:
        reviewer = await call(admin, "agent_spawn", profile="worker", name="reviewer")
        task_id, worker_token = await finished_task(admin, connect, submitter_token=reviewer["token"])
        other_id, _ = await finished_task(admin, connect)
        viewer = (await call(admin, "token_create", name="eyes", role="viewer"))["token"]
    async with connect(reviewer["token"]) as as_reviewer:
        given = await call(as_reviewer, "task_feedback", task_id=task_id, rating=5)
        assert given["principal"] == reviewer["agent"]["id"] and given["role"] == "agent"
        not_readable = await call_error(as_reviewer, "task_feedback", task_id=other_id, rating=1)
        assert not_readable.code == "permission_denied" and "not yours" in not_readable.text
    async with connect(worker_token) as as_worker:
        own = await call_error(as_worker, "task_feedback", task_id=task_id, rating=5)
        assert own.code == "permission_denied" and "own work" in own.text
        assert "task_feedback" in {t.name for t in (await as_worker.list_tools()).tools}
    async with connect(viewer) as as_viewer:
        assert (await call_error(as_viewer, "task_feedback", task_id=task_id, rating=5)).code == "permission_denied"
        assert "task_feedback" not in {t.name for t in (await as_viewer.list_tools()).tools}
    assert feedback_rows(services) == 1


@pytest.mark.parametrize(
    ("arguments", "code"),
    [
        ({"rating": 0}, "invalid_input"),
        ({"rating": 6}, "invalid_input"),
        ({"rating": "great"}, "invalid_input"),
        ({"rating": "4"}, "invalid_input"),
        ({"rating": True}, "invalid_input"),
        ({"rating": 4.5}, "invalid_input"),
        ({"rating": "good", "tags": ["Not A Tag"]}, "invalid_input"),
        ({"rating": "good", "note": "x" * 2001}, "invalid_input"),
        ({"rating": "good", "note": "nul \x00"}, "invalid_input"),
        ({"rating": "good", "task_id": "tsk_0000NOSUCHTASK"}, "not_found"),
    ],
)
async def test_bad_feedback_is_refused_and_nothing_is_written(connect, services, arguments, code):
    async with connect() as admin:
        task_id, _ = await finished_task(admin, connect)
        refused = await call_error(admin, "task_feedback", **({"task_id": task_id} | arguments))
    assert refused.code == code, refused.text
    assert feedback_rows(services) == 0


async def test_feedback_waits_for_the_task_to_finish(connect, services):
    async with connect() as admin:
        queued = await call(admin, "task_submit", type="review", capabilities=["nobody"], allow_unroutable=True)
        early = await call_error(admin, "task_feedback", task_id=queued["id"], rating="good")
        failed_id, _ = await finished_task(admin, connect, complete=False)
        on_failed = await call(admin, "task_feedback", task_id=failed_id, rating="bad", note="it broke")
    assert early.code == "conflict" and "finished work" in early.text
    assert on_failed["rating"] == "bad"
    assert feedback_rows(services) == 1
