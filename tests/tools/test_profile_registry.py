"""Profiles as versioned data: registered over MCP, validated as files are, deprecated, retired,
exported and rolled out; the rules an agent runs under never widen."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from server.domain.principal import ADMIN
from server.errors import InvalidInput
from server.services.container import build_services
from server.store.tables import agents, audit_log, profile_rollouts, profiles
from tests.conftest import ADMIN_TOKEN, TEST_PROFILES, connector
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio

WORKER_1_1 = {
    "name": "worker",
    "version": "1.1.0",
    "description": "A newer test worker.",
    "capabilities": ["general", "newer"],
    "max_concurrency": 8,
    "spawn": ["worker"],
}


def stored_rows(services) -> int:
    with services.db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(profiles)).scalar_one()


async def staff_token(admin, role: str = "operator", name: str = "ops") -> str:
    return (await call(admin, "token_create", name=name, role=role))["token"]


async def test_files_are_imported_as_active_rows_and_listed(connect):
    async with connect() as admin:
        listed = await call(admin, "profile_list")
        refs = {p["ref"]: p for p in listed["profiles"]}
        assert refs["worker@1.0.0"]["source"] == "file" and refs["worker@1.0.0"]["state"] == "active"
        assert refs["reviewer@1.0.0"]["runtime"] == "external"
        shown = await call(admin, "profile_get", profile="worker")
    assert shown["definition"]["spawn"] == ["worker", "sleeper"]
    assert shown["definition"]["name"] == "worker" and shown["created_by"] == "shipped"


async def test_register_then_spawn_by_range_and_by_name(connect, services):
    async with connect() as admin:
        registered = await call(admin, "profile_register", definition=WORKER_1_1, reason="try a newer worker")
        assert registered["created"] is True and registered["source"] == "registered"
        assert registered["ref"] == "worker@1.1.0" and registered["created_by"] == "admin"
        by_range = await call(admin, "agent_spawn", profile="worker@^1")
        by_name = await call(admin, "agent_spawn", profile="worker")
        pinned = await call(admin, "agent_spawn", profile="worker@1.0.0")
        tilde = await call(admin, "agent_spawn", profile="worker@~1.0")
        missing = await call_error(admin, "agent_spawn", profile="worker@^2")
    assert by_range["agent"]["profile"] == "worker@1.1.0"
    assert "newer" in by_range["agent"]["capabilities"]
    assert by_name["agent"]["profile"] == "worker@1.1.0"
    assert pinned["agent"]["profile"] == "worker@1.0.0" and tilde["agent"]["profile"] == "worker@1.0.0"
    assert missing.code == "invalid_input" and "1.0.0" in missing.text and "1.1.0" in missing.text
    with services.db.engine.connect() as conn:
        audited = conn.execute(
            select(audit_log.c.principal, audit_log.c.reason).where(
                audit_log.c.action == "profile.register", audit_log.c.subject == "worker@1.1.0"
            )
        ).one()
    assert tuple(audited) == ("admin", "try a newer worker")


async def test_yaml_text_registers_and_the_same_version_is_immutable(connect, services):
    text = yaml.safe_dump(WORKER_1_1)
    async with connect() as admin:
        first = await call(admin, "profile_register", definition=text)
        again = await call(admin, "profile_register", definition=dict(WORKER_1_1))
        before = stored_rows(services)
        changed = await call_error(admin, "profile_register", definition=WORKER_1_1 | {"max_concurrency": 9})
        shown = await call(admin, "profile_get", profile="worker@1.1.0")
    assert first["created"] is True and again["created"] is False
    assert changed.code == "conflict" and "immutable" in changed.text
    assert stored_rows(services) == before
    assert shown["definition"]["max_concurrency"] == 8


@pytest.mark.parametrize(
    ("definition", "says"),
    [
        (WORKER_1_1 | {"version": "1.1"}, "field 'version'"),
        (WORKER_1_1 | {"max_concurrency": 0}, "field 'max_concurrency'"),
        (WORKER_1_1 | {"permissions": {"tools": ["no_such_tool"]}}, "matches no tool"),
        (WORKER_1_1 | {"spawn": ["Worker!"]}, "field 'spawn.0'"),
        (WORKER_1_1 | {"surprise": 1}, "field 'surprise'"),
        ("name: [unclosed", "not valid YAML"),
        ("- a list", "expected a mapping"),
        (WORKER_1_1 | {"description": "nul \x00 byte"}, "NUL"),
    ],
)
async def test_an_invalid_definition_is_refused_naming_the_field_and_nothing_is_written(
    connect, services, definition, says
):
    before = stored_rows(services)
    async with connect() as admin:
        refused = await call_error(admin, "profile_register", definition=definition)
    assert refused.code == "invalid_input" and says in refused.text
    assert stored_rows(services) == before


async def test_only_staff_register_and_only_the_admin_registers_what_runs_code(connect, services):
    process = {
        "name": "runner",
        "version": "1.0.0",
        "description": "runs a command",
        "runtime": "process",
        "process": {"command": ["python", "-c", "print(1)"]},
    }
    secret_peer = {
        "name": "peer",
        "version": "1.0.0",
        "description": "sends a server secret",
        "runtime": "a2a",
        "a2a": {"url": "https://example.test", "token_env": "AGENTFLEET_ADMIN_TOKEN"},
    }
    async with connect() as admin:
        operator = await staff_token(admin)
        viewer = await staff_token(admin, "viewer", "eyes")
        agent = (await call(admin, "agent_spawn", profile="worker"))["token"]
    before = stored_rows(services)
    async with connect(operator) as as_operator:
        made = await call(as_operator, "profile_register", definition=WORKER_1_1)
        refused_process = await call_error(as_operator, "profile_register", definition=process)
        refused_peer = await call_error(as_operator, "profile_register", definition=secret_peer)
    assert made["created_by"] == "ops"
    assert refused_process.code == "permission_denied" and "only the admin" in refused_process.text
    assert refused_peer.code == "permission_denied" and "AGENTFLEET_ADMIN_TOKEN" in refused_peer.text
    async with connect(viewer) as as_viewer:
        names = {t.name for t in (await as_viewer.list_tools()).tools}
        assert {"profile_list", "profile_get"} <= names
        assert not names & {"profile_register", "profile_retire", "profile_rollout_set", "profile_export"}
        assert (await call_error(as_viewer, "profile_register", definition=WORKER_1_1)).code == "permission_denied"
    async with connect(agent) as as_agent:
        names = {t.name for t in (await as_agent.list_tools()).tools}
        assert not {n for n in names if n.startswith("profile_")}
        for tool, args in [
            ("profile_register", {"definition": WORKER_1_1 | {"version": "9.0.0"}}),
            ("profile_retire", {"profile": "worker@1.0.0"}),
            ("profile_rollout_set", {"name": "worker", "versions": {"1.0.0": 100}}),
            ("profile_list", {}),
        ]:
            assert (await call_error(as_agent, tool, **args)).code == "permission_denied"
    assert stored_rows(services) == before + 1
    async with connect() as admin:
        assert (await call(admin, "profile_register", definition=process))["runtime"] == "process"


async def test_a_registered_child_may_not_widen_its_registered_parent(connect):
    lead = {
        "name": "lead",
        "version": "1.0.0",
        "description": "may spawn helpers",
        "permissions": {"tools": ["agent_spawn", "agent_heartbeat", "task_*"]},
        "spawn": ["helper@^1"],
    }
    helper = {"name": "helper", "version": "1.0.0", "description": "calls anything"}
    narrow = helper | {"version": "1.1.0", "permissions": {"tools": ["agent_heartbeat", "task_*"]}}
    async with connect() as admin:
        await call(admin, "profile_register", definition=lead)
        await call(admin, "profile_register", definition=helper)
        parent = await call(admin, "agent_spawn", profile="lead")
    async with connect(parent["token"]) as as_lead:
        widened = await call_error(as_lead, "agent_spawn", profile="helper@1.0.0")
        assert widened.code == "permission_denied" and "widens permissions.tools" in widened.text
        outside = await call_error(as_lead, "agent_spawn", profile="worker")
        assert outside.code == "permission_denied" and "spawn list" in outside.text
    async with connect() as admin:
        await call(admin, "profile_register", definition=narrow)
    async with connect(parent["token"]) as as_lead:
        child = await call(as_lead, "agent_spawn", profile="helper")
    assert child["agent"]["profile"] == "helper@1.1.0"


async def test_a_running_agent_keeps_the_rules_of_its_pinned_version(connect):
    wider = {
        "name": "restricted",
        "version": "1.1.0",
        "description": "a wider restricted",
        "capabilities": ["general"],
    }
    async with connect() as admin:
        old = await call(admin, "agent_spawn", profile="restricted")
        await call(admin, "profile_register", definition=wider)
    async with connect(old["token"]) as as_old:
        refused = await call_error(as_old, "budget_status")
        names = {t.name for t in (await as_old.list_tools()).tools}
    assert refused.code == "permission_denied" and "restricted@1.0.0" in refused.text
    assert "budget_status" not in names


async def test_deprecate_then_retire(connect, services):
    async with connect() as admin:
        await call(admin, "profile_register", definition=WORKER_1_1)
        running = await call(admin, "agent_spawn", profile="worker@1.1.0")
        deprecated = await call(admin, "profile_deprecate", profile="worker@1.1.0", reason="regressions")
        assert deprecated["state"] == "deprecated"
        assert (await call(admin, "agent_spawn", profile="worker"))["agent"]["profile"] == "worker@1.0.0"
        assert (await call(admin, "agent_spawn", profile="worker@^1"))["agent"]["profile"] == "worker@1.0.0"
        exact = await call(admin, "agent_spawn", profile="worker@1.1.0")
        assert exact["agent"]["profile"] == "worker@1.1.0"
        retired = await call(admin, "profile_retire", profile="worker@1.1.0")
        assert retired["state"] == "retired"
        refused = await call_error(admin, "agent_spawn", profile="worker@1.1.0")
        assert refused.code == "conflict" and "retired" in refused.text
        only_retired = await call_error(admin, "agent_spawn", profile="worker@>1.0.0")
        assert only_retired.code == "conflict"
        back = await call_error(admin, "profile_deprecate", profile="worker@1.1.0")
        assert back.code == "conflict" and "never goes back" in back.text
        assert (await call(admin, "profile_retire", profile="worker@1.1.0"))["state"] == "retired"
        unknown = await call_error(admin, "profile_retire", profile="worker@7.0.0")
        assert unknown.code == "not_found"
        bad = await call_error(admin, "profile_retire", profile="worker")
        assert bad.code == "invalid_input"
        listed = await call(admin, "profile_list", name="worker", state="retired")
        assert [p["ref"] for p in listed["profiles"]] == ["worker@1.1.0"]
    async with connect(running["token"]) as as_running:  # running agents keep their pinned version
        assert (await call(as_running, "agent_heartbeat"))["profile"] == "worker@1.1.0"
    with services.db.engine.connect() as conn:
        actions = list(
            conn.execute(
                select(audit_log.c.action).where(audit_log.c.subject == "worker@1.1.0").order_by(audit_log.c.at)
            ).scalars()
        )
    assert actions == ["profile.register", "profile.deprecate", "profile.retire"]


async def test_a_viewer_sees_a_definition_without_its_env_values(connect):
    secret = {
        "name": "keyed",
        "version": "1.0.0",
        "description": "carries a key in env",
        "runtime": "process",
        "process": {"command": ["python", "-c", "pass"], "env": {"API_KEY": "sk-very-secret"}},
    }
    async with connect() as admin:
        await call(admin, "profile_register", definition=secret)
        viewer = (await call(admin, "token_create", name="eyes", role="viewer"))["token"]
        assert (await call(admin, "profile_get", profile="keyed"))["definition"]["process"]["env"] == {
            "API_KEY": "sk-very-secret"
        }
    async with connect(viewer) as as_viewer:
        shown = await call(as_viewer, "profile_get", profile="keyed")
        assert shown["definition"]["process"]["env"] == {"API_KEY": "***"}
        assert (await call_error(as_viewer, "profile_export", profile="keyed")).code == "permission_denied"


async def test_export_gives_yaml_a_new_version_can_start_from(connect):
    async with connect() as admin:
        exported = await call(admin, "profile_export", profile="worker@1.0.0")
        definition = yaml.safe_load(exported["yaml"])
        assert definition == exported["definition"] and definition["spawn"] == ["worker", "sleeper"]
        definition["version"] = "1.0.1"
        made = await call(admin, "profile_register", definition=yaml.safe_dump(definition))
    assert made["ref"] == "worker@1.0.1" and made["definition"]["max_concurrency"] == 64


async def test_a_file_that_changes_a_stored_version_stops_the_start(settings, services, tmp_path: Path):
    folder = tmp_path / "changed"
    folder.mkdir()
    for path in TEST_PROFILES.glob("*.yaml"):
        (folder / path.name).write_text(path.read_text())
    worker = yaml.safe_load((folder / "worker.yaml").read_text())
    (folder / "worker.yaml").write_text(yaml.safe_dump(worker | {"max_concurrency": 2}))
    with pytest.raises(InvalidInput, match=r"worker\.yaml: worker@1\.0\.0 is already in the store"):
        build_services(replace(settings, profiles_dir=folder), ADMIN_TOKEN)
    (folder / "worker.yaml").write_text(yaml.safe_dump(worker | {"version": "1.0.5", "max_concurrency": 2}))
    again = build_services(replace(settings, profiles_dir=folder), ADMIN_TOKEN)
    try:
        assert again.profiles.resolve("worker").version == "1.0.5"
        assert services.profiles.resolve("worker@1.0.0").max_concurrency == 64  # never overwritten
    finally:
        again.close()


async def test_rollout_weights_spawns_and_records_the_version_each_got(connect, services):
    async with connect() as admin:
        await call(admin, "profile_register", definition=WORKER_1_1)
        rollout = await call(admin, "profile_rollout_set", name="worker", versions={"1.1.0": 10, "1.0.0": 90})
        assert rollout["versions"] == {"1.1.0": 10, "1.0.0": 90} and rollout["previous"] is None
        services.profiles.rng.seed(24)
        picks = Counter(services.profiles.choose("worker")[0].version for _ in range(1000))
        assert 70 <= picks["1.1.0"] <= 130 and picks["1.1.0"] + picks["1.0.0"] == 1000  # 100 ± 3σ (σ ≈ 9.5)
        spawned = [await call(admin, "agent_spawn", profile="worker") for _ in range(30)]
        got = Counter(s["agent"]["profile"] for s in spawned)
        assert set(got) <= {"worker@1.0.0", "worker@1.1.0"} and sum(got.values()) == 30
        pinned = await call(admin, "agent_spawn", profile="worker@1.1.0")  # a version named skips the rollout
        assert pinned["agent"]["profile"] == "worker@1.1.0"
        in_rollout = await call_error(admin, "profile_retire", profile="worker@1.0.0")
        assert in_rollout.code == "conflict" and "rollout" in in_rollout.text
        promoted = await call(admin, "profile_rollout_set", name="worker", versions={"1.1.0": 100})
        assert promoted["previous"] == {"1.1.0": 10, "1.0.0": 90}
        assert {(await call(admin, "agent_spawn", profile="worker"))["agent"]["profile"] for _ in range(5)} == {
            "worker@1.1.0"
        }
        rolled_back = await call(admin, "profile_rollout_set", name="worker", rollback=True)
        assert rolled_back["versions"] == {"1.1.0": 10, "1.0.0": 90}
        listed = await call(admin, "profile_list", name="worker")
        assert listed["rollouts"][0]["versions"] == {"1.1.0": 10, "1.0.0": 90}
        cleared = await call(admin, "profile_rollout_set", name="worker", versions={})
        assert cleared["versions"] == {}
        assert (await call(admin, "agent_spawn", profile="worker"))["agent"]["profile"] == "worker@1.1.0"
    with services.db.engine.connect() as conn:
        recorded = conn.execute(
            select(agents.c.profile_version, func.count())
            .where(agents.c.profile == "worker")
            .group_by(agents.c.profile_version)
        ).all()
        details = [
            d["chosen_by"]
            for d in conn.execute(select(audit_log.c.detail).where(audit_log.c.action == "agent.spawn")).scalars()
        ]
    assert sum(n for _, n in recorded) == 37
    assert details.count("rollout") == 35 and details.count("exact") == 1 and details.count("newest") == 1


async def test_a_10_90_rollout_over_1000_real_spawns_lands_within_bounds(settings):
    built = build_services(replace(settings, max_agents=1100), ADMIN_TOKEN)
    try:
        async with connector(built)() as admin:
            await call(admin, "profile_register", definition=WORKER_1_1)
            await call(admin, "profile_rollout_set", name="worker", versions={"1.1.0": 10, "1.0.0": 90})
        built.profiles.rng.seed(1000)
        got = Counter()
        for _ in range(1000):
            spawned = await built.agents.spawn(ADMIN, "worker")
            got[spawned.agent.profile] += 1
        with built.db.engine.connect() as conn:
            stored = Counter(
                dict(
                    conn.execute(
                        select(agents.c.profile_version, func.count())
                        .where(agents.c.profile == "worker")
                        .group_by(agents.c.profile_version)
                    ).all()
                )
            )
    finally:
        built.close()
    assert 70 <= got["worker@1.1.0"] <= 130 and got["worker@1.0.0"] + got["worker@1.1.0"] == 1000  # 100 ± 3σ
    assert stored == Counter({"1.1.0": got["worker@1.1.0"], "1.0.0": got["worker@1.0.0"]})


@pytest.mark.parametrize(
    ("arguments", "code", "says"),
    [
        ({"versions": {"1.1.0": 10, "1.0.0": 80}}, "invalid_input", "sum to 90"),
        ({"versions": {"3.0.0": 100}}, "invalid_input", "no version 3.0.0"),
        ({"versions": {"1.0.0": 150, "1.1.0": -50}}, "invalid_input", "whole percents"),
        ({"versions": {"latest": 100}}, "invalid_input", "not name@version"),
        ({}, "invalid_input", "rollback=true"),
        ({"versions": {"1.0.0": 100}, "rollback": True}, "invalid_input", "rollback=true"),
        ({"rollback": True}, "conflict", "no earlier rollout"),
    ],
)
async def test_a_bad_rollout_is_refused_and_nothing_is_written(connect, services, arguments, code, says):
    async with connect() as admin:
        await call(admin, "profile_register", definition=WORKER_1_1)
        refused = await call_error(admin, "profile_rollout_set", name="worker", **arguments)
        unknown = await call_error(admin, "profile_rollout_set", name="nobody", versions={"1.0.0": 100})
    assert refused.code == code and says in refused.text
    assert unknown.code == "not_found"
    with services.db.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(profile_rollouts)).scalar_one() == 0
