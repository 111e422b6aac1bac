"""Orchestrator task <-> A2A task: states, the result artifact, and task specs from message parts."""

from __future__ import annotations

from functools import cache
from typing import Any

from a2a.helpers import get_data_parts, get_text_parts, new_data_part, new_text_part
from a2a.types import Artifact, Message, Role, Task, TaskState
from pydantic import ValidationError

from server.a2a.card import FLEET_STATUS_SKILL, RUN_WORKFLOW_SKILL, TEXT_TASK_CAPABILITY, TEXT_TASK_TYPE
from server.domain.statuses import TaskStatus
from server.domain.storable import require_storable
from server.domain.strict_types import Check, compile_check
from server.domain.task_spec import TaskSpec
from server.domain.views import FleetStatus, TaskView
from server.errors import InvalidInput
from server.ids import MESSAGE, new_id

STATE_OF: dict[str, int] = {
    TaskStatus.PENDING_APPROVAL: TaskState.TASK_STATE_INPUT_REQUIRED,
    TaskStatus.QUEUED: TaskState.TASK_STATE_SUBMITTED,
    TaskStatus.RUNNING: TaskState.TASK_STATE_WORKING,
    TaskStatus.COMPLETED: TaskState.TASK_STATE_COMPLETED,
    TaskStatus.FAILED: TaskState.TASK_STATE_FAILED,
    TaskStatus.DEAD: TaskState.TASK_STATE_FAILED,
    TaskStatus.CANCELLED: TaskState.TASK_STATE_CANCELED,
}


def statuses_for(state: int) -> list[str]:
    """The orchestrator statuses an A2A state stands for (ListTasks' status filter)."""
    return [status.value for status, mirrored in STATE_OF.items() if mirrored == state]


SPEC_FIELDS = set(TaskSpec.model_fields) - {"pinned_agent_id"}


def restore_ints(value: Any) -> Any:
    """protobuf Value stores numbers as doubles; give whole numbers their integer type back."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [restore_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: restore_ints(v) for k, v in value.items()}
    return value


def skill_of(message: Message) -> str | None:
    """The skills answered at once with a Message rather than queued as a task: a first data part
    {"skill": "fleet-status"} or {"skill": "run-workflow", …}."""
    data = get_data_parts(message.parts)
    if data and isinstance(data[0], dict) and data[0].get("skill") in (FLEET_STATUS_SKILL, RUN_WORKFLOW_SKILL):
        return str(data[0]["skill"])
    return None


def workflow_request(message: Message) -> tuple[Any, str | None, dict[str, Any] | None]:
    """(definition, template, inputs) from a run-workflow data part."""
    body = restore_ints(get_data_parts(message.parts)[0])
    unknown = set(body) - {"skill", "definition", "template", "inputs"}
    if unknown:
        raise InvalidInput(f"unknown run-workflow fields {sorted(unknown)}; allowed: definition, template, inputs")
    inputs = body.get("inputs")
    if inputs is not None and not isinstance(inputs, dict):
        raise InvalidInput("run-workflow inputs must be an object of input values")
    return body.get("definition"), body.get("template"), inputs


def data_message(text: str, data: Any, context_id: str) -> Message:
    return Message(
        message_id=new_id(MESSAGE),
        context_id=context_id,
        role=Role.ROLE_AGENT,
        parts=[new_text_part(text), new_data_part(data)],
    )


def status_message(status: FleetStatus, context_id: str) -> Message:
    summary = ", ".join(f"{count} {state}" for state, count in sorted(status.totals.items())) or "nothing yet"
    return data_message(f"fleet: {summary}", status.model_dump(mode="json"), context_id)


@cache
def _spec_types() -> Check:
    """Exact JSON types for a task spec, as the MCP tools check theirs (no "3" for 3)."""
    return compile_check("task spec", TaskSpec.model_json_schema())


def spec_from_message(message: Message) -> TaskSpec:
    data = [restore_ints(d) for d in get_data_parts(message.parts)]
    if data:
        body = data[0]
        if not isinstance(body, dict):
            raise InvalidInput(
                'the data part must be an object holding a task spec, e.g. {"type": "review", "payload": {...}}'
            )
        unknown = set(body) - SPEC_FIELDS
        if unknown:
            raise InvalidInput(f"unknown task spec fields {sorted(unknown)}; allowed: {sorted(SPEC_FIELDS)}")
        _spec_types()(body)
        require_storable(body, "task spec")
        try:
            return TaskSpec.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "spec"
            raise InvalidInput(f"task spec field '{where}': {first['msg']}") from exc
    text = "\n".join(get_text_parts(message.parts)).strip()
    if not text:
        raise InvalidInput("send a data part holding a task spec, or a text part")
    return TaskSpec(type=TEXT_TASK_TYPE, payload={"text": text}, capabilities=(TEXT_TASK_CAPABILITY,))


def result_artifact(view: TaskView) -> Artifact:
    artifact = Artifact(artifact_id=f"{view.id}-result", name="result")
    part = new_data_part(view.result) if view.result is not None else new_text_part("")
    artifact.parts.append(part)
    return artifact


def status_text(view: TaskView) -> str | None:
    """What the A2A status message says: why it waits, how far it got, or why it ended."""
    if view.status == TaskStatus.PENDING_APPROVAL and view.approval is not None:
        reasons = "; ".join(view.approval.reasons)
        return f"waiting for approval {view.approval.id} (an approver decides with approval_decide): {reasons}"
    if view.status == TaskStatus.RUNNING and (view.progress is not None or view.progress_message):
        done = f"{view.progress}%" if view.progress is not None else ""
        return " ".join(part for part in (done, view.progress_message or "") if part)
    if view.status == TaskStatus.QUEUED and view.attempts:
        return f"attempt {view.attempts} of {view.max_attempts} ended ({view.error or 'released'}); queued again"
    if view.status in (TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED) and view.error:
        return view.error
    return None


def mirror(task: Task, view: TaskView) -> Task:
    """The stored A2A task with the orchestrator task's current state laid over it."""
    task.status.state = STATE_OF[view.status]
    task.status.timestamp.FromJsonString(view.updated_at)
    text = status_text(view)
    if text is None:
        task.status.ClearField("message")
    else:
        message_id = f"{view.id}-{view.status}-{view.attempts}"
        task.status.message.CopyFrom(Message(message_id=message_id, role=Role.ROLE_AGENT, parts=[new_text_part(text)]))
    if view.status == TaskStatus.COMPLETED and not task.artifacts:
        task.artifacts.append(result_artifact(view))
    # camelCase like the rest of A2A's JSON (the TCK checks metadata keys too).
    task.metadata.update(
        {"orchestratorStatus": view.status, "attempts": view.attempts, "cancelRequested": view.cancel_requested}
    )
    return task
