"""The product: one module per area, protocol-agnostic. Services never import MCP, A2A or Starlette."""
