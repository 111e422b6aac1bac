"""Every tool, given bad input through the MCP client, answers with the contract's code and
writes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from server.domain.permissions import AGENT_ONLY, roles_for
from server.store.tables import metadata
from tests.helpers import call, call_error, every_tool

pytestmark = pytest.mark.anyio


# Each call spends from its caller's rate bucket, whatever its answer: that is metering, not state.
_METERING = {"orch_rate_buckets"}


def snapshot(services) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: the proof that a refused call changed nothing."""
    with services.db.engine.connect() as conn:
        return {
            t.name: sorted(tuple(map(repr, row)) for row in conn.execute(select(t)))
            for t in metadata.sorted_tables
            if t.name not in _METERING
        }


BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("fleet_status", {"verbose": True}, "invalid_input"),
    ("agent_spawn", {"profile": "no-such-profile"}, "invalid_input"),
    ("agent_spawn", {"profile": 123}, "invalid_input"),
    ("agent_spawn", {"profile": "default@9.9.9"}, "invalid_input"),
    ("agent_spawn", {"profile": "default", "capabilities": ["Bad Cap!"]}, "invalid_input"),
    ("agent_spawn", {"profile": "default", "capabilities": "code"}, "invalid_input"),
    ("agent_spawn", {"profile": "default", "name": "x" * 300}, "invalid_input"),
    ("agent_spawn", {"profile": "default", "parent_id": "agt_0000NOSUCHAGENT"}, "not_found"),
    ("agent_spawn", {"profile": "default", "labels": ["not", "a", "map"]}, "invalid_input"),
    ("agent_spawn", {}, "invalid_input"),
    ("agent_list", {"status": "sleepy"}, "invalid_input"),
    ("agent_list", {"limit": 0}, "invalid_input"),
    ("agent_get", {"agent_id": "robert'); drop table"}, "invalid_input"),
    ("agent_get", {"agent_id": "agt_0000NOSUCHAGENT"}, "not_found"),
    ("agent_get", {}, "invalid_input"),
    ("agent_terminate", {"agent_id": "agt_0000NOSUCHAGENT"}, "not_found"),
    ("agent_terminate", {"agent_id": "agt_0000NOSUCHAGENT", "cascade": "maybe"}, "invalid_input"),
    ("agent_terminate", {"agent_id": "agt_0000NOSUCHAGENT", "wait_s": -1}, "invalid_input"),
    ("agent_restart", {"agent_id": "agt_0000NOSUCHAGENT"}, "not_found"),
    ("agent_restart", {"agent_id": "not-an-agent-id"}, "invalid_input"),
    ("agent_spawn", {"profile": "worker", "a2a_url": "http://peer.example"}, "invalid_input"),
    ("agent_spawn", {"profile": "worker", "a2a_url": "ftp://peer.example"}, "invalid_input"),
    ("task_submit", {"type": "build", "timeout_s": 0}, "invalid_input"),
    ("agent_heartbeat", {"status": "fine"}, "invalid_input"),
    ("task_submit", {"type": ""}, "invalid_input"),
    ("task_submit", {"type": "has spaces"}, "invalid_input"),
    ("task_submit", {"type": "build", "priority": "urgent"}, "invalid_input"),
    ("task_submit", {"type": "build", "payload": {"blob": "x" * 300_000}}, "invalid_input"),
    ("task_submit", {"type": "build", "max_attempts": 0}, "invalid_input"),
    ("task_submit", {"type": "build", "capabilities": "code"}, "invalid_input"),
    ("task_submit", {"type": "build", "capabilities": ["UPPER"]}, "invalid_input"),
    ("task_submit", {"type": "build", "pinned_agent_id": "agt_0000NOSUCHAGENT"}, "not_found"),
    ("task_submit", {"type": "build", "priorty": "high"}, "invalid_input"),
    ("task_get", {"task_id": "not-a-task"}, "invalid_input"),
    ("task_get", {"task_id": "tsk_0000NOSUCHTASK"}, "not_found"),
    ("task_list", {"status": "finished"}, "invalid_input"),
    ("task_list", {"limit": 100000}, "invalid_input"),
    ("task_list", {"cursor": "%%%not-base64%%%"}, "invalid_input"),
    ("task_cancel", {"task_id": "tsk_0000NOSUCHTASK"}, "not_found"),
    ("task_cancel", {"task_id": 7}, "invalid_input"),
    ("task_submit", {"type": "build", "not_before": "2026-01-01T12:00:00"}, "invalid_input"),
    ("task_submit", {"type": "build", "backoff_base_s": 10, "backoff_cap_s": 1}, "invalid_input"),
    ("task_submit", {"type": "build", "lease_s": 1}, "invalid_input"),
    ("task_submit", {"type": "build", "capabilities": ["quantum"]}, "invalid_input"),
    ("task_claim", {"wait_s": 600}, "invalid_input"),
    ("task_claim", {"wait_s": -1}, "invalid_input"),
    ("task_heartbeat", {"task_id": "tsk_0000NOSUCHTASK", "progress": 150}, "invalid_input"),
    ("task_heartbeat", {"task_id": "tsk_0000NOSUCHTASK"}, "not_found"),
    ("task_complete", {"task_id": "nope"}, "invalid_input"),
    ("task_complete", {"task_id": "tsk_0000NOSUCHTASK", "usage": "lots"}, "invalid_input"),
    ("task_fail", {"task_id": "tsk_0000NOSUCHTASK"}, "invalid_input"),
    ("task_fail", {"task_id": "tsk_0000NOSUCHTASK", "error": "x", "retryable": "perhaps"}, "invalid_input"),
    ("lock_acquire", {"resources": []}, "invalid_input"),
    ("lock_acquire", {"resources": "device:x"}, "invalid_input"),
    ("lock_acquire", {"resources": [{"name": "repo:/src/*"}]}, "invalid_input"),
    ("lock_acquire", {"resources": [{"name": "a//b"}]}, "invalid_input"),
    ("lock_acquire", {"resources": [{"name": "r:/a/**"}, {"name": "r:/a/b"}]}, "invalid_input"),
    ("lock_acquire", {"resources": [{"name": "device:x", "mode": "sometimes"}]}, "invalid_input"),
    ("lock_acquire", {"resources": [{"name": "device:x", "colour": "red"}]}, "invalid_input"),
    ("lock_acquire", {"resources": [{"name": "device:x"}], "ttl_s": 0}, "invalid_input"),
    ("lock_acquire", {"resources": [{"name": "device:x"}], "wait_s": 3600}, "invalid_input"),
    ("lock_acquire", {"resources": [{"name": "device:x"}], "task_id": "tsk_0000NOSUCHTASK"}, "not_found"),
    ("lock_renew", {"lock_id": "nope"}, "invalid_input"),
    ("lock_renew", {"lock_id": "lck_0000NOSUCHLOCK"}, "not_found"),
    ("lock_release", {"lock_id": "lck_0000NOSUCHLOCK"}, "not_found"),
    ("lock_list", {"prefix": ""}, "invalid_input"),
    ("resource_set", {"name": "gpu:/**", "capacity": 2}, "invalid_input"),
    ("resource_set", {"name": "gpu:pool", "capacity": 0}, "invalid_input"),
    ("resource_set", {"name": "gpu pool", "capacity": 2}, "invalid_input"),
    ("task_submit", {"type": "build", "resources": [{"name": "a//b"}]}, "invalid_input"),
    ("task_submit", {"type": "build", "resources": [{"name": "x:/a"}, {"name": "x:/a"}]}, "invalid_input"),
    ("task_submit", {"type": "build", "estimated_cost_usd": "0.0000001"}, "invalid_input"),
    ("task_submit", {"type": "build", "estimated_cost_usd": -1}, "invalid_input"),
    ("agent_spawn", {"profile": "default", "pools": ["Bad Pool"]}, "invalid_input"),
    ("budget_set", {"scope": "team:red", "limit_usd": 5}, "invalid_input"),
    ("budget_set", {"scope": "agent:agt_0000000000000000000000NOPE", "limit_usd": 5}, "not_found"),
    ("budget_set", {"scope": "profile:no-such-profile", "limit_usd": 5}, "invalid_input"),
    ("budget_set", {"scope": "global", "limit_usd": -5}, "invalid_input"),
    ("budget_set", {"scope": "global", "limit_usd": "1.0000001"}, "invalid_input"),
    ("budget_set", {"scope": "global", "limit_usd": "ten dollars"}, "invalid_input"),
    ("budget_set", {"scope": "global", "limit_usd": 5, "period": "weekly"}, "invalid_input"),
    ("budget_set", {"scope": "global", "limit_usd": 5, "enforcement": "strict"}, "invalid_input"),
    (
        "budget_set",
        {"scope": "global", "limit_usd": 5, "thresholds": [{"percent": 150, "action": "warn"}]},
        "invalid_input",
    ),
    (
        "budget_set",
        {"scope": "global", "limit_usd": 5, "thresholds": [{"percent": 50, "action": "panic"}]},
        "invalid_input",
    ),
    (
        "budget_set",
        {"scope": "global", "limit_usd": 5, "thresholds": [{"percent": 50, "action": "warn"}] * 2},
        "invalid_input",
    ),
    ("budget_status", {"scope": "pool:nobody"}, "not_found"),
    ("budget_status", {"scope": "everything"}, "invalid_input"),
    ("budget_reserve", {"amount_usd": -1}, "invalid_input"),
    ("budget_reserve", {"amount_usd": 1, "ttl_s": 0}, "invalid_input"),
    ("budget_reserve", {"amount_usd": "2e12"}, "invalid_input"),
    ("budget_release", {"hold_id": "hld_0000NOSUCHHOLD"}, "not_found"),
    ("budget_release", {"hold_id": "bud_0000NOTAHOLD"}, "invalid_input"),
    ("usage_record", {"model": "gpt-4o", "input_tokens": -1, "output_tokens": 1}, "invalid_input"),
    ("usage_record", {"model": "", "input_tokens": 1, "output_tokens": 1}, "invalid_input"),
    ("audit_query", {"limit": 0}, "invalid_input"),
    ("audit_query", {"since": "2026-01-01T00:00:00"}, "invalid_input"),
    ("audit_query", {"since": "yesterday"}, "invalid_input"),
    ("audit_query", {"before_id": "tsk_0000NOTANEVENT"}, "invalid_input"),
    ("approval_list", {"status": "maybe"}, "invalid_input"),
    ("approval_list", {"after_id": "tsk_0000NOTANAPPROVAL"}, "invalid_input"),
    ("approval_decide", {"approval_id": "apr_0000NOSUCHAPPROVAL", "decision": "approve"}, "not_found"),
    ("approval_decide", {"approval_id": "apr_0000NOSUCHAPPROVAL", "decision": "perhaps"}, "invalid_input"),
    ("approval_decide", {"approval_id": "apr_0000NOSUCHAPPROVAL"}, "invalid_input"),
    ("token_create", {"name": "Alice Smith", "role": "operator"}, "invalid_input"),
    ("token_create", {"name": "agt_impostor", "role": "operator"}, "invalid_input"),
    ("token_create", {"name": "admin", "role": "operator"}, "invalid_input"),
    ("token_create", {"name": "alice", "role": "agent"}, "invalid_input"),
    ("token_create", {"name": "alice", "role": "superuser"}, "invalid_input"),
    ("token_create", {"name": "alice", "role": "viewer", "expires_in_s": 1}, "invalid_input"),
    ("token_list", {"all": True}, "invalid_input"),
    ("token_revoke", {"token": "nobody"}, "not_found"),
    ("token_revoke", {"token": ""}, "invalid_input"),
    ("token_rotate", {"token": "tkn_0000NOSUCHTOKEN"}, "not_found"),
    ("budget_set", {"scope": "global", "limit_usd": 5, "approval_above_usd": -1}, "invalid_input"),
    ("task_submit", {"type": "build", "requires_approval": "yes please"}, "invalid_input"),
    ("task_submit", {"type": "build", "reason": "x" * 2001}, "invalid_input"),
    ("workflow_run", {"definition": {"name": "w", "steps": []}}, "invalid_input"),
    ("workflow_run", {"definition": "steps: [unclosed"}, "invalid_input"),
    ("workflow_run", {"template": "no-such-template@^1"}, "not_found"),
    ("workflow_run", {"template": "research-review-report@^9"}, "not_found"),
    ("workflow_run", {"template": "research-review-report@not a range"}, "invalid_input"),
    ("workflow_run", {"template": "research-review-report", "inputs": {"topic": 5}}, "invalid_input"),
    (
        "workflow_run",
        {"definition": {"name": "w", "steps": [{"id": "a", "task": {"type": "t"}}]}, "template": "x"},
        "invalid_input",
    ),
    ("workflow_get", {"run_id": "wfr_0000NOSUCHRUN"}, "not_found"),
    ("workflow_get", {"run_id": "tsk_0000NOTARUN"}, "invalid_input"),
    ("workflow_list", {"status": "sleeping"}, "invalid_input"),
    ("workflow_list", {"cursor": "%%%not-base64%%%"}, "invalid_input"),
    ("workflow_cancel", {"run_id": "wfr_0000NOSUCHRUN"}, "not_found"),
    (
        "workflow_template_save",
        {"definition": {"name": "w", "steps": [{"id": "a", "task": {"type": "t"}}]}},
        "invalid_input",
    ),
    (
        "workflow_template_save",
        {"definition": {"name": "w", "steps": [{"id": "a", "task": {"type": "t"}}]}, "version": "one"},
        "invalid_input",
    ),
    (
        "workflow_template_save",
        {
            "definition": {"name": "research-review-report", "steps": [{"id": "a", "task": {"type": "t"}}]},
            "version": "1.0.0",
        },
        "conflict",
    ),
    ("task_wait", {"task_ids": []}, "invalid_input"),
    ("task_wait", {"task_ids": ["tsk_0000NOSUCHTASK"], "mode": "some"}, "invalid_input"),
    ("task_wait", {"task_ids": ["tsk_0000NOSUCHTASK"], "wait_s": 0}, "not_found"),
    ("task_get", {"task_id": "tsk_0000NOSUCHTASK", "wait_s": 1, "until": ["sleeping"]}, "invalid_input"),
    ("task_submit", {"type": "build", "wait_s": 301}, "invalid_input"),
    ("workflow_get", {"run_id": "wfr_0000NOSUCHRUN", "wait_s": -1}, "invalid_input"),
    ("workflow_template_list", {"name": "x"}, "invalid_input"),
    ("workflow_template_get", {"template": "no-such-template"}, "not_found"),
    ("workflow_template_get", {"template": "research-review-report@not a range"}, "invalid_input"),
    ("message_send", {"to": ["everyone"], "body": "x"}, "invalid_input"),
    ("message_send", {"to": ["label:nobody=here"], "body": "x"}, "invalid_input"),
    ("message_send", {"to": [], "body": "x"}, "invalid_input"),
    ("message_send", {"to": ["operators"], "body": ""}, "invalid_input"),
    ("message_send", {"to": ["operators"], "body": "x", "thread_id": "thr_0000NOSUCH"}, "not_found"),
    ("message_send", {"to": ["operators"], "body": "x", "importance": "meh"}, "invalid_input"),
    ("message_request", {"to": ["parent"], "body": "x"}, "invalid_input"),
    ("message_inbox", {"wait_s": 61}, "invalid_input"),
    ("message_ack", {"message_ids": ["msg_0000NOSUCH"]}, "not_found"),
    ("message_thread", {"thread_id": "thr_0000NOSUCH"}, "not_found"),
    ("message_search", {"query": "!!!"}, "invalid_input"),
    ("topic_subscribe", {"topic": "Bad Topic"}, "invalid_input"),
    ("topic_unsubscribe", {"topic": ""}, "invalid_input"),
    ("event_list", {"after_cursor": "zz"}, "invalid_input"),
    ("event_list", {"types": ["task;drop"]}, "invalid_input"),
    ("event_list", {"wait_s": 301}, "invalid_input"),
    ("event_replay", {"trigger": "nope", "after_cursor": "0" * 32}, "not_found"),
    ("event_replay", {"trigger": "nope", "after_cursor": "0" * 31}, "invalid_input"),
    ("trigger_create", {"name": "t", "kind": "schedule", "cron": "not cron", "task": {"type": "x"}}, "invalid_input"),
    (
        "trigger_create",
        {"name": "t", "kind": "schedule", "cron": "0 * * * *", "timezone": "Mars/Olympus", "task": {"type": "x"}},
        "invalid_input",
    ),
    (
        "trigger_create",
        {"name": "t", "kind": "event", "event_types": ["task.dead"], "filter": "event.type ==", "task": {"type": "x"}},
        "invalid_input",
    ),
    (
        "trigger_create",
        {
            "name": "t",
            "kind": "event",
            "event_types": ["task.dead"],
            "task": {"type": "x", "payload": "{{ inputs.a }}"},
        },
        "invalid_input",
    ),
    (
        "trigger_create",
        {"name": "t", "kind": "event", "event_types": ["task.dead"], "cron": "* * * * *", "task": {"type": "x"}},
        "invalid_input",
    ),
    ("trigger_create", {"name": "t", "kind": "schedule", "interval_s": 60}, "invalid_input"),
    ("trigger_create", {"name": "t", "kind": "webhook", "task": {"type": "has spaces"}}, "invalid_input"),
    ("trigger_create", {"name": "Bad Name", "kind": "webhook", "task": {"type": "x"}}, "invalid_input"),
    (
        "trigger_create",
        {"name": "t", "kind": "schedule", "interval_s": 60, "secret": "s" * 20, "task": {"type": "x"}},
        "invalid_input",
    ),
    ("trigger_list", {"kind": "cron"}, "invalid_input"),
    ("trigger_get", {"trigger": "nope"}, "not_found"),
    ("trigger_update", {"trigger": "nope", "enabled": False}, "not_found"),
    ("trigger_delete", {"trigger": "nope"}, "not_found"),
    ("trigger_fire", {"trigger": "nope"}, "not_found"),
    ("notification_channel_create", {"name": "n", "url": "ftp://x/y", "event_types": ["task.dead"]}, "invalid_input"),
    ("notification_channel_create", {"name": "n", "url": "https://x/y", "event_types": ["nope.*"]}, "invalid_input"),
    (
        "notification_channel_create",
        {"name": "n", "url": "https://x/y", "event_types": ["*"], "filter": "steps.a.status == 'x'"},
        "invalid_input",
    ),
    ("notification_channel_list", {"all": True}, "invalid_input"),
    ("notification_channel_delete", {"channel": "no-such-channel"}, "not_found"),
    ("notification_deliveries", {"status": "lost"}, "invalid_input"),
    ("notification_deliveries", {"channel": "no-such-channel"}, "not_found"),
    ("profile_list", {"state": "sleeping"}, "invalid_input"),
    ("profile_get", {"profile": "nobody"}, "not_found"),
    ("profile_get", {"profile": "worker@^7"}, "not_found"),
    ("profile_export", {"profile": "worker@9.9.9"}, "not_found"),
    ("profile_register", {"definition": {"name": "w", "version": "1.0.0"}}, "invalid_input"),
    ("profile_register", {"definition": "name: [unclosed"}, "invalid_input"),
    (
        "profile_register",
        {"definition": {"name": "worker", "version": "1.0.0", "description": "not the file's"}},
        "conflict",
    ),
    ("profile_deprecate", {"profile": "worker"}, "invalid_input"),
    ("profile_deprecate", {"profile": "worker@8.0.0"}, "not_found"),
    ("profile_retire", {"profile": "nobody@1.0.0"}, "not_found"),
    ("profile_rollout_set", {"name": "worker", "versions": {"1.0.0": 50}}, "invalid_input"),
    ("profile_rollout_set", {"name": "worker", "versions": {"2.0.0": 100}}, "invalid_input"),
    ("profile_rollout_set", {"name": "worker", "rollback": True}, "conflict"),
    ("profile_rollout_set", {"name": "Not A Name", "versions": {}}, "invalid_input"),
    ("task_feedback", {"task_id": "tsk_0000NOSUCHTASK", "rating": "good"}, "not_found"),
    ("task_feedback", {"task_id": "tsk_0000NOSUCHTASK", "rating": 9}, "invalid_input"),
    ("task_feedback", {"task_id": "tsk_0000NOSUCHTASK"}, "invalid_input"),
    ("scorecard", {"scope": "planet:mars"}, "invalid_input"),
    ("scorecard", {"scope": "agent:agt_0000NOSUCHAGENT"}, "not_found"),
    ("scorecard", {"scope": "profile:nobody"}, "not_found"),
    ("scorecard", {"scope": "profile:worker@9.0.0"}, "not_found"),
    ("scorecard", {"scope": "task_type:build", "period": "7 days"}, "invalid_input"),
    ("scorecard", {"scope": "task_type:build", "period": "9999w"}, "invalid_input"),
    ("profile_compare", {"name": "worker", "version_a": "1.0.0", "version_b": "1.0.0"}, "invalid_input"),
    ("profile_compare", {"name": "worker", "version_a": "1.0.0", "version_b": "3.0.0"}, "not_found"),
    ("workflow_template_deprecate", {"template": "research-review-report"}, "invalid_input"),
    ("workflow_template_retire", {"template": "no-such-template@1.0.0"}, "not_found"),
    ("task_log", {"task_id": "tsk_0000NOSUCHTASK", "lines": ["a\x00b"]}, "invalid_input"),
    ("task_log", {"task_id": "tsk_0000NOSUCHTASK", "lines": ["x" * 4001]}, "invalid_input"),
    ("task_log", {"task_id": "tsk_0000NOSUCHTASK", "lines": [1]}, "invalid_input"),
    ("task_log", {"task_id": "tsk_0000NOSUCHTASK", "lines": "one line"}, "invalid_input"),
    ("task_log", {"task_id": "tsk_0000NOSUCHTASK", "lines": ["a"], "text": "b"}, "invalid_input"),
    ("task_log", {"task_id": "tsk_0000NOSUCHTASK"}, "invalid_input"),
    ("task_log", {"task_id": "tsk_0000NOSUCHTASK", "lines": ["a"], "level": "loud"}, "invalid_input"),
    ("task_log", {"task_id": "tsk_0000NOSUCHTASK", "lines": ["a"] * 201}, "invalid_input"),
    ("task_log", {"task_id": "tsk_0000NOSUCHTASK", "lines": ["a"]}, "not_found"),
    ("no_such_tool", {}, "not_found"),
]


