"""Which fields of a child profile widen its parent's: each permission, compared as patterns."""

from __future__ import annotations

from typing import Any

import pytest

from server.domain.delegation import widened_fields
from server.domain.profile import Profile


def profile(**fields: Any) -> Profile:
    return Profile.model_validate({"name": "p", "version": "1.0.0", "description": "test", **fields})


PARENT = profile(
    permissions={
        "tools": ["task_*", "agent_spawn"],
        "task_types": ["review.*"],
        "capabilities": ["code", "test*"],
        "lock_resources": ["repo:/src/**"],
    },
    spawn=["reviewer@^1", "default"],
    approvals={"task_types": ["deploy"]},
)


@pytest.mark.parametrize(
    ("child", "widened"),
    [
        ({**PARENT.model_dump(exclude_none=True)}, []),
        (
            {"permissions": {**PARENT.permissions.model_dump(), "tools": ["task_*", "lock_acquire"]}},
            ["permissions.tools"],
        ),
        ({"permissions": {**PARENT.permissions.model_dump(), "task_types": ["*"]}}, ["permissions.task_types"]),
        ({"permissions": {**PARENT.permissions.model_dump(), "task_types": ["review.code"]}}, []),
        ({"permissions": {**PARENT.permissions.model_dump(), "capabilities": None}}, ["permissions.capabilities"]),
        (
            {"permissions": {**PARENT.permissions.model_dump(), "lock_resources": ["repo:/**"]}},
            ["permissions.lock_resources"],
        ),
        ({"permissions": {**PARENT.permissions.model_dump(), "lock_resources": ["repo:/src/app/**"]}}, []),
        ({"permissions": {**PARENT.permissions.model_dump(), "execute": True}}, ["permissions.execute"]),
        ({"spawn": ["shell-worker"]}, ["spawn"]),
        ({"spawn": ["default@1.0.0", "reviewer@^1"]}, []),
        ({"approvals": {"task_types": []}}, ["approvals.task_types"]),
    ],
    ids=[
        "same",
        "more-tools",
        "any-task-type",
        "narrower-type",
        "unset-capabilities",
        "wider-locks",
        "narrower-locks",
        "execute",
        "spawn-unnamed",
        "spawn-covered",
        "skips-approval",
    ],
)
def test_a_child_is_refused_exactly_the_fields_it_widens(child: dict[str, Any], widened: list[str]) -> None:
    base = PARENT.model_dump(exclude_none=True)
    merged = {**base, **child, "permissions": {**base["permissions"], **child.get("permissions", {})}}
    merged["permissions"] = {k: v for k, v in merged["permissions"].items() if v is not None}
    fields = widened_fields(
        PARENT, profile(**{k: v for k, v in merged.items() if k not in ("name", "version", "description")})
    )
    assert fields == widened
