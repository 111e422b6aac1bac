"""Agent tools through the in-process MCP client."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from server.services.auth import hash_token
from server.store.tables import agents
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio


async def test_spawn_returns_token_once_and_stores_only_its_hash(connect, services):
    async with connect() as admin:
        spawned = await call(admin, "agent_spawn", profile="developer", name="dev-1", labels={"team": "core"})
        agent = spawned["agent"]
        assert agent["profile"] == "developer@1.0.0"
        assert agent["status"] == "starting"
        assert {"code", "test", "git"} <= set(agent["capabilities"])
        assert agent["labels"] == {"team": "core"}
        token = spawned["token"]
        shown = await call(admin, "agent_get", agent_id=agent["id"])
        assert "token" not in shown

    with services.db.engine.connect() as conn:
        stored = conn.execute(select(agents.c.token_hash).where(agents.c.id == agent["id"])).scalar_one()
    assert stored == hash_token(token) and token not in stored


async def test_heartbeat_with_agent_token_activates_that_agent(connect):
    async with connect() as admin:
        spawned = await call(admin, "agent_spawn", profile="default")
    async with connect(spawned["token"]) as agent:
        beat = await call(agent, "agent_heartbeat")
    assert beat["id"] == spawned["agent"]["id"]
    assert beat["status"] == "active" and beat["last_heartbeat_at"] is not None
    async with connect() as admin:
        failure = await call_error(admin, "agent_heartbeat")
    assert failure.code == "permission_denied" and "agent_heartbeat is for agent" in failure.text


async def test_agent_spawned_by_an_agent_is_its_child_and_get_lists_children(connect):
    async with connect() as admin:
        parent = await call(admin, "agent_spawn", profile="developer")
    async with connect(parent["token"]) as as_parent:
        child = await call(as_parent, "agent_spawn", profile="reviewer")
        assert child["agent"]["parent_id"] == parent["agent"]["id"]
        assert child["agent"]["depth"] == 1
        shown = await call(as_parent, "agent_get", agent_id=parent["agent"]["id"])
    assert shown["children"] == [child["agent"]["id"]]


async def test_parent_id_makes_a_child_and_profile_limits_are_enforced(connect):
    async with connect() as admin:
        reviewer = await call(admin, "agent_spawn", profile="reviewer")  # max_children: 0
        refused = await call_error(admin, "agent_spawn", profile="reviewer", parent_id=reviewer["agent"]["id"])
        assert refused.code == "conflict" and "allows 0" in refused.text
        listed = await call(admin, "agent_list")
    assert len(listed["agents"]) == 1


async def test_terminate_cascades_revokes_tokens_and_frees_nothing_else(connect):
    async with connect() as admin:
        root = await call(admin, "agent_spawn", profile="developer")
        bystander = await call(admin, "agent_spawn", profile="default")
    async with connect(root["token"]) as as_root:
        child = await call(as_root, "agent_spawn", profile="developer")
    async with connect(child["token"]) as as_child:
        grandchild = await call(as_child, "agent_spawn", profile="reviewer")

    async with connect() as admin:
        refused = await call_error(admin, "agent_terminate", agent_id=root["agent"]["id"], cascade=False)
        assert refused.code == "conflict"
        ended = await call(admin, "agent_terminate", agent_id=root["agent"]["id"])
        assert ended["terminated"] == [root["agent"]["id"], child["agent"]["id"], grandchild["agent"]["id"]]
        for agent_id in ended["terminated"]:
            assert (await call(admin, "agent_get", agent_id=agent_id))["status"] == "terminated"
        assert (await call(admin, "agent_get", agent_id=bystander["agent"]["id"]))["status"] == "starting"
        again = await call_error(admin, "agent_terminate", agent_id=root["agent"]["id"])
        assert again.code == "conflict"

    async with connect(grandchild["token"]) as revoked:
        failure = await call_error(revoked, "agent_heartbeat")
    assert failure.code == "permission_denied"


async def test_an_agent_sees_only_itself_and_its_descendants(connect):
    async with connect() as admin:
        first = await call(admin, "agent_spawn", profile="developer")
        second = await call(admin, "agent_spawn", profile="developer")
    async with connect(first["token"]) as as_first:
        child = await call(as_first, "agent_spawn", profile="default")
        listed = {a["id"] for a in (await call(as_first, "agent_list"))["agents"]}
        assert listed == {first["agent"]["id"], child["agent"]["id"]}
        hidden = await call_error(as_first, "agent_get", agent_id=second["agent"]["id"])
        assert hidden.code == "permission_denied"
        forbidden = await call_error(as_first, "agent_terminate", agent_id=second["agent"]["id"])
        assert forbidden.code == "permission_denied"
        foreign_parent = await call_error(as_first, "agent_spawn", profile="default", parent_id=second["agent"]["id"])
        assert foreign_parent.code == "permission_denied"


async def test_agent_list_filters(connect):
    async with connect() as admin:
        dev = await call(admin, "agent_spawn", profile="developer")
        await call(admin, "agent_spawn", profile="researcher")
        by_profile = await call(admin, "agent_list", profile="developer")
        assert [a["id"] for a in by_profile["agents"]] == [dev["agent"]["id"]]
        by_status = await call(admin, "agent_list", status="terminated")
        assert by_status["agents"] == []
        limited = await call(admin, "agent_list", limit=1)
        assert len(limited["agents"]) == 1


async def test_the_fleet_size_limit_refuses_a_spawn_and_creates_nothing(settings, tmp_path):
    from dataclasses import replace

    from server.services.container import build_services
    from tests.conftest import ADMIN_TOKEN, connector

    services = build_services(replace(settings, max_agents=2), ADMIN_TOKEN)
    try:
        async with connector(services)() as admin:
            first = await call(admin, "agent_spawn", profile="default")
            parent = await call(admin, "agent_spawn", profile="developer")
            refused = await call_error(admin, "agent_spawn", profile="default")
            assert refused.code == "conflict" and "already has 2 live agents" in refused.text
            assert "AGENTFLEET_MAX_AGENTS" in refused.text
            # A child counts too, whoever spawns it.
            async with connector(services)(parent["token"]) as as_parent:
                assert (await call_error(as_parent, "agent_spawn", profile="reviewer")).code == "conflict"
            assert len((await call(admin, "agent_list"))["agents"]) == 2
            await call(admin, "agent_terminate", agent_id=first["agent"]["id"])
            assert (await call(admin, "agent_spawn", profile="default"))["agent"]["status"] == "starting"
    finally:
        services.close()


async def test_only_people_may_point_an_agent_at_an_a2a_url(connect):
    async with connect() as admin:
        agent = await call(admin, "agent_spawn", profile="developer")
    async with connect(agent["token"]) as as_agent:
        refused = await call_error(as_agent, "agent_spawn", profile="reviewer", a2a_url="http://10.0.0.1:9/")
    assert refused.code == "permission_denied" and "a2a_url" in refused.text
    async with connect() as admin:
        wrong = await call_error(admin, "agent_spawn", profile="reviewer", a2a_url="http://peer.example/")
        assert wrong.code == "invalid_input" and "runtime external" in wrong.text
        assert len((await call(admin, "agent_list"))["agents"]) == 1


async def test_a_process_agent_spawned_where_no_supervisor_runs_waits_unassigned_without_a_token(connect):
    async with connect() as admin:
        spawned = await call(admin, "agent_spawn", profile="sleeper")
        process = spawned["agent"]["process"]
        assert spawned["token"] is None and spawned["agent"]["runtime"] == "process"
        assert process["replica_id"] is None and process["pid"] is None and process["next_start_at"]
        # Terminating it needs no process to stop.
        ended = await call(admin, "agent_terminate", agent_id=spawned["agent"]["id"])
        assert ended == {"terminated": [spawned["agent"]["id"]], "stopping": []}


async def test_concurrent_spawns_on_two_service_instances_never_pass_the_fleet_size(settings):
    """Two instances on one store stand for two replicas: 24 spawns race for 5 places."""
    from dataclasses import replace

    import anyio

    from server.services.container import build_services
    from tests.conftest import ADMIN_TOKEN, connector

    replicas = [build_services(replace(settings, max_agents=5), ADMIN_TOKEN) for _ in range(2)]
    outcomes: list[str] = []
    try:

        async def spawn(admin) -> None:
            result = await admin.call_tool("agent_spawn", {"profile": "default"})
            outcomes.append(result.content[0].text.split(":", 1)[0] if result.is_error else "spawned")

        async with (
            connector(replicas[0])() as first,
            connector(replicas[1])() as second,
            anyio.create_task_group() as group,
        ):
            for n in range(24):
                group.start_soon(spawn, (first, second)[n % 2])
        async with connector(replicas[0])() as admin:
            live = (await call(admin, "agent_list", limit=100))["agents"]
    finally:
        for built in replicas:
            built.close()
    assert outcomes.count("spawned") == 5 and outcomes.count("conflict") == 19, outcomes
    assert len(live) == 5
