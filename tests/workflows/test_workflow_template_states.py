"""Workflow templates deprecate and retire like profile versions; each template view carries its
state."""

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
        again = await call(admin, "workflow_template_retire", template="release@1.1.0")  # no change, no error
        saved = await call(admin, "workflow_template_save", definition=release("1.1.0"), version="1.1.0")
    assert again["state"] == "retired" and saved["created"] is False and saved["state"] == "retired"
    with services.db.engine.connect() as conn:
        actions = list(
            conn.execute(
                select(audit_log.c.action).where(audit_log.c.subject == "release@1.1.0").order_by(audit_log.c.at)
            ).scalars()
        )
        states = dict(
            conn.execute(
                select(workflow_templates.c.version, workflow_templates.c.state).where(
                    workflow_templates.c.name == "release"
                )
            ).all()
        )
    assert actions == ["workflow.template_save", "workflow.template_deprecate", "workflow.template_retire"]
    assert states == {"1.0.0": "retired", "1.1.0": "retired"}


async def test_only_staff_change_a_template_state(connect, services) -> None:
    async with connect() as admin:
        token = await spawn_worker(admin)
        viewer = (await call(admin, "token_create", name="eyes", role="viewer"))["token"]
    async with connect(token) as agent:
        refused = await call_error(agent, "workflow_template_retire", template="research-review-report@1.0.0")
        assert refused.code == "permission_denied"
    async with connect(viewer) as as_viewer:
        refused = await call_error(as_viewer, "workflow_template_deprecate", template="research-review-report@1.0.0")
        assert refused.code == "permission_denied"
        assert "workflow_template_retire" not in {t.name for t in (await as_viewer.list_tools()).tools}
    with services.db.engine.connect() as conn:
        assert set(conn.execute(select(workflow_templates.c.state)).scalars()) == {"active"}