async def test_the_walk_covers_every_tool(connect):
    listed = set(await every_tool(connect))
    assert listed == {name for name, _, _ in BAD_CALLS} - {"no_such_tool"}


@pytest.mark.parametrize(
    ("tool", "arguments", "code"), BAD_CALLS, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(BAD_CALLS)]
)
async def test_bad_input_is_refused_with_its_code_and_changes_nothing(
    fake_connect, fake_time_services, tool, arguments, code
):
    # The clock stands still: any call by an agent is its heartbeat, and one already recorded at
    # this instant is not written again, so the refused call below has nothing to change.
    async with fake_connect() as admin:
        spawned = await call(admin, "agent_spawn", profile="default")  # some state that must survive untouched
        await call(admin, "task_submit", type="seed")
    async with fake_connect(spawned["token"]) as agent:
        await call(agent, "agent_heartbeat")
    before = snapshot(fake_time_services)
    # Each tool is called by a principal allowed to call it, so what is refused is the input.
    token = spawned["token"] if roles_for(tool) == AGENT_ONLY else None
    async with fake_connect(token) as caller:
        failure = await call_error(caller, tool, **arguments)
    assert failure.code == code, failure.text
    assert "Traceback" not in failure.text and len(failure.text.split(":", 1)[1].strip()) > 10
    assert snapshot(fake_time_services) == before


