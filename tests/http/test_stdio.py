"""`agentfleet serve --stdio` as Claude Desktop or Cursor launch it: a subprocess speaking MCP on
stdin/stdout, admin by default, or the principal named by AGENTFLEET_TOKEN."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import ADMIN_TOKEN
from tests.helpers import call, call_error

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def stdio_server(data_dir: Path, database_url: str, token: str | None = None) -> StdioServerParameters:
    env = {
        "AGENTFLEET_DATA_DIR": str(data_dir),
        "AGENTFLEET_DATABASE_URL": database_url,
        "AGENTFLEET_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    if token is not None:
        env["AGENTFLEET_TOKEN"] = token
    return StdioServerParameters(
        command=sys.executable, args=["-m", "server.cli", "serve", "--stdio"], env=env, cwd=REPO_ROOT
    )


async def test_stdio_acts_as_admin_or_as_the_agent_named_by_agentfleet_token(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with Client(stdio_server(data_dir, database_url)) as admin:
        empty = await call(admin, "fleet_status")
        assert empty["totals"] == {"agents": 0, "tasks": 0}
        spawned = await call(admin, "agent_spawn", profile="developer", name="stdio-dev")
        await call(admin, "agent_spawn", profile="reviewer")
        status = await call(admin, "fleet_status")
        assert status["agents"]["starting"] == 2 and status["totals"]["agents"] == 2
        assert spawned["agent"]["status"] == "starting" and spawned["token"].startswith("afa_")

    seen: dict[str, Any] = {}

    async def as_the_agent() -> None:
        async with Client(stdio_server(data_dir, database_url, token=spawned["token"])) as agent:
            seen["heartbeat"] = await call(agent, "agent_heartbeat")
            seen["agents"] = await call(agent, "agent_list")

    async def with_an_unknown_token() -> None:
        async with Client(stdio_server(data_dir, database_url, token="afa_no-such-agent-token")) as stranger:
            seen["refusal"] = await call_error(stranger, "agent_list")

    async with anyio.create_task_group() as group:  # two processes at once: startup is mostly imports
        group.start_soon(as_the_agent)
        group.start_soon(with_an_unknown_token)

    assert seen["heartbeat"]["id"] == spawned["agent"]["id"]
    assert seen["heartbeat"]["status"] == "active"
    assert [a["id"] for a in seen["agents"]["agents"]] == [spawned["agent"]["id"]]  # not the reviewer
    # An unknown AGENTFLEET_TOKEN never falls back to admin, and says which setting is wrong.
    assert seen["refusal"].code == "permission_denied"
    assert "AGENTFLEET_TOKEN" in seen["refusal"].text
