"""What a trigger is: its kind's settings, the work it creates, and when a schedule is next due.

A trigger's action is a task spec or a workflow run whose payload / inputs may hold `{{ event.… }}`
(event and absence triggers: the event that fired it) and `{{ body.… }}` (webhooks: the posted JSON;
manual fires: the given input) placeholders, in the workflow template language. Everything else in
the action is fixed when the trigger is made, so it is validated then."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from server.clock import MICROS
from server.domain.task_spec import TaskSpec
from server.domain.workflow_template import Condition, references, render
from server.errors import InvalidInput

MAX_CATCH_UP = 1000
MISFIRE_GRACE_S = 30  # a due time later than this is missed, not merely late


class TriggerKind(StrEnum):
    SCHEDULE = "schedule"
    EVENT = "event"
    ABSENCE = "absence"
    WEBHOOK = "webhook"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleConfig(_Strict):
    cron: str | None = None
    timezone: str = "UTC"
    interval_s: int | None = Field(None, ge=1, le=366 * 86400)
    catch_up: Literal["skip", "one", "all"] = "one"
    catch_up_limit: int = Field(10, ge=1, le=MAX_CATCH_UP)
    overlap: Literal["skip", "queue"] = "skip"

    @model_validator(mode="after")
    def _one_rule(self) -> ScheduleConfig:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("give cron (with timezone) or interval_s, not both")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}; use an IANA name such as Europe/Berlin") from None
        if self.cron is not None and not croniter.is_valid(self.cron):
            raise ValueError(f"cron {self.cron!r} does not parse; write five fields, e.g. '0 */6 * * *'")
        return self

    def due_after(self, after_us: int, anchor_us: int) -> int:
        """The first due time strictly after `after_us` (µs). Interval schedules count from `anchor_us`."""
        if self.interval_s is not None:
            step = self.interval_s * MICROS
            if after_us < anchor_us:
                return anchor_us
            return anchor_us + ((after_us - anchor_us) // step + 1) * step
        assert self.cron is not None
        zone = ZoneInfo(self.timezone)
        start = datetime.fromtimestamp(after_us / MICROS, UTC).astimezone(zone)
        following: datetime = croniter(self.cron, start).get_next(datetime)
        return int(following.timestamp() * MICROS)

    def upcoming(self, after_us: int, anchor_us: int, count: int) -> list[int]:
        times = []
        for _ in range(count):
            after_us = self.due_after(after_us, anchor_us)
            times.append(after_us)
        return times


class EventConfig(_Strict):
    event_types: list[str] = Field(min_length=1, max_length=50)
    filter: str | None = Field(None, max_length=2000)
    max_depth: int = Field(3, ge=0, le=10, description="ignore events this many trigger firings deep")


class AbsenceConfig(_Strict):
    event_types: list[str] = Field(min_length=1, max_length=50)
    filter: str | None = Field(None, max_length=2000)
    within_s: int = Field(ge=1, le=31 * 86400)


class WebhookConfig(_Strict):
    pass


CONFIGS: dict[TriggerKind, type[_Strict]] = {
    TriggerKind.SCHEDULE: ScheduleConfig,
    TriggerKind.EVENT: EventConfig,
    TriggerKind.ABSENCE: AbsenceConfig,
    TriggerKind.WEBHOOK: WebhookConfig,
}


class WorkflowAction(_Strict):
    template: str | None = Field(None, max_length=150)
    definition: dict[str, Any] | str | None = None
    inputs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_source(self) -> WorkflowAction:
        if (self.template is None) == (self.definition is None):
            raise ValueError("a workflow action gives template (name@range) or definition, not both")
        return self


class TriggerAction(_Strict):
    task: dict[str, Any] | None = None
    workflow: WorkflowAction | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> TriggerAction:
        if (self.task is None) == (self.workflow is None):
            raise ValueError("a trigger's action is a task or a workflow, not both")
        return self

    @property
    def templated(self) -> Any:
        """The part that may hold placeholders."""
        if self.task is not None:
            return self.task.get("payload")
        assert self.workflow is not None
        return self.workflow.inputs


def _describe(error: ValidationError, what: str) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{what}: {where + ': ' if where else ''}{message}"


def parse_config(kind: TriggerKind, config: dict[str, Any]) -> _Strict:
    try:
        return CONFIGS[kind].model_validate(config)
    except ValidationError as exc:
        raise InvalidInput(_describe(exc, f"fix the {kind.value} trigger")) from None


def roots_for(kind: TriggerKind) -> frozenset[str]:
    if kind in (TriggerKind.EVENT, TriggerKind.ABSENCE):
        return frozenset({"event"})
    if kind is TriggerKind.WEBHOOK:
        return frozenset({"body"})
    return frozenset({"body"})  # a schedule reads only what a manual fire passes


def parse_action(kind: TriggerKind, action: dict[str, Any]) -> TriggerAction:
    """Validate the action once, at creation: its fixed parts as a task spec, its placeholders' syntax
    and roots. What the placeholders read is known only when it fires."""
    try:
        parsed = TriggerAction.model_validate(action)
    except ValidationError as exc:
        raise InvalidInput(_describe(exc, "fix the trigger's action")) from None
    for ref in references(parsed.templated):
        allowed = roots_for(kind) | {"body"}
        if ref.root not in allowed:
            raise InvalidInput(
                f"placeholder {{{{ {ref.text} }}}} cannot be filled here: a {kind.value} trigger offers "
                + ", ".join(f"{root}.…" for root in sorted(allowed))
            )
    if parsed.task is not None:
        fixed = {k: v for k, v in parsed.task.items() if k != "payload"}
        if references(fixed):
            raise InvalidInput("only the task's payload may hold {{ }} placeholders")
        try:
            TaskSpec.model_validate(fixed)
        except ValidationError as exc:
            raise InvalidInput(_describe(exc, "fix the trigger's task")) from None
    return parsed


def parse_filter(text: str | None) -> Condition | None:
    if text is None:
        return None
    condition = Condition.parse(text)
    for ref in condition.references:
        if ref.root != "event":
            raise InvalidInput(f"a filter reads the event: write event.type, event.data.…; not {ref.text}")
    return condition


def task_for(action: TriggerAction, scope: dict[str, Any]) -> TaskSpec:
    assert action.task is not None
    body = dict(action.task)
    if "payload" in body:
        body["payload"] = render(body["payload"], scope)
    try:
        return TaskSpec.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput(_describe(exc, "the trigger's task")) from None


def workflow_inputs(action: TriggerAction, scope: dict[str, Any]) -> dict[str, Any]:
    assert action.workflow is not None
    rendered = render(action.workflow.inputs, scope)
    assert isinstance(rendered, dict)
    return rendered
