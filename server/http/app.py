"""The app: /mcp (Streamable HTTP), /a2a (JSON-RPC) and the agent card, /healthz, /readyz, /metrics.

Everything but /healthz and the agent card needs a bearer token."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

import anyio
from mcp.server.auth.middleware.auth_context import AuthContextMiddleware
from mcp.server.auth.middleware.bearer_auth import BearerAuthBackend
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import (
    DEFAULT_MAX_REQUEST_BODY_SIZE,
    RequestBodyLimitMiddleware,
    TransportSecuritySettings,
)
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, request_response
from starlette.types import ASGIApp

from server.a2a.card import REST_PATH
from server.a2a.routes import a2a_routes
from server.http.bearer import FleetTokenVerifier, RequireToken, ScrapeToken
from server.http.event_stream import event_stream
from server.http.observe import RequestMetricsMiddleware
from server.http.webhooks import webhook_endpoint
from server.loops import background_loops
from server.metrics import Metrics
from server.services.container import Services
from tools import build_mcp


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def transport_security(services: Services) -> TransportSecuritySettings:
    """DNS-rebinding protection guards unauthenticated local servers; every request here needs a
    token, and a server bound beyond loopback is reached by names we cannot list, so it is on only
    for loopback binds."""
    settings = services.settings
    if not _is_loopback(settings.host):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    public = urlsplit(settings.base_url).netloc
    if public and public not in hosts:
        hosts.append(public)
    return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=[f"http://{h}" for h in hosts])


def _healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _no_such_metadata(_request: Request) -> Response:
    """This server is no OAuth authorization server and uses none: discovery ends here, so a client
    shows the 401 it got rather than starting a sign-in that cannot work."""
    return JSONResponse({"error": "not_found", "message": "not_found: tokens are bearer tokens; no OAuth"}, 404)


# A stream that waits on a queued task can be quiet for hours. A comment line every few seconds
# keeps it under common client read timeouts (the a2a-sdk's httpx client defaults to 5 s) and
# lets proxies see it is alive. sse-starlette documents this class attribute as the default.
SSE_PING_S = 2
EventSourceResponse.DEFAULT_PING_INTERVAL = SSE_PING_S


def create_app(
    services: Services, metrics: Metrics | None = None, configure_mcp: Callable[[MCPServer[Any]], None] | None = None
) -> Starlette:
    """`configure_mcp` may add tools before the MCP app is built (the bench adds an empty one)."""
    metrics = metrics or Metrics(services.fleet, services.instruments)
    mcp = build_mcp(services, metrics, http=True)
    if configure_mcp is not None:
        configure_mcp(mcp)
    mcp_app = mcp.streamable_http_app(streamable_http_path="/mcp", transport_security=transport_security(services))
    a2a = a2a_routes(services)
    verifier = FleetTokenVerifier(services.auth)

    async def readyz(_request: Request) -> Response:
        readiness = await services.fleet.readiness()
        body = {"store": readiness.store, "migrations": readiness.migrations}
        return JSONResponse(body, status_code=200 if readiness.ready else 503)

    async def metrics_endpoint(_request: Request) -> Response:
        body = await anyio.to_thread.run_sync(metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    def protected(path: str, app: ASGIApp, methods: list[str]) -> Route:
        return Route(path, RequireToken(app), methods=methods)

    scrape: ASGIApp = RequireToken(request_response(metrics_endpoint))
    if services.settings.metrics_token:
        scrape = ScrapeToken(request_response(metrics_endpoint), scrape, services.settings.metrics_token)

    def bounded(app: ASGIApp) -> ASGIApp:
        """A2A bodies are bounded as the MCP SDK bounds its own: 413 before anything is parsed."""
        return RequestBodyLimitMiddleware(app, DEFAULT_MAX_REQUEST_BODY_SIZE)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with (
            mcp.session_manager.run(),
            background_loops(services, supervise=True),
        ):  # Starlette never runs a mounted app's lifespan
            yield

    routes = [
        Route("/healthz", _healthz, methods=["GET"]),
        protected("/readyz", request_response(readyz), ["GET"]),
        Route("/metrics", scrape, methods=["GET"]),
        protected("/events", request_response(event_stream(services)), ["GET"]),
        Route("/hooks/{name}", webhook_endpoint(services), methods=["POST"]),
        *a2a.card,
        Route("/.well-known/{name:path}", _no_such_metadata, methods=["GET"]),
        *[protected(r.path, bounded(r.app), ["POST"]) for r in a2a.jsonrpc if isinstance(r, Route)],
        # Some clients (the A2A TCK among them) post to the card's URL with a trailing slash.
        *[protected(r.path + "/", bounded(r.app), ["POST"]) for r in a2a.jsonrpc if isinstance(r, Route)],
        Mount(REST_PATH, app=RequireToken(bounded(a2a.rest))),
        Mount("/", app=RequireToken(mcp_app)),  # last: serves /mcp
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(RequestMetricsMiddleware, metrics=metrics),
            Middleware(AuthenticationMiddleware, backend=BearerAuthBackend(verifier)),
            Middleware(AuthContextMiddleware),  # the verified token, for the MCP tools to read
        ],
        lifespan=lifespan,
    )