async def test_a_revoked_agent_token_is_refused_and_changes_nothing(connect, services):
    async with connect() as admin:
        spawned = await call(admin, "agent_spawn", profile="default")
        await call(admin, "agent_terminate", agent_id=spawned["agent"]["id"])
    before = snapshot(services)
    async with connect(spawned["token"]) as revoked:
        for tool, arguments in [
            ("agent_heartbeat", {}),
            ("task_submit", {"type": "x"}),
            ("fleet_status", {}),
            ("agent_spawn", {"profile": "default"}),
        ]:
            assert (await call_error(revoked, tool, **arguments)).code == "permission_denied"
    assert snapshot(services) == before


# -- hostile strings and coerced types, generated from every tool's own schema -----------------
_SQL_WORDS = ("SELECT ", "INSERT ", "UPDATE ", "psycopg", "sqlite3", "sqlalchemy", "Traceback")


def _types(schema: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    if "$ref" in schema:
        return _types(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    found = {schema["type"]} if isinstance(schema.get("type"), str) else set(schema.get("type") or ())
    for option in schema.get("anyOf", []):
        found |= _types(option, defs)
    if "enum" in schema:
        found.add("string")
    return found


def hostile_arguments(input_schema: dict[str, Any]) -> list[tuple[str, Any]]:
    """For each argument: a NUL byte wherever it takes text, text or a bool where it takes only a
    number, text or a number where it takes only a bool."""
    defs = input_schema.get("$defs", {})
    cases: list[tuple[str, Any]] = []
    for name, schema in input_schema.get("properties", {}).items():
        kinds = _types(schema, defs)
        if "string" in kinds:
            cases += [(name, "ok\x00; DROP TABLE orch_tasks"), (name, "lone \ud800 surrogate")]
        if "array" in kinds:
            cases.append((name, ["fine", "bad\x00"]))
        if "object" in kinds or not kinds:
            cases += [(name, {"key\x00": 1}), (name, {"nested": ["x\x00"]})]
        if kinds & {"integer", "number"} and "string" not in kinds:
            cases += [(name, "0"), (name, True)]
        if "boolean" in kinds and "string" not in kinds:
            cases += [(name, "yes"), (name, 0)]
    return cases


async def test_nul_bytes_and_coerced_types_are_refused_for_every_argument_of_every_tool(
    fake_connect, fake_time_services
):
    tools = (await every_tool(fake_connect)).values()
    async with fake_connect() as admin:
        spawned = await call(admin, "agent_spawn", profile="default")
        await call(admin, "task_submit", type="seed")
    async with fake_connect(spawned["token"]) as agent:
        await call(agent, "agent_heartbeat")
    before = snapshot(fake_time_services)
    wrong: list[str] = []
    walked = 0
    async with fake_connect() as admin, fake_connect(spawned["token"]) as agent:
        for tool in tools:
            caller = agent if roles_for(tool.name) == AGENT_ONLY else admin
            for name, value in hostile_arguments(tool.input_schema):
                walked += 1
                failure = await call_error(caller, tool.name, **{name: value})
                leaked = [word for word in _SQL_WORDS if word in failure.text]
                if failure.code != "invalid_input" or name not in failure.text or leaked:
                    wrong.append(f"{tool.name}({name}={value!r}): {failure.text[:160]}")
    assert not wrong, "\n".join(wrong)
    assert walked > 150  # every tool's text, number and flag arguments were tried
    assert snapshot(fake_time_services) == before


async def test_a_nul_byte_deep_in_a_payload_is_refused_before_anything_is_written(fake_connect, fake_time_services):
    before = snapshot(fake_time_services)
    async with fake_connect() as admin:
        failure = await call_error(
            admin, "task_submit", type="build", payload={"steps": [{"run": "echo hi\x00there"}]}, allow_unroutable=True
        )
    assert failure.code == "invalid_input" and "payload.steps[0].run" in failure.text and "NUL" in failure.text
    assert snapshot(fake_time_services) == before
