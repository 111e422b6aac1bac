"""One suite, two stores: every store-touching test runs on SQLite and, when
AGENTFLEET_TEST_DATABASE_URL is set, on PostgreSQL too (a fresh database per test, cloned from a
migrated template). With AGENTFLEET_REQUIRE_POSTGRES=1 (CI) the run fails if no PostgreSQL test ran."""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
from mcp import Client
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from server.clock import FakeClock
from server.metrics import Metrics
from server.services.container import Services, build_services
from server.settings import Settings
from server.store import migrate
from server.store.database import create_store_engine, normalize_url
from tools import build_mcp

ADMIN_TOKEN = "afk_test-admin-token-0123456789abcdefghijklmnop"
TEST_PROFILES = Path(__file__).parent / "profiles"
PG_URL = os.environ.get("AGENTFLEET_TEST_DATABASE_URL")
REQUIRE_PG = os.environ.get("AGENTFLEET_REQUIRE_POSTGRES") == "1"
_pg_tests_run = 0
_db_counter = itertools.count()
_template: str | None = None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _with_database(url: str, database: str) -> str:
    """The same server and credentials (password included, unmasked), another database."""
    return make_url(normalize_url(url)).set(database=database).render_as_string(hide_password=False)


def _admin_url(url: str) -> str:
    return _with_database(url, "postgres")


def _pg_template() -> str:
    """Migrate one template database per session; each test clones it (fast, isolated)."""
    global _template
    if _template is None:
        assert PG_URL
        base = make_url(normalize_url(PG_URL)).database
        name = f"{base}_tpl_{uuid.uuid4().hex[:8]}"
        admin = create_engine(_admin_url(PG_URL), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        engine = create_store_engine(_with_database(PG_URL, name))
        migrate.upgrade(engine)
        engine.dispose()
        _template = name
    return _template


def _fresh_pg_database() -> tuple[str, Callable[[], None]]:
    assert PG_URL
    template = _pg_template()
    name = f"{template}_{next(_db_counter)}"
    admin = create_engine(_admin_url(PG_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return _with_database(PG_URL, name), drop


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _template is not None:
        admin = create_engine(_admin_url(PG_URL or ""), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{_template}" WITH (FORCE)'))
        admin.dispose()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller adds the counts up
        workeroutput["pg_tests_run"] = _pg_tests_run
        return
    if REQUIRE_PG and _pg_tests_run == 0 and exitstatus in (0, 1) and session.testscollected:
        print("\nAGENTFLEET_REQUIRE_POSTGRES=1 but no PostgreSQL test ran: failing the run")
        session.exitstatus = 3


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """pytest-xdist: a worker finished; count its PostgreSQL tests toward AGENTFLEET_REQUIRE_POSTGRES."""
    global _pg_tests_run
    _pg_tests_run += getattr(node, "workeroutput", {}).get("pg_tests_run", 0)


STORES = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not PG_URL,
            reason=("set AGENTFLEET_TEST_DATABASE_URL=postgresql://… to run the PostgreSQL half of the suite"),
        ),
    ),
]


# Marks for tests of several `agentfleet serve` replicas: they share a store only on PostgreSQL.
REPLICA_TEST = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.skipif(
        not PG_URL,
        reason="replicas share a store only on PostgreSQL: set AGENTFLEET_TEST_DATABASE_URL=postgresql://… to run them",
    ),
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),  # not the sqlite half
]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite file per test process; each test starts from a copy of it (a copy
    costs a millisecond, migrating from nothing a tenth of a second)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "agentfleet.db"
    engine = create_store_engine(f"sqlite:///{path}")
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()  # the last connection to close checkpoints the WAL into the main file
    assert not path.with_name(path.name + "-wal").exists() or not path.with_name(path.name + "-wal").stat().st_size
    return path


@pytest.fixture(params=STORES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated store for one test."""
    global _pg_tests_run
    if request.param == "sqlite":
        store = tmp_path / "store" / "agentfleet.db"
        store.parent.mkdir()
        shutil.copyfile(request.getfixturevalue("sqlite_template"), store)
        yield f"sqlite:///{store}"
        return
    _pg_tests_run += 1
    url, drop = _fresh_pg_database()
    yield url
    drop()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        port=8765,
        profiles_dir=TEST_PROFILES,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    built = build_services(settings, ADMIN_TOKEN)
    yield built
    built.close()


@pytest.fixture
def fake_time_services(settings: Settings, clock: FakeClock) -> Iterator[Services]:
    built = build_services(settings, ADMIN_TOKEN, clock=clock)
    yield built
    built.close()


Connect = Callable[..., AbstractAsyncContextManager[Client]]


def connector(services: Services) -> Connect:
    """connect(token=None) -> an in-process MCP client acting as admin, or as token's principal."""
    metrics = Metrics(services.fleet, services.instruments)

    @asynccontextmanager
    async def open_client(token: str | None = None, mode: str = "auto") -> AsyncIterator[Client]:
        async with Client(build_mcp(services, metrics, default_token=token), mode=mode) as client:
            yield client

    return open_client


@pytest.fixture
def connect(services: Services) -> Connect:
    return connector(services)


@pytest.fixture
def fake_connect(fake_time_services: Services) -> Connect:
    """Like connect, over services whose clock only moves when the test says (see `clock`)."""
    return connector(fake_time_services)
