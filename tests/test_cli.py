"""The CLI: db upgrade and status against a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import call

pytestmark = pytest.mark.anyio


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_db_upgrade_then_status_on_an_empty_store(tmp_path, database_url):
    env = {"AGENTFLEET_DATA_DIR": str(tmp_path / "d"), "AGENTFLEET_DATABASE_URL": database_url}
    upgraded = run_cli("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "store at revision" in upgraded.stdout
    status = run_cli("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["totals"] == {"agents": 0, "tasks": 0}


async def test_status_shows_what_the_server_stored(tmp_path, services, connect, database_url):
    async with connect() as admin:
        spawned = await call(admin, "agent_spawn", profile="default")
        await call(admin, "task_submit", type="x", priority="high")
        await call(admin, "budget_set", scope="global", limit_usd="4", thresholds=[{"percent": 50, "action": "block"}])
    async with connect(spawned["token"]) as agent:
        await call(agent, "budget_reserve", amount_usd="3")
    env = {"AGENTFLEET_DATA_DIR": str(tmp_path / "d"), "AGENTFLEET_DATABASE_URL": database_url}
    shown = run_cli("status", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "starting 1" in shown.stdout
    assert "total: 1 agents, 1 tasks" in shown.stdout
    queued = next(line for line in shown.stdout.splitlines() if line.startswith("queued"))
    assert queued.split()[1:] == ["0", "1", "0", "0"]
    assert "budget global: 75.0% of 4.000000 USD (total, BLOCKED; spent 0.000000, reserved 3.000000)" in shown.stdout


def test_status_on_an_unmigrated_store_says_what_to_do(tmp_path):
    env = {"AGENTFLEET_DATA_DIR": str(tmp_path / "d")}
    shown = run_cli("status", env=env)
    assert shown.returncode == 1 and "agentfleet db upgrade" in shown.stderr
