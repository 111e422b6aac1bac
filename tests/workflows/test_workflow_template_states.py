"""Workflow templates deprecate and retire like profile versions, and workflow_template_list and
workflow_template_get show them."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from server.store.tables import audit_log, workflow_templates
from tests.helpers import call, call_error
from tests.workflows.test_workflow_steps import spawn_worker
from tests.workflows.test_workflow_templates import release

pytestmark = pytest.mark.anyio


async def test_deprecated_versions_run_only_when_named_or_nothing_active_fits(connect, services) -> None:
    async with connect() as admin:
        await spawn_worker(admin)
        for version in ("1.0.0", "1.1.0"):
            await call(admin, "workflow_template_save", definition=release(version), version=version)
        deprecated = await call(admin, "workflow_template_deprecate", template="release@1.1.0", reason="flaky")
        assert deprecated["state"] == "deprecated"
        assert (await call(admin, "workflow_run", template="release"))["template"] == "release@1.0.0"
        assert (await call(admin, "workflow_run", template="release@^1"))["template"] == "release@1.0.0"
        assert (await call(admin, "workflow_run", template="release@1.1.0"))["template"] == "release@1.1.0"
        await call(admin, "workflow_template_retire", template="release@1.0.0")
        assert (await call(admin, "workflow_run", template="release"))["template"] == "release@1.1.0"
        retired = await call_error(admin, "workflow_run", template="release@1.0.0")
        assert retired.code == "conflict" and "retired" in retired.text
        await call(admin, "workflow_template_retire", template="release@1.1.0")
        assert (await call_error(admin, "workflow_run", template="release")).code == "conflict"
        back = await call_error(admin, "workflow_template_deprecate", template="release@1.1.0")
        assert back.code == "conflict"
        assert (await call_error(admin, "workflow_template_retire", template="release")).code == "invalid_input"
        assert (await call_error(admin, "workflow_template_retire", template="release@7.0.0")).code == "not_found"
        listed = await call(admin, "workflow_template_list", name="release")
        shown = await call(admin, "workflow_template_get", template="release@^1")
    assert [(t["ref"], t["state"]) for t in listed["templates"]] == [
        ("release@1.1.0", "retired"),
        ("release@1.0.0", "retired"),
    ]
    assert listed["templates"][0]["definition"] is None
    assert shown["ref"] == "release@1.1.0" and shown["definition"]["steps"][0]["id"] == "build"
    with services.db.engine.connect() as conn:
        actions = list(
            conn.execute(
                select(audit_log.c.action).where(audit_log.c.subject == "release@1.1.0").order_by(audit_log.c.seq)
            ).scalars()
        )
        states = dict(conn.execute(select(workflow_templates.c.version, workflow_templates.c.state)).all())
    assert actions == ["workflow.template_save", "workflow.template_deprecate", "workflow.template_retire"]
    assert states["1.0.0"] == "retired"


async def test_agents_list_templates_but_only_staff_change_their_state(connect) -> None:
    async with connect() as admin:
        token = await spawn_worker(admin)
        viewer = (await call(admin, "token_create", name="eyes", role="viewer"))["token"]
    async with connect(token) as agent:
        names = {t["name"] for t in (await call(agent, "workflow_template_list"))["templates"]}
        assert "research-review-report" in names
        refused = await call_error(agent, "workflow_template_retire", template="research-review-report@1.0.0")
        assert refused.code == "permission_denied"
    async with connect(viewer) as as_viewer:
        refused = await call_error(as_viewer, "workflow_template_deprecate", template="research-review-report@1.0.0")
        assert refused.code == "permission_denied"
        assert "workflow_template_retire" not in {t.name for t in (await as_viewer.list_tools()).tools}
    async with connect() as admin:
        listed = await call(admin, "workflow_template_list", state="active")
    assert all(t["state"] == "active" for t in listed["templates"])
