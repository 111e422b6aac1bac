"""Governance through the MCP client: the role table walked for every tool and every role, an agent
reaching for another agent's task, lock or hold, profile permissions (tools, task types, lock names),
what operators and viewers may do, and revoked, rotated and expired tokens.

A refusal must change nothing but the audit trail, where it leaves one request.refused row naming
who asked, what for, and why not."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mcp import Client
from sqlalchemy import select

from server.domain.permissions import TOOL_ROLES
from server.domain.principal import Role
from server.store.tables import audit_log, metadata, rate_buckets
from tests.helpers import call, call_error, every_tool

pytestmark = pytest.mark.anyio

REFUSED = "request.refused"
DENIED = "permission_denied"
# Each call spends from its caller's rate bucket (metering, not state); refusals are audited on purpose.
_NOT_STATE = {audit_log.name, rate_buckets.name}


def ex(name: str) -> dict[str, str]:
    return {"name": name, "mode": "exclusive"}


def sh(name: str) -> dict[str, str]:
    return {"name": name, "mode": "shared"}


@pytest.fixture
def services(fake_time_services):
    """The clock stands still in this module: an agent's call is its heartbeat, written at most once
    per instant, so after an agent's first call a refused call has nothing to change."""
    return fake_time_services


@pytest.fixture
def connect(fake_connect):
    return fake_connect


