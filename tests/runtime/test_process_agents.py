"""Process agents under a real `agentfleet serve`: real child processes (`agentfleet worker` with
the small scripts in tests/agents/), killed, stopped and restarted the way the OS would, checked
through the MCP client and /proc."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.runtime import process
from tests.helpers import call, call_error

if TYPE_CHECKING:
    from tests.serving import FleetServer, ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

AGENTS = Path(__file__).resolve().parent.parent / "agents"
FAST = {"AGENTFLEET_SUPERVISOR_INTERVAL_S": "0.1", "AGENTFLEET_REAPER_INTERVAL_S": "0.2"}


def worker_profile(name: str, script: str, **extra: Any) -> dict[str, Any]:
    """A process profile running `agentfleet worker -- python tests/agents/<script>`."""
    profile: dict[str, Any] = {
        "name": name,
        "version": "1.0.0",
        "description": f"test profile {name}",
        "runtime": "process",
        "capabilities": [name],
        "process": {
            "command": ["agentfleet", "worker", "--wait-s", "5", "--", sys.executable, str(AGENTS / script)],
            "stop_timeout_s": 5,
        },
        "restart": {"max_restarts": 3, "backoff_base_s": 0.05, "backoff_cap_s": 0.1},
        "limits": {"heartbeat_timeout_s": 60, "max_children": 4, "max_depth": 2},
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(profile.get(key), dict):
            profile[key] = {**profile[key], **value}
        else:
            profile[key] = value
    return profile


@pytest.fixture
def fleet(serve: ServeFactory, database_url: str, tmp_path: Path) -> Iterator[Callable[..., FleetServer]]:
    """fleet(*profiles, env=…, port=…) -> a server with these profiles; afterwards no process
    whose working directory is under this test's data dir may be left running."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    shared = tmp_path / "shared"  # process agents are sandboxed: this is where they may leave pid files
    shared.mkdir()

    def start(*defined: dict[str, Any], env: dict[str, str] | None = None, port: int | None = None) -> FleetServer:
        for profile in defined:
            if "process" in profile:
                profile["process"].setdefault("allow_write", [str(shared)])
            (profiles / f"{profile['name']}.yaml").write_text(json.dumps(profile))
        settings = {"AGENTFLEET_PROFILES_DIR": str(profiles), **FAST, **(env or {})}
        return serve(database_url, data_dir=tmp_path / "data", env=settings, port=port)

    yield start
    strays = processes_under(tmp_path / "data")
    for pid in strays:
        os.kill(pid, signal.SIGKILL)
    assert not strays, f"processes left behind: {strays}"


