"""A webhook receiver on 127.0.0.1, served by uvicorn inside the test: it keeps every request it
gets and answers with the statuses the test scripts (then 200)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def free_port() -> int:
    # Not tests.serving's: importing that plugin module here would cost it its assert rewriting.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes
    status: int

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    def signed_with(self, secret: str) -> bool:
        """GitHub-style check: constant-time compare of sha256=<hex HMAC> over the raw body."""
        expected = "sha256=" + hmac.new(secret.encode(), self.raw, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get("x-agentfleet-signature-256", ""))


@dataclass
class Receiver:
    url: str
    answers: list[int] = field(default_factory=list)  # statuses to answer with, in order; then 200
    got: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def accepted(self) -> list[Received]:
        return [r for r in self.got if 200 <= r.status < 300]

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Received]:
        """Wait until `count` requests were accepted (2xx)."""
        async with asyncio.timeout(timeout):
            while len(self.accepted) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.accepted


@asynccontextmanager
async def receiver(answers: list[int] | None = None, delay_s: float = 0) -> AsyncIterator[Receiver]:
    port = free_port()
    made = Receiver(url=f"http://127.0.0.1:{port}/hook", answers=list(answers or []))

    async def hook(request: Request) -> Response:
        raw = await request.body()
        if delay_s:
            await asyncio.sleep(delay_s)
        status = made.answers.pop(0) if made.answers else 200
        made.got.append(Received(request.url.path, {k.lower(): v for k, v in request.headers.items()}, raw, status))
        made.arrived.set()
        return Response("ok" if status < 300 else "receiver says no", status_code=status)

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/hook/{rest:path}", hook, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), f"the receiver did not start on port {port}"
        await asyncio.sleep(0.01)
    try:
        yield made
    finally:
        server.should_exit = True
        await serving
