"""Approvals through the in-process MCP client: a task that needs a person waits in pending_approval
(forced by the submitter, by the submitter's profile, or by a budget's cost threshold) until an admin
or operator decides; undecided approvals expire with their default decision and leave one escalation
event; cancelling withdraws; deciders race; every decision is audited on an intact chain."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from sqlalchemy import select, update

from server.clock import from_iso
from server.services.audit import verify_chain
from server.services.container import build_services
from server.store.tables import audit_log, events
from server.store.tables import tasks as tasks_table
from tests.conftest import ADMIN_TOKEN, connector
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio

DAY = 86_400
NO_SUCH_APPROVAL = "apr_" + "0" * 26
REQUESTED = "the submitter asked for approval (requires_approval)"


async def spawn(client, profile="worker"):
    return await call(client, "agent_spawn", profile=profile)


def aid(spawned):
    return spawned["agent"]["id"]


async def operator(admin, name="ops"):
    return (await call(admin, "token_create", name=name, role="operator"))["token"]


async def submit(client, task_type="deploy", **extra):
    return await call(client, "task_submit", type=task_type, **extra)


async def claim(client, **extra):
    return (await call(client, "task_claim", **extra))["task"]


def seconds_between(start, end):
    return (from_iso(end) - from_iso(start)) / 1_000_000


def escalations(services, approval_id=None):
    """The approval.escalated events in the store, straight from orch_events."""
    query = select(events).where(events.c.kind == "approval.escalated")
    if approval_id is not None:
        query = query.where(events.c.subject == approval_id)
    return services.db.read_sync(lambda conn: conn.execute(query).all())


async def test_requires_approval_waits_until_an_operator_approves_then_runs(connect):
    async with connect() as admin:
        ops = await operator(admin)
        requester, worker = await spawn(admin), await spawn(admin)
    async with connect(requester["token"]) as req:
        receipt = await submit(req, "migrate", payload={"db": "main"}, requires_approval=True)
    assert receipt["status"] == "pending_approval"
    asked = receipt["approval"]
    assert asked["id"].startswith("apr_") and asked["task_id"] == receipt["id"] and asked["task_type"] == "migrate"
    assert asked["status"] == "pending" and asked["reasons"] == [REQUESTED]
    assert asked["requested_by"] == aid(requester) and asked["on_expiry"] == "reject"
    assert seconds_between(asked["created_at"], asked["expires_at"]) == DAY
    assert (asked["decided_by"], asked["decided_at"], asked["note"], asked["expired"]) == (None, None, None, False)

    async with connect(worker["token"]) as w:
        nothing = await call(w, "task_claim")  # a capable agent may not take it yet
        assert nothing["task"] is None and nothing["reason"] == "none_available"
    async with connect(ops) as op:
        (listed,) = (await call(op, "approval_list", status="pending"))["approvals"]
        assert listed == asked
        assert (await call(op, "approval_list", status="approved"))["approvals"] == []
        assert [a["id"] for a in (await call(op, "approval_list"))["approvals"]] == [asked["id"]]

    async with connect(worker["token"]) as w, connect(ops) as op:

        async def parked_claim():
            started = time.monotonic()
            got = await claim(w, wait_s=8)  # shorter than the 10 s re-check: only a wake-up ends it early
            return got, time.monotonic() - started

        async def approve_soon():
            await asyncio.sleep(0.3)
            return await call(op, "approval_decide", approval_id=asked["id"], decision="approve", note="go ahead")

        (claimed, waited), decided = await asyncio.gather(parked_claim(), approve_soon())
        assert decided["status"] == "approved" and decided["decided_by"] == "ops" and decided["note"] == "go ahead"
        assert decided["decided_at"] is not None and decided["expired"] is False
        assert claimed is not None and claimed["id"] == receipt["id"], "approval must make the task claimable"
        assert waited < 5, f"the parked claim was not woken by the approval (waited {waited:.1f}s)"
        await call(w, "task_complete", task_id=receipt["id"], result={"migrated": True})
        assert (await call(op, "approval_list", status="pending"))["approvals"] == []

    async with connect(requester["token"]) as req:  # the requester sees the decision on its task
        seen = await call(req, "task_get", task_id=receipt["id"])
    assert seen["status"] == "completed" and seen["result"] == {"migrated": True}
    assert seen["approval"] == decided
    assert (seen["approval"]["status"], seen["approval"]["decided_by"], seen["approval"]["note"]) == (
        "approved",
        "ops",
        "go ahead",
    )


async def test_reject_cancels_the_task_with_the_note_and_a_decision_is_final(connect):
    async with connect() as admin:
        ops = await operator(admin)
        worker = await spawn(admin)
        task = await submit(admin, "drop-table", requires_approval=True)
        silent = await submit(admin, "drop-index", requires_approval=True)
    async with connect(ops) as op:
        rejected = await call(
            op, "approval_decide", approval_id=task["approval"]["id"], decision="reject", note="too risky"
        )
        assert (rejected["status"], rejected["decided_by"], rejected["note"]) == ("rejected", "ops", "too risky")
        again = await call_error(op, "approval_decide", approval_id=task["approval"]["id"], decision="approve")
        assert again.code == "conflict" and "already rejected" in again.text
        twice = await call_error(op, "approval_decide", approval_id=task["approval"]["id"], decision="reject")
        assert twice.code == "conflict"
        unknown = await call_error(op, "approval_decide", approval_id=NO_SUCH_APPROVAL, decision="approve")
        assert unknown.code == "not_found"
        no_note = await call(op, "approval_decide", approval_id=silent["approval"]["id"], decision="reject")
        assert no_note["note"] is None
        listed = (await call(op, "approval_list", status="rejected"))["approvals"]
        assert [a["id"] for a in listed] == [task["approval"]["id"], silent["approval"]["id"]]
    async with connect() as admin:
        seen = await call(admin, "task_get", task_id=task["id"])
        assert seen["status"] == "cancelled" and seen["finished_at"] is not None
        assert seen["error"] == "approval rejected by ops: too risky"
        assert seen["approval"]["status"] == "rejected" and seen["approval"]["note"] == "too risky"
        quiet = await call(admin, "task_get", task_id=silent["id"])
        assert quiet["status"] == "cancelled" and quiet["error"] == "approval rejected by ops"
    async with connect(worker["token"]) as w:
        assert await claim(w) is None


async def test_a_profile_policy_holds_matching_task_types_of_its_agents(connect):
    async with connect() as admin:
        gated, plain = await spawn(admin, "gated"), await spawn(admin)
        by_admin = await submit(admin, "deploy.prod")
        assert by_admin["status"] == "queued" and by_admin["approval"] is None  # the policy is the profile's
    async with connect(gated["token"]) as agent:
        deploy = await submit(agent, "deploy.prod")
        assert deploy["status"] == "pending_approval"
        assert deploy["approval"]["reasons"] == ["profile gated@1.0.0 needs approval for deploy.prod tasks"]
        assert deploy["approval"]["requested_by"] == aid(gated)
        # the profile's own terms: ten minutes, then approve
        assert deploy["approval"]["on_expiry"] == "approve"
        assert seconds_between(deploy["approval"]["created_at"], deploy["approval"]["expires_at"]) == 600
        build = await submit(agent, "build")
        assert build["status"] == "queued" and build["approval"] is None
        predeploy = await submit(agent, "predeploy")  # deploy* matches from the start of the type only
        assert predeploy["status"] == "queued" and predeploy["approval"] is None
        both = await submit(agent, "deploy", requires_approval=True)
        assert both["approval"]["reasons"] == [REQUESTED, "profile gated@1.0.0 needs approval for deploy tasks"]
        seen = await call(agent, "task_get", task_id=deploy["id"])
        assert seen["status"] == "pending_approval" and seen["approval"] == deploy["approval"]
    async with connect(plain["token"]) as agent:
        other = await submit(agent, "deploy.prod")
        assert other["status"] == "queued" and other["approval"] is None
        claimed = {(await claim(agent) or {}).get("id") for _ in range(5)} - {None}
    # only the tasks that did not wait were claimable
    assert claimed == {by_admin["id"], build["id"], predeploy["id"], other["id"]}


async def test_a_budget_threshold_holds_costly_tasks_of_its_spenders(connect):
    async with connect() as admin:
        fleet = await call(admin, "budget_set", scope="global", limit_usd="100", approval_above_usd="5")
        assert fleet["approval_above_usd"] == "5.000000"
        costly = await submit(admin, "train", estimated_cost_usd="6")
        assert costly["status"] == "pending_approval"
        assert costly["approval"]["reasons"] == [
            "estimated $6.000000 is above budget global's approval threshold $5.000000"
        ]
        cheap = await submit(admin, "train", estimated_cost_usd="4")
        at_threshold = await submit(admin, "train", estimated_cost_usd="5")  # above means above
        unestimated = await submit(admin, "train")
        for queued in (cheap, at_threshold, unestimated):
            assert queued["status"] == "queued" and queued["approval"] is None
        (listed,) = (await call(admin, "approval_list", status="pending"))["approvals"]
        assert listed["task_id"] == costly["id"] and listed["estimated_cost_usd"] == "6.000000"

        strict, other = await spawn(admin), await spawn(admin)
        await call(admin, "budget_set", scope=f"agent:{aid(strict)}", limit_usd="50", approval_above_usd="1")
        admins_small = await submit(admin, "train", estimated_cost_usd="2")  # the admin is under global only
        assert admins_small["status"] == "queued"
        ops = await operator(admin)
    async with connect(ops) as op:  # an operator, like the admin, is under global only
        assert (await submit(op, "train", estimated_cost_usd="2"))["status"] == "queued"
        by_operator = await submit(op, "train", estimated_cost_usd="6")
        assert by_operator["status"] == "pending_approval" and by_operator["approval"]["requested_by"] == "ops"
    async with connect(strict["token"]) as agent:
        held = await submit(agent, "train", estimated_cost_usd="2")
        assert held["status"] == "pending_approval"
        assert len(held["approval"]["reasons"]) == 1 and f"agent:{aid(strict)}" in held["approval"]["reasons"][0]
        over_both = await submit(agent, "train", estimated_cost_usd="7")  # over global's 5 and its own 1
        assert sorted(over_both["approval"]["reasons"]) == sorted(
            [
                "estimated $7.000000 is above budget global's approval threshold $5.000000",
                f"estimated $7.000000 is above budget agent:{aid(strict)}'s approval threshold $1.000000",
            ]
        )
    async with connect(other["token"]) as agent:
        fine = await submit(agent, "train", estimated_cost_usd="2")
        assert fine["status"] == "queued" and fine["approval"] is None
        over_global = await submit(agent, "train", estimated_cost_usd="5.000001")
        assert over_global["status"] == "pending_approval"


async def test_an_undecided_approval_expires_to_reject_once_with_one_escalation(
    fake_connect, fake_time_services, clock
):
    services = fake_time_services
    async with fake_connect() as admin:
        ops = await operator(admin)
        task = await submit(admin, "migrate", requires_approval=True)
        approval = task["approval"]
        assert approval["on_expiry"] == "reject"  # AGENTFLEET_APPROVAL_ON_EXPIRY's default

    clock.advance(DAY - 1)
    assert await services.approvals.sweep() == 0  # not yet
    async with fake_connect() as admin:
        assert (await call(admin, "task_get", task_id=task["id"]))["status"] == "pending_approval"
    assert escalations(services) == []

    clock.advance(1)
    assert await services.approvals.sweep() == 1
    async with fake_connect() as admin:
        seen = await call(admin, "task_get", task_id=task["id"])
        assert seen["status"] == "cancelled" and seen["error"] == "approval rejected by expiry"
        expired = seen["approval"]
        assert (expired["status"], expired["decided_by"], expired["expired"]) == ("rejected", "expiry", True)
        assert expired["decided_at"] == approval["expires_at"] and expired["note"] is None
        assert (await call(admin, "approval_list", status="pending"))["approvals"] == []
        (trail,) = (await call(admin, "audit_query", action="approval.expire"))["entries"]
        assert trail["principal"] == "reaper" and trail["subject"] == approval["id"]
    (event,) = escalations(services, approval["id"])
    assert event.detail["task_id"] == task["id"] and event.detail["applied"] == "reject"
    assert event.detail["requested_by"] == "admin" and event.detail["reasons"] == [REQUESTED]
    assert event.at == from_iso(approval["expires_at"])

    clock.advance(DAY)
    assert await services.approvals.sweep() == 0
    assert len(escalations(services)) == 1  # sweeping again escalates nothing twice
    async with fake_connect(ops) as op:
        late = await call_error(op, "approval_decide", approval_id=approval["id"], decision="approve")
        assert late.code == "conflict"
    async with fake_connect() as admin:
        assert (await call(admin, "task_get", task_id=task["id"]))["status"] == "cancelled"


async def test_concurrent_sweeps_settle_an_approval_once(fake_connect, fake_time_services, clock):
    services = fake_time_services
    async with fake_connect() as admin:
        tasks = [await submit(admin, "migrate", requires_approval=True) for _ in range(3)]
    clock.advance(DAY)
    await asyncio.gather(*(services.approvals.sweep() for _ in range(4)))
    assert sorted(e.subject for e in escalations(services)) == sorted(t["approval"]["id"] for t in tasks)
    async with fake_connect() as admin:
        trail = (await call(admin, "audit_query", action="approval.expire"))["entries"]
        assert sorted(e["subject"] for e in trail) == sorted(t["approval"]["id"] for t in tasks)
        for task in tasks:
            assert (await call(admin, "task_get", task_id=task["id"]))["status"] == "cancelled"


async def test_a_profile_on_expiry_approve_queues_the_task(fake_connect, fake_time_services, clock):
    services = fake_time_services
    async with fake_connect() as admin:
        gated, worker = await spawn(admin, "gated"), await spawn(admin)
    async with fake_connect(gated["token"]) as agent:
        task = await submit(agent, "deploy.staging")
    clock.advance(599)
    assert await services.approvals.sweep() == 0
    async with fake_connect(worker["token"]) as w:
        assert await claim(w) is None
    clock.advance(1)
    assert await services.approvals.sweep() == 1
    async with fake_connect(gated["token"]) as agent:
        seen = await call(agent, "task_get", task_id=task["id"])
        assert seen["status"] == "queued" and seen["error"] is None
        assert (seen["approval"]["status"], seen["approval"]["decided_by"], seen["approval"]["expired"]) == (
            "approved",
            "expiry",
            True,
        )
    async with fake_connect(worker["token"]) as w:
        assert (await claim(w))["id"] == task["id"]
    (event,) = escalations(services)
    assert event.subject == task["approval"]["id"] and event.detail["applied"] == "approve"
    assert await services.approvals.sweep() == 0 and len(escalations(services)) == 1


async def test_the_settings_give_the_default_time_and_decision(settings, clock):
    services = build_services(
        replace(settings, approval_timeout_s=120, approval_on_expiry="approve"), ADMIN_TOKEN, clock=clock
    )
    try:
        connect = connector(services)
        async with connect() as admin:
            worker = await spawn(admin)
            task = await submit(admin, "migrate", requires_approval=True)
            assert task["approval"]["on_expiry"] == "approve"
            assert seconds_between(task["approval"]["created_at"], task["approval"]["expires_at"]) == 120
        clock.advance(119)
        assert await services.approvals.sweep() == 0
        clock.advance(1)
        assert await services.approvals.sweep() == 1
        async with connect(worker["token"]) as w:
            claimed = await claim(w)
            assert claimed is not None and claimed["id"] == task["id"]
        assert len(escalations(services, task["approval"]["id"])) == 1
    finally:
        services.close()


async def test_cancel_while_pending_withdraws_the_approval(fake_connect, fake_time_services, clock):
    services = fake_time_services
    async with fake_connect() as admin:
        ops = await operator(admin)
        requester = await spawn(admin)
    async with fake_connect(requester["token"]) as req:
        task = await submit(req, "migrate", requires_approval=True)
        cancelled = await call(req, "task_cancel", task_id=task["id"], reason="changed my mind")
        assert (
            cancelled["status"] == "cancelled"
            and cancelled["error"] == f"cancelled by {aid(requester)}: changed my mind"
        )
        assert cancelled["approval"]["status"] == "withdrawn" and cancelled["approval"]["decided_at"] is not None
        assert (await call_error(req, "task_cancel", task_id=task["id"])).code == "conflict"
    async with fake_connect(ops) as op:
        assert (await call(op, "approval_list", status="pending"))["approvals"] == []
        (withdrawn,) = (await call(op, "approval_list", status="withdrawn"))["approvals"]
        assert withdrawn["id"] == task["approval"]["id"]
        refused = await call_error(op, "approval_decide", approval_id=task["approval"]["id"], decision="approve")
        assert refused.code == "conflict" and "withdrawn" in refused.text
    clock.advance(2 * DAY)
    assert await services.approvals.sweep() == 0  # nothing left to expire
    assert escalations(services) == []
    async with fake_connect(requester["token"]) as req:
        seen = await call(req, "task_get", task_id=task["id"])
        assert seen["status"] == "cancelled" and seen["approval"]["status"] == "withdrawn"
        assert seen["approval"]["expired"] is False


async def test_only_admin_and_operators_list_and_decide(connect):
    async with connect() as admin:
        viewer = (await call(admin, "token_create", name="watcher", role="viewer"))["token"]
        ops = await operator(admin)
        agent = await spawn(admin)
        task = await submit(admin, "migrate", requires_approval=True)
        approval_id = task["approval"]["id"]
    async with connect(agent["token"]) as own:
        mine = await submit(own, "migrate", requires_approval=True)
    for token in (viewer, agent["token"]):
        async with connect(token) as client:
            assert (await call_error(client, "approval_list")).code == "permission_denied"
            assert (await call_error(client, "approval_list", status="pending")).code == "permission_denied"
            for target in (approval_id, mine["approval"]["id"]):  # not even its own request
                denied = await call_error(client, "approval_decide", approval_id=target, decision="approve")
                assert denied.code == "permission_denied"
    async with connect(ops) as op:
        pending = (await call(op, "approval_list", status="pending"))["approvals"]
        assert sorted(a["id"] for a in pending) == sorted([approval_id, mine["approval"]["id"]])
        await call(op, "approval_decide", approval_id=mine["approval"]["id"], decision="reject")
    async with connect() as admin:
        decided = await call(admin, "approval_decide", approval_id=approval_id, decision="approve", note="admin ok")
        assert decided["decided_by"] == "admin" and decided["status"] == "approved"


def _outcome(result):
    return "ok" if not result.is_error else result.content[0].text.split(":", 1)[0]


async def test_two_operators_deciding_at_once_one_wins(connect):
    async with connect() as admin:
        first, second = await operator(admin, "ops-a"), await operator(admin, "ops-b")
        tasks = [await submit(admin, "migrate", requires_approval=True) for _ in range(6)]
    async with connect(first) as a, connect(second) as b:
        for i, task in enumerate(tasks):
            approval_id = task["approval"]["id"]
            # alternate who asks first, and let them disagree half the time
            deciders = [(a, "ops-a", "approve"), (b, "ops-b", "reject" if i % 2 else "approve")]
            if i % 3 == 0:
                deciders.reverse()
            results = await asyncio.gather(
                *(
                    c.call_tool("approval_decide", {"approval_id": approval_id, "decision": d, "note": who})
                    for c, who, d in deciders
                )
            )
            assert sorted(_outcome(r) for r in results) == ["conflict", "ok"], [_outcome(r) for r in results]
            (winner,) = [r.structured_content for r in results if not r.is_error]
            who, decision = winner["decided_by"], winner["status"]
            assert winner["note"] == who
            assert decision == dict((w, "approved" if d == "approve" else "rejected") for _, w, d in deciders)[who]
            seen = await call(a, "task_get", task_id=task["id"])
            assert seen["approval"] == winner
            if decision == "approved":
                assert seen["status"] == "queued" and seen["error"] is None
            else:
                assert seen["status"] == "cancelled" and seen["error"] == f"approval rejected by {who}: {who}"
            trail = (await call(a, "audit_query", subject=approval_id, action="approval.decide"))["entries"]
            assert [e["principal"] for e in trail] == [who]


async def test_the_losing_decider_learns_the_decision_that_won(connect):
    async with connect() as admin:
        first, second = await operator(admin, "ops-a"), await operator(admin, "ops-b")
        tasks = [await submit(admin, "migrate", requires_approval=True) for _ in range(6)]
    async with connect(first) as a, connect(second) as b:
        for task in tasks:
            approval_id = task["approval"]["id"]
            results = await asyncio.gather(
                a.call_tool("approval_decide", {"approval_id": approval_id, "decision": "approve"}),
                b.call_tool("approval_decide", {"approval_id": approval_id, "decision": "reject"}),
            )
            (winner,) = [r.structured_content for r in results if not r.is_error]
            (loser,) = [r.content[0].text for r in results if r.is_error]
            told = f"conflict: approval {approval_id} is already {winner['status']} (by {winner['decided_by']})"
            assert loser == told


async def test_a_decision_racing_the_expiry_sweep_settles_once(fake_connect, fake_time_services, clock):
    services = fake_time_services
    async with fake_connect() as admin:
        ops = await operator(admin)
        tasks = [await submit(admin, "migrate", requires_approval=True) for _ in range(4)]
    clock.advance(DAY)
    async with fake_connect(ops) as op:
        for task in tasks:
            approval_id = task["approval"]["id"]
            decided, swept = await asyncio.gather(
                op.call_tool("approval_decide", {"approval_id": approval_id, "decision": "approve"}),
                services.approvals.sweep(),
            )
            seen = await call(op, "task_get", task_id=task["id"])
            if decided.is_error:
                assert _outcome(decided) == "conflict"
                assert seen["approval"]["decided_by"] == "expiry" and seen["status"] == "cancelled"
                assert len(escalations(services, approval_id)) == 1
            else:
                assert seen["approval"]["decided_by"] == "ops" and seen["status"] == "queued"
                assert escalations(services, approval_id) == []
                assert seen["approval"]["expired"] is False


async def test_a_cancel_racing_a_decision_leaves_a_consistent_task(connect):
    """Both calls are ordinary requests: each either wins or answers conflict, never unavailable."""
    async with connect() as admin:
        ops = await operator(admin)
        tasks = [await submit(admin, "migrate", requires_approval=True) for _ in range(8)]
    async with connect() as admin, connect(ops) as op:
        for i, task in enumerate(tasks):
            decision = "approve" if i % 2 else "reject"
            cancelled, decided = await asyncio.gather(
                admin.call_tool("task_cancel", {"task_id": task["id"]}),
                op.call_tool("approval_decide", {"approval_id": task["approval"]["id"], "decision": decision}),
            )
            assert _outcome(cancelled) in ("ok", "conflict"), f"race {i}: task_cancel: {cancelled.content[0].text}"
            assert _outcome(decided) in ("ok", "conflict"), f"race {i}: approval_decide: {decided.content[0].text}"
            assert "ok" in (_outcome(cancelled), _outcome(decided))
            seen = await call(admin, "task_get", task_id=task["id"])
            approval = seen["approval"]
            assert seen["status"] == "cancelled"  # either way nothing runs
            if decided.is_error:  # the cancel came first and withdrew the request
                assert approval["status"] == "withdrawn" and not cancelled.is_error
            else:
                assert approval["status"] == ("approved" if decision == "approve" else "rejected")
                assert approval["decided_by"] == "ops"
            pending = (await call(op, "approval_list", status="pending"))["approvals"]
            assert approval["id"] not in {a["id"] for a in pending}


async def test_a_cancel_and_a_decision_queued_on_the_same_task_both_answer(connect, services):
    """Line the two up deterministically: hold the task row, let task_cancel queue on it, then
    approval_decide (which has taken the approval row by then), then let go. Whatever order the two
    transactions lock rows in, each must answer ok or conflict, never unavailable (a deadlock)."""
    async with connect() as admin:
        ops = await operator(admin)
        task = await submit(admin, "migrate", requires_approval=True)
    blocker = services.db.engine.connect()
    hold = blocker.begin()
    blocker.execute(select(tasks_table.c.id).where(tasks_table.c.id == task["id"]).with_for_update())
    try:
        async with connect() as admin, connect(ops) as op:
            cancelling = asyncio.ensure_future(admin.call_tool("task_cancel", {"task_id": task["id"]}))
            await asyncio.sleep(0.5)
            deciding = asyncio.ensure_future(
                op.call_tool("approval_decide", {"approval_id": task["approval"]["id"], "decision": "approve"})
            )
            await asyncio.sleep(0.5)
            hold.commit()
            cancelled, decided = await asyncio.gather(cancelling, deciding)
            assert _outcome(cancelled) in ("ok", "conflict"), f"task_cancel: {cancelled.content[0].text}"
            assert _outcome(decided) in ("ok", "conflict"), f"approval_decide: {decided.content[0].text}"
            seen = await call(admin, "task_get", task_id=task["id"])
    finally:
        blocker.close()
    assert seen["status"] == "cancelled"  # the cancel went first: whatever the decision, the task ends
    assert seen["approval"]["status"] in ("withdrawn", "approved")


async def test_decisions_are_audited_with_the_note_on_an_intact_chain(connect, services):
    async with connect() as admin:
        ops = await operator(admin)
        approved = await submit(admin, "migrate", requires_approval=True)
        rejected = await submit(admin, "migrate", requires_approval=True)
        (submitted,) = (await call(admin, "audit_query", subject=approved["id"], action="task.submit"))["entries"]
        assert submitted["detail"]["approval_id"] == approved["approval"]["id"]
    async with connect(ops) as op:
        await call(op, "approval_decide", approval_id=approved["approval"]["id"], decision="approve", note="looks safe")
        await call(op, "approval_decide", approval_id=rejected["approval"]["id"], decision="reject", note="not today")
        entries = (await call(op, "audit_query", action="approval.decide"))["entries"]
    by_subject = {e["subject"]: e for e in entries}
    assert set(by_subject) == {approved["approval"]["id"], rejected["approval"]["id"]} and len(entries) == 2
    for task, note, decision in ((approved, "looks safe", "approve"), (rejected, "not today", "reject")):
        entry = by_subject[task["approval"]["id"]]
        assert entry["reason"] == note
        assert (entry["principal"], entry["role"]) == ("ops", "operator")
        assert entry["detail"] == {"task_id": task["id"], "decision": decision}
        assert entry["before_digest"] and entry["after_digest"]
        assert entry["before_digest"] != entry["after_digest"]

    report = services.db.read_sync(verify_chain)
    assert report.intact, report.broken_at
    assert report.rows >= 5

    # the check is real: editing the decision's recorded reason breaks the chain at that row
    tampered = by_subject[rejected["approval"]["id"]]["id"]
    services.db.write_sync(
        lambda conn: conn.execute(update(audit_log).where(audit_log.c.id == tampered).values(reason="fine by me"))
    )
    broken = services.db.read_sync(verify_chain)
    assert not broken.intact and tampered in broken.broken_at
