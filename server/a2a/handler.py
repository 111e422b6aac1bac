"""The A2A request handler: every operation goes through the same door as the MCP tools (role
table, profile, rate limit; refusals audited), then onto the orchestrator's services. The A2A task
id *is* the orchestrator task id; the store holds both, so any replica answers for any task, and
streams follow the store (`follow.changes`) rather than an in-memory run of an executor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, suppress
from typing import Any

from a2a.helpers import new_text_part
from a2a.server.context import ServerCallContext
from a2a.server.events import Event
from a2a.server.request_handlers.request_handler import RequestHandler, validate_request_params
from a2a.types import (
    AgentCard,
    AuthenticationInfo,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    Role,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskArtifactUpdateEvent,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import (
    InvalidParamsError,
    InvalidRequestError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from a2a.utils.task import apply_history_length, validate_history_length, validate_page_size
from google.protobuf.json_format import MessageToDict

from server.a2a.caller import principal_of
from server.a2a.card import FLEET_STATUS_SKILL
from server.a2a.follow import changes
from server.a2a.mapping import (
    data_message,
    mirror,
    result_artifact,
    skill_of,
    spec_from_message,
    status_message,
    statuses_for,
    workflow_request,
)
from server.domain.permissions import A2A_CANCEL, A2A_READ, A2A_SEND, A2A_STATUS, A2A_WORKFLOW
from server.domain.principal import Principal
from server.domain.statuses import TaskStatus as Orchestrated
from server.domain.storable import require_storable
from server.domain.views import TaskView
from server.errors import Conflict, FleetError, InvalidInput, NotFound, Refusal
from server.ids import MESSAGE, TASK, new_id
from server.services.a2a_push import PushConfig
from server.services.a2a_records import RecordQuery
from server.services.container import Services

TERMINAL = frozenset(
    {
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_REJECTED,
    }
)
DEFAULT_PAGE = 50
MAX_PAGE = 100
PAGE_BYTES = 1024 * 1024  # a ListTasks page stops growing past this many bytes of tasks
MESSAGE_OVERHEAD_BYTES = 16 * 1024  # a message's envelope beyond its task spec's payload


class FleetRequestHandler(RequestHandler):
    def __init__(self, services: Services) -> None:
        self._services = services

    # -- the door ------------------------------------------------------------------------------
    async def _admit(self, context: ServerCallContext, request: str, subject: str) -> Principal:
        try:
            principal = principal_of(context)
        except FleetError as exc:
            raise InvalidRequestError(message=str(exc)) from exc
        try:
            await self._services.gate.admit(principal, request)
        except Refusal as exc:
            await self._services.gate.refused(principal, request, {"task_id": subject}, exc)
            raise InvalidRequestError(message=str(exc)) from exc
        return principal

    # -- reading -------------------------------------------------------------------------------
    async def _stored(self, principal: Principal, task_id: str) -> tuple[Task, TaskView | None]:
        """The caller's A2A task and the orchestrator task behind it (None if rejected at submit).
        Someone else's task is not found: its existence is not the caller's business."""
        record = await self._services.a2a_records.get(principal, task_id)
        if record is None:
            raise TaskNotFoundError(message=f"no task {task_id}")
        return await self._mirrored(principal, record.id, record.body)

    async def _mirrored(self, principal: Principal, task_id: str, body: bytes) -> tuple[Task, TaskView | None]:
        task = Task.FromString(body)
        try:
            view = await self._services.tasks.get(principal, task_id)
        except NotFound:
            return task, None
        return mirror(task, view), view

    @validate_request_params
    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task:
        principal = await self._admit(context, A2A_READ, params.id)
        validate_history_length(params)
        task, _ = await self._stored(principal, params.id)
        return apply_history_length(task, params)

    @validate_request_params
    async def on_list_tasks(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        principal = await self._admit(context, A2A_READ, "")
        validate_history_length(params)
        if params.HasField("page_size"):
            validate_page_size(params.page_size)
        size = min(params.page_size or DEFAULT_PAGE, MAX_PAGE)
        query = RecordQuery(
            limit=size + 1,
            before=params.page_token or None,
            context_id=params.context_id or None,
            statuses=statuses_for(params.status) if params.status else None,
            include_rejected=params.status == TaskState.TASK_STATE_REJECTED,
            changed_after_us=(
                params.status_timestamp_after.ToMicroseconds() if params.HasField("status_timestamp_after") else None
            ),
        )
        records, total = await self._services.a2a_records.list(principal, query)
        page: list[Task] = []
        budget = PAGE_BYTES
        for record in records[:size]:
            task = (await self._mirrored(principal, record.id, record.body))[0]
            if not params.include_artifacts:
                task.ClearField("artifacts")
            task.CopyFrom(apply_history_length(task, params))
            budget -= task.ByteSize()
            if page and budget < 0:  # bounded in bytes too: the rest is on the next page
                break
            page.append(task)
        response = ListTasksResponse(tasks=page, page_size=size, total_size=total)
        if len(records) > len(page):
            response.next_page_token = page[-1].id
        return response

    # -- sending -------------------------------------------------------------------------------
    def _check_message(self, message: Message) -> None:
        """Bounded and storable before anything is kept: a message too large, or holding text no
        store can keep, is refused whole (an A2A error), not recorded as a rejected task."""
        limit = self._services.settings.max_payload_bytes + MESSAGE_OVERHEAD_BYTES
        size = message.ByteSize()
        if size > limit:
            raise InvalidParamsError(
                message=f"invalid_input: the message is {size} bytes; the limit is {limit} "
                "(AGENTFLEET_MAX_PAYLOAD_BYTES plus room for its envelope)"
            )
        try:
            require_storable(MessageToDict(message), "message")
        except InvalidInput as exc:
            raise InvalidParamsError(message=str(exc)) from exc

    async def _accept(self, principal: Principal, message: Message) -> tuple[Task, TaskView | None]:
        self._check_message(message)
        if message.task_id:
            return await self._follow_up(principal, message)
        task_id = new_id(TASK)
        try:
            view: TaskView | None = await self._services.tasks.submit(
                principal, spec_from_message(message), task_id=task_id
            )
        except FleetError as exc:
            # Refused before anything was queued: the A2A task is rejected with the stable code.
            return await self._record(principal, message, task_id, None, str(exc)), None
        if view.id != task_id:  # an idempotency_key replay: the answer is the task it made first
            return await self._replayed(principal, message, view)
        return await self._record(principal, message, task_id, view), view

    async def _record(
        self, principal: Principal, message: Message, task_id: str, view: TaskView | None, refusal: str = ""
    ) -> Task:
        context_id = message.context_id or task_id
        stored = Message()
        stored.CopyFrom(message)
        stored.task_id, stored.context_id = task_id, context_id
        task = Task(id=task_id, context_id=context_id, status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED))
        task.history.append(stored)
        if view is not None:
            mirror(task, view)
        else:
            task.status.state = TaskState.TASK_STATE_REJECTED
            task.status.message.CopyFrom(
                Message(message_id=f"{task_id}-rejected", role=Role.ROLE_AGENT, parts=[new_text_part(refusal)])
            )
        await self._services.a2a_records.save(principal, task_id, context_id, task.SerializeToString())
        return task

    async def _replayed(self, principal: Principal, message: Message, view: TaskView) -> tuple[Task, TaskView | None]:
        if await self._services.a2a_records.get(principal, view.id) is not None:
            return await self._stored(principal, view.id)
        if view.submitted_by != principal.id:
            refusal = f"conflict: the idempotency_key belongs to task {view.id}, which is not yours"
            return await self._record(principal, message, new_id(TASK), None, refusal), None
        return await self._record(principal, message, view.id, view), view

    async def _follow_up(self, principal: Principal, message: Message) -> tuple[Task, TaskView | None]:
        """A message naming an existing task is added to its history; the orchestrator task is
        not re-run, and its state is what the answer reports."""
        task, view = await self._stored(principal, message.task_id)
        if message.context_id and message.context_id != task.context_id:
            raise InvalidParamsError(
                message=f"context {message.context_id} is not the context {task.context_id} of task {task.id}"
            )
        if task.status.state in TERMINAL:
            raise UnsupportedOperationError(
                message=f"task {task.id} is {TaskState.Name(task.status.state)}; send a new message for new work"
            )
        stored = Message()
        stored.CopyFrom(message)
        stored.context_id = task.context_id
        task.history.append(stored)
        await self._services.a2a_records.save(principal, task.id, task.context_id, task.SerializeToString())
        return task, view

    async def _accept_with_push(self, principal: Principal, params: SendMessageRequest) -> tuple[Task, TaskView | None]:
        """Accept the message; a push config sent with it is checked first and registered on the
        task it made (a rejected task gets none: nothing more will happen to it)."""
        config = params.configuration.task_push_notification_config
        wants_push = params.configuration.HasField("task_push_notification_config")
        if wants_push:
            await self._check_push(config)
        task, view = await self._accept(principal, params.message)
        if wants_push and view is not None:
            await self._push(principal, task.id, config, with_message=not params.message.task_id)
        return task, view

    async def _skill(self, context: ServerCallContext, message: Message, skill: str) -> Message:
        """The skills that answer at once, with a Message: fleet status, and starting a workflow."""
        context_id = message.context_id or new_id(MESSAGE)
        if skill == FLEET_STATUS_SKILL:
            await self._admit(context, A2A_STATUS, "")
            return status_message(await self._services.fleet.status(), context_id)
        principal = await self._admit(context, A2A_WORKFLOW, "")
        try:
            definition, template, inputs = workflow_request(message)
            run_id = await self._services.workflows.run(principal, definition, template, inputs)
        except FleetError as exc:
            raise InvalidParamsError(message=str(exc)) from exc
        run = await self._services.workflows.get(principal, run_id)
        return data_message(f"workflow run {run.id} ({run.name}) started", run.model_dump(mode="json"), context_id)

    @validate_request_params
    async def on_message_send(self, params: SendMessageRequest, context: ServerCallContext) -> Task | Message:
        if skill := skill_of(params.message):
            return await self._skill(context, params.message, skill)
        principal = await self._admit(context, A2A_SEND, params.message.task_id)
        validate_history_length(params.configuration)
        task, view = await self._accept_with_push(principal, params)
        if view is not None and not params.configuration.return_immediately:
            task = await self._settled(principal, task, view)
        return apply_history_length(task, params.configuration)

    async def _settled(self, principal: Principal, task: Task, view: TaskView) -> Task:
        """Block (at most AGENTFLEET_A2A_BLOCK_S) until the task is final or waits for input."""

        async def until_settled() -> None:
            async with aclosing(changes(self._services, principal, view)) as moves:
                async for moved in moves:
                    mirror(task, moved)
                    if moved.status == Orchestrated.PENDING_APPROVAL:
                        return

        if task.status.state in TERMINAL or task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED:
            return task
        # Past the wait, answer with the task as it stands; GetTask and SubscribeToTask follow on.
        with suppress(TimeoutError):
            await asyncio.wait_for(until_settled(), self._services.settings.a2a_block_s)
        return task

    @validate_request_params
    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        if skill := skill_of(params.message):
            yield await self._skill(context, params.message, skill)
            return
        principal = await self._admit(context, A2A_SEND, params.message.task_id)
        validate_history_length(params.configuration)
        task, view = await self._accept_with_push(principal, params)
        yield apply_history_length(task, params.configuration)
        if view is not None:
            async for event in self._transitions(principal, task, view):
                yield event

    @validate_request_params
    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        principal = await self._admit(context, A2A_READ, params.id)
        task, view = await self._stored(principal, params.id)
        if view is None or task.status.state in TERMINAL:
            raise UnsupportedOperationError(
                message=f"task {params.id} is {TaskState.Name(task.status.state)}: nothing more will happen"
            )
        yield task
        async for event in self._transitions(principal, task, view):
            yield event

    async def _transitions(self, principal: Principal, task: Task, seen: TaskView) -> AsyncIterator[Event]:
        """A status event for each change of the orchestrator task, as the store reports it;
        the result artifact just before `completed`. The stream ends with a final state."""
        state = task.status.state
        async with aclosing(changes(self._services, principal, seen)) as views:
            async for view in views:
                if view.status == Orchestrated.COMPLETED:
                    if state != TaskState.TASK_STATE_WORKING:
                        # Only a running task can complete; it ran and finished between two looks.
                        yield self._status(task, view, TaskState.TASK_STATE_WORKING)
                    yield TaskArtifactUpdateEvent(
                        task_id=task.id, context_id=task.context_id, artifact=result_artifact(view), last_chunk=True
                    )
                event = self._status(task, view)
                state = event.status.state
                yield event

    @staticmethod
    def _status(task: Task, view: TaskView, state: int | None = None) -> TaskStatusUpdateEvent:
        mirrored = Task()
        mirrored.CopyFrom(task)
        mirror(mirrored, view)
        event = TaskStatusUpdateEvent(task_id=task.id, context_id=task.context_id, status=mirrored.status)
        event.metadata.update(mirrored.metadata)
        if state is not None:
            event.status.state = state
            event.status.ClearField("message")
        return event

    # -- cancelling ----------------------------------------------------------------------------
    @validate_request_params
    async def on_cancel_task(self, params: CancelTaskRequest, context: ServerCallContext) -> Task:
        principal = await self._admit(context, A2A_CANCEL, params.id)
        task, view = await self._stored(principal, params.id)
        if view is None or task.status.state in TERMINAL:
            raise TaskNotCancelableError(message=f"task {params.id} is {TaskState.Name(task.status.state)}")
        reason = "cancelled over A2A"
        try:
            view = await self._services.tasks.cancel(principal, params.id, reason)
        except Conflict as exc:
            raise TaskNotCancelableError(message=str(exc)) from exc
        except InvalidInput as exc:
            raise InvalidParamsError(message=str(exc)) from exc
        except FleetError as exc:
            raise InvalidRequestError(message=str(exc)) from exc
        return mirror(task, view)

    # -- push notifications ----------------------------------------------------------------------
    # Configs live in the store (services.a2a_push) and are delivered by the notification loop on
    # any replica. Registering one makes the server call a URL, so it takes the right to create
    # A2A tasks, on one's own task only.
    async def _push(
        self, principal: Principal, task_id: str, config: TaskPushNotificationConfig, with_message: bool = False
    ) -> PushConfig:
        auth = config.authentication if config.HasField("authentication") else None
        pushed = PushConfig(
            task_id=task_id,
            id=config.id or task_id,
            url=config.url,
            token=config.token or None,
            auth_scheme=(auth.scheme or None) if auth is not None else None,
            auth_credentials=(auth.credentials or None) if auth is not None else None,
        )
        try:
            return await self._services.a2a_push.set(principal, pushed, from_submission=with_message)
        except NotFound as exc:
            raise TaskNotFoundError(message=f"no task {task_id}") from exc
        except InvalidInput as exc:
            raise InvalidParamsError(message=str(exc)) from exc

    async def _check_push(self, config: TaskPushNotificationConfig) -> None:
        """A push config sent with a message is checked before the message queues anything."""
        try:
            await self._services.a2a_push.check(PushConfig("", config.id or "x", config.url, None, None, None))
        except InvalidInput as exc:
            raise InvalidParamsError(message=str(exc)) from exc

    @validate_request_params
    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        principal = await self._admit(context, A2A_SEND, params.task_id)
        return _push_config(await self._push(principal, params.task_id, params))

    @validate_request_params
    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        principal = await self._admit(context, A2A_READ, params.task_id)
        try:
            return _push_config(await self._services.a2a_push.get(principal, params.task_id, params.id))
        except NotFound as exc:
            raise TaskNotFoundError(message=str(exc)) from exc

    @validate_request_params
    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        principal = await self._admit(context, A2A_READ, params.task_id)
        try:
            found = await self._services.a2a_push.list(principal, params.task_id)
        except NotFound as exc:
            raise TaskNotFoundError(message=str(exc)) from exc
        return ListTaskPushNotificationConfigsResponse(configs=[_push_config(c) for c in found])

    @validate_request_params
    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        principal = await self._admit(context, A2A_SEND, params.task_id)
        try:
            await self._services.a2a_push.delete(principal, params.task_id, params.id)
        except NotFound as exc:
            raise TaskNotFoundError(message=str(exc)) from exc

    # -- not offered ---------------------------------------------------------------------------
    async def on_get_extended_agent_card(self, params: Any, context: ServerCallContext) -> AgentCard:
        raise UnsupportedOperationError(message="this agent has no extended card; the public card is complete")


def _push_config(config: PushConfig) -> TaskPushNotificationConfig:
    made = TaskPushNotificationConfig(id=config.id, task_id=config.task_id, url=config.url, token=config.token or "")
    if config.auth_scheme:
        made.authentication.CopyFrom(
            AuthenticationInfo(scheme=config.auth_scheme, credentials=config.auth_credentials or "")
        )
    return made
