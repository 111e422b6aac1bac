"""Small helpers for driving tools through the MCP client."""

from __future__ import annotations

from typing import Any

from mcp import Client


class ToolFailed(AssertionError):
    def __init__(self, tool: str, text: str) -> None:
        super().__init__(f"{tool} failed: {text}")
        self.text = text
        self.code = text.split(":", 1)[0]


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool and return its structured result; raise ToolFailed on a tool error."""
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise ToolFailed(tool, result.content[0].text)
    assert result.structured_content is not None, f"{tool} returned no structured content"
    return result.structured_content


async def call_error(client: Client, tool: str, **arguments: Any) -> ToolFailed:
    """Call a tool that must fail; return the failure."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool} should have failed but returned {result.structured_content}"
    return ToolFailed(tool, result.content[0].text)


async def every_tool(connect: Any) -> dict[str, Any]:
    """Every tool the server has: a tool list shows each caller only what it may call, so this is
    the admin's list joined with an agent's."""
    async with connect() as admin:
        tools = {tool.name: tool for tool in (await admin.list_tools()).tools}
        agent = await call(admin, "agent_spawn", profile="worker", name="tool-lister")
    async with connect(agent["token"]) as as_agent:
        tools.update({tool.name: tool for tool in (await as_agent.list_tools()).tools})
    return tools
