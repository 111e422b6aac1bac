"""Logs as an operator reads them from a real `agentfleet serve`: JSON lines (the default off a
terminal) or text, one access record per HTTP request and one record per tool call, each with
its request id, principal, outcome and duration; no secret in any line."""

from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest

from server.logs import JsonFormatter, TextFormatter, configure_logging, redact, resolve_format
from tests.conftest import ADMIN_TOKEN
from tests.helpers import call, call_error

if TYPE_CHECKING:
    from tests.serving import ServeFactory

pytest_plugins = ["tests.serving"]


def _records(text: str) -> list[dict[str, Any]]:
    """Every stderr line must be one JSON object."""
    records = []
    for line in text.splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records


@pytest.mark.anyio
@pytest.mark.slow
async def test_json_logs_carry_one_access_record_per_request_and_one_per_tool_call(
    serve: ServeFactory, database_url: str
) -> None:
    server = serve(database_url)
    async with server.http(ADMIN_TOKEN) as http:
        response = await http.get("/readyz", headers={"X-Request-Id": "req-from-the-caller"})
        assert response.headers["x-request-id"] == "req-from-the-caller"
        generated = (await http.get("/readyz", headers={"X-Request-Id": "bad id with spaces"})).headers["x-request-id"]
        assert generated.startswith("req_")
    async with server.http() as anonymous:
        assert (await anonymous.get("/metrics")).status_code == 401
    async with server.mcp() as admin:
        agent = await call(admin, "agent_spawn", profile="default", name="logged")
        task = await call(admin, "task_submit", type="build")
        assert (await call_error(admin, "task_get", task_id="tsk_NOPE")).code == "not_found"
    async with server.mcp(agent["token"]) as as_agent:
        await call(as_agent, "task_claim")
    server.stop()

    records = _records(server.stderr())
    access = [r for r in records if r.get("kind") == "access"]
    mine = next(r for r in access if r.get("request_id") == "req-from-the-caller")
    assert mine["route"] == "/readyz" and mine["status"] == 200 and mine["principal"] == "admin"
    assert mine["level"] == "info" and mine["logger"] == "agentfleet.access" and mine["duration_ms"] >= 0
    assert any(r.get("request_id") == generated for r in access)
    refused = next(r for r in access if r["route"] == "/metrics")
    assert refused["status"] == 401 and refused["principal"] is None
    assert any(r["route"] == "/mcp" and r["method"] == "POST" for r in access)

    calls = [r for r in records if r.get("kind") == "tool_call"]
    submit = next(r for r in calls if r["tool"] == "task_submit")
    assert submit["outcome"] == "ok" and submit["principal"] == "admin" and submit["role"] == "admin"
    assert submit["duration_ms"] >= 0 and submit["request_id"].startswith("req_")
    # The tool record and the HTTP record of the same request share its id.
    assert any(r["request_id"] == submit["request_id"] and r["route"] == "/mcp" for r in access)
    missing = next(r for r in calls if r["tool"] == "task_get")
    assert missing["outcome"] == "not_found" and missing["task_id"] == "tsk_NOPE"
    claim = next(r for r in calls if r["tool"] == "task_claim")
    assert claim["principal"] == agent["agent"]["id"] and claim["role"] == "agent"
    assert task["id"]


@pytest.mark.anyio
@pytest.mark.slow
async def test_no_secret_reaches_any_log_line_even_at_debug(serve: ServeFactory, database_url: str) -> None:
    """The admin token, an agent's token, a person's token and a wrong bearer token all pass
    through the server; none may be written, whatever the level."""
    server = serve(database_url, env={"AGENTFLEET_LOG_LEVEL": "debug"})
    wrong = "afp_this-is-not-a-valid-token-but-still-a-secret"
    async with server.mcp() as admin:
        agent = await call(admin, "agent_spawn", profile="default", name="secretive")
        person = await call(admin, "token_create", name="alice", role="operator")
        await call(admin, "task_submit", type="build", payload={"note": "hello"})
    async with server.mcp(agent["token"]) as as_agent:
        await call(as_agent, "task_claim")
    async with server.mcp(person["token"]) as as_person:
        await call(as_person, "fleet_status")
    async with server.http(wrong) as http:
        assert (await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})).status_code == 401
    server.stop()

    logs = server.stderr() + server.stdout()
    assert "agentfleet.access" in logs  # the server did log, at debug
    for secret in (ADMIN_TOKEN, agent["token"], person["token"], wrong):
        assert secret not in logs
        assert secret[4:20] not in logs  # not even a part of it


@pytest.mark.anyio
@pytest.mark.slow
async def test_text_format_on_request_and_a_wrong_format_is_one_line(serve: ServeFactory, database_url: str) -> None:
    server = serve(database_url, env={"AGENTFLEET_LOG_FORMAT": "text"})
    async with server.http(ADMIN_TOKEN) as http:
        await http.get("/readyz", headers={"X-Request-Id": "text-req"})
    server.stop()
    line = next(x for x in server.stderr().splitlines() if "request_id=text-req" in x)
    assert " INFO agentfleet.access: GET /readyz 200" in line and "principal=admin" in line

    import subprocess
    import sys

    from tests.serving import REPO_ROOT

    refused = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--port", "1"],
        cwd=REPO_ROOT,
        env={"AGENTFLEET_LOG_FORMAT": "yaml", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2
    assert "AGENTFLEET_LOG_FORMAT must be json or text" in refused.stderr and "Traceback" not in refused.stderr


def test_redact_masks_every_kind_of_token_and_bearer_values() -> None:
    text = (
        "agent afa_abcdefghijklmnop admin afk_0123456789_-xyz person afp_QWERTYUIOP "
        "header Authorization: Bearer s3cr3t-value.more and bearer  another-secret"
    )
    masked = redact(text)
    for secret in ("abcdefghijklmnop", "0123456789_-xyz", "QWERTYUIOP", "s3cr3t-value.more", "another-secret"):
        assert secret not in masked
    assert "afa_***" in masked and "Bearer ***" in masked
    assert redact("nothing secret here: after, safe") == "nothing secret here: after, safe"


def _format(formatter: logging.Formatter, **fields: Any) -> str:
    record = logging.LogRecord("agentfleet.x", logging.WARNING, __file__, 1, "token %s", ("afa_123456789abc",), None)
    record.fields = fields
    return formatter.format(record)


def test_formatters_carry_fields_and_mask_secrets_in_messages() -> None:
    entry = json.loads(_format(JsonFormatter(), tool="task_get", outcome="ok"))
    assert entry["level"] == "warning" and entry["logger"] == "agentfleet.x" and entry["msg"] == "token afa_***"
    assert entry["tool"] == "task_get" and entry["ts"].endswith("Z")
    line = _format(TextFormatter(), tool="task_get")
    assert "WARNING agentfleet.x: token afa_*** tool=task_get" in line


def test_format_defaults_to_text_on_a_terminal_and_json_elsewhere() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert resolve_format(None, Tty()) == "text"
    assert resolve_format(None, io.StringIO()) == "json"
    assert resolve_format("text", io.StringIO()) == "text"
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("warning", None, stream)
        logging.getLogger("agentfleet.test").info("hidden")
        logging.getLogger("agentfleet.test").warning("shown")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert [json.loads(x)["msg"] for x in stream.getvalue().splitlines()] == ["shown"]
