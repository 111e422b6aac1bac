"""Workflow rows to views, for the workflow service."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from server.clock import MICROS, to_iso
from server.domain.views import CriticalPath, WorkflowStepView, WorkflowSummary, WorkflowView
from server.domain.workflow_definition import StepSpec

MAX_LISTED_TASKS = 50


def _seconds(start: int | None, end: int | None, now: int) -> float | None:
    if start is None:
        return None
    return round(((end or now) - start) / MICROS, 3)


def step_kind(spec: StepSpec) -> str:
    if spec.for_each is not None:
        return "for_each"
    return "consensus" if spec.consensus is not None else "task"


def step_view(
    spec: StepSpec, row: Row[Any], counts: dict[str, int], task_ids: list[str] | None, now: int
) -> WorkflowStepView:
    return WorkflowStepView(
        id=spec.id,
        kind=step_kind(spec),
        status=row.status,
        depends_on=list(spec.depends_on),
        tasks=counts,
        task_ids=task_ids,
        started_at=to_iso(row.started_at),
        finished_at=to_iso(row.finished_at),
        duration_s=_seconds(row.started_at, row.finished_at, now),
        result=row.result,
        error=row.error,
    )


def run_view(run: Row[Any], steps: list[WorkflowStepView], path: CriticalPath, now: int) -> WorkflowView:
    return WorkflowView(
        id=run.id,
        name=run.name,
        template=run.template,
        status=run.status,
        on_failure=run.on_failure,
        inputs=run.inputs,
        submitted_by=run.submitted_by,
        created_at=to_iso(run.created_at),
        finished_at=to_iso(run.finished_at),
        duration_s=_seconds(run.created_at, run.finished_at, now),
        error=run.error,
        steps=steps,
        critical_path=path,
    )


def run_summary(run: Row[Any], steps: dict[str, int]) -> WorkflowSummary:
    return WorkflowSummary(
        id=run.id,
        name=run.name,
        template=run.template,
        status=run.status,
        submitted_by=run.submitted_by,
        created_at=to_iso(run.created_at),
        finished_at=to_iso(run.finished_at),
        steps=steps,
    )
