"""Replicas sharing a store share one admin: a server started with another admin token than the
store knows refuses to start, saying what to do; `agentfleet token adopt-admin` rotates it on
purpose. Through the real CLI, on both stores."""

from __future__ import annotations

import subprocess
import sys

from server.services.auth import hash_token
from server.store.tables import admin_identity
from tests.serving import server_environment
from tests.test_cli import run_cli

SECOND = "afk_second-admin-token-0123456789abcdefghijklmno"


def refused_start(data_dir, database_url: str, token: str) -> subprocess.CompletedProcess[str]:
    """`serve` on a port nobody answers on: it must stop before it binds, with one clear line."""
    env = server_environment(data_dir, database_url, token)
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def stored_hash(services) -> str:
    with services.db.engine.connect() as conn:
        return conn.execute(admin_identity.select()).one().token_hash


def test_a_replica_with_another_admin_token_refuses_to_start_until_it_is_adopted(tmp_path, database_url, services):
    # `services` started on this store with the suite's admin token: it is the store's admin now.
    first = stored_hash(services)
    refused = refused_start(tmp_path / "b", database_url, SECOND)
    assert refused.returncode != 0
    assert "this store already has another admin token" in refused.stderr
    assert "agentfleet token adopt-admin" in refused.stderr and "Traceback" not in refused.stderr
    assert stored_hash(services) == first  # a refused start changed nothing
    assert SECOND not in refused.stderr + refused.stdout  # nor printed the secret

    adopted = run_cli("token", "adopt-admin", env=server_environment(tmp_path / "b", database_url, SECOND))
    assert adopted.returncode == 0, adopted.stderr
    assert "the store's admin is now this admin token" in adopted.stdout
    assert stored_hash(services) == hash_token(SECOND)
    again = run_cli("token", "adopt-admin", env=server_environment(tmp_path / "b", database_url, SECOND))
    assert "already is the store's admin" in again.stdout


def test_the_store_keeps_a_hash_never_the_token(services):
    assert len(stored_hash(services)) == 64 and "afk_" not in stored_hash(services)
