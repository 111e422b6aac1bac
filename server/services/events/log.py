"""The event log: append in the change's own transaction, read from a cursor, wait for more.

Appending stages rows during the unit of work and inserts them as its last step, like the audit
trail, so a rolled-back change leaves no event and a committed one always has its events.

Order. A cursor is (tx, seq). SQLite has one writer at a time, so `seq` is already commit order
(tx is 0). PostgreSQL hands out `seq` when a row is inserted, not when it commits, so a reader
could pass seq 11 (committed) while seq 10 is still uncommitted and then never see 10. Each row
therefore carries its writer's transaction id, rows are read in (tx, seq) order, and a reader sees
only rows whose transaction is older than the oldest one still running
(`pg_snapshot_xmin(pg_current_snapshot())`): every transaction below that horizon has ended, so no
row can later appear behind a cursor already handed out. The price: a long transaction anywhere
on the cluster holds the stream back until it ends (ours are milliseconds long).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, literal_column, or_, select

from server.clock import to_iso
from server.domain.principal import Principal
from server.domain.storable import scrubbed
from server.errors import InvalidInput
from server.ids import EVENT, new_id
from server.services.events.keys import announcement
from server.store.database import announce_events, before_commit, tx_local
from server.store.dialect import insert_ignoring_duplicates, notify
from server.store.tables import event_log
from server.store.tables import events as notices

EVENT_CHANNEL = "agentfleet_events"
_PENDING = "agentfleet_events_pending"
_DEPTH = "agentfleet_event_depth"
_CURSOR = re.compile(r"^[0-9a-f]{32}$")
_TYPE = re.compile(r"^[a-z_]+(\.[a-z_]+)*(\.\*)?$|^\*$")
START = "0" * 32
_PG_HORIZON = literal_column("CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT)")


def encode_cursor(tx: int, seq: int) -> str:
    """Fixed-width hex, so cursors compare as strings the way they compare as positions."""
    return f"{tx:016x}{seq:016x}"


def decode_cursor(cursor: str) -> tuple[int, int]:
    if not _CURSOR.fullmatch(cursor):
        raise InvalidInput("after_cursor is not an event cursor this server issued (32 hex digits)")
    return int(cursor[:16], 16), int(cursor[16:], 16)


@dataclass(frozen=True)
class Event:
    cursor: str
    id: str
    at_us: int
    type: str
    subject: str
    actor: str
    agent_id: str | None
    owner: str | None
    depth: int
    data: dict[str, Any]

    def as_scope(self) -> dict[str, Any]:
        """What trigger filters and templates read as `event.…`."""
        return {
            "id": self.id,
            "type": self.type,
            "subject": self.subject,
            "actor": self.actor,
            "agent_id": self.agent_id,
            "owner": self.owner,
            "at": to_iso(self.at_us),
            "cursor": self.cursor,
            "data": self.data,
        }


def emit(
    conn: Connection,
    at_us: int,
    type_: str,
    subject: str,
    data: dict[str, Any] | None = None,
    *,
    actor: Principal | str,
    agent_id: str | None = None,
    owner: str | None = None,
) -> None:
    """Stage an event for this transaction; it is written as the transaction's last step."""
    local = tx_local(conn)
    pending = local.get(_PENDING)
    if pending is None:
        pending = local[_PENDING] = []
        before_commit(conn, _write)
    pending.append(
        {
            "id": new_id(EVENT),
            "at": at_us,
            "type": type_,
            "subject": subject[:40],
            "actor": (actor if isinstance(actor, str) else actor.id)[:60],
            "agent_id": agent_id,
            "owner": None if owner is None else owner[:60],
            "depth": local.get(_DEPTH, 0),
            "data": data or {},
        }
    )


def note_once(conn: Connection, values: dict[str, Any], *, agent_id: str | None = None) -> None:
    """Record a once-only notice (`orch_events`, unique by its dedupe key: a budget threshold per
    period, an escalation) and, the first time only, append it to the event log."""
    if insert_ignoring_duplicates(conn, notices, values, "dedupe_key"):
        emit(conn, values["at"], values["kind"], values["subject"], values["detail"], actor="system", agent_id=agent_id)


def set_depth(conn: Connection, depth: int) -> None:
    """Events of this transaction are `depth` trigger firings deep (a trigger's own work)."""
    tx_local(conn)[_DEPTH] = depth


def staged_mark(conn: Connection) -> int:
    return len(tx_local(conn).get(_PENDING) or ())


def drop_staged_after(conn: Connection, mark: int) -> None:
    """A savepoint rolled back: its events go with it."""
    staged = tx_local(conn).get(_PENDING)
    if staged is not None:
        del staged[mark:]


_COLUMNS = "id, at, type, subject, actor, agent_id, owner, depth, data"
# On the driver's own cursor: an event is appended by most write transactions, and SQLAlchemy's
# statement pipeline costs several times what the INSERT itself does (bench/task_cycle.py).
_INSERT_SQLITE = f"INSERT INTO orch_event_log (tx, {_COLUMNS}) VALUES (0, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_PG = (
    f"INSERT INTO orch_event_log (tx, {_COLUMNS}) "
    "VALUES (CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT), %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def _values(row: dict[str, Any]) -> tuple[Any, ...]:
    data = json.dumps(row["data"], separators=(",", ":"), ensure_ascii=False)
    return (
        row["id"],
        row["at"],
        row["type"],
        row["subject"],
        row["actor"],
        row["agent_id"],
        row["owner"],
        row["depth"],
        data,
    )


