"""The escalation an attacker with a `default` agent's token tried in 0.7 (spawn a shell-worker,
submit a `shell` task reading /proc/<server>/environ, read the admin token from the result), each
step tried again against a real `agentfleet serve`, and every other way out of a process agent's
sandbox: each is refused."""

from __future__ import annotations

import json
import shlex
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import server
from tests.helpers import call, call_error
from tests.runtime.test_process_agents import agent_in, eventually

if TYPE_CHECKING:
    from tests.serving import FleetServer, ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

FAST = {"AGENTFLEET_SUPERVISOR_INTERVAL_S": "0.1", "AGENTFLEET_REAPER_INTERVAL_S": "0.2"}
ECHO = "import json, sys; print(json.dumps({'echo': json.load(sys.stdin).get('payload')}))"
PROFILES = {
    # An agent that may call only a few tools, and would like a child that may call them all.
    "narrow": {
        "name": "narrow",
        "version": "1.0.0",
        "description": "may call only a few tools",
        "capabilities": ["general"],
        "permissions": {"tools": ["agent_*", "task_*"]},
        "spawn": ["default", "narrow"],
        "limits": {"max_children": 5, "max_depth": 3},
    },
    "echoer": {
        "name": "echoer",
        "version": "1.0.0",
        "description": "a process agent echoing payloads",
        "runtime": "process",
        "capabilities": ["echoer"],
        "process": {"command": ["agentfleet", "worker", "--wait-s", "5", "--", "python", "-c", ECHO]},
        "limits": {"max_children": 0, "max_depth": 0},
    },
}


@pytest.fixture
def fleet(serve: ServeFactory, database_url: str, tmp_path: Path) -> Callable[[], FleetServer]:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name, profile in PROFILES.items():
        (profiles / f"{name}.yaml").write_text(json.dumps(profile))
    return lambda: serve(
        database_url, data_dir=tmp_path / "data", env={"AGENTFLEET_PROFILES_DIR": str(profiles), **FAST}
    )