def processes_under(folder: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd.startswith(str(folder)) and process.identity(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


async def eventually(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll an async check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await anyio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: last saw {last!r}")


async def agent_in(admin, agent_id: str, *statuses: str, timeout: float = 20.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        agent = await call(admin, "agent_get", agent_id=agent_id)
        return agent if agent["status"] in statuses else None

    return await eventually(check, timeout, f"{agent_id} to be {statuses}")


async def task_in(admin, task_id: str, *statuses: str, timeout: float = 20.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        task = await call(admin, "task_get", task_id=task_id)
        return task if task["status"] in statuses else None

    return await eventually(check, timeout, f"{task_id} to be {statuses}")


async def pids_in(pidfile: Path) -> tuple[int, int]:
    async def check() -> str | None:
        return pidfile.read_text() if pidfile.exists() else None

    worker_cmd, sleep_child = (await eventually(check, what=f"{pidfile}")).split()
    return int(worker_cmd), int(sleep_child)


def alive(pid: int) -> bool:
    return process.identity(pid) is not None


# -- spawn, environment, logs ------------------------------------------------------------------

ENV_DUMP = """
import json, os, sys, time
json.dump({"env": dict(os.environ), "cwd": os.getcwd()}, open("env.json", "w"))
sys.stdout.write("x" * 20000 + "\\nthe end\\n")
sys.stdout.flush()
time.sleep(600)
"""


async def test_a_process_agent_runs_in_its_home_with_only_the_allowed_environment_limits_and_capped_logs(
    fleet, tmp_path: Path
):
    profile = {
        "name": "envdump",
        "version": "1.0.0",
        "description": "writes its environment",
        "runtime": "process",
        "capabilities": ["envdump"],
        "process": {
            "command": ["python", "-c", ENV_DUMP],
            "env": {"GREETING": "hello"},
            "env_passthrough": ["PATH", "VISIBLE_SETTING"],
            "stop_timeout_s": 1,
        },
        "limits": {"open_files": 77, "cpu_seconds": 1234, "memory_mb": 4096},
    }
    server = fleet(
        profile,
        env={"VISIBLE_SETTING": "yes", "SECRET_SETTING": "no", "AGENTFLEET_AGENT_LOG_BYTES": "4096"},
    )
    async with server.mcp() as admin:
        spawned = await call(admin, "agent_spawn", profile="envdump")
        assert spawned["token"] is None, "the server runs it; the spawner gets no token"
        agent_id = spawned["agent"]["id"]
        home = tmp_path / "data" / "agents" / agent_id
        dump = json.loads(await eventually(lambda: _read(home / "env.json"), what="env.json"))
        env = dump["env"]
        assert dump["cwd"] == str(home)
        assert env["HOME"] == str(home)
        assert env["GREETING"] == "hello" and env["VISIBLE_SETTING"] == "yes"
        assert env["AGENTFLEET_AGENT_ID"] == agent_id
        assert env["AGENTFLEET_URL"] == server.base_url
        assert not {"SECRET_SETTING", "AGENTFLEET_ADMIN_TOKEN", "AGENTFLEET_DATABASE_URL"} & set(env)
        assert set(env) <= {"PATH", "VISIBLE_SETTING", "GREETING", "HOME", "LC_CTYPE", "TMPDIR", "PYTHONSAFEPATH"} | {
            "AGENTFLEET_URL",
            "AGENTFLEET_TOKEN",
            "AGENTFLEET_AGENT_ID",
        }
        agent = await call(admin, "agent_get", agent_id=agent_id)
        pid = agent["process"]["pid"]
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert _limit(limits, "Max open files") == "77"
        assert _limit(limits, "Max cpu time") == "1234"
        assert _limit(limits, "Max address space") == str(4096 * 1024 * 1024)

        # Its own token works as the agent; the stdout log is trimmed to the newest part.
        async with server.mcp(env["AGENTFLEET_TOKEN"]) as itself:
            assert (await call(itself, "agent_heartbeat"))["id"] == agent_id

        async def trimmed() -> dict[str, Any] | None:
            seen = await call(admin, "agent_get", agent_id=agent_id)
            size = (home / "stdout.log").stat().st_size
            return seen if size <= 4096 and "the end" in (seen["process"]["stdout_tail"] or "") else None

        await eventually(trimmed, what="the stdout log trimmed to AGENTFLEET_AGENT_LOG_BYTES")
        ended = await call(admin, "agent_terminate", agent_id=agent_id)
        assert ended == {"terminated": [agent_id], "stopping": []}
        assert not alive(pid)


def _read(path: Path):
    async def check() -> str | None:
        return path.read_text() if path.exists() and path.stat().st_size else None

    return check()


def _limit(limits: str, name: str) -> str:
    line = next(line for line in limits.splitlines() if line.startswith(name))
    return line[len(name) :].split()[0]


# -- crashes, restarts, failed -----------------------------------------------------------------


async def test_a_killed_agent_is_restarted_and_its_task_is_run_again_to_completion(fleet, tmp_path: Path):
    server = fleet(worker_profile("napper", "sleeper.py"))
    async with server.mcp() as admin:
        agent_id = (await call(admin, "agent_spawn", profile="napper"))["agent"]["id"]
        first = await agent_in(admin, agent_id, "active")
        pidfile = tmp_path / "shared" / "nap.pid"
        task = await call(
            admin, "task_submit", type="nap", capabilities=["napper"], payload={"seconds": 1, "pidfile": str(pidfile)}
        )
        command_pid, _ = await pids_in(pidfile)
        pidfile.unlink()
        os.killpg(first["process"]["pid"], signal.SIGKILL)  # the worker and the command it runs

        done = await task_in(admin, task["id"], "completed", "failed", "dead")
        assert done["status"] == "completed" and done["result"] == {"slept": 1}
        assert [a["outcome"] for a in done["attempt_history"]] == ["released", "completed"]
        assert {a["agent_id"] for a in done["attempt_history"]} == {agent_id}
        again = await call(admin, "agent_get", agent_id=agent_id)
        assert again["process"]["restarts"] == 1
        assert again["process"]["last_exit"] == "killed by SIGKILL"
        assert again["process"]["pid"] != first["process"]["pid"]
        assert not alive(first["process"]["pid"]) and not alive(command_pid)
        await call(admin, "agent_terminate", agent_id=agent_id)


async def test_an_agent_that_keeps_crashing_is_failed_after_max_restarts_and_agent_restart_revives_it(fleet):
    crasher = {
        "name": "crasher",
        "version": "1.0.0",
        "description": "exits at once",
        "runtime": "process",
        "capabilities": ["crash"],
        "process": {"command": ["python", "-c", "import sys; sys.exit(3)"]},
        "restart": {"max_restarts": 2, "backoff_base_s": 0.05, "backoff_cap_s": 0.05},
    }
    server = fleet(crasher)
    async with server.mcp() as admin:
        agent_id = (await call(admin, "agent_spawn", profile="crasher"))["agent"]["id"]
        failed = await agent_in(admin, agent_id, "failed")
        assert failed["process"]["restarts"] == 2
        async with server.http(server.admin_token) as http:
            scraped = (await http.get("/metrics")).text
        exits = {
            s.labels["outcome"]: s.value
            for family in text_string_to_metric_families(scraped)
            for s in family.samples
            if s.name == "agentfleet_process_agent_exits_total" and s.labels["profile"] == "crasher"
        }
        assert exits == {"restarted": 2, "failed": 1}
        assert failed["process"]["last_exit"] == "exit 3"
        assert failed["process"]["pid"] is None
        trail = await call(admin, "audit_query", subject=agent_id, limit=50)
        actions = [row["action"] for row in trail["entries"]]
        assert actions.count("agent.launch") == 3 and actions.count("agent.exit") == 2
        assert actions.count("agent.failed") == 1

        revived = await call(admin, "agent_restart", agent_id=agent_id, reason="fixed the config")
        assert revived["status"] == "starting" and revived["process"]["restarts"] == 0
        again = await agent_in(admin, agent_id, "failed")
        assert again["process"]["restarts"] == 2


async def test_agent_restart_replaces_the_process_in_place(fleet):
    server = fleet(worker_profile("echoer", "echo.py"))
    async with server.mcp() as admin:
        agent_id = (await call(admin, "agent_spawn", profile="echoer"))["agent"]["id"]
        before = (await agent_in(admin, agent_id, "active"))["process"]["pid"]
        await call(admin, "agent_restart", agent_id=agent_id)

        async def replaced() -> dict[str, Any] | None:
            agent = await call(admin, "agent_get", agent_id=agent_id)
            pid = agent["process"]["pid"]
            return agent if agent["status"] == "active" and pid not in (None, before) else None

        after = await eventually(replaced, what="a new process")
        assert not alive(before)
        assert after["process"]["restarts"] == 0
        task = await call(admin, "task_submit", type="echo", capabilities=["echoer"], payload={"n": 7})
        done = await task_in(admin, task["id"], "completed")
        assert done["result"]["echo"] == {"n": 7}
        other = await call(admin, "agent_spawn", profile="default")
        refused = await call_error(admin, "agent_restart", agent_id=other["agent"]["id"])
        assert refused.code == "invalid_input"
        await call(admin, "agent_terminate", agent_id=agent_id)


# -- silence -----------------------------------------------------------------------------------


async def test_a_stopped_process_past_its_heartbeat_timeout_loses_its_task_to_another_agent(fleet, tmp_path: Path):
    server = fleet(worker_profile("stopper", "sleeper.py", limits={"heartbeat_timeout_s": 5}))
    async with server.mcp() as admin:
        first = (await call(admin, "agent_spawn", profile="stopper"))["agent"]["id"]
        frozen = (await agent_in(admin, first, "active"))["process"]["pid"]
        pidfile = tmp_path / "shared" / "stop.pid"
        task = await call(
            admin, "task_submit", type="nap", capabilities=["stopper"], payload={"seconds": 1, "pidfile": str(pidfile)}
        )
        await pids_in(pidfile)
        os.killpg(frozen, signal.SIGSTOP)
        try:
            second = (await call(admin, "agent_spawn", profile="stopper"))["agent"]["id"]
            done = await task_in(admin, task["id"], "completed", timeout=30)
            assert [a["agent_id"] for a in done["attempt_history"]] == [first, second]
            assert (await call(admin, "agent_get", agent_id=first))["status"] == "unresponsive"
        finally:
            os.killpg(frozen, signal.SIGCONT)
        await agent_in(admin, first, "active")  # it calls in again once it runs
        await call(admin, "agent_terminate", agent_id=first)
        await call(admin, "agent_terminate", agent_id=second)


# -- terminate ---------------------------------------------------------------------------------


async def test_graceful_terminate_drains_and_cascades_and_a_hard_one_kills_the_whole_tree(fleet, tmp_path: Path):
    server = fleet(worker_profile("napper", "sleeper.py"))
    async with server.mcp() as admin:
        parent = (await call(admin, "agent_spawn", profile="napper"))["agent"]["id"]
        child = (await call(admin, "agent_spawn", profile="napper", parent_id=parent))["agent"]["id"]
        workers = [(await agent_in(admin, a, "active"))["process"]["pid"] for a in (parent, child)]
        pidfile = tmp_path / "shared" / "drain.pid"
        task = await call(
            admin,
            "task_submit",
            type="nap",
            capabilities=["napper"],
            pinned_agent_id=parent,
            payload={"seconds": 2, "pidfile": str(pidfile)},
        )
        command, sleep_child = await pids_in(pidfile)
        ended = await call(admin, "agent_terminate", agent_id=parent, reason="drain test")
        assert sorted(ended["terminated"]) == sorted([parent, child]) and ended["stopping"] == []
        done = await call(admin, "task_get", task_id=task["id"])
        assert done["status"] == "completed", "graceful: the running task finished and was reported"
        assert not any(map(alive, [*workers, command, sleep_child]))

        # Not graceful: SIGKILL at once, the running command and its children included.
        doomed = (await call(admin, "agent_spawn", profile="napper"))["agent"]["id"]
        worker = (await agent_in(admin, doomed, "active"))["process"]["pid"]
        pidfile = tmp_path / "shared" / "kill.pid"
        task = await call(
            admin, "task_submit", type="nap", capabilities=["napper"], payload={"seconds": 60, "pidfile": str(pidfile)}
        )
        command, sleep_child = await pids_in(pidfile)
        started = time.monotonic()
        ended = await call(admin, "agent_terminate", agent_id=doomed, graceful=False)
        assert ended["terminated"] == [doomed] and time.monotonic() - started < 5
        await eventually(lambda: _none_alive([worker, command, sleep_child]), 10, "the tree to be gone")
        requeued = await call(admin, "task_get", task_id=task["id"])
        assert requeued["status"] == "queued" and requeued["attempt_history"][0]["outcome"] == "released"
        await call(admin, "task_cancel", task_id=task["id"])
        # An ended agent's token no longer works.
        refused = await call_error(admin, "agent_restart", agent_id=doomed)
        assert refused.code == "conflict"


async def _none_alive(pids: list[int]) -> bool:
    return not any(map(alive, pids))


# -- a server restart ----------------------------------------------------------------------------


async def test_a_restarted_server_re_adopts_running_agents_and_restarts_the_ones_that_died(fleet, tmp_path: Path):
    from tests.serving import free_port

    port = free_port()
    env = {"AGENTFLEET_REPLICA_ID": "replica-under-test"}
    server = fleet(worker_profile("echoer", "echo.py"), env=env, port=port)
    async with server.mcp() as admin:
        kept = (await call(admin, "agent_spawn", profile="echoer"))["agent"]["id"]
        lost = (await call(admin, "agent_spawn", profile="echoer"))["agent"]["id"]
        kept_pid = (await agent_in(admin, kept, "active"))["process"]["pid"]
        lost_pid = (await agent_in(admin, lost, "active"))["process"]["pid"]
    server.kill()  # no shutdown code runs
    os.killpg(lost_pid, signal.SIGKILL)  # dies while nobody watches
    assert alive(kept_pid)

    server = fleet(env=env, port=port)
    async with server.mcp() as admin:

        async def replaced() -> dict[str, Any] | None:
            agent = await call(admin, "agent_get", agent_id=lost)
            return agent if agent["process"]["pid"] not in (None, lost_pid) else None

        restarted = await eventually(replaced, what="the dead agent restarted")
        assert restarted["process"]["restarts"] == 1
        assert "adopted" in restarted["process"]["last_exit"]
        adopted = await call(admin, "agent_get", agent_id=kept)
        assert adopted["process"]["pid"] == kept_pid and adopted["process"]["restarts"] == 0
        # Exactly one process per agent: none started twice.
        assert sorted(_agent_ids_running(tmp_path / "data")) == sorted([kept, lost])

        task = await call(
            admin, "task_submit", type="echo", capabilities=["echoer"], payload="after", pinned_agent_id=kept
        )
        assert (await task_in(admin, task["id"], "completed"))["result"]["echo"] == "after"
        await call(admin, "agent_terminate", agent_id=kept)
        await call(admin, "agent_terminate", agent_id=lost)
        assert not alive(kept_pid)


def _agent_ids_running(data_dir: Path) -> list[str]:
    """AGENTFLEET_AGENT_ID of every agent process (its worker) under the data dir."""
    found = []
    for pid in processes_under(data_dir):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"AGENTFLEET_AGENT_ID="):
                found.append(item.split(b"=", 1)[1].decode())
    return found
