"""`agentfleet serve` as a user runs it: a real subprocess, real sockets, real MCP clients."""

from __future__ import annotations

import json
import re
import signal
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import call, call_error

if TYPE_CHECKING:
    from tests.serving import FleetServer, ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ISSUE_2_TOOLS = {
    "fleet_status",
    "agent_spawn",
    "agent_list",
    "agent_get",
    "agent_terminate",
    "agent_heartbeat",
    "task_submit",
    "task_get",
    "task_list",
    "task_cancel",
}
# Every tool name the contract allows (docs/contract.md, "MCP tools"); later issues add from here.
CONTRACT_TOOLS = ISSUE_2_TOOLS | {
    "agent_restart",
    "task_claim",
    "task_heartbeat",
    "task_complete",
    "task_fail",
    "lock_acquire",
    "lock_release",
    "lock_renew",
    "lock_list",
    "resource_set",
    "budget_set",
    "budget_status",
    "budget_reserve",
    "budget_release",
    "usage_record",
    "workflow_run",
    "workflow_get",
    "workflow_list",
    "workflow_cancel",
    "workflow_template_save",
    "approval_list",
    "approval_decide",
    "audit_query",
    "notification_channel_create",
    "notification_channel_list",
    "notification_channel_delete",
    "notification_deliveries",
    "event_list",
    "event_replay",
    "trigger_create",
    "trigger_list",
    "trigger_get",
    "trigger_update",
    "trigger_delete",
    "trigger_fire",
    "task_wait",
    "workflow_template_list",
    "workflow_template_get",
    "message_send",
    "message_inbox",
    "message_ack",
    "message_thread",
    "message_request",
    "message_search",
    "topic_subscribe",
    "topic_unsubscribe",
    # Issue 9 asks for admin-only token tools the contract does not name; README's changelog lists them.
    "token_create",
    "token_list",
    "token_revoke",
    "token_rotate",
    "profile_list",
    "profile_get",
    "profile_register",
    "profile_deprecate",
    "profile_retire",
    "profile_export",
    "profile_rollout_set",
    "profile_compare",
    "task_feedback",
    "scorecard",
    # Issue 24 asks for deprecated and retired templates without naming tools; the changelog lists them.
    "workflow_template_deprecate",
    "workflow_template_retire",
    "task_log",
}
READ_ONLY_TOOLS = {
    "fleet_status",
    "agent_list",
    "agent_get",
    "task_get",
    "task_list",
    "lock_list",
    "budget_status",
    "workflow_get",
    "workflow_list",
    "approval_list",
    "audit_query",
    "token_list",
    "notification_channel_list",
    "notification_deliveries",
    "event_list",
    "trigger_list",
    "trigger_get",
    "task_wait",
    "workflow_template_list",
    "workflow_template_get",
    "message_inbox",
    "message_thread",
    "message_search",
    "profile_list",
    "profile_get",
    "profile_export",
    "profile_compare",
    "scorecard",
}
DESTRUCTIVE_ISSUE_2_TOOLS = {"agent_terminate", "task_cancel"}
PROTOCOL_OF_MODE = {"auto": "2026-07-28", "legacy": "2025-11-25"}
PROTECTED = [("POST", "/mcp"), ("POST", "/a2a"), ("GET", "/readyz"), ("GET", "/metrics")]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_mcp_over_streamable_http_in_both_protocol_eras(shared_fleet: FleetServer, mode: str) -> None:
    async with shared_fleet.mcp(mode=mode) as admin:
        assert admin.protocol_version == PROTOCOL_OF_MODE[mode]

        tools = {tool.name: tool for tool in (await admin.list_tools()).tools}
        assert "task_claim" not in tools  # each caller is shown only what it may call
        worker = await call(admin, "agent_spawn", profile="developer", name="lister")
        async with shared_fleet.mcp(worker["token"], mode=mode) as agent:
            tools.update({tool.name: tool for tool in (await agent.list_tools()).tools})
        assert set(tools) >= ISSUE_2_TOOLS, ISSUE_2_TOOLS - set(tools)
        assert set(tools) <= CONTRACT_TOOLS, set(tools) - CONTRACT_TOOLS  # no name outside the contract
        for name, tool in tools.items():
            assert tool.annotations is not None, f"{name} has no annotations"
            assert tool.annotations.read_only_hint is (name in READ_ONLY_TOOLS), name
        for name in ISSUE_2_TOOLS:
            assert tools[name].annotations.destructive_hint is (name in DESTRUCTIVE_ISSUE_2_TOOLS), name

        spawned = await call(admin, "agent_spawn", profile="developer", name="dev-http")
        assert spawned["agent"]["status"] == "starting"
        assert spawned["token"].startswith("afa_")

        async with shared_fleet.mcp(token=spawned["token"], mode=mode) as agent:
            beat = await call(agent, "agent_heartbeat")
        assert beat["id"] == spawned["agent"]["id"]
        assert beat["status"] == "active" and beat["last_heartbeat_at"] is not None
        assert (await call(admin, "agent_get", agent_id=spawned["agent"]["id"]))["status"] == "active"

        submitted = await call(
            admin,
            "task_submit",
            type="review",
            payload={"pr": 42, "files": ["a.py"]},
            capabilities=["review"],
            priority="high",
        )
        assert submitted["id"].startswith("tsk_") and submitted["status"] == "queued"
        shown = await call(admin, "task_get", task_id=submitted["id"])
        # task_get adds detail (attempt_history) that task_submit leaves null; the rest is the same.
        assert {k: shown[k] for k in submitted} == submitted  # the receipt agrees with task_get
        assert shown["payload"] == {"pr": 42, "files": ["a.py"]} and shown["priority"] == "high"

        resource = await admin.read_resource(f"agentfleet://tasks/{submitted['id']}")
        [content] = resource.contents
        assert content.mime_type == "application/json"
        assert json.loads(content.text) == shown

        # A tool error over HTTP still leads with the contract's code.
        missing = await call_error(admin, "task_get", task_id="tsk_0000000000000000000000000")
        assert missing.code == "not_found"


