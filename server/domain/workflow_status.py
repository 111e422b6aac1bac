"""Lifecycle of workflow runs and their steps."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"  # every step completed or was skipped
    FAILED = "failed"  # a step failed (at once under fail_fast; at the end under continue)
    CANCELLED = "cancelled"  # workflow_cancel


class StepStatus(StrEnum):
    PENDING = "pending"  # waiting for its dependencies
    RUNNING = "running"  # its tasks are queued or running
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"  # its `when` was false, or what it depends on cannot feed it
    CANCELLED = "cancelled"  # the run ended first


FINAL_STEP = frozenset(
    {StepStatus.COMPLETED.value, StepStatus.FAILED.value, StepStatus.SKIPPED.value, StepStatus.CANCELLED.value}
)
