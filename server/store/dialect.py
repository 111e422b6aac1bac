"""Where SQLite and PostgreSQL differ: JSON-array subset tests and cross-replica notifications."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, text

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


def notify(conn: Connection, channel: str, payload: dict[str, Any]) -> None:
    """PostgreSQL delivers NOTIFY on commit, so listeners never hear of work that was rolled back.
    SQLite has no such channel; parked claims there rely on in-process wake-ups and re-checks."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": channel, "payload": json.dumps(payload, separators=(",", ":"))},
        )