@pytest.mark.parametrize("method,path", PROTECTED)
async def test_protected_endpoints_answer_401_without_a_valid_token(
    shared_fleet: FleetServer, method: str, path: str
) -> None:
    async with shared_fleet.http() as anonymous:
        for headers in (
            {},
            {"Authorization": "Bearer afk_not-the-admin-token"},
            {"Authorization": "Bearer afa_not-an-agent-token"},
            {"Authorization": shared_fleet.admin_token},
        ):  # the token without the Bearer scheme
            response = await anonymous.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (path, headers, response.text)
            # A plain answer to show, and no pointer to an OAuth server that does not exist
            assert response.headers["www-authenticate"] == 'Bearer realm="agentfleet"'
            assert response.json()["message"].startswith("permission_denied: this needs a valid bearer token")


async def test_no_oauth_metadata_names_an_authorization_server_that_is_not_there(shared_fleet: FleetServer) -> None:
    async with shared_fleet.http() as anonymous:
        for path in (
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
        ):
            response = await anonymous.get(path, headers={"Authorization": f"Bearer {shared_fleet.admin_token}"})
            assert response.status_code == 404, (path, response.text)


async def test_health_and_agent_card_are_public(shared_fleet: FleetServer) -> None:
    async with shared_fleet.http() as anonymous:
        health = await anonymous.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        card = await anonymous.get("/.well-known/agent-card.json")
        assert card.status_code == 200
        assert card.json()["name"] == "agentfleet orchestrator"


async def test_readyz_reports_a_reachable_current_store(shared_fleet: FleetServer) -> None:
    async with shared_fleet.http(shared_fleet.admin_token) as http:
        ready = await http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"store": "ok", "migrations": "current"}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(text: str) -> Samples:
    """Prometheus text -> {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _scrape(server: FleetServer) -> Samples:
    async with server.http(server.admin_token) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return _samples(response.text)


def _delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a sample grew between two scrapes (the server is shared with other tests)."""
    key = (name, frozenset(labels.items()))
    assert key in after, f"{name}{labels} missing from /metrics"
    return after[key] - before.get(key, 0.0)


