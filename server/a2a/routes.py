"""Starlette routes for A2A: the public agent card and the authenticated JSON-RPC and HTTP+JSON endpoints."""

from __future__ import annotations

from dataclasses import dataclass

from a2a.server.context import ServerCallContext
from a2a.server.routes import (
    DefaultServerCallContextBuilder,
    create_agent_card_routes,
    create_jsonrpc_routes,
    create_rest_routes,
)
from starlette.requests import Request
from starlette.routing import BaseRoute, Router

from server.a2a.caller import PRINCIPAL_KEY
from server.a2a.card import JSONRPC_PATH, build_card
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


@dataclass(frozen=True)
class A2ARoutes:
    card: list[BaseRoute]  # public
    jsonrpc: list[BaseRoute]  # at JSONRPC_PATH; to protect
    rest: Router  # HTTP+JSON, to mount at REST_PATH and protect


def a2a_routes(services: Services) -> A2ARoutes:
    card = build_card(services.settings.base_url)
    handler = FleetRequestHandler(services)
    builder = PrincipalContextBuilder()
    return A2ARoutes(
        card=list(create_agent_card_routes(card)),
        jsonrpc=list(create_jsonrpc_routes(handler, rpc_url=JSONRPC_PATH, context_builder=builder)),
        # The SDK adds a /{tenant} catch-all beside the plain paths; inside its own Router under
        # REST_PATH it cannot shadow anything else.
        rest=Router(routes=create_rest_routes(handler, context_builder=builder)),
    )
