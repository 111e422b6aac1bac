"""A2A SendMessage -> an orchestrator task. The A2A task id *is* the orchestrator task id."""

from __future__ import annotations

import logging

from a2a.helpers import new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.id_generator import IDGenerator, IDGeneratorContext
from a2a.server.tasks import TaskUpdater
from a2a.types import Task, TaskState, TaskStatus

from server.a2a.mapping import mirror, spec_from_message
from server.domain.principal import Principal
from server.errors import FleetError, PermissionDenied
from server.ids import TASK, new_id
from server.services.container import Services

log = logging.getLogger("agentfleet.a2a")
PRINCIPAL_KEY = "agentfleet_principal"


class TaskIdGenerator(IDGenerator):
    def generate(self, context: IDGeneratorContext) -> str:
        return new_id(TASK)


def principal_of(context: ServerCallContext | None) -> Principal:
    principal = context.state.get(PRINCIPAL_KEY) if context is not None else None
    if not isinstance(principal, Principal):
        raise PermissionDenied("no authenticated principal on this A2A call")
    return principal


class OrchestratorExecutor(AgentExecutor):
    def __init__(self, services: Services) -> None:
        self._services = services

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id = context.task_id or new_id(TASK)
        context_id = context.context_id or task_id
        if context.current_task is not None:
            # A follow-up message to an existing task: report where it stands.
            view = await self._services.tasks.get(principal_of(context.call_context), task_id)
            await event_queue.enqueue_event(mirror(context.current_task, view))
            return
        updater = TaskUpdater(event_queue, task_id, context_id)
        task = Task(id=task_id, context_id=context_id, status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED))
        if context.message is not None:
            task.history.append(context.message)
        try:
            spec = spec_from_message(context.message)
            view = await self._services.tasks.submit(principal_of(context.call_context), spec, task_id=task_id)
        except FleetError as exc:
            # The task must exist before a status event; then it is rejected with the stable code.
            await event_queue.enqueue_event(task)
            await updater.reject(updater.new_agent_message([new_text_part(str(exc))]))
            return
        await event_queue.enqueue_event(mirror(task, view))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        principal = principal_of(context.call_context)
        view = await self._services.tasks.cancel(principal, context.task_id or "", "cancelled over A2A")
        if context.current_task is not None:
            await event_queue.enqueue_event(mirror(context.current_task, view))
