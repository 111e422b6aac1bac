"""An A2A TaskStore over our SQL store. `get` lays the orchestrator task's live state over the
stored A2A record, so GetTask reports progress made through MCP, workers or another replica."""

from __future__ import annotations

from a2a.server.context import ServerCallContext
from a2a.server.tasks import TaskStore
from a2a.types import ListTasksRequest, ListTasksResponse, Task

from server.a2a.executor import principal_of
from server.a2a.mapping import mirror
from server.errors import NotFound
from server.services.container import Services

DEFAULT_PAGE = 50
MAX_PAGE = 100


class OrchestratorTaskStore(TaskStore):
    def __init__(self, services: Services) -> None:
        self._services = services

    async def save(self, task: Task, context: ServerCallContext) -> None:
        await self._services.a2a_records.save(principal_of(context), task.id, task.context_id, task.SerializeToString())

    async def get(self, task_id: str, context: ServerCallContext) -> Task | None:
        principal = principal_of(context)
        record = await self._services.a2a_records.get(principal, task_id)
        if record is None:
            return None
        return await self._mirrored(record.body, task_id, context)

    async def _mirrored(self, body: bytes, task_id: str, context: ServerCallContext) -> Task:
        task = Task.FromString(body)
        try:
            view = await self._services.tasks.get(principal_of(context), task_id)
        except NotFound:
            return task  # rejected at submit: no orchestrator task behind it
        return mirror(task, view)

    async def list(self, params: ListTasksRequest, context: ServerCallContext) -> ListTasksResponse:
        size = min(params.page_size or DEFAULT_PAGE, MAX_PAGE)
        records = await self._services.a2a_records.list(
            principal_of(context), params.context_id or None, size + 1, params.page_token or None
        )
        tasks = [await self._mirrored(r.body, r.id, context) for r in records[:size]]
        if params.status:
            tasks = [t for t in tasks if t.status.state == params.status]
        response = ListTasksResponse(tasks=tasks, page_size=size, total_size=len(tasks))
        if len(records) > size:
            response.next_page_token = records[size - 1].id
        return response

    async def delete(self, task_id: str, context: ServerCallContext) -> None:
        await self._services.a2a_records.delete(principal_of(context), task_id)