async def test_metrics_count_tool_calls_requests_agents_and_tasks(shared_fleet: FleetServer) -> None:
    before = await _scrape(shared_fleet)
    async with shared_fleet.mcp() as admin:
        await call(admin, "agent_spawn", profile="default")
        await call(admin, "task_submit", type="build", priority="low")
        refused = await call_error(admin, "task_submit", type="build", priority="urgent")
        assert refused.code == "invalid_input"
        await call(admin, "fleet_status")
    async with shared_fleet.http() as anonymous:
        assert (await anonymous.get("/readyz")).status_code == 401
    after = await _scrape(shared_fleet)

    calls = "agentfleet_tool_calls_total"
    assert _delta(before, after, calls, tool="task_submit", outcome="ok") == 1
    assert _delta(before, after, calls, tool="task_submit", outcome="invalid_input") == 1
    assert _delta(before, after, calls, tool="agent_spawn", outcome="ok") == 1
    assert _delta(before, after, calls, tool="fleet_status", outcome="ok") == 1
    requests = "agentfleet_http_requests_total"
    assert _delta(before, after, requests, method="POST", route="/mcp", status="200") >= 4
    assert _delta(before, after, requests, method="GET", route="/readyz", status="401") == 1
    assert _delta(before, after, requests, method="GET", route="/metrics", status="200") == 1
    assert _delta(before, after, "agentfleet_agents", status="starting") == 1
    assert _delta(before, after, "agentfleet_tasks", status="queued", priority="low") == 1
    assert _delta(before, after, "agentfleet_tasks", status="queued", priority="critical") == 0


async def test_metrics_show_each_budgets_percent_used(shared_fleet: FleetServer) -> None:
    async with shared_fleet.mcp() as admin:
        await call(admin, "budget_set", scope="pool:metrics-probe", limit_usd="8")
        spender = await call(admin, "agent_spawn", profile="default", pools=["metrics-probe"])
    async with shared_fleet.mcp(spender["token"]) as agent:
        await call(agent, "budget_reserve", amount_usd="2", ttl_s=600)
    scraped = await _scrape(shared_fleet)
    assert scraped[("agentfleet_budget_percent", frozenset({("scope", "pool:metrics-probe")}))] == 25.0


ANNOUNCED_TOKEN = re.compile(r"admin token \(shown once; kept in (?P<path>\S+)\): (?P<token>\S+)")


async def test_first_start_prints_a_generated_admin_token_once(serve: ServeFactory, tmp_path: Path) -> None:
    """Neither AGENTFLEET_ADMIN_TOKEN nor AGENTFLEET_DATABASE_URL set: everything lives in the data
    dir (the token file has nothing to do with the store kind, so this runs once)."""
    data_dir = tmp_path / "fresh-data"
    first = serve(None, data_dir=data_dir, admin_token=None)
    token_file = data_dir / "admin.token"
    match = ANNOUNCED_TOKEN.search(first.stdout())
    assert match is not None, first.output()
    token = match["token"]
    assert match["path"] == str(token_file)
    assert token_file.read_text(encoding="utf-8").strip() == token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert (data_dir / "agentfleet.db").is_file()  # the default store: SQLite in the data dir
    async with first.mcp(token) as admin:
        await call(admin, "agent_spawn", profile="default")
    assert first.stop() in (0, -signal.SIGTERM)  # a graceful stop, not a crash

    second = serve(None, data_dir=data_dir, admin_token=None)
    assert f"admin token: in {token_file}" in second.stdout() and token not in second.stdout()  # where, not what
    assert token not in second.stderr()
    assert token_file.read_text(encoding="utf-8").strip() == token
    async with second.http(token) as http:
        assert (await http.get("/readyz")).status_code == 200
    async with second.mcp(token) as admin:
        assert (await call(admin, "fleet_status"))["totals"]["agents"] == 1
