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
