"""Running the app under uvicorn, the one way `agentfleet serve` (and the benches) do it."""

from __future__ import annotations

import uvicorn
from starlette.applications import Starlette

from server.settings import Settings


def uvicorn_server(app: Starlette, settings: Settings) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=False,
        lifespan="on",
    )
    return uvicorn.Server(config)