async def finished(admin: Any, task_id: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        task = await call(admin, "task_get", task_id=task_id)
        return task if task["status"] in ("completed", "failed", "dead") else None

    return await eventually(check, timeout=30, what=f"task {task_id} to finish")


async def test_a_default_agent_cannot_reach_a_shell_or_widen_itself(fleet):
    server_ = fleet()
    async with server_.mcp() as admin:
        agent = await call(admin, "agent_spawn", profile="default")
        narrow = await call(admin, "agent_spawn", profile="narrow")
        shell = await call(admin, "agent_spawn", profile="shell-worker")
        await agent_in(admin, shell["agent"]["id"], "active")
    async with server_.mcp(agent["token"]) as attacker:
        # 1. spawning a process agent its profile does not name
        refused = await call_error(attacker, "agent_spawn", profile="shell-worker")
        assert refused.code == "permission_denied" and "spawn list" in refused.text
        # 2. submitting work that only payload-running agents serve, or pinning work to one
        command = "tr '\\0' '\\n' </proc/1/environ"
        refused = await call_error(
            attacker, "task_submit", type="x", capabilities=["shell"], payload={"command": command}
        )
        assert refused.code == "permission_denied" and "permissions.execute" in refused.text
        refused = await call_error(
            attacker, "task_submit", type="x", pinned_agent_id=shell["agent"]["id"], payload={"command": command}
        )
        assert refused.code == "permission_denied"
        # a child routed work its parent could never get
        refused = await call_error(attacker, "agent_spawn", profile="default", capabilities=["shell"])
        assert refused.code == "permission_denied" and "shell" in refused.text
        # work that needs no capability is queued, but never reaches the shell-worker
        sneaky = await call(attacker, "task_submit", type="x", payload={"command": command})
    async with server_.mcp(narrow["token"]) as narrow_agent:
        refused = await call_error(narrow_agent, "agent_spawn", profile="default")
        assert refused.code == "permission_denied" and "permissions.tools" in refused.text
        assert (await call(narrow_agent, "agent_spawn", profile="narrow"))["agent"]["parent_id"] == narrow["agent"][
            "id"
        ]
    async with server_.mcp() as admin:
        # The operator's own shell task is run, after the agent's; the agent's is still waiting.
        own = await call(admin, "task_submit", type="x", capabilities=["shell"], payload={"command": "echo mine"})
        assert (await finished(admin, own["id"]))["result"]["stdout"] == "mine\n"
        assert (await call(admin, "task_get", task_id=sneaky["id"]))["status"] == "queued"
        refusals = await call(admin, "audit_query", action="request.refused", limit=50)
    assert len(refusals["entries"]) >= 5


async def test_a_process_agent_cannot_read_or_write_what_the_server_keeps(fleet, tmp_path: Path):
    server_ = fleet()
    data_dir = tmp_path / "data"
    async with server_.mcp() as admin:
        bystander = await call(admin, "agent_spawn", profile="echoer")
        shell = await call(admin, "agent_spawn", profile="shell-worker")
        await agent_in(admin, bystander["agent"]["id"], "active")
        await agent_in(admin, shell["agent"]["id"], "active")
        (data_dir / "admin.token").write_text("afk_the-file-secret\n")  # as a generated token would be
        pid = server_.process.pid
        store_file = server_.database_url.removeprefix("sqlite:///") if "sqlite" in server_.database_url else None
        install = Path(server.__file__).resolve().parent
        planted = f"planted-{uuid.uuid4().hex}"  # a name nothing else uses, so only this run could make it
        attempts = {
            "server environment": f"cat /proc/{pid}/environ",
            "server command line": f"cat /proc/{pid}/cmdline",
            "server open files": f"ls -l /proc/{pid}/fd",
            "server memory map": f"cat /proc/{pid}/maps",
            "admin token file": f"cat {data_dir}/admin.token",
            "data dir listing": f"ls {data_dir}",
            "another agent's home": f"cat {data_dir}/agents/{bystander['agent']['id']}/stdout.log",
            "store file": f"head -c 100 {store_file or data_dir / 'agentfleet.db'}",
            "write into the data dir": f"echo x > {data_dir}/{planted}",
            "write into the installation": f"echo x > {install}/{planted}.py",
            "signal the server": f"kill -STOP {pid}",
            "shared /tmp": f"echo x > /tmp/{planted}",
        }
        submitted = {
            what: await call(admin, "task_submit", type="probe", capabilities=["shell"], payload={"command": cmd})
            for what, cmd in attempts.items()
        }
        control = await call(
            admin, "task_submit", type="probe", capabilities=["shell"], payload={"command": "echo x > mine && cat mine"}
        )
        assert (await finished(admin, control["id"]))["result"] == {"exit_code": 0, "stdout": "x\n", "stderr": ""}
        escaped = {}
        for what, task in submitted.items():
            result = (await finished(admin, task["id"]))["result"]
            if result["exit_code"] == 0 or server_.admin_token in result["stdout"] or "file-secret" in result["stdout"]:
                escaped[what] = result
    assert not escaped, f"the sandbox let these through: {escaped}"
    assert not (data_dir / planted).exists() and not (install / f"{planted}.py").exists()
    assert server_.process.poll() is None


async def test_a_package_planted_in_an_agents_home_is_never_imported(fleet):
    server_ = fleet()
    async with server_.mcp() as admin:
        spawned = await call(admin, "agent_spawn", profile="echoer")
        agent_id = spawned["agent"]["id"]
        await agent_in(admin, agent_id, "active")
        home = server_.data_dir / "agents" / agent_id
        # What a task could leave behind: a `server` package that would replace this server's own.
        planted = home / "server"
        planted.mkdir()
        (planted / "__init__.py").write_text(f"open({shlex.quote(str(home / 'SHADOWED'))}, 'w').close()\n")
        (home / "json.py").write_text(f"open({shlex.quote(str(home / 'SHADOWED'))}, 'w').close()\n")
        await call(admin, "agent_restart", agent_id=agent_id)
        await agent_in(admin, agent_id, "active")
        task = await call(admin, "task_submit", type="e", capabilities=["echoer"], payload={"n": 1})
        assert (await finished(admin, task["id"]))["result"] == {"echo": {"n": 1}}
    assert not (home / "SHADOWED").exists()


async def test_a_profile_that_would_let_an_agent_read_the_data_dir_does_not_start(
    serve: ServeFactory, database_url: str, tmp_path: Path
):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    leaky = {**PROFILES["echoer"], "name": "leaky"}
    leaky["process"] = {**leaky["process"], "allow_read": [str(tmp_path)]}  # the data dir is inside it
    (profiles / "leaky.yaml").write_text(json.dumps(leaky))
    env = {"AGENTFLEET_PROFILES_DIR": str(profiles), **FAST}
    async with serve(database_url, data_dir=tmp_path / "data", env=env).mcp() as admin:
        agent_id = (await call(admin, "agent_spawn", profile="leaky"))["agent"]["id"]

        async def refused_start() -> str | None:
            last_exit = (await call(admin, "agent_get", agent_id=agent_id))["process"]["last_exit"]
            return last_exit if last_exit and "AGENTFLEET_DATA_DIR" in last_exit else None

        last_exit = await eventually(refused_start, what="the start refused")
    assert "process agents may read" in last_exit
