"""The shell-worker escalation tried by every principal that is not staff: an agent of each shipped
profile and a viewer. Each step is refused, and each refusal is audited."""

from __future__ import annotations

import pytest

from server.services.profiles import ProfileRegistry, shipped_profiles_dir
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio

SHIPPED = ProfileRegistry.load([shipped_profiles_dir()]).all()
AGENT_PROFILES = sorted(p.name for p in SHIPPED if p.runtime == "external")
RUNS_CODE = sorted(p.name for p in SHIPPED if p.runtime == "process")
ATTACK = {"command": "tr '\\0' '\\n' </proc/1/environ"}


def test_the_shipped_profiles_include_payload_runners_and_agents_to_attack_from():
    assert {"shell-worker", "claude-code"} <= {p.name for p in SHIPPED if p.executes_payload}
    assert {"default", "developer", "researcher", "reviewer"} <= set(AGENT_PROFILES)


@pytest.mark.parametrize("profile", AGENT_PROFILES)
async def test_no_shipped_agent_profile_reaches_code_the_server_runs(connect, profile):
    async with connect() as admin:
        agent = await call(admin, "agent_spawn", profile=profile)
    async with connect(agent["token"]) as attacker:
        for target in RUNS_CODE:
            refused = await call_error(attacker, "agent_spawn", profile=target)
            assert refused.code == "permission_denied", (profile, target, refused.text)
        for capability in ("shell", "claude"):
            refused = await call_error(attacker, "task_submit", type="x", capabilities=[capability], payload=ATTACK)
            assert refused.code == "permission_denied" and "permissions.execute" in refused.text
    async with connect() as admin:
        audited = await call(admin, "audit_query", action="request.refused", actor=agent["agent"]["id"])
    assert len(audited["entries"]) == len(RUNS_CODE) + 2


async def test_a_viewer_can_neither_spawn_nor_submit(connect):
    async with connect() as admin:
        viewer = await call(admin, "token_create", name="watcher", role="viewer")
    async with connect(viewer["token"]) as watcher:
        assert (await call_error(watcher, "agent_spawn", profile="shell-worker")).code == "permission_denied"
        refused = await call_error(watcher, "task_submit", type="x", capabilities=["shell"], payload=ATTACK)
        assert refused.code == "permission_denied"


async def test_an_operator_and_a_profile_granted_execute_may_submit_code(connect):
    async with connect() as admin:
        operator = await call(admin, "token_create", name="ops", role="operator")
        trusted = await call(admin, "agent_spawn", profile="executor")
    for token in (operator["token"], trusted["token"]):
        async with connect(token) as caller:
            task = await call(caller, "task_submit", type="x", capabilities=["shell"], payload={"command": "true"})
        assert task["status"] == "queued"
