"""The CLI: db upgrade and status against a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from server.domain.principal import Principal, Role
from tests.helpers import call, call_error

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
    assert "active 1" in shown.stdout  # its budget_reserve counted as a heartbeat
    assert "total: 1 agents, 1 tasks" in shown.stdout
    queued = next(line for line in shown.stdout.splitlines() if line.startswith("queued"))
    assert queued.split()[1:] == ["0", "1", "0", "0"]
    assert "budget global: 75.0% of 4.000000 USD (total, BLOCKED; spent 0.000000, reserved 3.000000)" in shown.stdout


def test_status_on_an_unmigrated_store_says_what_to_do(tmp_path):
    env = {"AGENTFLEET_DATA_DIR": str(tmp_path / "d")}
    missing = run_cli("status", env=env)
    assert missing.returncode == 3 and "no store at" in missing.stderr and not (tmp_path / "d").exists()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "agentfleet.db").touch()  # there, but never migrated
    shown = run_cli("status", env=env)
    assert shown.returncode == 1 and "agentfleet db upgrade" in shown.stderr


# --- agentfleet token … (issue 9) -----------------------------------------------------------------


def store_env(tmp_path, database_url):
    return {"AGENTFLEET_DATA_DIR": str(tmp_path / "d"), "AGENTFLEET_DATABASE_URL": database_url}


def created_secret(result: subprocess.CompletedProcess[str]) -> str:
    """`token create` / `token rotate` print the secret, and only it, on stdout."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("afp_"), result.stdout
    assert "shown once" in result.stderr and lines[0] not in result.stderr
    return lines[0]


async def test_token_commands_create_list_rotate_revoke_end_to_end(tmp_path, services, connect, database_url):
    env = store_env(tmp_path, database_url)
    secret = created_secret(run_cli("token", "create", "alice", "--role", "operator", env=env))
    assert await services.auth.authenticate(secret) == Principal(Role.OPERATOR, "alice")
    async with connect(secret) as alice:  # the printed secret is a working bearer token
        await call(alice, "task_submit", type="build")

    duplicate = run_cli("token", "create", "alice", "--role", "viewer", env=env)
    assert duplicate.returncode == 2 and "conflict" in duplicate.stderr and not duplicate.stdout
    timed = created_secret(run_cli("token", "create", "ci-bot", "--role", "viewer", "--expires-in-s", "3600", env=env))
    assert timed != secret

    listed = run_cli("token", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[1:4] == ["alice", "operator", "active"] and "by admin" in lines[0]
    assert lines[1].split()[1:4] == ["ci-bot", "viewer", "active"]
    as_json = run_cli("token", "list", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    shown = json.loads(as_json.stdout)
    assert [(t["name"], t["role"], t["active"]) for t in shown] == [
        ("alice", "operator", True),
        ("ci-bot", "viewer", True),
    ]
    assert shown[0]["expires_at"] is None and shown[1]["expires_at"] is not None
    for output in (listed, as_json):
        assert secret not in output.stdout + output.stderr and timed not in output.stdout + output.stderr

    # Rotate by name: a new secret, the old one stops working; then revoke by id.
    rotated = created_secret(run_cli("token", "rotate", "alice", env=env))
    assert rotated != secret
    assert await services.auth.authenticate(secret) is None
    assert await services.auth.authenticate(rotated) == Principal(Role.OPERATOR, "alice")
    flags = ("--data-dir", str(tmp_path / "d"), "--database-url", database_url)  # flags instead of env
    revoked = run_cli("token", "revoke", shown[0]["id"], *flags, env={})
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.startswith(f"revoked alice ({shown[0]['id']}, operator) at ")
    assert await services.auth.authenticate(rotated) is None
    async with connect(rotated) as alice:
        assert (await call_error(alice, "fleet_status")).code == "permission_denied"
    after = json.loads(run_cli("token", "list", "--json", env=env).stdout)
    assert [(t["name"], t["active"], t["revoked_at"] is not None) for t in after] == [
        ("alice", False, True),
        ("ci-bot", True, False),
    ]
    assert "revoked" in run_cli("token", "list", env=env).stdout.splitlines()[0]
    assert await services.auth.authenticate(timed) == Principal(Role.VIEWER, "ci-bot")  # untouched

    async with connect() as admin:  # the CLI acts as the admin, and says so in the audit trail
        trail = (await call(admin, "audit_query", actor="admin"))["entries"]
    assert [e["action"] for e in trail] == ["token.revoke", "token.rotate", "token.create", "token.create"]


async def test_token_commands_refuse_bad_requests(tmp_path, services, database_url):
    env = store_env(tmp_path, database_url)
    for args in (("revoke", "nobody"), ("rotate", "nobody")):
        missing = run_cli("token", *args, env=env)
        assert missing.returncode == 2 and "not_found" in missing.stderr and not missing.stdout
    bad_name = run_cli("token", "create", "Not A Name", "--role", "viewer", env=env)
    assert bad_name.returncode == 2 and "invalid_input" in bad_name.stderr and not bad_name.stdout
    bad_role = run_cli("token", "create", "dave", "--role", "agent", env=env)
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr  # argparse: usage error
    empty = run_cli("token", "list", env=env)
    assert empty.returncode == 0 and "no tokens" in empty.stdout
    assert json.loads(run_cli("token", "list", "--json", env=env).stdout) == []


def test_token_commands_on_an_unmigrated_store_say_what_to_do(tmp_path):
    env = {"AGENTFLEET_DATA_DIR": str(tmp_path / "d")}
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "agentfleet.db").touch()  # there, but never migrated
    shown = run_cli("token", "create", "alice", "--role", "operator", env=env)
    assert shown.returncode == 1 and "agentfleet db upgrade" in shown.stderr and not shown.stdout