def snapshot(services) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every state table: the proof that a refused call changed nothing."""
    with services.db.engine.connect() as conn:
        return {
            t.name: sorted(tuple(map(repr, row)) for row in conn.execute(select(t)))
            for t in metadata.sorted_tables
            if t.name not in _NOT_STATE
        }


def audit_ids(services) -> set[str]:
    with services.db.engine.connect() as conn:
        return set(conn.execute(select(audit_log.c.id)).scalars())


def audit_since(services, seen: set[str]) -> list[Any]:
    with services.db.engine.connect() as conn:
        rows = conn.execute(select(audit_log).order_by(audit_log.c.id)).all()
    return [row for row in rows if row.id not in seen]


async def refused_quietly(services, client: Client, tool: str, **arguments: Any):
    """Call a tool that must be refused with permission_denied; check that the only trace it leaves
    is one request.refused audit row. Returns (failure, that audit row)."""
    before, seen = snapshot(services), audit_ids(services)
    failure = await call_error(client, tool, **arguments)
    assert failure.code == DENIED, f"{tool}: {failure.text}"
    assert snapshot(services) == before, f"refused {tool} changed state"
    new = audit_since(services, seen)
    assert [row.action for row in new] == [REFUSED], f"refused {tool} left audit rows {[r.action for r in new]}"
    (row,) = new
    assert row.detail["request"] == tool and row.detail["code"] == DENIED
    assert row.detail["message"] and row.detail["message"] in failure.text
    return failure, row


def later() -> str:
    """A not_before far enough ahead that no agent claims the task during a test."""
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


# -- 1. the role table, walked through MCP --------------------------------------------------------

# Hard-coded so the walk below is not only the table checking itself.
KEY_EXPECTATIONS: list[tuple[Role, str, bool]] = [
    (Role.AGENT, "profile_register", False),  # an agent never writes the rules it runs under
    (Role.AGENT, "profile_rollout_set", False),
    (Role.VIEWER, "profile_register", False),
    (Role.OPERATOR, "profile_register", True),
    (Role.VIEWER, "profile_list", True),
    (Role.VIEWER, "task_submit", False),
    (Role.VIEWER, "task_cancel", False),
    (Role.VIEWER, "agent_spawn", False),
    (Role.VIEWER, "audit_query", False),
    (Role.VIEWER, "token_list", False),
    (Role.VIEWER, "task_list", True),
    (Role.VIEWER, "lock_list", True),
    (Role.OPERATOR, "token_create", False),
    (Role.OPERATOR, "token_rotate", False),
    (Role.AGENT, "notification_channel_create", False),
    (Role.OPERATOR, "notification_channel_create", False),
    (Role.OPERATOR, "notification_deliveries", True),
    (Role.VIEWER, "notification_channel_list", False),
    (Role.OPERATOR, "resource_set", False),
    (Role.OPERATOR, "budget_reserve", False),
    (Role.OPERATOR, "task_cancel", True),
    (Role.OPERATOR, "lock_release", True),
    (Role.OPERATOR, "agent_terminate", True),
    (Role.OPERATOR, "agent_restart", True),
    (Role.VIEWER, "agent_restart", False),
    (Role.OPERATOR, "approval_decide", True),
    (Role.OPERATOR, "audit_query", True),
    (Role.AGENT, "approval_decide", False),
    (Role.AGENT, "approval_list", False),
    (Role.AGENT, "audit_query", False),
    (Role.AGENT, "token_create", False),
    (Role.AGENT, "resource_set", False),
    (Role.AGENT, "task_claim", True),
    (Role.AGENT, "task_complete", True),
    (Role.AGENT, "usage_record", True),
    (Role.ADMIN, "usage_record", False),
    (Role.ADMIN, "task_claim", False),
    (Role.ADMIN, "task_complete", False),
    (Role.ADMIN, "agent_heartbeat", False),
    (Role.ADMIN, "token_create", True),
    (Role.ADMIN, "resource_set", True),
    (Role.ADMIN, "approval_decide", True),
]

# (role, tool) allowed by the role table but refused for this fleet's agent by the service: its
# profile names no trigger tools and no topics, and it may not rate work it ran.
ALLOWED_BUT: dict[tuple[Role, str], str] = {
    **{
        (Role.AGENT, tool): "permission_denied"
        for tool in (
            "trigger_create",
            "trigger_list",
            "trigger_get",
            "trigger_update",
            "trigger_delete",
            "trigger_fire",
        )
    },
    (Role.AGENT, "topic_subscribe"): "permission_denied",
    (Role.AGENT, "task_feedback"): "permission_denied",  # agent A ran the task: no rating its own work
}

ROLES = [Role.ADMIN, Role.OPERATOR, Role.VIEWER, Role.AGENT]
NAMES = {Role.OPERATOR: "ops", Role.VIEWER: "eve"}


@dataclass
class Fleet:
    """A small fleet for the walk: agent A holding a task, a lock and a hold, another agent B, a
    task queued for B, a pending approval and a bystander token."""

    role: Role
    me: Client  # the role under test
    principal: str  # the id its calls are audited under
    admin: Client
    agent_client: Client  # agent A
    agent: str
    other: str
    leased: str
    queued: str
    lock: str
    hold: str
    approval: str
    counter: itertools.count = field(default_factory=itertools.count)

    def unique(self, prefix: str) -> str:
        return f"{prefix}{next(self.counter)}"


async def open_fleet(connect, stack: AsyncExitStack, role: Role) -> Fleet:
    admin = await stack.enter_async_context(connect())
    secrets = {}
    for token_role, name in NAMES.items():
        issued = await call(admin, "token_create", name=name, role=token_role.value)
        assert issued["token"].startswith("afp_") and issued["details"]["role"] == token_role.value
        secrets[token_role] = issued["token"]
    await call(admin, "token_create", name="bystander", role="viewer")
    a = await call(admin, "agent_spawn", profile="worker")
    b = await call(admin, "agent_spawn", profile="worker")
    agent = a["agent"]["id"]
    agent_client = await stack.enter_async_context(connect(a["token"]))
    leased = await call(admin, "task_submit", type="build", pinned_agent_id=agent)
    assert (await call(agent_client, "task_claim"))["task"]["id"] == leased["id"]
    queued = await call(admin, "task_submit", type="build", pinned_agent_id=b["agent"]["id"])
    lock = await call(agent_client, "lock_acquire", resources=[ex("device:held")], ttl_s=300)
    hold = await call(agent_client, "budget_reserve", amount_usd="1")
    pending = await call(admin, "task_submit", type="deploy", requires_approval=True)
    assert pending["status"] == "pending_approval"
    if role is Role.ADMIN:
        me, principal = admin, "admin"
    elif role is Role.AGENT:
        me, principal = agent_client, agent
    else:
        me, principal = await stack.enter_async_context(connect(secrets[role])), NAMES[role]
    return Fleet(
        role=role,
        me=me,
        principal=principal,
        admin=admin,
        agent_client=agent_client,
        agent=agent,
        other=b["agent"]["id"],
        leased=leased["id"],
        queued=queued["id"],
        lock=lock["lock_id"],
        hold=hold["id"],
        approval=pending["approval"]["id"],
    )


# Arguments for each tool: valid for the caller when allowed (creating whatever the call acts on),
# else aimed at live rows of others, so that a missing check would show as a change.
Arguments = Callable[[Fleet, bool], Awaitable[dict[str, Any]]]


async def _leased_to_me(f: Fleet) -> str:
    task = await call(f.admin, "task_submit", type="build", pinned_agent_id=f.agent)
    assert (await call(f.agent_client, "task_claim"))["task"]["id"] == task["id"]
    return task["id"]


async def _agent_terminate(f: Fleet, ok: bool) -> dict[str, Any]:
    if not ok:
        return {"agent_id": f.agent}
    spawner = f.me if f.role is Role.AGENT else f.admin  # an agent ends its own child
    return {"agent_id": (await call(spawner, "agent_spawn", profile="worker"))["agent"]["id"]}


async def _agent_restart(f: Fleet, ok: bool) -> dict[str, Any]:
    if not ok:
        return {"agent_id": f.agent}
    spawner = f.me if f.role is Role.AGENT else f.admin  # an agent restarts its own child
    return {"agent_id": (await call(spawner, "agent_spawn", profile="sleeper"))["agent"]["id"]}


async def _task_cancel(f: Fleet, ok: bool) -> dict[str, Any]:
    if not ok:
        return {"task_id": f.queued}
    if f.role is Role.AGENT:  # an agent cancels what it submitted
        return {"task_id": (await call(f.me, "task_submit", type="build", not_before=later()))["id"]}
    return {"task_id": (await call(f.admin, "task_submit", type="build", pinned_agent_id=f.other))["id"]}


async def _task_claim(f: Fleet, ok: bool) -> dict[str, Any]:
    if ok:
        await call(f.admin, "task_submit", type="build", pinned_agent_id=f.agent)
    return {}


async def _task_complete(f: Fleet, ok: bool) -> dict[str, Any]:
    return {"task_id": await _leased_to_me(f) if ok else f.leased, "result": {"ok": True}}


async def _task_fail(f: Fleet, ok: bool) -> dict[str, Any]:
    return {"task_id": await _leased_to_me(f) if ok else f.leased, "error": "boom", "retryable": False}


async def _task_log(f: Fleet, ok: bool) -> dict[str, Any]:
    return {"task_id": await _leased_to_me(f) if ok else f.leased, "lines": ["step 1"]}


async def _lock_renew(f: Fleet, ok: bool) -> dict[str, Any]:
    if ok and f.role is Role.ADMIN:
        own = await call(f.admin, "lock_acquire", resources=[ex(f.unique("device:admin"))], ttl_s=60)
        return {"lock_id": own["lock_id"], "ttl_s": 120}
    return {"lock_id": f.lock, "ttl_s": 120}  # the agent's own lock, or someone else's


async def _lock_release(f: Fleet, ok: bool) -> dict[str, Any]:
    if not ok:
        return {"lock_id": f.lock}
    # The agent releases its own; admin and operator force-release the agent's.
    fresh = await call(f.agent_client, "lock_acquire", resources=[ex(f.unique("device:r"))], ttl_s=60)
    return {"lock_id": fresh["lock_id"]}


async def _budget_set(f: Fleet, ok: bool) -> dict[str, Any]:
    if ok and f.role is Role.AGENT:  # an agent budgets its own children only
        child = await call(f.me, "agent_spawn", profile="worker")
        return {"scope": f"agent:{child['agent']['id']}", "limit_usd": "5"}
    return {"scope": "global", "limit_usd": "100"}


async def _budget_release(f: Fleet, ok: bool) -> dict[str, Any]:
    if ok and f.role is Role.ADMIN:  # the admin may release anyone's hold; keep the agent's own for later
        return {"hold_id": (await call(f.agent_client, "budget_reserve", amount_usd="1"))["id"]}
    return {"hold_id": f.hold}


async def _approval_decide(f: Fleet, ok: bool) -> dict[str, Any]:
    if not ok:
        return {"approval_id": f.approval, "decision": "approve"}
    fresh = await call(f.admin, "task_submit", type="deploy", requires_approval=True)
    return {"approval_id": fresh["approval"]["id"], "decision": "reject", "note": "not today"}


async def _token_create(f: Fleet, ok: bool) -> dict[str, Any]:
    return {"name": f.unique("fresh"), "role": "operator"}


async def _token_ref(f: Fleet, ok: bool) -> dict[str, Any]:
    if not ok:
        return {"token": "bystander"}
    fresh = await call(f.admin, "token_create", name=f.unique("doomed"), role="viewer")
    return {"token": fresh["details"]["name"]}


def _channel(f: Fleet) -> dict[str, Any]:
    return {"name": f.unique("walk-"), "url": "https://hooks.example.com/fleet", "event_types": ["task.dead"]}


async def _channel_delete(f: Fleet, ok: bool) -> dict[str, Any]:
    if not ok:
        return {"channel": "bystander"}
    return {"channel": (await call(f.admin, "notification_channel_create", **_channel(f)))["id"]}


def _workflow(f: Fleet) -> dict[str, Any]:
    return {"name": f.unique("walk-"), "steps": [{"id": "a", "task": {"type": "build", "not_before": later()}}]}


async def _own_run(f: Fleet, ok: bool) -> dict[str, Any]:
    """A run the role may see (an agent sees the runs it started; the others see all)."""
    runner = f.me if ok and f.role is Role.AGENT else f.admin
    return {"run_id": (await call(runner, "workflow_run", definition=_workflow(f)))["id"]}


async def _own_trigger(f: Fleet, ok: bool) -> dict[str, Any]:
    """A trigger the role may see: made by itself when it may make one, else by the admin."""
    maker = f.me if ok and f.role in (Role.ADMIN, Role.OPERATOR) else f.admin
    name = f.unique("hook-")
    # Its task needs a capability no agent has: the walk's agent must not claim it in place of its own.
    task = {"type": "build", "capabilities": ["trigger-walk"], "allow_unroutable": True}
    await call(maker, "trigger_create", name=name, kind="webhook", task=task)
    return {"trigger": name}


async def _event_trigger(f: Fleet, ok: bool) -> dict[str, Any]:
    name = f.unique("on-dead-")
    await call(f.admin, "trigger_create", name=name, kind="event", event_types=["task.dead"], task={"type": "build"})
    return {"trigger": name, "after_cursor": "0" * 32}


async def _own_thread(f: Fleet, ok: bool) -> dict[str, Any]:
    sender = f.me if ok and f.role is not Role.VIEWER else f.admin
    return {"thread_id": (await call(sender, "message_send", to=["operators"], body="status?"))["thread_id"]}


async def _mail_for_me(f: Fleet, ok: bool) -> dict[str, Any]:
    """A message in the role's inbox: the agent's own, or the operators' one for staff."""
    to = [f.agent] if f.role is Role.AGENT else ["operators"]
    return {"message_ids": [(await call(f.admin, "message_send", to=to, body="please confirm"))["id"]]}