def _write(conn: Connection) -> None:
    rows: list[dict[str, Any]] = tx_local(conn).pop(_PENDING)
    if not rows:
        return
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        if conn.dialect.name == "postgresql":
            cursor.executemany(_INSERT_PG, [_values(row) for row in rows])
        else:
            cursor.executemany(_INSERT_SQLITE, [_values(row) for row in rows])
    finally:
        cursor.close()
    if conn.dialect.name == "postgresql":
        notify(conn, EVENT_CHANNEL, announcement(rows))
    announce_events(conn, rows)


def _row_event(row: Any) -> Event:
    return Event(
        cursor=encode_cursor(row.tx, row.seq),
        id=row.id,
        at_us=row.at,
        type=row.type,
        subject=row.subject,
        actor=row.actor,
        agent_id=row.agent_id,
        owner=row.owner,
        depth=row.depth,
        data=row.data,
    )


def check_types(types: Iterable[str]) -> list[str]:
    """Event type patterns: exact (`task.dead`), a family (`task.*`), or everything (`*`)."""
    checked = []
    for pattern in types:
        if not _TYPE.fullmatch(pattern):
            raise InvalidInput(
                f"event type {scrubbed(pattern)[:60]!r} is not a type or pattern: write e.g. task.dead, task.* or *"
            )
        checked.append(pattern)
    return checked


def type_matches(event_type: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


@dataclass(frozen=True)
class EventQuery:
    types: tuple[str, ...] = ()
    subject: str | None = None
    after: str = START
    limit: int = 100


def read_events(conn: Connection, query: EventQuery, reader: Principal | None) -> tuple[list[Event], str]:
    """Events after `query.after` in log order that `reader` may see (None: the server itself), and
    the cursor to continue from (past the last row examined, so filtered-out rows are not re-read)."""
    tx, seq = decode_cursor(query.after)
    # Everything up to the head is examined, so a reader whose filter matched nothing moves on to
    # the head rather than scanning the same rows again (the head is read first: on PostgreSQL each
    # statement has its own snapshot, and rows the head does not cover wait for the next read).
    head = head_cursor(conn)
    if head <= query.after:
        return [], query.after
    top_tx, top_seq = decode_cursor(head)
    after = or_(event_log.c.tx > tx, and_(event_log.c.tx == tx, event_log.c.seq > seq))
    upto = or_(event_log.c.tx < top_tx, and_(event_log.c.tx == top_tx, event_log.c.seq <= top_seq))
    statement = select(event_log).where(after, upto).order_by(event_log.c.tx, event_log.c.seq).limit(query.limit)
    if query.subject is not None:
        statement = statement.where(event_log.c.subject == query.subject)
    if query.types and "*" not in query.types:
        exact = [t for t in query.types if not t.endswith(".*")]
        families = [event_log.c.type.startswith(t[:-1], autoescape=True) for t in query.types if t.endswith(".*")]
        statement = statement.where(or_(event_log.c.type.in_(exact), *families))
    if reader is not None and not reader.sees_all:
        me = reader.id
        statement = statement.where(or_(event_log.c.actor == me, event_log.c.agent_id == me, event_log.c.owner == me))
    events = [_row_event(row) for row in conn.execute(statement).all()]
    return events, events[-1].cursor if len(events) == query.limit else head


def head_cursor(conn: Connection) -> str:
    """The cursor of the newest readable event: where a follower that wants only new events starts."""
    statement = select(event_log.c.tx, event_log.c.seq)
    if conn.dialect.name == "postgresql":
        statement = statement.where(event_log.c.tx < _PG_HORIZON)
    row = conn.execute(statement.order_by(event_log.c.tx.desc(), event_log.c.seq.desc()).limit(1)).first()
    return START if row is None else encode_cursor(row.tx, row.seq)


def newest_cursor(conn: Connection) -> str:
    """The cursor of the newest event committed before this statement: where something that wants
    only events from now on starts. Not `head_cursor`: on PostgreSQL the readable head waits for the
    oldest write transaction running anywhere on the cluster, and starting there would replay events
    committed before it was made."""
    row = conn.execute(
        select(event_log.c.tx, event_log.c.seq).order_by(event_log.c.tx.desc(), event_log.c.seq.desc()).limit(1)
    ).first()
    return START if row is None else encode_cursor(row.tx, row.seq)


class EventBus:
    """In-process wake-ups for those following the log: a committed write here, or a NOTIFY from
    another replica, wakes every follower, and each reads the log from its own cursor."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()
        self.closed = False

    def wake(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    async def wait(self, timeout: float) -> None:
        """Return at the next wake-up, at close, or after `timeout` seconds."""
        if self.closed:
            return
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)

    def close(self) -> None:
        self.closed = True
        self.wake()
