"""A profile version registered on one `agentfleet serve` replica is spawnable on another at once,
without a restart: each replica reads the registry from the shared store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tests.conftest import REPLICA_TEST, TEST_PROFILES
from tests.helpers import call, call_error

if TYPE_CHECKING:
    from tests.serving import ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = REPLICA_TEST

ENV = {"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES)}
NARROW = {
    "name": "narrow",
    "version": "2.0.0",
    "description": "registered at runtime",
    "capabilities": ["narrow"],
    "permissions": {"tools": ["agent_heartbeat", "fleet_status"]},
}


async def test_a_version_registered_on_one_replica_spawns_on_the_other(
    database_url: str, serve: ServeFactory, tmp_path: Path
) -> None:
    a = serve(database_url, data_dir=tmp_path / "replica-a", env=ENV)
    b = serve(database_url, data_dir=tmp_path / "replica-b", env=ENV)
    async with b.mcp() as on_b:  # b has loaded the registry before the version exists
        assert (await call_error(on_b, "agent_spawn", profile="narrow")).code == "invalid_input"
        assert (await call_error(on_b, "budget_set", scope="profile:narrow", limit_usd="5")).code == "invalid_input"
    async with a.mcp() as on_a:
        await call(on_a, "profile_register", definition=NARROW)
    async with b.mcp() as on_b:  # b learns of it from the store on first need, before any spawn there
        assert (await call(on_b, "budget_set", scope="profile:narrow", limit_usd="5"))["scope"] == "profile:narrow"
    async with a.mcp() as on_a:
        await call(on_a, "profile_register", definition=NARROW | {"name": "rare", "capabilities": ["rare"]})
    async with b.mcp() as on_b:
        assert (await call(on_b, "task_submit", type="t", capabilities=["rare"]))["status"] == "queued"
        spawned = await call(on_b, "agent_spawn", profile="narrow@^2")
        assert spawned["agent"]["profile"] == "narrow@2.0.0" and "narrow" in spawned["agent"]["capabilities"]
    async with a.mcp(spawned["token"]) as agent_on_a:  # a never saw this spawn; its rules still apply
        assert (await call(agent_on_a, "agent_heartbeat"))["profile"] == "narrow@2.0.0"
        assert (await call_error(agent_on_a, "task_list")).code == "permission_denied"
        assert {t.name for t in (await agent_on_a.list_tools()).tools} == {"agent_heartbeat", "fleet_status"}
    async with a.mcp() as on_a:
        await call(on_a, "profile_retire", profile="narrow@2.0.0")
    async with b.mcp() as on_b:
        assert (await call_error(on_b, "agent_spawn", profile="narrow@2.0.0")).code == "conflict"
        await call(on_b, "profile_register", definition=NARROW | {"version": "2.1.0"})
        await call(on_b, "profile_rollout_set", name="worker", versions={"1.0.0": 100})
    async with a.mcp() as on_a:
        assert (await call(on_a, "agent_spawn", profile="narrow"))["agent"]["profile"] == "narrow@2.1.0"
        listed = await call(on_a, "profile_list", name="worker")
        assert listed["rollouts"][0]["versions"] == {"1.0.0": 100}
