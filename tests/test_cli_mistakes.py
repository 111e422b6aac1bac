"""Every mistake a newcomer makes gets one clear line and an exit code (2: the request or a
setting is wrong; 3: something is not there to reach), through the real CLI, and a command that
refused created nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving import server_environment


def agentfleet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


MISTAKES = [
    (["serve", "--profiles-dir", "{tmp}/no-such-folder"], 2, "agentfleet: invalid_input: --profiles-dir / "),
    (["status", "--profiles-dir", "{tmp}/no-such-folder"], 2, "agentfleet: invalid_input: --profiles-dir / "),
    (["serve", "--port", "70000"], 2, "agentfleet: invalid_input: --port / AGENTFLEET_PORT must be a TCP port"),
    (["status", "--database-url", "mysql://me:hunter2@db/x"], 2, "agentfleet: invalid_input: --database-url / "),
    (["status", "--database-url", "not a url"], 2, "agentfleet: invalid_input: --database-url / "),
    (["status"], 3, "agentfleet: unavailable: no store at {tmp}/data/agentfleet.db: start the server once"),
    (["audit", "verify"], 3, "agentfleet: unavailable: no store at {tmp}/data/agentfleet.db"),
    (["token", "revoke", "nobody"], 3, "agentfleet: unavailable: no store at {tmp}/data/agentfleet.db"),
    (
        ["status", "--database-url", "postgresql://me:hunter2@127.0.0.1:1/x"],
        3,
        "agentfleet: unavailable: cannot open the store postgresql+psycopg://me:***@127.0.0.1:1/x: ",
    ),
]


@pytest.mark.parametrize(("args", "code", "first_line"), MISTAKES, ids=[" ".join(m[0])[:40] for m in MISTAKES])
def test_each_mistake_is_one_clear_line_and_creates_nothing(tmp_path: Path, args, code, first_line):
    env = server_environment(tmp_path / "data", None, None)
    done = agentfleet(*[a.format(tmp=tmp_path) for a in args], env=env)
    lines = done.stderr.splitlines()
    assert done.returncode == code, done
    assert len(lines) == 1 and lines[0].startswith(first_line.format(tmp=tmp_path)), done.stderr
    assert "hunter2" not in done.stderr and done.stdout == ""
    assert not (tmp_path / "data").exists()  # no data dir, no store, no admin token


def test_a_port_in_use_is_one_line_before_anything_is_printed_or_created(tmp_path: Path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = agentfleet("serve", "--port", str(port), env=server_environment(tmp_path / "data", None, None))
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.startswith(
        f"agentfleet: unavailable: cannot listen on 127.0.0.1:{port} (Address already in use)"
    )
    assert not (tmp_path / "data").exists()


def test_a_worker_pointed_at_nothing_says_so_and_exits(tmp_path: Path):
    env = server_environment(tmp_path / "data", None, None, {"AGENTFLEET_CONNECT_TIMEOUT_S": "0.5"})
    done = agentfleet("worker", "--url", "http://127.0.0.1:9", "--token", "afa_x", "--", "true", env=env)
    assert done.returncode == 3
    assert "giving up: no answer from http://127.0.0.1:9/mcp" in done.stderr and "--url / AGENTFLEET_URL" in done.stderr


def test_debug_shows_the_traceback(tmp_path: Path):
    done = agentfleet("--debug", "serve", "--port", "70000", env=server_environment(tmp_path / "data", None, None))
    assert done.returncode != 0 and "Traceback" in done.stderr
