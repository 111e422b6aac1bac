"""Versioned workflow templates through the MCP client: immutable versions, semver ranges, and the
shipped templates running end to end with real agents."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import call, call_error
from tests.workflows.test_workflow_steps import spawn_worker, step, work_one

pytestmark = pytest.mark.anyio


def release(label: str) -> dict[str, Any]:
    return {"name": "release", "steps": [{"id": "build", "task": {"type": "build", "payload": {"label": label}}}]}


async def test_a_range_runs_the_newest_matching_version_and_versions_are_immutable(connect) -> None:
    async with connect() as admin:
        await spawn_worker(admin)
        for version in ("1.0.0", "1.4.2", "2.0.0"):
            saved = await call(admin, "workflow_template_save", definition=release(version), version=version)
            assert saved["ref"] == f"release@{version}" and saved["created"] is True
        again = await call(admin, "workflow_template_save", definition=release("1.4.2"), version="1.4.2")
        assert again["created"] is False  # the same definition again changes nothing
        changed = await call_error(admin, "workflow_template_save", definition=release("other"), version="1.4.2")
        assert changed.code == "conflict" and "immutable" in changed.text

        expectations = {"release@^1": "1.4.2", "release@~1.0": "1.0.0", "release": "2.0.0", "release@1.0.0": "1.0.0"}
        for ref, version in expectations.items():
            run = await call(admin, "workflow_run", template=ref)
            assert run["template"] == f"release@{version}", ref
        missing = await call_error(admin, "workflow_run", template="release@^3")
    assert missing.code == "not_found" and "1.0.0, 1.4.2, 2.0.0" in missing.text


async def test_only_staff_publish_templates(connect) -> None:
    async with connect() as admin:
        token = await spawn_worker(admin)
    async with connect(token) as agent:
        refused = await call_error(agent, "workflow_template_save", definition=release("x"), version="9.0.0")
    assert refused.code == "permission_denied"


async def test_the_shipped_research_review_report_template_runs_as_a_pipeline(connect) -> None:
    async with connect() as admin:
        research = (await call(admin, "agent_spawn", profile="researcher"))["token"]
        review = (await call(admin, "agent_spawn", profile="reviewer"))["token"]
        run = await call(admin, "workflow_run", template="research-review-report@^1", inputs={"topic": "retries"})
        assert run["template"] == "research-review-report@1.0.0"
        async with connect(research) as researcher, connect(review) as reviewer:
            found = await work_one(researcher, {"notes": ["jitter"]})
            assert found["payload"] == {"topic": "retries"}
            reviewed = await work_one(reviewer, {"ok": True})
            assert reviewed["payload"]["findings"] == {"notes": ["jitter"]}
            report = await work_one(researcher, "# Retries")
        assert report["payload"] == {
            "topic": "retries",
            "audience": "engineers",
            "findings": {"notes": ["jitter"]},
            "review": {"ok": True},
        }
        done = await call(admin, "workflow_get", run_id=run["id"])
    assert done["status"] == "completed" and step(done, "report")["result"] == "# Retries"


async def test_the_shipped_compare_providers_template_fans_out_and_joins(connect) -> None:
    async with connect() as admin:
        general = (await call(admin, "agent_spawn", profile="worker"))["token"]
        review = (await call(admin, "agent_spawn", profile="reviewer"))["token"]
        run = await call(
            admin, "workflow_run", template="compare-providers@^1", inputs={"prompt": "2+2?", "providers": ["a", "b"]}
        )
        async with connect(general) as worker, connect(review) as reviewer:
            asked = [await work_one(worker, "4 from " + p) for p in ("first", "second")]
            compare = await work_one(reviewer, "same")
        assert sorted(t["payload"]["provider"] for t in asked) == ["a", "b"]
        assert compare["payload"]["providers"] == ["a", "b"] and len(compare["payload"]["answers"]) == 2
        assert (await call(admin, "workflow_get", run_id=run["id"]))["status"] == "completed"


async def test_the_shipped_validate_claim_template_takes_a_majority_of_three_agents(connect) -> None:
    async with connect() as admin:
        judges = [(await call(admin, "agent_spawn", profile="reviewer"))["token"] for _ in range(3)]
        writer = (await call(admin, "agent_spawn", profile="researcher"))["token"]
        run = await call(admin, "workflow_run", template="validate-claim@^1", inputs={"claim": "the sky is green"})
        for token, verdict in zip(judges, ["false", "true", "false"], strict=True):  # the third decides
            async with connect(token) as judge:
                await work_one(judge, {"verdict": verdict})
        async with connect(writer) as agent:
            report = await work_one(agent, "reported")
        done = await call(admin, "workflow_get", run_id=run["id"])
    assert report["payload"]["verdict"] == "false" and report["payload"]["disagreement"] is True
    assert report["payload"]["votes"] == [{"value": "false", "count": 2}, {"value": "true", "count": 1}]
    assert done["status"] == "completed"
