"""Every HTTP request is counted, timed (labelled by route rather than raw path: bounded labels),
given a request id (the caller's `X-Request-Id` when it is a sane one, else a new one, echoed on
the response) and written to the access log: one record per request with who asked, what, the
status and how long it took."""

from __future__ import annotations

import logging
import re
import secrets
import time
from contextlib import AbstractContextManager

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from opentelemetry.trace import Span, SpanKind
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import tracing
from server.logs import request_id_var
from server.metrics import Metrics

KNOWN_ROUTES = ("/mcp", "/a2a", "/healthz", "/readyz", "/metrics", "/.well-known/agent-card.json")
REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")

access_log = logging.getLogger("agentfleet.access")


def route_label(path: str) -> str:
    for route in KNOWN_ROUTES:
        if path == route or path.startswith(route + "/"):
            return route
    return "other"


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            text = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(text):
                return text
            break
    return "req_" + secrets.token_hex(8)


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
        elif tracing.active():
            with _server_span(scope):
                await self._observed(scope, receive, send)
        else:
            await self._observed(scope, receive, send)

    async def _observed(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        try:
            await self._app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - started
            route = route_label(scope["path"])
            self._metrics.http_requests.labels(scope["method"], route, str(status)).inc()
            self._metrics.http_latency.labels(route).observe(elapsed)
            if access_log.isEnabledFor(logging.INFO):
                _log_access(scope, route, status, elapsed)
            request_id_var.reset(token)


def _server_span(scope: Scope) -> AbstractContextManager[Span]:
    """A server span for the request, under the caller's `traceparent` header if it sent one; the
    MCP SDK's span for a tool call nests in it (unless the call's _meta names another context)."""
    parent = None
    for name, value in scope.get("headers", ()):
        if name == b"traceparent":
            parent = tracing.context_from(value.decode("latin-1"))
            break
    route = route_label(scope["path"])
    return tracing.tracer.start_as_current_span(
        f"{scope['method']} {route}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": scope["method"], "http.route": route, "url.path": scope["path"][:300]},
    )


def _log_access(scope: Scope, route: str, status: int, elapsed: float) -> None:
    user = scope.get("user")
    principal = user.access_token.subject if isinstance(user, AuthenticatedUser) else None
    role = user.access_token.client_id if isinstance(user, AuthenticatedUser) else None
    client = scope.get("client")
    access_log.info(
        "%s %s %s",
        scope["method"],
        scope["path"],
        status,
        extra={
            "fields": {
                "kind": "access",
                "method": scope["method"],
                "path": scope["path"][:300],
                "route": route,
                "status": status,
                "duration_ms": round(elapsed * 1000, 3),
                "principal": principal,
                "role": role,
                "client": client[0] if client else None,
            }
        },
    )
