"""The command's stderr, line by line, to the task's log (task_log): whoever follows the task sees
what the command says while it runs, not only the tail quoted when it fails.

Lines are batched (a call every FLUSH_S, or sooner when MAX_BATCH are waiting) so a chatty
command costs few calls; each is cut to the server's line bound and cleaned of what no store
keeps. When the server falls behind, the oldest waiting lines are dropped (an attempt keeps only
its newest lines anyway) and the drop is said in the log. A refusal never fails the task: logs
are a courtesy, the result is the work."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

from server.worker.client import FleetClient, ProtocolError, ToolError, Unauthorized, Unreachable

FLUSH_S = 0.5
MAX_BATCH = 200  # the server's lines per call
MAX_LINE = 4000  # the server's characters per line
MAX_PENDING = 1000  # the server's lines kept per attempt

log = logging.getLogger("agentfleet.worker")


def clean(line: str) -> str:
    """What every store can hold: no NUL, no lone surrogate, at most MAX_LINE characters."""
    line = line.replace("\x00", "\\0")
    line = line.encode("utf-8", errors="replace").decode("utf-8")
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…"


class StderrToTaskLog:
    def __init__(self, client: FleetClient, task_id: str, traceparent: str | None = None) -> None:
        self._client = client
        self._traceparent = traceparent
        self._task_id = task_id
        self._pending: collections.deque[str] = collections.deque()
        self._dropped = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._gave_up = False
        self._task = asyncio.ensure_future(self._run())

    def line(self, text: str) -> None:
        """A line of stderr (without its line break)."""
        if self._gave_up:
            return
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self._dropped += 1
        self._pending.append(clean(text))
        if len(self._pending) >= MAX_BATCH:
            self._wake.set()

    async def close(self) -> None:
        """Send what is waiting, then stop: before the task is completed or failed (then it is no
        longer ours to log to)."""
        self._closed = True
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while not self._gave_up:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_S)
            self._wake.clear()
            while self._pending and not self._gave_up:
                await self._send()
            if self._closed:
                return

    async def _send(self) -> None:
        room = MAX_BATCH - 1 if self._dropped else MAX_BATCH
        batch = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
        if self._dropped:
            note = f"[agentfleet worker: {self._dropped} earlier stderr lines dropped: the server fell behind]"
            batch.insert(0, note)
            self._dropped = 0
        try:
            await self._client.call(
                "task_log", {"task_id": self._task_id, "lines": batch}, traceparent=self._traceparent
            )
        except (ToolError, Unauthorized, ProtocolError) as exc:
            # The lease is gone, or the server does not take the lines: stop trying for this task.
            log.warning("stderr of %s not logged to the task: %s", self._task_id, exc)
            self._gave_up = True
        except Unreachable as exc:
            log.warning("stderr of %s not logged to the task (server unreachable: %s)", self._task_id, exc)