def _fixed(**arguments: Any) -> Arguments:
    async def arguments_for(f: Fleet, ok: bool) -> dict[str, Any]:
        return dict(arguments)

    return arguments_for


async def _with_extra(base: Awaitable[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {**(await base), **extra}


def _with(build: Callable[[Fleet], dict[str, Any]]) -> Arguments:
    async def arguments_for(f: Fleet, ok: bool) -> dict[str, Any]:
        return build(f)

    return arguments_for


async def _finished(f: Fleet, ok: bool) -> dict[str, Any]:
    """A task the admin submitted and agent A completed."""
    task_id = await _leased_to_me(f)
    await call(f.agent_client, "task_complete", task_id=task_id, result={"ok": True})
    return {"task_id": task_id, "rating": "good"}


async def _saved_template(f: Fleet, ok: bool) -> dict[str, Any]:
    saved = await call(f.admin, "workflow_template_save", definition=_workflow(f), version="1.0.0")
    return {"template": saved["ref"]}


async def _scorecard(f: Fleet, ok: bool) -> dict[str, Any]:
    return {"scope": f"agent:{f.agent}" if f.role is Role.AGENT else "task_type:build", "period": "24h"}


async def _compare(f: Fleet, ok: bool) -> dict[str, Any]:
    newer = {"name": "worker", "version": "1.1.0", "description": "a second version to compare"}
    await call(f.admin, "profile_register", definition=newer)  # the same body again changes nothing
    return {"name": "worker", "version_a": "1.0.0", "version_b": "1.1.0"}


def _profile(f: Fleet) -> dict[str, Any]:
    return {"name": f.unique("walk-"), "version": "1.0.0", "description": "a profile for the walk"}


async def _registered_version(f: Fleet, ok: bool) -> dict[str, Any]:
    """A version to deprecate or retire: a fresh one, registered by the admin."""
    made = await call(f.admin, "profile_register", definition=_profile(f))
    return {"profile": made["ref"]}


ARGUMENTS: dict[str, Arguments] = {
    "fleet_status": _fixed(),
    "agent_list": _fixed(),
    "agent_get": _with(lambda f: {"agent_id": f.agent}),
    "agent_spawn": _fixed(profile="worker"),
    "agent_terminate": _agent_terminate,
    "agent_restart": _agent_restart,
    "agent_heartbeat": _fixed(),
    "task_submit": _with(lambda f: {"type": "build", "not_before": later()}),
    "task_get": _with(lambda f: {"task_id": f.leased}),
    "task_list": _fixed(),
    "task_cancel": _task_cancel,
    "task_claim": _task_claim,
    "task_heartbeat": _with(lambda f: {"task_id": f.leased, "progress": 50}),
    "task_complete": _task_complete,
    "task_fail": _task_fail,
    "task_log": _task_log,
    "lock_acquire": _with(lambda f: {"resources": [ex(f.unique("device:d"))], "ttl_s": 60}),
    "lock_renew": _lock_renew,
    "lock_release": _lock_release,
    "lock_list": _fixed(),
    "resource_set": _fixed(name="gpu:pool", capacity=2),
    "budget_set": _budget_set,
    "budget_status": _fixed(),
    "budget_reserve": _fixed(amount_usd="1"),
    "budget_release": _budget_release,
    "usage_record": _fixed(model="claude-sonnet-4-5", input_tokens=10, output_tokens=5, cost_usd="0.01"),
    "workflow_run": _with(lambda f: {"definition": _workflow(f)}),
    "workflow_get": _own_run,
    "workflow_list": _fixed(),
    "workflow_cancel": _own_run,
    "workflow_template_save": _with(lambda f: {"definition": _workflow(f), "version": "1.0.0"}),
    "approval_list": _fixed(),
    "approval_decide": _approval_decide,
    "audit_query": _fixed(),
    "token_create": _token_create,
    "token_list": _fixed(),
    "token_revoke": _token_ref,
    "token_rotate": _token_ref,
    "task_wait": _with(lambda f: {"task_ids": [f.leased], "wait_s": 0}),
    "workflow_template_list": _fixed(),
    "workflow_template_get": _fixed(template="research-review-report"),
    "event_list": _fixed(),
    "event_replay": _event_trigger,
    "trigger_create": _with(lambda f: {"name": f.unique("made-"), "kind": "webhook", "task": {"type": "build"}}),
    "trigger_list": _fixed(),
    "trigger_get": _own_trigger,
    "trigger_update": lambda f, ok: _with_extra(_own_trigger(f, ok), enabled=False),
    "trigger_delete": _own_trigger,
    "trigger_fire": _own_trigger,
    "message_send": _fixed(to=["operators"], body="hello"),
    "message_request": _fixed(to=["operators"], body="anyone?", wait_s=0),
    "message_inbox": _fixed(),
    "message_ack": _mail_for_me,
    "message_thread": _own_thread,
    "message_search": _fixed(query="hello"),
    "topic_subscribe": _fixed(topic="releases"),
    "topic_unsubscribe": _fixed(topic="releases"),
    "notification_channel_create": _with(_channel),
    "notification_channel_list": _fixed(),
    "notification_channel_delete": _channel_delete,
    "notification_deliveries": _fixed(),
    "profile_list": _fixed(),
    "profile_get": _fixed(profile="worker"),
    "profile_export": _fixed(profile="worker@1.0.0"),
    "profile_register": _with(lambda f: {"definition": _profile(f)}),
    "profile_deprecate": _registered_version,
    "profile_retire": _registered_version,
    "profile_rollout_set": _fixed(name="worker", versions={"1.0.0": 100}),
    "task_feedback": _finished,
    "scorecard": _scorecard,
    "workflow_template_deprecate": _saved_template,
    "workflow_template_retire": _saved_template,
    "profile_compare": _compare,
}


async def test_the_table_names_every_tool_and_matches_the_key_expectations(connect):
    listed = set(await every_tool(connect))
    assert set(TOOL_ROLES) == listed, "a tool missing from TOOL_ROLES is silently admin-only"
    assert set(ARGUMENTS) == listed, "the walk below must cover every tool"
    for role, tool, allowed in KEY_EXPECTATIONS:
        assert (role in TOOL_ROLES[tool]) is allowed, f"{role} {'may' if allowed else 'may not'} call {tool}"
    for role in ROLES:  # every role is both let in somewhere and kept out somewhere
        assert any(role in roles for roles in TOOL_ROLES.values())
        assert any(role not in roles for roles in TOOL_ROLES.values())


async def test_every_tool_a_viewer_may_call_is_read_only(connect):
    for tool in (await every_tool(connect)).values():
        if Role.VIEWER in TOOL_ROLES[tool.name]:
            assert tool.annotations is not None and tool.annotations.read_only_hint, tool.name


@pytest.mark.parametrize("role", ROLES, ids=[r.value for r in ROLES])
async def test_each_tool_admits_exactly_the_roles_the_table_names(connect, services, role):
    async with AsyncExitStack() as stack:
        f = await open_fleet(connect, stack, role)
        refused = []
        for tool, roles in TOOL_ROLES.items():
            allowed = role in roles
            arguments = await ARGUMENTS[tool](f, allowed)
            if allowed:
                before = snapshot(services) if role is Role.VIEWER else None
                answer = await f.me.call_tool(tool, arguments)
                code = answer.content[0].text.split(":", 1)[0] if answer.is_error else "ok"
                assert code == ALLOWED_BUT.get((role, tool), "ok"), f"{role} {tool}: {answer.content[0].text}"
                if before is not None:
                    assert snapshot(services) == before, f"a viewer's {tool} changed state"
                continue
            failure, row = await refused_quietly(services, f.me, tool, **arguments)
            assert f"{tool} is for " in failure.text and role.value in failure.text  # the door said no
            assert (row.principal, row.role) == (f.principal, role.value)
            assert row.subject in {tool, *(str(v)[:40] for v in arguments.values())}
            refused.append(tool)
        assert {tool for r, tool, allowed in KEY_EXPECTATIONS if r is role and not allowed} <= set(refused)
        if role in (Role.ADMIN, Role.OPERATOR):
            page = await call(f.me, "audit_query", action=REFUSED, actor=f.principal, limit=500)
            assert sorted(e["detail"]["request"] for e in page["entries"]) == sorted(refused)


# -- 2. an agent reaching for another agent's work -------------------------------------------------


async def test_an_agent_cannot_touch_another_agents_task_lock_or_hold(connect, services):
    async with connect() as admin:
        a = await call(admin, "agent_spawn", profile="worker")
        b = await call(admin, "agent_spawn", profile="worker")
        task = await call(admin, "task_submit", type="build", pinned_agent_id=b["agent"]["id"])
    thief = a["agent"]["id"]
    async with connect(b["token"]) as owner:
        assert (await call(owner, "task_claim"))["task"]["id"] == task["id"]
        lock = (await call(owner, "lock_acquire", resources=[ex("device:owned")], ttl_s=300))["lock_id"]
        hold = (await call(owner, "budget_reserve", amount_usd="2", purpose="b's money"))["id"]
    async with connect() as admin:
        task_before = await call(admin, "task_get", task_id=task["id"])
        locks_before = await call(admin, "lock_list")
    assert task_before["status"] == "running" and task_before["agent_id"] == b["agent"]["id"]

    attempts = [
        ("task_complete", {"task_id": task["id"], "result": {"stolen": True}}, task["id"]),
        ("task_fail", {"task_id": task["id"], "error": "sabotage", "retryable": False}, task["id"]),
        ("task_heartbeat", {"task_id": task["id"], "progress": 99}, task["id"]),
        ("task_cancel", {"task_id": task["id"], "reason": "mine now"}, task["id"]),
        ("task_get", {"task_id": task["id"]}, task["id"]),
        ("lock_release", {"lock_id": lock}, lock),
        ("lock_renew", {"lock_id": lock, "ttl_s": 600}, lock),
        ("budget_release", {"hold_id": hold}, hold),
        ("budget_release", {"hold_id": hold, "actual_usd": "0"}, hold),
        (
            "usage_record",
            {"model": "claude-sonnet-4-5", "input_tokens": 1, "output_tokens": 1, "task_id": task["id"]},
            task["id"],
        ),
        ("usage_record", {"model": "claude-sonnet-4-5", "input_tokens": 1, "output_tokens": 1, "hold_id": hold}, hold),
    ]
    async with connect(a["token"]) as agent:
        await call(agent, "agent_heartbeat")  # its first call makes it active: a change, but not a refused one
        for tool, arguments, subject in attempts:
            failure, row = await refused_quietly(services, agent, tool, **arguments)
            assert f"{tool} is for" not in failure.text  # the role may call it: the row said no
            assert (row.principal, row.role, row.subject) == (thief, "agent", subject)

    async with connect() as admin:
        assert await call(admin, "task_get", task_id=task["id"]) == task_before
        assert await call(admin, "lock_list") == locks_before
        trail = await call(admin, "audit_query", action=REFUSED, actor=thief)
    logged = [(e["detail"]["request"], e["detail"]["code"], e["subject"], e["principal"]) for e in trail["entries"]]
    assert logged[::-1] == [(tool, DENIED, subject, thief) for tool, _, subject in attempts]

    # Everything is still the owner's to finish.
    async with connect(b["token"]) as owner:
        assert (await call(owner, "lock_renew", lock_id=lock, ttl_s=600))["status"] == "held"
        assert (await call(owner, "lock_release", lock_id=lock))["status"] == "released"
        released = await call(owner, "budget_release", hold_id=hold, actual_usd="0.5")
        assert released["status"] == "settled" and released["spent_usd"] == "0.500000"
        done = await call(owner, "task_complete", task_id=task["id"], result={"by": "b"})
    assert done["status"] == "completed" and done["result"] == {"by": "b"}


# -- 3. profile permissions ------------------------------------------------------------------------


async def test_a_profile_limits_its_agents_tools_task_types_and_lock_names(connect, services):
    async with connect() as admin:
        spawned = await call(admin, "agent_spawn", profile="restricted")
        free = await call(admin, "agent_spawn", profile="worker")
    me = spawned["agent"]["id"]
    refusals = 0
    async with connect(spawned["token"]) as agent:
        # Tools: only fleet_status, agent_heartbeat, task_* and lock_*.
        for tool, arguments in [
            ("agent_spawn", {"profile": "worker"}),
            ("agent_list", {}),
            ("budget_reserve", {"amount_usd": "1"}),
            ("budget_status", {}),
            ("usage_record", {"model": "claude-sonnet-4-5", "input_tokens": 1, "output_tokens": 1}),
        ]:
            failure, row = await refused_quietly(services, agent, tool, **arguments)
            assert f"profile restricted@1.0.0 does not allow {tool}" in failure.text
            assert row.principal == me
            refusals += 1
        await call(agent, "fleet_status")
        await call(agent, "agent_heartbeat")
        await call(agent, "task_list")
        await call(agent, "lock_list")

        # Task types: review.* and build.
        for task_type in ("deploy", "review", "reviewer.code", "build.nightly"):
            failure, _ = await refused_quietly(services, agent, "task_submit", type=task_type, not_before=later())
            assert repr(task_type) in failure.text
            refusals += 1
        for task_type in ("review.code", "build"):
            assert (await call(agent, "task_submit", type=task_type, not_before=later()))["type"] == task_type

        # A task's resources are lock names too.
        failure, _ = await refused_quietly(
            services, agent, "task_submit", type="build", resources=[ex("device:scanner")], not_before=later()
        )
        assert "device:scanner" in failure.text
        refusals += 1
        needs = await call(agent, "task_submit", type="build", resources=[ex("repo:/src/app.py")], not_before=later())
        assert needs["status"] == "queued"

        # Locks: repo:/src/** (a subtree) and device:printer (that name only).
        for resources in (
            [ex("device:scanner")],
            [ex("device:printer/tray1")],  # under a plain name: not covered
            [ex("repo:/**")],  # a subtree broader than the allowed one
            [sh("repo:/**")],
            [ex("repo:/srcx/a.py")],  # shares a prefix, not the subtree
            [ex("repo:/docs/readme.md")],
            [ex("device:printer"), ex("device:scanner")],  # one bad name refuses the whole request
        ):
            failure, _ = await refused_quietly(services, agent, "lock_acquire", resources=resources, ttl_s=60)
            assert "may not lock" in failure.text
            refusals += 1
        for resources in (
            [ex("device:printer")],
            [ex("repo:/src/app.py")],
            [sh("repo:/src/**")],  # exactly the allowed subtree
            [ex("repo:/src/lib/**")],  # a narrower subtree
            [ex("device:printer"), sh("repo:/src/a/b/c.py")],
        ):
            grant = await call(agent, "lock_acquire", resources=resources, ttl_s=60)
            assert grant["granted"], resources
            await call(agent, "lock_release", lock_id=grant["lock_id"])

        mine = {t["type"] for t in (await call(agent, "task_list"))["tasks"]}
        assert mine == {"review.code", "build"}

    async with connect() as admin:
        trail = await call(admin, "audit_query", action=REFUSED, actor=me, limit=500)
    assert len(trail["entries"]) == refusals
    assert {e["detail"]["code"] for e in trail["entries"]} == {DENIED}

    # A profile without permissions restricts nothing beyond the agent role.
    async with connect(free["token"]) as unrestricted:
        await call(unrestricted, "task_submit", type="deploy", not_before=later())
        assert (await call(unrestricted, "lock_acquire", resources=[ex("device:scanner")], ttl_s=60))["granted"]
        await call(unrestricted, "budget_status")


# -- 4. operators and viewers ------------------------------------------------------------------------


async def test_an_operator_cancels_force_releases_terminates_decides_and_reads_the_audit(connect):
    async with connect() as admin:
        ops = (await call(admin, "token_create", name="ops", role="operator"))["token"]
        a = await call(admin, "agent_spawn", profile="worker")
        leased = await call(admin, "task_submit", type="build", pinned_agent_id=a["agent"]["id"])
        pending = await call(admin, "task_submit", type="deploy", requires_approval=True)
    agent_id = a["agent"]["id"]
    async with connect(a["token"]) as agent:
        own = await call(agent, "task_submit", type="build", not_before=later())
        assert (await call(agent, "task_claim"))["task"]["id"] == leased["id"]
        lock = (await call(agent, "lock_acquire", resources=[ex("device:stuck")], ttl_s=600))["lock_id"]

    async with connect(ops) as operator:
        cancelled = await call(operator, "task_cancel", task_id=own["id"], reason="not needed")
        assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled by ops: not needed"
        asked = await call(operator, "task_cancel", task_id=leased["id"])  # running: cooperative
        assert asked["cancel_requested"] is True and asked["agent_id"] == agent_id
        released = await call(operator, "lock_release", lock_id=lock, reason="stuck")
        assert released["status"] == "released" and released["ended_by"] == "ops" and released["holder"] == agent_id
        decided = await call(operator, "approval_decide", approval_id=pending["approval"]["id"], decision="approve")
        assert decided["status"] == "approved" and decided["decided_by"] == "ops"
        ended = await call(operator, "agent_terminate", agent_id=agent_id, reason="done")
        assert ended["terminated"] == [agent_id]
        assert (await call(operator, "agent_get", agent_id=agent_id))["status"] == "terminated"

        trail = (await call(operator, "audit_query", actor="ops"))["entries"]
        by_action = {e["action"]: e for e in trail}
        for action, subject in [
            ("task.cancel", None),
            ("lock.force_release", lock),
            ("approval.decide", pending["approval"]["id"]),
            ("agent.terminate", agent_id),
        ]:
            assert action in by_action, f"no {action} by ops in {sorted(by_action)}"
            assert by_action[action]["principal"] == "ops" and by_action[action]["role"] == "operator"
            assert subject is None or by_action[action]["subject"] == subject
        cancels = {e["subject"] for e in trail if e["action"] == "task.cancel"}
        assert cancels == {own["id"], leased["id"]}
        assert by_action["lock.force_release"]["detail"]["holder"] == agent_id


async def test_a_viewer_sees_everyones_work_and_changes_nothing(connect, services):
    async with connect() as admin:
        eve = (await call(admin, "token_create", name="eve", role="viewer"))["token"]
        a = await call(admin, "agent_spawn", profile="worker")
        admins = await call(admin, "task_submit", type="build", pinned_agent_id=a["agent"]["id"])
        pending = await call(admin, "task_submit", type="deploy", requires_approval=True)
    agent_id = a["agent"]["id"]
    async with connect(a["token"]) as agent:
        agents_own = await call(agent, "task_submit", type="review", not_before=later())
        assert (await call(agent, "task_claim"))["task"]["id"] == admins["id"]
        lock = (await call(agent, "lock_acquire", resources=[ex("device:watched")], ttl_s=600))["lock_id"]
        hold = (await call(agent, "budget_reserve", amount_usd="1"))["id"]

    async with connect(eve) as viewer:
        before = snapshot(services)
        listed = {t["id"] for t in (await call(viewer, "task_list"))["tasks"]}
        assert {admins["id"], agents_own["id"], pending["id"]} <= listed
        assert (await call(viewer, "task_get", task_id=agents_own["id"]))["submitted_by"] == agent_id
        assert (await call(viewer, "task_get", task_id=admins["id"]))["agent_id"] == agent_id
        assert agent_id in {x["id"] for x in (await call(viewer, "agent_list"))["agents"]}
        assert (await call(viewer, "agent_get", agent_id=agent_id))["id"] == agent_id
        locks = (await call(viewer, "lock_list"))["locks"]
        assert [(x["id"], x["holder"]) for x in locks] == [(lock, agent_id)]
        await call(viewer, "budget_status")
        await call(viewer, "fleet_status")
        assert snapshot(services) == before

        for tool, arguments in [
            ("task_submit", {"type": "build"}),
            ("task_cancel", {"task_id": agents_own["id"]}),
            ("task_cancel", {"task_id": admins["id"]}),
            ("lock_release", {"lock_id": lock}),
            ("budget_release", {"hold_id": hold}),
            ("agent_terminate", {"agent_id": agent_id}),
            ("agent_spawn", {"profile": "worker"}),
            ("approval_decide", {"approval_id": pending["approval"]["id"], "decision": "approve"}),
            ("approval_list", {}),
            ("audit_query", {}),
            ("token_list", {}),
            ("resource_set", {"name": "gpu:pool", "capacity": 4}),
        ]:
            _, row = await refused_quietly(services, viewer, tool, **arguments)
            assert (row.principal, row.role) == ("eve", "viewer")


# -- 5. revoked, rotated and expired tokens ----------------------------------------------------------


async def test_revoked_and_rotated_secrets_are_refused_and_the_new_secret_works(connect, services):
    async with connect() as admin:
        gone = (await call(admin, "token_create", name="gone", role="viewer"))["token"]
        old = (await call(admin, "token_create", name="rot", role="operator"))["token"]
        assert gone.startswith("afp_") and old.startswith("afp_")

    async with connect(gone) as session, connect(old) as old_session:
        await call(session, "fleet_status")
        await call(old_session, "task_list")
        async with connect() as admin:
            revoked = await call(admin, "token_revoke", token="gone")
            assert revoked["revoked_at"] is not None and revoked["active"] is False
            rotated = await call(admin, "token_rotate", token="rot")
        new = rotated["token"]
        assert new.startswith("afp_") and new not in (old, gone)
        assert rotated["details"]["name"] == "rot" and rotated["details"]["role"] == "operator"
        assert rotated["details"]["rotated_at"] is not None and rotated["details"]["active"] is True
        # Sessions opened before are refused at their next call: the token is checked on every call.
        before = snapshot(services)
        assert (await call_error(session, "fleet_status")).code == DENIED
        assert (await call_error(old_session, "task_list")).code == DENIED
        assert snapshot(services) == before

    for secret in (gone, old):
        async with connect(secret) as stale:
            for tool in ("fleet_status", "task_list", "audit_query"):
                assert (await call_error(stale, tool)).code == DENIED
            assert (await call_error(stale, "task_submit", type="build")).code == DENIED
    async with connect() as admin:
        assert (await call(admin, "task_list"))["tasks"] == []  # nothing got through

    async with connect(new) as fresh:
        await call(fresh, "task_list")
        page = await call(fresh, "audit_query", action="token.rotate")  # still an operator
        assert [e["principal"] for e in page["entries"]] == ["admin"]
        assert (await call_error(fresh, "token_list")).code == DENIED  # and only an operator
    async with connect() as admin:
        tokens = {t["name"]: t for t in (await call(admin, "token_list"))["tokens"]}
        assert tokens["gone"]["active"] is False and tokens["rot"]["active"] is True
        again = await call_error(admin, "token_rotate", token="gone")
        assert again.code == "conflict"


async def test_an_expired_token_is_refused(fake_connect, clock):
    async with fake_connect() as admin:
        issued = await call(admin, "token_create", name="temp", role="viewer", expires_in_s=60)
    async with fake_connect(issued["token"]) as temp:
        await call(temp, "fleet_status")
        clock.advance(61)
        assert (await call_error(temp, "fleet_status")).code == DENIED
    async with fake_connect() as admin:
        listed = {t["name"]: t for t in (await call(admin, "token_list"))["tokens"]}
    assert listed["temp"]["active"] is False and listed["temp"]["revoked_at"] is None


async def test_each_caller_lists_only_the_tools_it_may_call_described_without_indentation(connect):
    async with connect() as admin:
        viewer = await call(admin, "token_create", name="lister", role="viewer")
        narrow = await call(admin, "agent_spawn", profile="restricted")
        admin_tools = {tool.name: tool for tool in (await admin.list_tools()).tools}
    async with connect(viewer["token"]) as as_viewer:
        viewer_tools = {tool.name for tool in (await as_viewer.list_tools()).tools}
    async with connect(narrow["token"]) as as_narrow:
        narrow_tools = {tool.name for tool in (await as_narrow.list_tools()).tools}
    assert set(admin_tools) == {name for name, roles in TOOL_ROLES.items() if Role.ADMIN in roles}
    assert viewer_tools == {name for name, roles in TOOL_ROLES.items() if Role.VIEWER in roles}
    allowed = services_profile_tools("restricted")
    assert narrow_tools == {name for name in allowed if Role.AGENT in TOOL_ROLES[name]}
    for tool in admin_tools.values():
        assert not any(line.startswith(" ") for line in (tool.description or "").splitlines()), tool.name


def services_profile_tools(name: str) -> set[str]:
    from fnmatch import fnmatchcase

    from server.services.profiles import ProfileRegistry
    from tests.conftest import TEST_PROFILES

    patterns = ProfileRegistry.load([TEST_PROFILES]).resolve(name).permissions.tools or ("*",)
    return {tool for tool in TOOL_ROLES if any(fnmatchcase(tool, p) for p in patterns)}
