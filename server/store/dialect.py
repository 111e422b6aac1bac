"""Where SQLite and PostgreSQL differ: JSON-array subset tests, insert-or-ignore and cross-replica
notifications."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import psycopg
from sqlalchemy import ColumnElement, Connection, Engine, Row, Table, select, text
from sqlalchemy.dialects import postgresql, sqlite

TASK_CHANNEL = "agentfleet_tasks"
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def json_subset(dialect: str, small: str, big: str) -> str:
    """SQL true when every element of JSON array `small` is in JSON array `big` (SQL expressions)."""
    if dialect == "postgresql":
        return f"CAST({small} AS JSONB) <@ CAST({big} AS JSONB)"
    return (
        f"NOT EXISTS (SELECT 1 FROM json_each({small}) AS need "
        f"WHERE need.value NOT IN (SELECT have.value FROM json_each({big}) AS have))"
    )


def insert_ignoring_duplicates(
    conn: Connection, table: Table, values: dict[str, Any], unique_columns: str | list[str]
) -> bool:
    """INSERT unless a row with the same unique value exists (ON CONFLICT DO NOTHING on both);
    whether it inserted."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    columns = [unique_columns] if isinstance(unique_columns, str) else unique_columns
    # RETURNING, not rowcount: psycopg reports -1 for an INSERT … ON CONFLICT through SQLAlchemy.
    key = next(iter(table.primary_key.columns))
    statement = dialect.insert(table).values(values).on_conflict_do_nothing(index_elements=columns).returning(key)
    return conn.execute(statement).first() is not None


def lock_row(conn: Connection, table: Table, where: ColumnElement[bool]) -> Row[Any] | None:
    """Read one row and hold it for this transaction (SELECT … FOR UPDATE on PostgreSQL), so
    transactions acting on the same thing take turns. SQLite writers already take turns."""
    query = select(table).where(where)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).first()


def take_turns(conn: Connection, key: int) -> None:
    """Serialize transactions that count rows before inserting (a limit on how many may exist):
    a transaction-scoped advisory lock on PostgreSQL, shared by every replica. SQLite's write lock
    already makes writers take turns."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def notify(conn: Connection, channel: str, payload: dict[str, Any]) -> None:
    """PostgreSQL delivers NOTIFY on commit, so listeners never hear of work that was rolled back.
    SQLite has no such channel; parked claims there rely on in-process wake-ups and re-checks."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            _NOTIFY,
            {"channel": channel, "payload": json.dumps(payload, separators=(",", ":"))},
        )


async def listen(engine: Engine, channels: list[str]) -> AsyncIterator[tuple[str, str]]:
    """Yield each NOTIFY (channel, payload) on `channels` (PostgreSQL). The first item is ("", "")
    once the listener is subscribed, so callers know when they stopped missing notifications. Ends
    with psycopg.Error or OSError when the connection is lost."""
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for channel in channels:
            await conn.execute(f"LISTEN {channel}")
        yield "", ""
        async for note in conn.notifies():
            yield note.channel, note.payload
