"""One run of the worker's command: an argument list (never a shell) in a process group of its
own, the task JSON on its stdin, its stdout captured up to a cap and the tail of its stderr kept.

Its own group means `kill` reaches everything it started (unless something made a group of its
own) and a Ctrl-C meant for the worker does not reach it; staying in the worker's session means
the supervisor's kill of a process agent's session takes it too. Anything left in the group
holding its pipes once it has exited is killed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

KILL_GRACE_S = 3.0  # SIGTERM, then this long, then SIGKILL
PIPE_GRACE_S = 2.0  # after it exits: how long leftovers may keep its pipes open
CHUNK = 65_536
STDERR_KEEP = 16_384  # bytes of stderr kept (the report quotes its last 2,000 characters)
LINE_MAX_BYTES = 16_384  # a stderr "line" longer than this is passed on in pieces


def own_python(argv: Sequence[str]) -> list[str]:
    """In a process agent the server runs (AGENTFLEET_AGENT_ID is set by it), `python` / `python3`
    at the head of a command is the worker's own interpreter, as it is in the server's own command
    line: a PATH lookup may find a launcher (a pyenv shim, say) that the agent's sandbox does not
    let it run. A worker someone starts by hand keeps PATH's `python`, which may be their project's."""
    head, *rest = argv
    if head in ("python", "python3") and os.environ.get("AGENTFLEET_AGENT_ID"):
        return [sys.executable, *rest]
    return [head, *rest]


@dataclass(frozen=True)
class Finished:
    returncode: int  # negative: killed by that signal
    stdout: bytes
    stdout_overflow: bool  # it wrote more than the cap (and was killed for it)
    stderr_tail: str

    def status(self) -> str:
        if self.returncode < 0:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"killed by signal {-self.returncode}"
        return f"exit status {self.returncode}"


class Command:
    def __init__(
        self,
        process: asyncio.subprocess.Process,
        stdin: bytes,
        stdout_cap: int,
        on_stderr_line: Callable[[str], None] | None = None,
    ) -> None:
        self.process = process
        self._on_line = on_stderr_line
        self._partial = bytearray()
        self.pid = process.pid
        self._stdout_cap = stdout_cap
        self._stdout = bytearray()
        self._overflow = False
        self._stderr = bytearray()
        self._kill: asyncio.Task[None] | None = None
        self._pipes = [
            asyncio.ensure_future(self._feed(stdin)),
            asyncio.ensure_future(self._read_stdout()),
            asyncio.ensure_future(self._read_stderr()),
        ]

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        stdin: bytes,
        env: Mapping[str, str],
        stdout_cap: int,
        on_stderr_line: Callable[[str], None] | None = None,
    ) -> Command:
        """Raises OSError when it cannot be started (not found, not executable). Each line the
        command writes on stderr goes to `on_stderr_line` as it comes."""
        process = await asyncio.create_subprocess_exec(
            *own_python(argv),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
            # A group of its own, so a cancel kills what it started without the worker; in the
            # worker's session, so the supervisor's kill of a process agent reaches it too.
            process_group=0,
        )
        return cls(process, stdin, stdout_cap, on_stderr_line)

    async def wait(self) -> Finished:
        """Until it has exited and its pipes are closed."""
        returncode = await self.process.wait()
        _, pending = await asyncio.wait(self._pipes, timeout=PIPE_GRACE_S)
        if pending:  # something it started still holds a pipe
            self._signal(signal.SIGKILL)
            await asyncio.wait(pending, timeout=PIPE_GRACE_S)
            for pipe in pending:
                pipe.cancel()
        if self._kill is not None:
            await self._kill
        return Finished(
            returncode=returncode,
            stdout=bytes(self._stdout),
            stdout_overflow=self._overflow,
            stderr_tail=self._stderr.decode("utf-8", errors="replace"),
        )

    async def kill(self, grace_s: float = KILL_GRACE_S) -> None:
        """SIGTERM to the whole group; SIGKILL to what is left after `grace_s` (or once it exits)."""
        self._signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.process.wait()), grace_s)
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def _feed(self, data: bytes) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it need not read it all
            stdin.write(data)
            await stdin.drain()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            stdin.close()
            await stdin.wait_closed()

    async def _read_stdout(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        while chunk := await stdout.read(CHUNK):
            if self._overflow:
                continue  # drain until it dies
            self._stdout += chunk
            if len(self._stdout) > self._stdout_cap:
                self._overflow = True
                self._stdout.clear()
                self._kill = asyncio.ensure_future(self.kill())

    async def _read_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        while chunk := await stderr.read(CHUNK):
            self._stderr += chunk
            if len(self._stderr) > 2 * STDERR_KEEP:
                del self._stderr[:-STDERR_KEEP]
            if self._on_line is not None:
                self._lines(chunk)
        if self._on_line is not None and self._partial:  # a last line without a line break
            self._on_line(self._partial.decode("utf-8", errors="replace"))
            self._partial.clear()

    def _lines(self, chunk: bytes) -> None:
        assert self._on_line is not None
        self._partial += chunk
        *complete, rest = self._partial.split(b"\n")
        for line in complete:
            self._on_line(line.rstrip(b"\r").decode("utf-8", errors="replace"))
        self._partial = bytearray(rest)
        while len(self._partial) > LINE_MAX_BYTES:
            self._on_line(self._partial[:LINE_MAX_BYTES].decode("utf-8", errors="replace"))
            del self._partial[:LINE_MAX_BYTES]
