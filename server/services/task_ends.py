"""Who must act, inside the same transaction, when a task reaches a final status: a workflow run
advancing its next steps. The task services call `ended`; they need not know who listens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Row

from server.services.events import log as events

Listener = Callable[[Connection, Row[Any]], None]


class TaskEnds:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def ended(self, conn: Connection, task: Row[Any]) -> None:
        """`task` is the row as updated to completed, failed, dead or cancelled."""
        data = {"type": task.type, "status": task.status, "attempts": task.attempts, "error": task.error}
        if task.workflow_run_id is not None:
            data.update(workflow_run_id=task.workflow_run_id, step=task.workflow_step)
        at = task.finished_at or task.updated_at
        actor = task.agent_id or task.submitted_by
        events.emit(
            conn, at, f"task.{task.status}", task.id, data, actor=actor, agent_id=task.agent_id, owner=task.submitted_by
        )
        if task.workflow_run_id is None:
            return  # most tasks belong to no workflow: nothing to tell
        for listener in self._listeners:
            listener(conn, task)
