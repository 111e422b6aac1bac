"""Engine construction and the one way services touch the store: a unit of work run in one
thread hop, inside one short transaction.

SQLite runs in WAL mode with `BEGIN IMMEDIATE` for writes, so a write transaction takes the
write lock up front instead of failing on upgrade; reads use deferred transactions and do not
block writers. PostgreSQL uses psycopg 3 (sync) at READ COMMITTED; rules that span rows use
conditional updates and row locks.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from server import tracing
from server.errors import Unavailable

T = TypeVar("T")

_READONLY = "agentfleet_readonly"
_AFTER_COMMIT = "agentfleet_after_commit"
_BEFORE_COMMIT = "agentfleet_before_commit"
_TX_LOCAL = "agentfleet_tx_local"
_ON_EVENTS = "agentfleet_on_events"
READ_THREADS = 8
DEADLOCK_ATTEMPTS = 5
WRITE_THREADS_PG = 12


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
    # Sized to the worker threads so no transaction waits for (or opens) a connection; no pre-ping
    # round trip per transaction: a dead connection fails its statement and the next one reconnects.
    return create_engine(url, pool_size=READ_THREADS + WRITE_THREADS_PG, max_overflow=4, pool_recycle=1800)


def check_reachable(engine: Engine) -> None:
    """Connect once, so a wrong host, port, database or password is one clear line at start
    rather than a traceback from deep in a migration."""
    try:
        with engine.connect():
            pass
    except OperationalError as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else type(exc).__name__
        shown = engine.url.render_as_string(hide_password=True)
        raise Unavailable(
            f"cannot open the store {shown}: {reason}; check --database-url / AGENTFLEET_DATABASE_URL "
            "and that the database server is running and the database exists"
        ) from exc


def after_commit(conn: Connection, callback: Callable[[], None]) -> None:
    """Run `callback` on the event loop once this write transaction has committed (never if it
    rolls back): how in-process wake-ups follow the change that justifies them."""
    conn.info[_AFTER_COMMIT].append(callback)


def before_commit(conn: Connection, callback: Callable[[Connection], None]) -> None:
    """Run `callback(conn)` as the last work of this write transaction, after the unit of work:
    how work that must come last (chaining the audit rows) is done once per transaction."""
    conn.info[_BEFORE_COMMIT].append(callback)


def announce_events(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """This transaction appended `rows` to the event log: once it commits, tell the listener."""
    listener = conn.info[_TX_LOCAL].get(_ON_EVENTS)
    if listener is not None:
        after_commit(conn, lambda: listener(rows))


def tx_local(conn: Connection) -> dict[str, Any]:
    """State that lives exactly as long as this write transaction. (`conn.info` itself follows the
    pooled DBAPI connection into later transactions, so nothing per-transaction may stay there.)"""
    return conn.info[_TX_LOCAL]


class Database:
    """Runs units of work. Each call is one transaction in one worker-thread hop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._reader = engine.execution_options(**{_READONLY: True})
        # SQLite has one write lock: one writer lane per process means our own writers queue in
        # memory instead of sleeping in SQLite's busy handler. Readers never wait for writers.
        # Plain executors: the cheapest hop asyncio offers (measured ~3x cheaper than anyio's).
        writers = 1 if self.dialect == "sqlite" else WRITE_THREADS_PG
        self._write_lane = ThreadPoolExecutor(writers, thread_name_prefix="store-write")
        self._read_lane = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="store-read")
        # Called on the event loop with the events a committed write appended (the event bus).
        self.on_events: Callable[[list[dict[str, Any]]], None] | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        return self._write_tx(None, fn, *args)

    def _write_tx(self, loop: asyncio.AbstractEventLoop | None, fn: Callable[..., T], *args: Any) -> T:
        for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
            try:
                return self._write_once(loop, fn, *args)
            except OperationalError as exc:
                # PostgreSQL broke a lock cycle by aborting this transaction; nothing of it was
                # applied, so the unit of work runs again from the start.
                if attempt < DEADLOCK_ATTEMPTS and isinstance(exc.orig, psycopg.errors.DeadlockDetected):
                    time.sleep(0.001 * attempt)
                    continue
                raise Unavailable("the store is unreachable or busy; retry shortly") from exc
        raise AssertionError("unreachable")

    def _write_once(self, loop: asyncio.AbstractEventLoop | None, fn: Callable[..., T], *args: Any) -> T:
        with self.engine.begin() as conn:
            conn.info[_AFTER_COMMIT] = []
            conn.info[_BEFORE_COMMIT] = []
            conn.info[_TX_LOCAL] = {_ON_EVENTS: self.on_events}
            result = fn(conn, *args)
            for last in conn.info.pop(_BEFORE_COMMIT):
                last(conn)
            callbacks: list[Callable[[], None]] = conn.info.pop(_AFTER_COMMIT)
        for callback in callbacks:
            # On the event loop, whether or not the caller still awaits: a wake-up is never lost to
            # a cancelled caller.
            if loop is None:
                callback()
            else:
                loop.call_soon_threadsafe(callback)
        return result

    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            with self._reader.begin() as conn:
                return fn(conn, *args)
        except OperationalError as exc:
            raise Unavailable("the store is unreachable or busy; retry shortly") from exc

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(conn, *args) in one write transaction. If the caller is cancelled the
        transaction still runs to its end: it is never half-applied."""
        loop = asyncio.get_running_loop()
        if tracing.active():  # the unit of work runs in the caller's trace context (spans it makes nest)
            context = contextvars.copy_context()
            return await loop.run_in_executor(self._write_lane, context.run, self._write_tx, loop, fn, *args)
        return await loop.run_in_executor(self._write_lane, self._write_tx, loop, fn, *args)

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._read_lane, self.read_sync, fn, *args)

    def ping(self) -> bool:
        try:
            with self._reader.begin() as conn:
                conn.exec_driver_sql("SELECT 1")
            return True
        except DBAPIError:
            return False

    def dispose(self) -> None:
        self._write_lane.shutdown(wait=True)
        self._read_lane.shutdown(wait=True)
        self.engine.dispose()
