"""The A2A request handler behind the same door as the MCP tools: each JSON-RPC method is checked
against the role table (as the tool it stands for) and the caller's rate limit, and a refusal is
audited and answered with an A2A error whose message starts with the stable code."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.utils.errors import InvalidRequestError

from server.a2a.executor import principal_of
from server.domain.permissions import A2A_CANCEL, A2A_READ, A2A_SEND
from server.errors import FleetError, Refusal
from server.services.container import Services


class GatedRequestHandler(DefaultRequestHandler):
    def __init__(self, services: Services, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._services = services

    async def _admit(self, context: ServerCallContext, request: str, subject: str) -> None:
        try:
            principal = principal_of(context)
        except FleetError as exc:
            raise InvalidRequestError(message=str(exc)) from exc
        try:
            await self._services.gate.admit(principal, request)
        except Refusal as exc:
            await self._services.gate.refused(principal, request, {"task_id": subject}, exc)
            raise InvalidRequestError(message=str(exc)) from exc

    async def on_message_send(self, params: Any, context: ServerCallContext) -> Any:
        await self._admit(context, A2A_SEND, params.message.task_id)
        return await super().on_message_send(params, context)

    async def on_message_send_stream(self, params: Any, context: ServerCallContext) -> AsyncGenerator[Any]:
        await self._admit(context, A2A_SEND, params.message.task_id)
        async for event in super().on_message_send_stream(params, context):
            yield event

    async def on_get_task(self, params: Any, context: ServerCallContext) -> Any:
        await self._admit(context, A2A_READ, params.id)
        return await super().on_get_task(params, context)

    async def on_list_tasks(self, params: Any, context: ServerCallContext) -> Any:
        await self._admit(context, A2A_READ, "")
        return await super().on_list_tasks(params, context)

    async def on_cancel_task(self, params: Any, context: ServerCallContext) -> Any:
        await self._admit(context, A2A_CANCEL, params.id)
        return await super().on_cancel_task(params, context)

    async def on_subscribe_to_task(self, params: Any, context: ServerCallContext) -> AsyncGenerator[Any]:
        await self._admit(context, A2A_READ, params.id)
        async for event in super().on_subscribe_to_task(params, context):
            yield event
