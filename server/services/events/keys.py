"""What an event wakes: the keys waiters watch. Tasks, workflow runs and inboxes (A2A streams,
waiting callers, inbox long-polls) and lock requests waiting in a queue."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

LOCK_WAKERS = frozenset({"lock.granted", "lock.timed_out", "lock.cancelled"})
# PostgreSQL refuses a NOTIFY payload over 8000 bytes; past this, the payload asks for a log read.
MAX_ANNOUNCEMENT = 7000


def task_keys(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The tasks, workflow runs and inboxes these events moved."""
    keys = []
    for row in rows:
        kind = row["type"]
        data = row.get("data") or {}
        if kind.startswith(("task.", "workflow.")):
            keys.append(row["subject"])
            if isinstance(run := data.get("workflow_run_id"), str):
                keys.append(run)  # a step's task moved: its run's view changed too
        elif kind.startswith("approval.") and isinstance(task := data.get("task_id"), str):
            keys.append(task)
        elif kind == "message.sent":
            keys.extend(f"inbox:{recipient}" for recipient in data.get("recipients") or ())
    return keys


def lock_keys(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    return [row["subject"] for row in rows if row["type"] in LOCK_WAKERS]


def announcement(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The events channel's NOTIFY payload: the keys to wake, so another replica wakes its waiters at
    once, without reading the log (whose PostgreSQL horizon can lag behind a commit); or, when they
    do not fit, a request to read the log."""
    body = {"t": sorted(set(task_keys(rows))), "l": lock_keys(rows)}
    if len(json.dumps(body, separators=(",", ":"))) > MAX_ANNOUNCEMENT:
        return {"more": 1}
    return body
