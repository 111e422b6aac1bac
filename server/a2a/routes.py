"""Starlette routes for A2A: the public agent card and the authenticated JSON-RPC endpoint."""

from __future__ import annotations

from a2a.server.context import ServerCallContext
from a2a.server.routes import DefaultServerCallContextBuilder, create_agent_card_routes, create_jsonrpc_routes
from starlette.requests import Request
from starlette.routing import BaseRoute

from server.a2a.caller import PRINCIPAL_KEY
from server.a2a.card import build_card
from server.a2a.handler import FleetRequestHandler
from server.http.bearer import principal_from
from server.services.container import Services


class PrincipalContextBuilder(DefaultServerCallContextBuilder):
    """Carry our principal (set by the bearer middleware) into the A2A call context."""

    def build(self, request: Request) -> ServerCallContext:
        ctx = super().build(request)
        token = getattr(request.scope.get("user"), "access_token", None)
        if token is not None:
            ctx.state[PRINCIPAL_KEY] = principal_from(token)
        return ctx


def a2a_routes(services: Services) -> tuple[list[BaseRoute], list[BaseRoute], FleetRequestHandler]:
    """(public card routes, JSON-RPC routes to protect, the handler to close on shutdown)."""
    card = build_card(services.settings.base_url)
    handler = FleetRequestHandler(services)
    rpc = create_jsonrpc_routes(handler, rpc_url="/a2a", context_builder=PrincipalContextBuilder())
    return list(create_agent_card_routes(card)), list(rpc), handler
