"""Running the app under uvicorn, the one way `agentfleet serve` (and the benches) do it."""

from __future__ import annotations

from collections.abc import Callable
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from server.settings import Settings


class _Server(uvicorn.Server):
    """Wakes every parked long-poll the moment a shutdown starts: uvicorn waits for open requests
    to finish before the app's shutdown runs, so a claim parked for 30 s would hold the stop."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


def uvicorn_server(app: Starlette, settings: Settings, on_exit: Callable[[], None] = lambda: None) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        log_config=None,  # its records go through our handler (server/logs.py): one format, secrets masked
        access_log=False,  # ours (server/http/observe.py) carries the principal, request id and duration
        lifespan="on",
    )
    return _Server(config, on_exit)
