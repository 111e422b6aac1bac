"""The operator CLI against a real server: each command is one tool call through the same door as
MCP, shown as a table or as --json; refusals and an unreachable server are one line with their
exit code. In process (main()), against a real `agentfleet serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from server.cli import main
from tests.helpers import call

if TYPE_CHECKING:
    from tests.serving import FleetServer

pytest_plugins = ["tests.serving"]
pytestmark = pytest.mark.slow


def cli(fleet: FleetServer, capsys: pytest.CaptureFixture[str], *args: str, token: str | None = None):
    code = main([*args, "--url", fleet.base_url, "--token", token or fleet.admin_token])
    out, err = capsys.readouterr()
    return code, out, err


def over_mcp(fleet: FleetServer, tool: str, **arguments: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with fleet.mcp() as admin:
            return await call(admin, tool, **arguments)

    return anyio.run(go)


def test_agents_tasks_and_a_waited_task_end_to_end(module_fleet: FleetServer, capsys):
    agent = over_mcp(module_fleet, "agent_spawn", profile="python-echo", name="cli-echo")
    code, out, _ = cli(module_fleet, capsys, "agents", "list")
    assert code == 0 and "cli-echo" in out and "python-echo@1.0.0" in out
    code, out, _ = cli(module_fleet, capsys, "agents", "list", "--json")
    assert code == 0 and agent["agent"]["id"] in {a["id"] for a in json.loads(out)["agents"]}

    code, out, _ = cli(
        module_fleet, capsys, "tasks", "submit", "echo", "--payload", '{"n": 7}', "--capability", "echo", "--json"
    )
    submitted = json.loads(out)
    assert code == 0 and submitted["status"] in ("queued", "running", "completed")
    code, out, _ = cli(module_fleet, capsys, "tasks", "get", submitted["id"], "--wait", "--json")
    assert code == 0 and json.loads(out)["result"] == {"echo": {"n": 7}}
    code, out, _ = cli(module_fleet, capsys, "tasks", "list", "--status", "completed")
    assert code == 0 and submitted["id"] in out and "completed" in out
    code, out, _ = cli(module_fleet, capsys, "audit", "query", "--action", "task.submit")
    assert code == 0 and submitted["id"] in out


def test_approvals_are_listed_and_decided(module_fleet: FleetServer, capsys):
    task = over_mcp(module_fleet, "task_submit", type="deploy", requires_approval=True, allow_unroutable=True)
    approval_id = task["approval"]["id"]
    code, out, _ = cli(module_fleet, capsys, "approvals", "list")
    assert code == 0 and approval_id in out
    code, out, _ = cli(module_fleet, capsys, "approvals", "reject", approval_id, "--note", "not today", "--json")
    assert code == 0 and json.loads(out)["status"] == "rejected" and json.loads(out)["note"] == "not today"


def test_a_refusal_and_an_unreachable_server_are_one_line(module_fleet: FleetServer, capsys):
    viewer = over_mcp(module_fleet, "token_create", name="cli-viewer", role="viewer")["token"]
    code, out, err = cli(module_fleet, capsys, "tasks", "cancel", "tsk_0000NOSUCHTASK", token=viewer)
    assert code == 2 and out == "" and err.startswith("agentfleet: permission_denied: task_cancel is for")
    code = main(["locks", "list", "--url", "http://127.0.0.1:9", "--token", "afk_x"])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("agentfleet: unavailable: cannot reach the server at http://127.0.0.1:9")


def test_shell_completion_is_generated_from_the_commands(capsys):
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    assert "approvals" in script and "workflows" in script and "--json" in script


def test_a_worker_for_a_profile_the_server_runs_is_refused_before_any_agent_is_made(module_fleet: FleetServer):
    before = over_mcp(module_fleet, "agent_list", profile="python-echo")["agents"]
    env = {**os.environ, "AGENTFLEET_URL": module_fleet.base_url, "AGENTFLEET_TOKEN": module_fleet.admin_token}
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "worker", "--profile", "python-echo", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3 and "has runtime process, not external" in done.stderr, done.stderr
    assert over_mcp(module_fleet, "agent_list", profile="python-echo")["agents"] == before


def test_inbox_hook_puts_unread_messages_into_a_claude_code_turn_once(module_fleet: FleetServer, capsys):
    agent = over_mcp(module_fleet, "agent_spawn", profile="worker", name="hooked")
    over_mcp(module_fleet, "message_send", to=[agent["agent"]["id"]], body="please rebase on main", subject="CI")
    code, out, _ = cli(module_fleet, capsys, "inbox", "--hook", token=agent["token"])
    context = json.loads(out)["hookSpecificOutput"]
    assert code == 0 and context["hookEventName"] == "UserPromptSubmit"
    assert "please rebase on main" in context["additionalContext"] and "from admin" in context["additionalContext"]
    code, out, _ = cli(module_fleet, capsys, "inbox", "--hook", token=agent["token"])
    assert code == 0 and out == ""  # acknowledged: not injected twice
    over_mcp(module_fleet, "message_send", to=[agent["agent"]["id"]], body="and answer me")
    code, out, _ = cli(module_fleet, capsys, "inbox", "--hook", "Stop", token=agent["token"])
    stop = json.loads(out)
    assert stop["decision"] == "block" and "and answer me" in stop["reason"]
