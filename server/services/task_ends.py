"""Who must act, inside the same transaction, when a task reaches a final status: a workflow run
advancing its next steps. The task services call `ended`; they need not know who listens."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Row

Listener = Callable[[Connection, Row[Any]], None]


class TaskEnds:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def ended(self, conn: Connection, task: Row[Any]) -> None:
        """`task` is the row as updated to completed, failed, dead or cancelled."""
        if task.workflow_run_id is None:
            return  # most tasks belong to no workflow: nothing to tell
        for listener in self._listeners:
            listener(conn, task)
