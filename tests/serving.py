"""A real `agentfleet serve` subprocess for protocol tests.

`FleetServer` starts `python -m server.cli serve --port <free port>` with its own data dir, store
URL and admin token, waits until GET /healthz answers, and stops it with SIGTERM (`stop`) or
SIGKILL (`kill`). Its stdout and stderr go to files under the test's tmp_path (logs/NAME.N.stdout,
.stderr), so a failure can show what the server said.

Fixtures: load them with `pytest_plugins = ["tests.serving"]` in the test module, and import from
here only under TYPE_CHECKING (a plugin imported before it is registered loses assert rewriting).

- `serve(database_url, *, data_dir=None, admin_token=ADMIN_TOKEN, env=None, port=None)` starts a
  server and stops it at teardown; call it again with the same arguments to restart on the same
  store (and with the same `port`, on the same address).
  Pair it with tests.conftest's function-scoped `database_url` for an empty store per test.
- `shared_fleet` is one server per test session and store kind (`shared_database_url`: SQLite, and
  PostgreSQL when AGENTFLEET_TEST_DATABASE_URL is set), for tests that tolerate each other's data.

When a test using them fails, the servers' output is written to the terminal.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests import conftest
from tests.conftest import ADMIN_TOKEN, STORES

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
PORT_ATTEMPTS = 3
HTTP_TIMEOUT = 30.0


class ServerFailed(AssertionError):
    """The server did not come up (or did not go down) as it should; carries its output."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def server_environment(
    data_dir: Path, database_url: str | None, admin_token: str | None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The parent's environment without any AGENTFLEET_* setting, plus this server's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLEET_")}
    env["AGENTFLEET_DATA_DIR"] = str(data_dir)
    if database_url is not None:
        env["AGENTFLEET_DATABASE_URL"] = database_url
    if admin_token is not None:
        env["AGENTFLEET_ADMIN_TOKEN"] = admin_token
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class FleetServer:
    """One `agentfleet serve` process. Use `start()`/`stop()`, or `with FleetServer(...) as s:`."""

    def __init__(
        self,
        *,
        data_dir: Path,
        log_dir: Path,
        database_url: str | None = None,
        admin_token: str | None = ADMIN_TOKEN,
        name: str = "server",
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.database_url = database_url
        self.configured_admin_token = admin_token  # None: the server generates (or reuses) admin.token
        self.name = name
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.port = port or 0
        self.fixed_port = port  # a restart on the same address (process agents call back on it)
        self._attempt = 0

    # -- where and who --------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def admin_token(self) -> str:
        """The admin token this server accepts: the configured one, else DATA_DIR/admin.token."""
        if self.configured_admin_token is not None:
            return self.configured_admin_token
        return (self.data_dir / "admin.token").read_text(encoding="utf-8").strip()

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.{self._attempt}.stdout"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.{self._attempt}.stderr"

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace") if self.stderr_path.exists() else ""

    def output(self) -> str:
        code = None if self.process is None else self.process.poll()
        return (
            f"--- {self.name} ({self.base_url}, exit code {code}) stdout ---\n{self.stdout()}"
            f"--- {self.name} stderr ---\n{self.stderr()}"
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> FleetServer:
        assert self.process is None or self.process.poll() is not None, f"{self.name} is already running"
        for _ in range(PORT_ATTEMPTS):
            self._attempt += 1
            self.port = self.fixed_port or free_port()
            self._spawn()
            if self._wait_healthy(timeout):
                return self
            if "address already in use" not in self.stderr().lower():
                break  # not a lost race for the port: a real failure
        raise ServerFailed(f"agentfleet serve did not become healthy\n{self.output()}")

    def _spawn(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = server_environment(self.data_dir, self.database_url, self.configured_admin_token, self.extra_env)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server.cli", "serve", "--port", str(self.port)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )

    def _wait_healthy(self, timeout: float) -> bool:
        """Poll GET /healthz until it answers 200; False if the process exits first."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if http.get(self.url("/healthz")).status_code == 200 and self.process.poll() is None:
                        return True
                except httpx.TransportError:
                    pass
                time.sleep(POLL_INTERVAL)
        self.kill()
        raise ServerFailed(f"agentfleet serve did not answer /healthz within {timeout:.0f} s\n{self.output()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise ServerFailed(f"{self.name} ignored SIGTERM for {timeout:.0f} s\n{self.output()}") from None
        return self.process.returncode

    def kill(self) -> int:
        """SIGKILL: no shutdown code runs. Returns the exit code (-9)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        return self.process.returncode

    def __enter__(self) -> FleetServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- clients --------------------------------------------------------------------------------

    @asynccontextmanager
    async def mcp(self, token: str | None = None, mode: str = "auto") -> AsyncIterator[Client]:
        """An MCP client over Streamable HTTP with `token` (default: admin) as its bearer token.
        mode="auto" speaks 2026-07-28, mode="legacy" the 2025-11-25 initialize handshake."""
        headers = bearer(token if token is not None else self.admin_token)
        async with (
            httpx2.AsyncClient(headers=headers, timeout=HTTP_TIMEOUT) as http,
            Client(streamable_http_client(self.url("/mcp"), http_client=http), mode=mode) as client,
        ):
            yield client

    def http(self, token: str | None = None) -> httpx.AsyncClient:
        """A plain httpx client on this server (relative URLs work); with a bearer header when
        `token` is given. The A2A client accepts it as its httpx_client."""
        return httpx.AsyncClient(base_url=self.base_url, headers=bearer(token) if token else None, timeout=HTTP_TIMEOUT)


ServeFactory = Callable[..., FleetServer]


class _Started:
    """The servers one fixture started: stopped at teardown, their output shown if a test failed."""

    def __init__(self, request: pytest.FixtureRequest, log_dir: Path, prefix: str = "serve") -> None:
        self._request = request
        self._log_dir = log_dir
        self._prefix = prefix
        self._counter = itertools.count(1)
        self._failures_before = request.session.testsfailed
        self.servers: list[FleetServer] = []

    def start(
        self,
        database_url: str | None = None,
        *,
        data_dir: Path | None = None,
        admin_token: str | None = ADMIN_TOKEN,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> FleetServer:
        server = FleetServer(
            data_dir=data_dir or self._log_dir / "data",
            log_dir=self._log_dir / "logs",
            database_url=database_url,
            admin_token=admin_token,
            name=f"{self._prefix}-{next(self._counter)}",
            env=env,
            port=port,
        )
        self.servers.append(server)
        return server.start()

    def close(self) -> None:
        stuck: list[ServerFailed] = []
        for server in self.servers:
            try:
                server.stop()
            except ServerFailed as exc:  # stop the others all the same
                stuck.append(exc)
        if stuck:
            raise stuck[0]
        if self._request.session.testsfailed > self._failures_before and self.servers:
            text = "\n".join(server.output() for server in self.servers)
            header = f"agentfleet serve output for {self._request.node.nodeid}"
            plugins = self._request.config.pluginmanager
            reporter = plugins.get_plugin("terminalreporter")
            capture = plugins.get_plugin("capturemanager")
            if reporter is None or capture is None:
                print(f"{header}\n{text}", file=sys.stderr)
                return
            with capture.global_and_fixture_disabled():  # the last test on a shared server may have passed
                reporter.write_line(f"\n=== {header} ===\n{text}")


@pytest.fixture
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServeFactory]:
    """serve(database_url, *, data_dir=None, admin_token=ADMIN_TOKEN, env=None) -> a running server.

    database_url=None leaves AGENTFLEET_DATABASE_URL unset (SQLite in the data dir); admin_token=None
    leaves AGENTFLEET_ADMIN_TOKEN unset (generated into DATA_DIR/admin.token). Every call starts a
    new process (logs in tmp_path/logs/serve-N.*); the same data_dir and database_url make it a
    restart on the same store. All are stopped at teardown."""
    started = _Started(request, tmp_path)
    yield started.start
    started.close()


def _store_url(kind: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Callable[[], None]]:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('store') / 'agentfleet.db'}", lambda: None
    conftest._pg_tests_run += 1  # noqa: SLF001 - keeps AGENTFLEET_REQUIRE_POSTGRES honest
    return conftest._fresh_pg_database()  # noqa: SLF001


@pytest.fixture(scope="session", params=STORES)
def shared_database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Like tests.conftest's `database_url`, but one store per test session (and store kind)."""
    url, drop = _store_url(request.param, tmp_path_factory)
    yield url
    drop()


@pytest.fixture(scope="session")
def shared_fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, shared_database_url: str
) -> Iterator[FleetServer]:
    """One server per test session and store kind, for tests that do not need an empty store (a
    start costs ~2 s, nearly all of it imports). Tests sharing it must not assume absolute counts
    or an empty fleet."""
    started = _Started(request, tmp_path_factory.mktemp("shared-fleet"), prefix="shared")
    yield started.start(shared_database_url)
    started.close()


@pytest.fixture(scope="module", params=STORES)
def module_fleet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetServer]:
    """One server per test module and store kind, on a store of its own, with the test profiles
    (tests/profiles) besides the shipped ones: for tests whose agents must claim only their own work."""
    url, drop = _store_url(request.param, tmp_path_factory)
    started = _Started(request, tmp_path_factory.mktemp("module-fleet"), prefix="module")
    yield started.start(url, env={"AGENTFLEET_PROFILES_DIR": str(conftest.TEST_PROFILES)})
    started.close()
    drop()
