"""The HTTP surface: one Starlette app mounting MCP, A2A, health, readiness and metrics."""
