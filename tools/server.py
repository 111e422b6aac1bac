"""The MCP server: tool errors carry the contract's code first, and every call is counted."""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import CallToolResult, InputRequiredResult, TextContent
from mcp.types import Tool as MCPTool
from pydantic import ValidationError

from server.domain.principal import Principal
from server.domain.storable import require_storable
from server.domain.strict_types import Check, compile_check
from server.errors import FleetError, InvalidInput, NotFound, Refusal, Unavailable
from server.metrics import Metrics
from tools.context import AppState, current_principal, resolve_caller

log = logging.getLogger("agentfleet.tools")
# One record per tool call (the MCP twin of the HTTP access log).
call_log = logging.getLogger("agentfleet.tool_calls")


def _describe_validation(error: ValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "arguments"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def as_fleet_error(exc: ToolError, tool: str) -> FleetError:
    """The one table from whatever a tool call raised to a FleetError."""
    cause = exc.__cause__
    if isinstance(cause, FleetError):
        return cause
    if isinstance(cause, ValidationError):
        return InvalidInput(f"bad arguments for {tool}: {_describe_validation(cause)}")
    if cause is None and not isinstance(exc, UnexpectedToolError) and str(exc).startswith("Unknown tool"):
        return NotFound(f"no tool named {tool!r}; list_tools shows what exists")
    log.error("tool %s crashed", tool, exc_info=cause or exc)
    return Unavailable("the server hit an internal error; it is logged. Retry, or report it if it persists")


def without_titles(schema: Any) -> Any:
    """A JSON schema without the `title` of each property and model: pydantic derives them from the
    names ("Task Id"), so they repeat what the names say."""
    if isinstance(schema, dict):
        return {
            key: without_titles(value)
            for key, value in schema.items()
            if not (key == "title" and isinstance(value, str))
        }
    if isinstance(schema, list):
        return [without_titles(value) for value in schema]
    return schema


def _reject_unknown_arguments(tool: str, schema: dict[str, Any], arguments: dict[str, Any]) -> None:
    """The SDK ignores unknown arguments; a misspelt `priorty` must not silently become the default."""
    known = set(schema.get("properties", {}))
    unknown = sorted(set(arguments) - known)
    if unknown:
        raise ToolError(f"unknown arguments {unknown}") from InvalidInput(
            f"{tool} has no argument(s) {', '.join(unknown)}; it takes: {', '.join(sorted(known)) or 'nothing'}"
        )


class FleetMCPServer(MCPServer[Any]):
    def __init__(self, *args: Any, metrics: Metrics, state: AppState, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics
        self._state = state
        self._type_checks: dict[str, Check] = {}  # compiled once per tool, from its fixed schema
        self._listed: dict[str, MCPTool] = {}

    async def list_tools(self) -> list[MCPTool]:
        """Each caller sees the tools its role and profile let it call, described without the
        source's indentation: an LLM pays for every byte of this list on every turn."""
        try:
            principal = await resolve_caller(self._state)
        except FleetError:
            return []
        access = self._state.services.access
        await access.ensure_current(principal)
        return [self._lean(tool) for tool in await super().list_tools() if access.allows_tool(principal, tool.name)]

    def _lean(self, tool: MCPTool) -> MCPTool:
        """The tool as listed: descriptions without indentation, schemas without pydantic's generated
        titles, and no output schema unless AGENTFLEET_TOOL_OUTPUT_SCHEMAS=true. Output schemas were
        two thirds of the list (173 KB for the admin); results still carry structured content, and
        docs/tools.md describes every field. Built once per tool."""
        listed = self._listed.get(tool.name)
        if listed is None:
            update: dict[str, Any] = {
                "description": inspect.cleandoc(tool.description or ""),
                "input_schema": without_titles(tool.input_schema),
            }
            if not self._state.services.settings.tool_output_schemas:
                update["output_schema"] = None
            listed = self._listed[tool.name] = tool.model_copy(update=update)
        return listed

    def _check_arguments(self, name: str, schema: dict[str, Any], arguments: dict[str, Any]) -> None:
        """Before anything runs: known names, exact JSON types, text every store can hold."""
        _reject_unknown_arguments(name, schema, arguments)
        check = self._type_checks.get(name)
        if check is None:
            check = self._type_checks[name] = compile_check(name, schema)
        check(arguments)
        require_storable(arguments, name)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        # Callers choose tool names; count unknown ones under one label so metrics stay bounded.
        started = time.perf_counter()
        schema = self._tool_input_schema(name)
        label = name if schema is not None else "_unknown"
        principal: Principal | None = None
        try:
            if schema is not None:
                self._check_arguments(name, schema, arguments)
            principal = await resolve_caller(self._state)
            if schema is not None:
                await self._state.services.gate.admit(principal, name)
            result = await self._call_as(principal, name, arguments, context)
        except (ToolError, FleetError) as exc:
            error = as_fleet_error(exc, name) if isinstance(exc, ToolError) else exc
            self._metrics.tool_calls.labels(label, error.code).inc()
            if isinstance(error, Refusal) and principal is not None:
                await self._record_refusal(principal, name, arguments, error)
            _log_call(label, principal, arguments, error.code, started)
            return CallToolResult(content=[TextContent(type="text", text=str(error))], is_error=True)
        self._metrics.tool_calls.labels(label, "ok").inc()
        _log_call(label, principal, arguments, "ok", started)
        return result

    async def _call_as(
        self, principal: Principal, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None
    ) -> CallToolResult | InputRequiredResult:
        token = current_principal.set(principal)
        try:
            return await super().call_tool(name, arguments, context)
        finally:
            current_principal.reset(token)

    async def _record_refusal(self, principal: Principal, name: str, arguments: dict[str, Any], error: Refusal) -> None:
        try:
            await self._state.services.gate.refused(principal.because(_reason(arguments)), name, arguments, error)
        except FleetError as exc:  # the store is down: the caller still gets its refusal
            log.warning("could not record the refusal of %s: %s", name, exc)


def _log_call(tool: str, principal: Principal | None, arguments: dict[str, Any], outcome: str, started: float) -> None:
    """Who called what, the outcome code and how long it took; the task it was about, if any.
    Never the arguments themselves: they may carry anything, secrets included."""
    if not call_log.isEnabledFor(logging.INFO):
        return
    task_id = arguments.get("task_id")
    call_log.info(
        "%s %s",
        tool,
        outcome,
        extra={
            "fields": {
                "kind": "tool_call",
                "tool": tool,
                "outcome": outcome,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "principal": principal.id if principal is not None else None,
                "role": principal.role.value if principal is not None else None,
                "task_id": task_id if isinstance(task_id, str) and len(task_id) <= 40 else None,
            }
        },
    )


def _reason(arguments: dict[str, Any]) -> str | None:
    reason = arguments.get("reason")
    return reason[:2000] if isinstance(reason, str) else None
