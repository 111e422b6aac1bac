"""Shared pieces of the task-engine benchmarks (task_cycle, mcp_workers, parked_claimers).

Not a benchmark itself. Everything here is plumbing: stderr notes, percentiles, machine facts,
scratch PostgreSQL databases, and a real `agentfleet serve` child process that is always stopped.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_PROFILES = REPO_ROOT / "tests" / "profiles"  # holds `worker` (max_concurrency 64)
DEFAULT_PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
HEALTH_DEADLINE_S = 60.0
STOP_DEADLINE_S = 20.0

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def exit_on_sigterm() -> None:
    """SIGTERM raises SystemExit, so the parent's finally blocks stop children and remove temp dirs."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def make_note(prefix: str):  # noqa: ANN201 - tiny closure
    def note(message: str) -> None:
        print(f"[{prefix}] {message}", file=sys.stderr, flush=True)

    return note


# -- numbers ---------------------------------------------------------------------------------------


def percentile_ns(sorted_ns: list[int], q: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in milliseconds."""
    if not sorted_ns:
        return float("nan")
    rank = max(1, min(len(sorted_ns), int(-(-q * len(sorted_ns) // 100))))
    return sorted_ns[rank - 1] / 1e6


def summarise_ns(samples: list[int]) -> dict[str, Any]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}
    return {
        "n": len(ordered),
        "p50_ms": round(percentile_ns(ordered, 50), 3),
        "p90_ms": round(percentile_ns(ordered, 90), 3),
        "p99_ms": round(percentile_ns(ordered, 99), 3),
        "mean_ms": round(statistics.fmean(ordered) / 1e6, 3),
        "max_ms": round(ordered[-1] / 1e6, 3),
    }


def version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    import sqlite3

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        **{name: version_of(name) for name in ("mcp", "sqlalchemy", "psycopg", "uvicorn", "uvloop")},
    }


def load_average() -> list[float]:
    """1/5/15-minute load averages: other work on the machine skews every number here."""
    return [round(x, 2) for x in os.getloadavg()]


def proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process in KiB (None if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def vmhwm_kb(pid: int) -> int | None:
    """Peak RSS (VmHWM) of a process in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


# -- PostgreSQL scratch databases ------------------------------------------------------------------


def pg_reachable(url: str, timeout_s: int = 3) -> str | None:
    """None when the server answers; else why not."""
    import psycopg

    try:
        with psycopg.connect(_libpq(url, "postgres"), connect_timeout=timeout_s, autocommit=True) as conn:
            conn.execute("SELECT 1")
        return None
    except (psycopg.Error, OSError) as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def _libpq(url: str, database: str | None = None) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


@contextlib.contextmanager
def pg_scratch_database(server_url: str, label: str, migrate: bool = True) -> Iterator[str]:
    """CREATE a fresh database on the server in `server_url` (its own database part is only used
    to connect), migrate it with the project's migrations, yield its URL, DROP it afterwards."""
    import psycopg

    name = f"agentfleet_bench_{label}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = _libpq(server_url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _libpq(server_url, name)
    try:
        if migrate:
            from server.store import migrate as migrations
            from server.store.database import create_store_engine

            engine = create_store_engine(url)
            try:
                migrations.upgrade(engine)
            finally:
                engine.dispose()
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def store_kind(database_url: str | None) -> str:
    if not database_url:
        return "sqlite"
    from server.store.database import is_sqlite

    return "sqlite" if is_sqlite(database_url) else "postgresql"


# -- a real `agentfleet serve` ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_command() -> list[str]:
    """`python -m server.cli`, or AGENTFLEET_BENCH_SERVE_CMD (split on spaces) for what-if runs,
    e.g. a wrapper that patches the server before calling server.cli.main."""
    custom = os.environ.get("AGENTFLEET_BENCH_SERVE_CMD")
    return custom.split() if custom else [sys.executable, "-m", "server.cli"]


class ServeChild:
    """`python -m server.cli serve --port P` with its own data dir and admin token.

    stdout/stderr go to files in the temp dir (shown on failure); stop() sends SIGTERM, then SIGKILL.
    """

    def __init__(
        self,
        admin_token: str,
        database_url: str | None = None,
        extra_env: dict[str, str] | None = None,
        note: Any = None,
    ) -> None:
        self.admin_token = admin_token
        self.database_url = database_url
        self.extra_env = dict(extra_env or {})
        self.note = note or make_note("serve")
        self.tmp = Path(tempfile.mkdtemp(prefix="agentfleet-bench-serve-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLEET_")}
        env.update(
            AGENTFLEET_DATA_DIR=str(self.tmp / "data"),
            AGENTFLEET_ADMIN_TOKEN=self.admin_token,
            AGENTFLEET_PROFILES_DIR=str(TEST_PROFILES),
            AGENTFLEET_LOG_LEVEL="warning",
            PYTHONUNBUFFERED="1",
        )
        if self.database_url:
            env["AGENTFLEET_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env

    def start(self) -> ServeChild:
        for _ in range(3):
            self.port = free_port()
            with (self.tmp / "serve.stdout").open("ab") as out, (self.tmp / "serve.stderr").open("ab") as err:
                self.proc = subprocess.Popen(
                    [*serve_command(), "serve", "--port", str(self.port)],
                    cwd=REPO_ROOT,
                    env=self.env(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                )
            if self._wait_healthy():
                self.note(f"agentfleet serve pid {self.proc.pid} healthy at {self.base_url}")
                return self
            if "address already in use" not in self.output().lower():
                break
        raise RuntimeError(f"agentfleet serve did not become healthy:\n{self.output()[-4000:]}")

    def _wait_healthy(self) -> bool:
        import httpx2

        assert self.proc is not None
        deadline = time.monotonic() + HEALTH_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if httpx2.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return True
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        return False

    def output(self) -> str:
        parts = []
        for name in ("serve.stdout", "serve.stderr"):
            path = self.tmp / name
            if path.exists():
                parts.append(f"--- {name} ---\n" + path.read_text(errors="replace"))
        return "\n".join(parts)

    def stderr_tail(self, chars: int = 2000) -> str:
        path = self.tmp / "serve.stderr"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.note("server child ignored SIGTERM; killing it")
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextlib.contextmanager
def serve_child(
    admin_token: str, database_url: str | None = None, extra_env: dict[str, str] | None = None, note: Any = None
) -> Iterator[ServeChild]:
    child = ServeChild(admin_token, database_url, extra_env, note)
    try:
        yield child.start()
    finally:
        child.cleanup()


@contextlib.contextmanager
def reaped(procs: list[subprocess.Popen[Any]]) -> Iterator[list[subprocess.Popen[Any]]]:
    """Stop the child processes appended to `procs` on exit: nest it inside serve_child so the
    clients go before the server (they would only log connection errors otherwise)."""
    try:
        yield procs
    finally:
        stop_processes(procs)


def stop_processes(procs: list[subprocess.Popen[Any]], timeout_s: float = 10.0) -> None:
    """Terminate the given child processes (ours, by handle): SIGTERM, wait, SIGKILL."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def spawn_script(script: str, argv: list[str], first_line: str) -> subprocess.Popen[str]:
    """Run `python SCRIPT ARGV…` as a child with line-buffered text pipes; `first_line` (tokens)
    goes to its stdin, so secrets never appear in argv. Its stderr is ours."""
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(script), *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        bufsize=1,
        cwd=REPO_ROOT,
    )
    assert proc.stdin is not None
    proc.stdin.write(first_line + "\n")
    proc.stdin.flush()
    return proc


def read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """One line from a child's stdout before `deadline` (time.monotonic()), or an error."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if sel.select(timeout=0.5):
                line = proc.stdout.readline()
                if line:
                    return line
                raise RuntimeError(f"child {proc.pid} closed stdout (exit code {proc.wait()})")
            if proc.poll() is not None:
                raise RuntimeError(f"child {proc.pid} exited with {proc.returncode}")
    raise TimeoutError(f"child {proc.pid} said nothing before the deadline")


def start_py_spy(pid: int, out: Path, gil_only: bool = False) -> subprocess.Popen[bytes] | None:
    """py-spy record of `pid` (all threads, raw collapsed stacks) until stop_py_spy. gil_only:
    sample only the thread holding the GIL (Python CPU), not threads waiting on locks or I/O."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("[bench] py-spy not found; no profile recorded", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", str(out), "-t"]
    return subprocess.Popen(cmd + (["--gil"] if gil_only else []), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- MCP client plumbing ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def mcp_client(base_url: str, token: str, mode: str = "auto", timeout_s: float = 120.0, http: Any = None):  # noqa: ANN201
    """One `mcp.Client` over Streamable HTTP with a bearer token. Pass `http` to share an httpx2
    client (and its connection pool) between sessions."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with contextlib.AsyncExitStack() as stack:
        if http is None:
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)
            )
        client = await stack.enter_async_context(
            Client(streamable_http_client(f"{base_url}/mcp", http_client=http), mode=mode)
        )
        yield client


class ToolFailed(RuntimeError):
    pass


async def call(client: Any, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        text = result.content[0].text if result.content else "no content"
        raise ToolFailed(f"{tool} failed: {text}")
    if result.structured_content is None:
        raise ToolFailed(f"{tool} returned no structured content")
    return result.structured_content


async def spawn_agents(base_url: str, admin_token: str, count: int, profile: str = "worker") -> list[dict[str, Any]]:
    """Spawn `count` agents over MCP with the admin token; returns [{'id', 'token'}]."""
    spawned = []
    async with mcp_client(base_url, admin_token) as admin:
        for _ in range(count):
            got = await call(admin, "agent_spawn", profile=profile)
            spawned.append({"id": got["agent"]["id"], "token": got["token"]})
    return spawned
