"""Counts and times every HTTP request, labelled by route rather than raw path (bounded labels)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.metrics import Metrics

KNOWN_ROUTES = ("/mcp", "/a2a", "/healthz", "/readyz", "/metrics", "/.well-known/agent-card.json")


def route_label(path: str) -> str:
    for route in KNOWN_ROUTES:
        if path == route or path.startswith(route + "/"):
            return route
    return "other"


class RequestMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._app(scope, receive, send_with_status)
        finally:
            route = route_label(scope["path"])
            self._metrics.http_requests.labels(scope["method"], route, str(status)).inc()
            self._metrics.http_latency.labels(route).observe(time.perf_counter() - started)
