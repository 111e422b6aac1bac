"""Tokens for people and services (issue 9): created, listed, revoked and rotated by the admin
through MCP; the secret is shown once and stored only as its SHA-256; revoked, rotated-away and
expired secrets stop working, in process and over HTTP."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from sqlalchemy import select

from server.store.tables import metadata, tokens
from tests.helpers import call, call_error

if TYPE_CHECKING:
    from tests.serving import ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = pytest.mark.anyio


def sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def stored_tokens(services) -> list:
    with services.db.engine.connect() as conn:
        return conn.execute(select(tokens).order_by(tokens.c.id)).all()


def everything_stored(services) -> str:
    """Every row of every table, as text: a secret must appear nowhere in it."""
    parts = []
    with services.db.engine.connect() as conn:
        for table in metadata.sorted_tables:
            parts.extend(repr(tuple(row)) for row in conn.execute(select(table)))
    return "\n".join(parts)


async def test_create_list_revoke_rotate_and_the_secret_is_shown_once(services, connect):
    async with connect() as admin:
        issued = await call(admin, "token_create", name="alice", role="operator")
        secret, details = issued["token"], issued["details"]
        assert secret.startswith("afp_") and len(secret) > 40
        assert details["name"] == "alice" and details["role"] == "operator" and details["id"].startswith("tkn_")
        assert details["created_by"] == "admin" and details["active"] is True
        assert details["revoked_at"] is None and details["expires_at"] is None and details["rotated_at"] is None

        other = await call(admin, "token_create", name="ci-bot", role="viewer", expires_in_s=3600)
        assert other["token"] != secret and other["details"]["expires_at"] is not None

        listed = await call(admin, "token_list")
        assert [t["name"] for t in listed["tokens"]] == ["alice", "ci-bot"]
        assert listed["tokens"][0] == details  # the same view, without the secret
        assert secret not in json.dumps(listed) and other["token"] not in json.dumps(listed)
        trail = await call(admin, "audit_query", action="token.create")
        assert {e["subject"] for e in trail["entries"]} == {details["id"], other["details"]["id"]}
        assert secret not in json.dumps(trail)

    rows = stored_tokens(services)
    assert [(r.name, r.role, r.token_hash) for r in rows] == [
        ("alice", "operator", sha256(secret)),
        ("ci-bot", "viewer", sha256(other["token"])),
    ]
    assert secret not in everything_stored(services)  # only the hash, nowhere the secret itself

    async with connect(secret) as alice:
        status = await call(alice, "fleet_status")
        assert status["totals"]["agents"] == 0
        submitted = await call(alice, "task_submit", type="build")
    async with connect() as admin:
        assert (await call(admin, "task_get", task_id=submitted["id"]))["submitted_by"] == "alice"
        revoked = await call(admin, "token_revoke", token="alice")
        assert revoked["revoked_at"] is not None and revoked["active"] is False
        again = await call(admin, "token_revoke", token=details["id"])  # by id; twice is harmless
        assert again["revoked_at"] == revoked["revoked_at"]
        assert [e["action"] for e in (await call(admin, "audit_query", subject=details["id"]))["entries"]] == [
            "token.revoke",
            "token.create",
        ]
    async with connect(secret) as alice:
        refused = await call_error(alice, "fleet_status")
    assert refused.code == "permission_denied"


async def test_rotate_replaces_the_secret_under_the_same_name_and_role(services, connect):
    async with connect() as admin:
        old = await call(admin, "token_create", name="deployer", role="operator")
    async with connect(old["token"]) as deployer:
        await call(deployer, "fleet_status")
    async with connect() as admin:
        new = await call(admin, "token_rotate", token="deployer")
        assert new["token"].startswith("afp_") and new["token"] != old["token"]
        assert new["details"]["id"] == old["details"]["id"]
        assert (new["details"]["name"], new["details"]["role"]) == ("deployer", "operator")
        assert new["details"]["rotated_at"] is not None and new["details"]["active"] is True
        listed = await call(admin, "token_list")
        assert new["token"] not in json.dumps(listed) and old["token"] not in json.dumps(listed)
    [row] = stored_tokens(services)
    assert row.token_hash == sha256(new["token"])
    assert new["token"] not in everything_stored(services)
    async with connect(old["token"]) as stale:
        assert (await call_error(stale, "fleet_status")).code == "permission_denied"
    async with connect(new["token"]) as deployer:
        await call(deployer, "task_submit", type="deploy")
    async with connect() as admin:
        trail = await call(admin, "audit_query", actor="deployer", action="task.submit")
        assert len(trail["entries"]) == 1 and trail["entries"][0]["role"] == "operator"
        await call(admin, "token_revoke", token="deployer")
        assert (await call_error(admin, "token_rotate", token="deployer")).code == "conflict"
    async with connect(new["token"]) as deployer:
        assert (await call_error(deployer, "fleet_status")).code == "permission_denied"


async def test_an_expired_token_is_refused(fake_connect, clock):
    async with fake_connect() as admin:
        issued = await call(admin, "token_create", name="temp", role="viewer", expires_in_s=60)
    clock.advance(59)
    async with fake_connect(issued["token"]) as temp:
        await call(temp, "fleet_status")
        clock.advance(1)  # now at expires_at: no longer valid
        assert (await call_error(temp, "fleet_status")).code == "permission_denied"
    async with fake_connect() as admin:
        [shown] = (await call(admin, "token_list"))["tokens"]
    assert shown["active"] is False and shown["revoked_at"] is None


async def test_names_are_never_reused_and_bad_names_or_roles_are_refused(services, connect):
    async with connect() as admin:
        first = await call(admin, "token_create", name="bob", role="viewer")
        duplicate = await call_error(admin, "token_create", name="bob", role="operator")
        assert duplicate.code == "conflict"
        await call(admin, "token_revoke", token="bob")
        after_revoke = await call_error(admin, "token_create", name="bob", role="viewer")
        assert after_revoke.code == "conflict"
        for name in ("admin", "reaper", "agt_x", "tkn_x", "Bob", "9lives"):
            assert (await call_error(admin, "token_create", name=name, role="viewer")).code == "invalid_input", name
        for role in ("agent", "system", "root"):
            assert (await call_error(admin, "token_create", name="carol", role=role)).code == "invalid_input", role
        assert (await call_error(admin, "token_revoke", token="nobody")).code == "not_found"
        assert (await call_error(admin, "token_rotate", token="nobody")).code == "not_found"
    assert [r.id for r in stored_tokens(services)] == [first["details"]["id"]]


async def test_only_the_admin_manages_tokens(services, connect):
    async with connect() as admin:
        operator = await call(admin, "token_create", name="op", role="operator")
        viewer = await call(admin, "token_create", name="view", role="viewer")
        spawned = await call(admin, "agent_spawn", profile="default")
        promoted = await call(admin, "token_create", name="second-admin", role="admin")
    for secret in (operator["token"], viewer["token"], spawned["token"]):
        async with connect(secret) as someone:
            for tool, arguments in (
                ("token_create", {"name": "sneaky", "role": "admin"}),
                ("token_list", {}),
                ("token_revoke", {"token": "op"}),
                ("token_rotate", {"token": "op"}),
            ):
                refused = await call_error(someone, tool, **arguments)
                assert refused.code == "permission_denied", (tool, refused.text)
    assert [r.name for r in stored_tokens(services)] == ["op", "view", "second-admin"]
    assert stored_tokens(services)[0].token_hash == sha256(operator["token"])  # not rotated, not revoked
    assert all(r.revoked_at is None for r in stored_tokens(services))
    async with connect() as admin:
        refusals = (await call(admin, "audit_query", action="request.refused", actor="op"))["entries"]
        assert {e["detail"]["request"] for e in refusals} == {
            "token_create",
            "token_list",
            "token_revoke",
            "token_rotate",
        }
    async with connect(promoted["token"]) as second_admin:  # an admin-role token is an admin
        made = await call(second_admin, "token_create", name="made-by-second", role="viewer")
        assert made["details"]["created_by"] == "second-admin"


@pytest.mark.slow
async def test_over_http_an_operator_token_works_and_a_revoked_one_gets_401(serve: ServeFactory, database_url):
    server = serve(database_url)
    async with server.mcp() as admin:
        issued = await call(admin, "token_create", name="http-op", role="operator")
    statuses: list[int] = []

    async def record(response) -> None:
        statuses.append(response.status_code)

    async with (
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {issued['token']}"}, timeout=30, event_hooks={"response": [record]}
        ) as http,
        Client(streamable_http_client(server.url("/mcp"), http_client=http)) as operator,
    ):
        submitted = await call(operator, "task_submit", type="build")
    assert submitted["status"] == "queued"
    assert statuses and set(statuses) <= {200, 202}, statuses
    assert 200 in statuses

    async with server.http(issued["token"]) as http:
        assert (await http.get("/readyz")).status_code == 200
    async with server.mcp() as admin:
        await call(admin, "token_revoke", token="http-op")
        assert (await call(admin, "task_get", task_id=submitted["id"]))["submitted_by"] == "http-op"
    async with server.http(issued["token"]) as http:
        for method, path in (("POST", "/mcp"), ("POST", "/a2a"), ("GET", "/readyz")):
            response = await http.request(method, path, json={})
            assert response.status_code == 401, (path, response.text)
