"""Feedback on finished work: good/bad or a score 1-5 with an optional note and tags, one per
principal per task (the table's primary key), changeable, audited. Given by the task's submitter,
an operator, or an agent that may read the task and did not run it (a reviewer)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Row, select, update

from server.clock import Clock, to_iso
from server.domain.principal import Principal
from server.domain.statuses import TaskStatus
from server.domain.views import FeedbackView
from server.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from server.services import audit
from server.store.database import Database
from server.store.tables import task_attempts, task_feedback, tasks

FINISHED = frozenset({TaskStatus.COMPLETED.value, TaskStatus.FAILED.value, TaskStatus.DEAD.value})
TAG = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,63}$")
MAX_TAGS = 16
MAX_NOTE = 2000


def parse_rating(rating: str | int) -> tuple[bool | None, int | None]:
    """(good, score): exactly one is set."""
    if isinstance(rating, bool):
        raise InvalidInput("rating: good, bad, or a whole score 1-5")
    if isinstance(rating, int):
        if not 1 <= rating <= 5:
            raise InvalidInput(f"rating: a score is 1-5, not {rating}")
        return None, rating
    if rating in ("good", "bad"):
        return rating == "good", None
    if rating in ("1", "2", "3", "4", "5"):
        return None, int(rating)
    raise InvalidInput(f"rating: good, bad, or a whole score 1-5; not {rating!r}")


def feedback_view(row: Row[Any]) -> FeedbackView:
    return FeedbackView(
        task_id=row.task_id,
        principal=row.principal,
        role=row.role,
        rating=row.score if row.score is not None else ("good" if row.good else "bad"),
        note=row.note,
        tags=list(row.tags),
        created_at=to_iso(row.created_at) or "",
        updated_at=to_iso(row.updated_at) or "",
    )


def feedback_of(conn: Connection, task_id: str) -> list[FeedbackView]:
    rows = conn.execute(
        select(task_feedback)
        .where(task_feedback.c.task_id == task_id)
        .order_by(task_feedback.c.created_at, task_feedback.c.principal)
    )
    return [feedback_view(row) for row in rows]


class FeedbackService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def give(
        self,
        principal: Principal,
        task_id: str,
        rating: str | int,
        note: str | None = None,
        tags: Sequence[str] = (),
    ) -> FeedbackView:
        good, score = parse_rating(rating)
        if note is not None and len(note) > MAX_NOTE:
            raise InvalidInput(f"note: at most {MAX_NOTE} characters")
        wanted = sorted(set(tags))
        if len(wanted) > MAX_TAGS or any(not TAG.match(t) for t in wanted):
            raise InvalidInput(
                f"tags: up to {MAX_TAGS} of lowercase letters, digits and _.:- (64 characters each); got {list(tags)}"
            )
        return await self._db.write(self._give_tx, principal, task_id, good, score, note, wanted)

    def _give_tx(
        self,
        conn: Connection,
        principal: Principal,
        task_id: str,
        good: bool | None,
        score: int | None,
        note: str | None,
        tags: list[str],
    ) -> FeedbackView:
        task = conn.execute(
            select(tasks.c.status, tasks.c.submitted_by, tasks.c.agent_id, tasks.c.pinned_agent_id).where(
                tasks.c.id == task_id
            )
        ).first()
        if task is None:
            raise NotFound(f"no task {task_id}")
        check_may_rate(principal, task_id, task)
        if (
            principal.agent_id is not None
            and conn.execute(
                select(task_attempts.c.number).where(
                    task_attempts.c.task_id == task_id, task_attempts.c.agent_id == principal.agent_id
                )
            ).first()
        ):
            raise PermissionDenied(f"you ran an attempt of task {task_id}; an agent does not rate its own work")
        if task.status not in FINISHED:
            raise Conflict(f"task {task_id} is {task.status}; feedback is for finished work (completed, failed, dead)")
        now = self._clock.now_us()
        key = (task_feedback.c.task_id == task_id, task_feedback.c.principal == principal.id)
        before = conn.execute(select(task_feedback).where(*key)).first()
        values = {"good": good, "score": score, "note": note, "tags": tags, "updated_at": now}
        if before is None:
            conn.execute(
                task_feedback.insert().values(
                    task_id=task_id, principal=principal.id, role=principal.role.value, created_at=now, **values
                )
            )
        else:
            conn.execute(update(task_feedback).where(*key).values(**values))
        row = conn.execute(select(task_feedback).where(*key)).one()
        view = feedback_view(row)
        audit.record(
            conn,
            now,
            principal,
            "task.feedback",
            task_id,
            {"rating": view.rating, "tags": tags, "changed": before is not None},
            before=before,
            after=row,
        )
        return view


def check_may_rate(principal: Principal, task_id: str, task: Row[Any]) -> None:
    if principal.can_operate or principal.id == task.submitted_by:
        return
    if principal.agent_id is None:
        raise PermissionDenied(f"feedback on {task_id} is for its submitter, an operator, or a reviewing agent")
    if principal.id in (task.agent_id, task.pinned_agent_id):
        raise PermissionDenied(f"you ran task {task_id}; an agent does not rate its own work")
    raise PermissionDenied(f"task {task_id} is not yours: you did not submit it, so you cannot read or rate it")
