"""Engine construction and the one way services touch the store: a unit of work run in one
thread hop, inside one short transaction.

SQLite runs in WAL mode with `BEGIN IMMEDIATE` for writes, so a write transaction takes the
write lock up front instead of failing on upgrade; reads use deferred transactions and do not
block writers. PostgreSQL uses psycopg 3 (sync) at READ COMMITTED; rules that span rows use
conditional updates and row locks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import anyio
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from server.errors import Unavailable

P = ParamSpec("P")
T = TypeVar("T")

_READONLY = "agentfleet_readonly"


def normalize_url(url: str) -> str:
    """Accept `postgresql://` and `postgres://` and pick the psycopg 3 driver for them."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_sqlite(url: str) -> bool:
    return make_url(normalize_url(url)).get_backend_name() == "sqlite"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (SIGKILL); only power loss can drop the
        # last transactions. Acknowledged work is never lost to a killed server.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        mode = "DEFERRED" if conn.get_execution_options().get(_READONLY) else "IMMEDIATE"
        conn.exec_driver_sql(f"BEGIN {mode}")


def create_store_engine(url: str) -> Engine:
    url = normalize_url(url)
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8, max_overflow=8
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


class Database:
    """Runs units of work. Each call is one transaction in one worker-thread hop."""

    def __init__(self, engine: Engine, *, max_threads: int = 16) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._reader = engine.execution_options(**{_READONLY: True})
        self._limiter = anyio.CapacityLimiter(max_threads)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            with self.engine.begin() as conn:
                return fn(conn, *args)
        except OperationalError as exc:
            raise Unavailable("the store is unreachable or busy; retry shortly") from exc

    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            with self._reader.begin() as conn:
                return fn(conn, *args)
        except OperationalError as exc:
            raise Unavailable("the store is unreachable or busy; retry shortly") from exc

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(self.write_sync, fn, *args, limiter=self._limiter)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(self.read_sync, fn, *args, limiter=self._limiter)

    def ping(self) -> bool:
        try:
            with self._reader.begin() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except DBAPIError:
            return False

    def dispose(self) -> None:
        self.engine.dispose()
