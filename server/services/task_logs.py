"""Task logs: lines the holder of a task's current attempt appends (task_log), kept with the task
and shown as a tail by task_get.

Bounds: a call appends 1 to MAX_LINES_PER_CALL lines of at most MAX_LINE_CHARS characters each;
an attempt keeps its newest MAX_LINES_PER_ATTEMPT lines (older ones are dropped as new ones come,
so a chatty command never fills the store and its last words are always there)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, text

from server.clock import Clock, to_iso
from server.domain.principal import Principal
from server.domain.storable import require_storable
from server.domain.views import TaskLogLine, TaskLogReceipt
from server.errors import InvalidInput
from server.services.task_rows import explain_not_held
from server.store.database import Database
from server.store.tables import TASK_LOG_LEVELS, task_logs

MAX_LINES_PER_CALL = 200
MAX_LINE_CHARS = 4000
MAX_TEXT_CHARS = MAX_LINES_PER_CALL * 200  # `text` is split into lines; this bounds it before splitting
MAX_LINES_PER_ATTEMPT = 1000
TAIL_LINES = 20

# The attempt the caller holds now, its line counter moved in the same statement: appends by one
# holder serialise on the attempt's row, and a lapsed or foreign lease matches nothing.
_COUNT_LINES = text(
    "UPDATE orch_task_attempts SET log_lines = log_lines + :n "
    "WHERE task_id = :task AND ended_at IS NULL AND number = ("
    "SELECT attempts FROM orch_tasks WHERE id = :task AND status = 'running' AND agent_id = :me "
    "AND lease_expires_at > :now) "
    "RETURNING number, log_lines"
)
_INSERT = task_logs.insert()
_TAIL = text(
    "SELECT attempt, seq, at, level, line FROM orch_task_logs WHERE task_id = :task "
    "ORDER BY attempt DESC, seq DESC LIMIT :n"
)


def as_lines(lines: Sequence[str] | None, text_block: str | None) -> list[str]:
    """Exactly one of `lines` and `text` (split at line breaks, a final one dropped)."""
    if (lines is None) == (text_block is None):
        raise InvalidInput("task_log takes lines (a list of strings) or text, exactly one of them")
    if text_block is not None:
        if len(text_block) > MAX_TEXT_CHARS:
            raise InvalidInput(f"text is {len(text_block)} characters; at most {MAX_TEXT_CHARS} per call")
        lines = text_block.splitlines()
    assert lines is not None
    return list(lines)


def check_lines(lines: Sequence[Any], level: str) -> None:
    if level not in TASK_LOG_LEVELS:
        raise InvalidInput(f"level must be one of {', '.join(TASK_LOG_LEVELS)}, got {level!r}")
    if not lines:
        raise InvalidInput("task_log needs at least one line")
    if len(lines) > MAX_LINES_PER_CALL:
        raise InvalidInput(f"{len(lines)} lines in one call; at most {MAX_LINES_PER_CALL}: send them in parts")
    for index, line in enumerate(lines):
        if not isinstance(line, str):
            raise InvalidInput(f"line {index} is {type(line).__name__}, not a string")
        if len(line) > MAX_LINE_CHARS:
            raise InvalidInput(f"line {index} is {len(line)} characters; at most {MAX_LINE_CHARS}: split it")
    require_storable({"lines": list(lines)}, "task_log")


class TaskLogService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def append(self, principal: Principal, task_id: str, lines: Sequence[str], level: str) -> TaskLogReceipt:
        if principal.agent_id is None:
            raise InvalidInput("task_log writes to the attempt you hold: call it with the agent's own token")
        check_lines(lines, level)
        return await self._db.write(self._append_tx, principal.agent_id, task_id, list(lines), level)

    def _append_tx(self, conn: Connection, agent_id: str, task_id: str, lines: list[str], level: str) -> TaskLogReceipt:
        now = self._clock.now_us()
        counted = conn.execute(_COUNT_LINES, {"n": len(lines), "task": task_id, "me": agent_id, "now": now}).first()
        if counted is None:
            explain_not_held(conn, task_id, agent_id, now)
        attempt, total = counted.number, counted.log_lines
        first = total - len(lines) + 1
        conn.execute(
            _INSERT,
            [
                {"task_id": task_id, "attempt": attempt, "seq": first + i, "at": now, "level": level, "line": line}
                for i, line in enumerate(lines)
            ],
        )
        if total > MAX_LINES_PER_ATTEMPT:
            conn.execute(
                delete(task_logs).where(
                    task_logs.c.task_id == task_id,
                    task_logs.c.attempt == attempt,
                    task_logs.c.seq <= total - MAX_LINES_PER_ATTEMPT,
                )
            )
        return TaskLogReceipt(
            task_id=task_id,
            attempt=attempt,
            appended=len(lines),
            total=total,
            kept=min(total, MAX_LINES_PER_ATTEMPT),
        )


def log_tail(conn: Connection, task_id: str, n: int = TAIL_LINES) -> list[TaskLogLine]:
    """The newest `n` lines of a task's log, oldest first."""
    rows = conn.execute(_TAIL, {"task": task_id, "n": n}).all()
    return [
        TaskLogLine(attempt=r.attempt, seq=r.seq, at=to_iso(r.at) or "", level=r.level, line=r.line)
        for r in reversed(rows)
    ]
