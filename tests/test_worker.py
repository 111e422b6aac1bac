"""`agentfleet worker -- CMD`, as a user runs it: a real worker process against a real `agentfleet
serve`, running the commands in tests/agents/, checked through MCP `task_get`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from tests.conftest import TEST_PROFILES
from tests.helpers import ToolFailed, call

if TYPE_CHECKING:
    from mcp import Client

    from tests.serving import FleetServer, ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parent.parent
AGENTS = REPO_ROOT / "tests" / "agents"
ENV = {"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES)}
FINAL = frozenset({"completed", "failed", "cancelled", "dead"})
DEADLINE_S = 20.0
POLL_S = 0.05


class Worker:
    """One `python -m server.cli worker` process; its stderr (the log) goes to a file."""

    def __init__(self, server: FleetServer, token: str, script: str, flags: list[str], log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLEET_")}
        env |= {"AGENTFLEET_URL": server.base_url, "AGENTFLEET_TOKEN": token, "PYTHONUNBUFFERED": "1"}
        self.log = log
        with log.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "worker", *flags, "--", sys.executable, str(AGENTS / script)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def output(self) -> str:
        return f"--- worker (exit {self.process.poll()}) stderr ---\n{self.log.read_text(errors='replace')}"

    async def exit_code(self, within_s: float = DEADLINE_S) -> int:
        deadline = time.monotonic() + within_s
        while self.process.poll() is None:
            assert time.monotonic() < deadline, f"the worker did not exit within {within_s} s\n{self.output()}"
            await anyio.sleep(POLL_S)
        return self.process.returncode


class Workers:
    """Starts workers; at teardown kills what is left of them and of the commands they ran."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Worker] = []

    def start(self, server: FleetServer, token: str, script: str, *flags: str) -> Worker:
        worker = Worker(server, token, script, list(flags), self.tmp_path / f"worker-{len(self.started)}.stderr")
        self.started.append(worker)
        return worker

    def pidfile(self, name: str) -> str:
        return str(self.tmp_path / f"{name}.pids")

    def close(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
        for pidfile in self.tmp_path.glob("*.pids"):  # a broken worker may leave its command running
            for pid in pids(pidfile):
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    started = Workers(tmp_path)
    yield started
    started.close()


def pids(pidfile: str | Path) -> list[int]:
    return [int(pid) for pid in Path(pidfile).read_text().split()]


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def agent(admin: Client, capability: str) -> tuple[str, str]:
    """A fresh external agent with its own capability (tasks needing it go to it only): (id, token)."""
    spawned = await call(admin, "agent_spawn", profile="worker", capabilities=[capability])
    return spawned["agent"]["id"], spawned["token"]


async def settled(admin: Client, task_id: str, statuses: frozenset[str] = FINAL, worker: Worker | None = None) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while (task := await call(admin, "task_get", task_id=task_id))["status"] not in statuses:
        extra = worker.output() if worker else ""
        assert time.monotonic() < deadline, f"{task_id} still {task['status']}: {task}\n{extra}"
        await anyio.sleep(POLL_S)
    return task


async def file_appears(path: str, worker: Worker) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not Path(path).exists():
        assert time.monotonic() < deadline, f"{path} never appeared\n{worker.output()}"
        await anyio.sleep(POLL_S)


async def test_results_and_failures(serve: ServeFactory, database_url: str, workers: Workers) -> None:
    """Exit 0 with JSON completes the task with that JSON; a non-zero exit fails the attempt with
    the exit status and the tail of stderr (retryable); stdout that is not JSON fails it, saying so."""
    server = serve(database_url, env=ENV)
    async with server.mcp() as admin:
        _, echo_token = await agent(admin, "echo")
        _, misbehave_token = await agent(admin, "misbehave")
        payloads = [{"n": 1, "text": "héllo"}, {"n": 2, "nested": {"list": [1, 2.5, None]}}]
        echoed = [
            (await call(admin, "task_submit", type="echo", payload=p, capabilities=["echo"]))["id"] for p in payloads
        ]
        stderr = "EARLY-LINE\n" + "x" * 3000 + "\nLATE-LINE: it broke"
        crashing = await call(
            admin,
            "task_submit",
            type="crash",
            payload={"exit": 3, "stderr": stderr},
            capabilities=["misbehave"],
            max_attempts=1,
        )
        garbled = await call(
            admin, "task_submit", type="garble", payload={"stdout": "this is not json"}, capabilities=["misbehave"]
        )

        echo = workers.start(server, echo_token, "echo.py", "--wait-s", "2", "--max-tasks", "2")
        misbehave = workers.start(server, misbehave_token, "misbehave.py", "--wait-s", "2", "--max-tasks", "2")
        assert await echo.exit_code() == 0, echo.output()
        assert await misbehave.exit_code() == 0, misbehave.output()

        for task_id, payload in zip(echoed, payloads, strict=True):
            task = await settled(admin, task_id)
            assert task["status"] == "completed", task
            assert task["result"] == {"echo": payload, "task_id": task_id}

        crashed = await settled(admin, crashing["id"])
        assert crashed["status"] == "dead", crashed  # retryable, out of attempts (non-retryable would be failed)
        [attempt] = crashed["attempt_history"]
        assert attempt["outcome"] == "failed"
        assert attempt["error"].startswith("exit status 3"), attempt
        assert attempt["error"].endswith("LATE-LINE: it broke"), attempt
        assert "EARLY-LINE" not in attempt["error"], "only the tail of stderr is quoted"

        garbled_task = await settled(admin, garbled["id"])
        assert garbled_task["status"] == "failed", garbled_task  # final: the command is broken
        assert "not JSON" in garbled_task["error"] and "this is not json" in garbled_task["error"], garbled_task


async def test_the_commands_stderr_lines_reach_the_task_log(
    serve: ServeFactory, database_url: str, workers: Workers
) -> None:
    """Every stderr line, in order, cleaned of what no store keeps and cut to the line bound,
    is in the task's log before the task completes; task_get shows the newest."""
    server = serve(database_url, env=ENV)
    async with server.mcp() as admin:
        _, token = await agent(admin, "misbehave")
        stderr = "L" * 5000 + "\n" + "\n".join(f"line {i}" for i in range(250)) + "\nlast, without a line break"
        task = await call(
            admin,
            "task_submit",
            type="chatty",
            payload={"stdout": "{}", "stderr": stderr, "nul": True},
            capabilities=["misbehave"],
        )
        worker = workers.start(server, token, "misbehave.py", "--wait-s", "2", "--max-tasks", "1")
        assert await worker.exit_code() == 0, worker.output()
        done = await settled(admin, task["id"])
        assert done["status"] == "completed", done
        tail = done["log_tail"]
        # 1 NUL line + 1 long line + 250 + the last: all 253 arrived (a refused batch would stop them).
        assert [(x["attempt"], x["seq"], x["line"]) for x in tail[-2:]] == [
            (1, 252, "line 249"),
            (1, 253, "last, without a line break"),
        ], worker.output()
        assert [x["line"] for x in tail] == [f"line {i}" for i in range(231, 250)] + ["last, without a line break"]


async def test_cancel_kills_the_command_and_idle_worker_stops_promptly(
    serve: ServeFactory, database_url: str, workers: Workers
) -> None:
    """A cancel seen on the heartbeat kills the command's whole process group and ends the task
    cancelled; the worker then goes on, and SIGTERM while it waits for work ends it at once."""
    server = serve(database_url, env=ENV)
    async with server.mcp() as admin:
        _, token = await agent(admin, "sleepy")
        pidfile = workers.pidfile("cancel")
        # lease_s=5: heartbeats every 5/3 s, so the cancel is seen within two seconds
        task = await call(
            admin,
            "task_submit",
            type="sleep",
            payload={"seconds": 60, "pidfile": pidfile},
            capabilities=["sleepy"],
            lease_s=5,
        )
        worker = workers.start(server, token, "sleeper.py")  # default --wait-s 20
        await file_appears(pidfile, worker)
        command, child = pids(pidfile)
        assert alive(command) and alive(child)

        await call(admin, "task_cancel", task_id=task["id"])
        cancelled = await settled(admin, task["id"], worker=worker)
        assert cancelled["status"] == "cancelled", f"{cancelled}\n{worker.output()}"
        assert [a["outcome"] for a in cancelled["attempt_history"]] == ["cancelled"], cancelled
        assert not alive(command), "the command still runs after the cancel"
        assert not alive(child), "the command's child still runs: the group was not killed"

        assert worker.process.poll() is None, worker.output()  # it goes on claiming
        await anyio.sleep(0.2)  # parked in a long-poll by now
        stopping = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        assert await worker.exit_code(within_s=5) == 0, worker.output()
        assert time.monotonic() - stopping < 5, "an idle worker must not wait out its long-poll"


async def test_timeout_kills_and_fails_retryable(serve: ServeFactory, database_url: str, workers: Workers) -> None:
    server = serve(database_url, env=ENV)
    async with server.mcp() as admin:
        _, token = await agent(admin, "slow")
        pidfile = workers.pidfile("timeout")
        try:
            task = await call(
                admin,
                "task_submit",
                type="sleep",
                payload={"seconds": 60, "pidfile": pidfile},
                capabilities=["slow"],
                timeout_s=1,
                max_attempts=1,
            )
        except ToolFailed as exc:
            if "timeout_s" in exc.text:
                pytest.skip(f"task_submit does not take timeout_s yet: {exc.text}")
            raise
        worker = workers.start(server, token, "sleeper.py", "--wait-s", "2", "--max-tasks", "1")
        await file_appears(pidfile, worker)
        command, child = pids(pidfile)
        assert await worker.exit_code() == 0, worker.output()
        timed_out = await settled(admin, task["id"])
        assert timed_out["status"] == "dead", timed_out  # retryable, out of attempts
        [attempt] = timed_out["attempt_history"]
        assert attempt["outcome"] == "failed" and attempt["error"].startswith("timed out after 1 s"), attempt
        assert not alive(command) and not alive(child), "the command outlived its timeout"


async def test_profile_worker_drains_rides_out_a_restart_and_terminates_its_agent(
    serve: ServeFactory, database_url: str, workers: Workers
) -> None:
    """With --profile and an operator's (here the admin's) token the worker registers an agent of
    that profile and works as it. SIGTERM while a task runs: no new claims, that task finishes and
    is reported — here across a server restart (killed, then back on the same port) — the agent is
    terminated, exit 0. A profile the server refuses: exit 3."""
    server = serve(database_url, env=ENV)
    async with server.mcp() as admin:
        pidfile = workers.pidfile("drain")
        running = await call(admin, "task_submit", type="sleep", payload={"seconds": 1, "pidfile": pidfile})
        name = "registered-by-worker"
        worker = workers.start(
            server, server.admin_token, "sleeper.py", "--profile", "worker", "--name", name, "--wait-s", "2"
        )
        await file_appears(pidfile, worker)
        waiting = await call(admin, "task_submit", type="sleep", payload={"seconds": 1, "pidfile": pidfile})
        worker.process.send_signal(signal.SIGTERM)
    server.kill()  # the command finishes while the server is down (a start takes longer than its 1 s)
    server = serve(database_url, env=ENV, port=server.port)  # same store, same address
    async with server.mcp() as admin:
        assert await worker.exit_code() == 0, worker.output()
        log = worker.log.read_text()
        assert "server unreachable" in log, f"the restart went unnoticed: not a restart test\n{log}"
        assert server.admin_token not in log, "the worker logged the token"

        finished = await call(admin, "task_get", task_id=running["id"])
        assert finished["status"] == "completed", f"{finished}\n{log}"
        assert finished["result"] == {"slept": 1}
        assert (await call(admin, "task_get", task_id=waiting["id"]))["status"] == "queued", "claimed while draining"
        registered = await call(admin, "agent_get", agent_id=finished["agent_id"])
        assert registered["name"] == name and registered["profile"].startswith("worker@"), registered
        assert registered["status"] == "terminated", f"{registered}\n{log}"

        refused = workers.start(server, server.admin_token, "echo.py", "--profile", "no-such-profile")
        assert await refused.exit_code() == 3, refused.output()


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (["--", "true"], {}, "AGENTFLEET_URL"),
        (["--", "true"], {"AGENTFLEET_URL": "http://127.0.0.1:9"}, "AGENTFLEET_TOKEN"),
        ([], {"AGENTFLEET_URL": "http://127.0.0.1:9", "AGENTFLEET_TOKEN": "t"}, "no command"),
        (["--", "./no/such/cmd"], {"AGENTFLEET_URL": "http://127.0.0.1:9", "AGENTFLEET_TOKEN": "t"}, "not found"),
    ],
)
def test_usage_errors_exit_2(args: list[str], env: dict[str, str], says: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLEET_")} | env
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "worker", *args],
        cwd=REPO_ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and says in done.stderr, done


async def test_a_process_agents_python_is_its_own_even_when_path_finds_another(tmp_path, monkeypatch):
    """In a process agent, `python` is the worker's interpreter: a PATH lookup could find a launcher
    (a pyenv shim) the agent's sandbox may not run. A worker started by hand keeps PATH's python."""
    from server.worker.command import Command

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text("#!/bin/sh\nexit 126\n")
    (fake / "python").chmod(0o755)
    argv = ["python", "-c", "print('own')"]
    monkeypatch.setenv("AGENTFLEET_AGENT_ID", "agt_0000TESTAGENT")
    in_agent = await (await Command.start(argv, b"", {"PATH": str(fake)}, 10_000)).wait()
    monkeypatch.delenv("AGENTFLEET_AGENT_ID")
    by_hand = await (await Command.start(argv, b"", {"PATH": str(fake)}, 10_000)).wait()
    assert (in_agent.returncode, in_agent.stdout.strip()) == (0, b"own")
    assert by_hand.returncode == 126
