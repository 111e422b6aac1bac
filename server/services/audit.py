"""The audit trail: one append-only row per state change, written in the change's own transaction
and chained by hash to the row before it (server/domain/audit_chain.py).

Rows are staged during the unit of work and chained as its last step: a chain needs its newest
row's hash, so appending to it takes turns — under SQLite's write lock, or a transaction-scoped
advisory lock per chain on PostgreSQL shared by every replica — and doing it last keeps that turn
as short as the commit itself."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import Connection, bindparam, select, text

from server.clock import Clock, to_iso
from server.domain.audit_chain import CHAINS_PG, GENESIS, row_hash, state_digest
from server.domain.principal import Principal
from server.domain.storable import scrubbed
from server.domain.views import AuditEntry, AuditPage
from server.errors import PermissionDenied, Refusal, Unavailable
from server.ids import EVENT, new_id
from server.services.events import log as events
from server.store.database import Database, before_commit, tx_local
from server.store.tables import audit_log

# Built once: executing a prebuilt statement with a parameter dict skips per-call statement
# construction and cache-key work (measured: the largest cost on the hot path).
_INSERT = audit_log.insert()
_HEAD = (
    select(audit_log.c.seq, audit_log.c.hash)
    .where(audit_log.c.chain == bindparam("chain"))
    .order_by(audit_log.c.seq.desc())
    .limit(1)
)
_CHAIN_LOCK = text("SELECT pg_advisory_xact_lock(7340222, :chain)")  # a fixed class, one lock per chain
_PENDING = "agentfleet_audit_pending"
_VERIFY_BATCH = 1000
_REFUSAL_RETRIES = (0.05, 0.25, None)  # seconds between tries of a refusal's row; None: the last


def record(
    conn: Connection,
    at_us: int,
    principal: Principal,
    action: str,
    subject: str,
    detail: dict[str, Any] | None = None,
    *,
    before: Any = None,
    after: Any = None,
) -> None:
    """Stage an audit row for this transaction. `before` and `after` are the subject's stored row
    (a mapping or a result row) around the change, where the caller has them in hand."""
    local = tx_local(conn)
    pending = local.get(_PENDING)
    if pending is None:
        pending = local[_PENDING] = []
        before_commit(conn, _chain)
    pending.append(
        {
            "id": new_id(EVENT),
            "at": at_us,
            "principal": principal.id,
            "role": principal.role.value,
            "action": action,
            "subject": subject,
            "detail": detail or {},
            "reason": principal.reason,
            "before_digest": None if before is None else state_digest(before),
            "after_digest": None if after is None else state_digest(after),
        }
    )


@contextmanager
def savepoint(conn: Connection) -> Iterator[None]:
    """A nested transaction whose staged audit rows and events go with it when it rolls back: audit rows are
    staged in memory until commit, so a plain savepoint would leave rows for undone work."""
    staged = tx_local(conn).get(_PENDING)
    mark = len(staged) if staged is not None else 0
    event_mark = events.staged_mark(conn)
    try:
        with conn.begin_nested():
            yield
    except BaseException:
        staged = tx_local(conn).get(_PENDING)
        if staged is not None:
            del staged[mark:]
        events.drop_staged_after(conn, event_mark)
        raise


def _chain(conn: Connection) -> None:
    rows: list[dict[str, Any]] = tx_local(conn).pop(_PENDING)
    chain = 0
    if conn.dialect.name == "postgresql":
        chain = random.randrange(CHAINS_PG)
        conn.execute(_CHAIN_LOCK, {"chain": chain})
    head = conn.execute(_HEAD, {"chain": chain}).first()
    seq, prev = (head.seq, head.hash) if head is not None else (0, GENESIS)
    for row in rows:
        seq += 1
        row.update(chain=chain, seq=seq, prev_hash=prev)
        row["hash"] = prev = row_hash(row)
    conn.execute(_INSERT, rows)


@dataclass(frozen=True)
class ChainReport:
    rows: int
    heads: dict[int, tuple[int, str]]  # chain -> (seq, hash) of its newest row that checked out
    broken_at: str | None = None  # "chain C seq N (evt_…): why", for the first bad row

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def _in_order(conn: Connection) -> Iterator[Any]:
    after = (-1, 0)
    while True:
        batch = conn.execute(
            select(audit_log)
            .where((audit_log.c.chain > after[0]) | ((audit_log.c.chain == after[0]) & (audit_log.c.seq > after[1])))
            .order_by(audit_log.c.chain, audit_log.c.seq)
            .limit(_VERIFY_BATCH)
        ).all()
        yield from batch
        if len(batch) < _VERIFY_BATCH:
            return
        after = (batch[-1].chain, batch[-1].seq)


def _fault(row: Any, heads: dict[int, tuple[int, str]]) -> str | None:
    """Why a row does not continue its chain, if it does not."""
    seq, prev = heads.get(row.chain, (0, GENESIS))
    if row.seq != seq + 1:
        return f"rows {seq + 1}..{row.seq - 1} before it are missing"
    if row.prev_hash != prev:
        return "it does not link to the row before it"
    if row_hash(row) != row.hash:
        return "its content no longer matches its hash"
    return None


def verify_chain(conn: Connection) -> ChainReport:
    """Walk every chain in order and recompute every link; report the first row that does not fit."""
    heads: dict[int, tuple[int, str]] = {}
    count = 0
    for row in _in_order(conn):
        fault = _fault(row, heads)
        if fault is not None:
            return ChainReport(count, heads, f"chain {row.chain} seq {row.seq} ({row.id}): {fault}")
        heads[row.chain] = (row.seq, row.hash)
        count += 1
    return ChainReport(count, heads)


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    subject: str | None = None
    action: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    before_id: str | None = None
    limit: int = 100


class AuditService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def refused(self, principal: Principal, request: str, subject: str, error: Refusal) -> None:
        """A refused request changes nothing, so its row is written on its own, after the refusal.
        Whatever the caller sent is scrubbed to storable text, and a busy store is tried again, so
        the row is neither refused by PostgreSQL nor lost to a moment of contention."""
        if principal.reason is not None:
            principal = principal.because(scrubbed(principal.reason))
        for delay in _REFUSAL_RETRIES:
            try:
                await self._db.write(self._refused_tx, principal, scrubbed(request), scrubbed(subject), error)
                return
            except Unavailable:
                if delay is None:
                    raise
                await anyio.sleep(delay)

    def _refused_tx(self, conn: Connection, principal: Principal, request: str, subject: str, error: Refusal) -> None:
        detail = {"request": request, "code": error.code, "message": scrubbed(error.message[:500])}
        record(conn, self._clock.now_us(), principal, "request.refused", subject[:40], detail)

    async def query(self, principal: Principal, where: AuditFilter) -> AuditPage:
        if not principal.can_operate:
            raise PermissionDenied("the audit trail is for admin and operator principals")
        return await self._db.read(self._query_tx, where)

    @staticmethod
    def _query_tx(conn: Connection, where: AuditFilter) -> AuditPage:
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(where.limit + 1)
        for column, value in (
            (audit_log.c.principal, where.actor),
            (audit_log.c.subject, where.subject),
            (audit_log.c.action, where.action),
        ):
            if value is not None:
                query = query.where(column == value)
        if where.since_us is not None:
            query = query.where(audit_log.c.at >= where.since_us)
        if where.until_us is not None:
            query = query.where(audit_log.c.at < where.until_us)
        if where.before_id is not None:
            query = query.where(audit_log.c.id < where.before_id)
        rows = conn.execute(query).all()
        page = rows[: where.limit]
        return AuditPage(
            entries=[
                AuditEntry(
                    chain=r.chain,
                    seq=r.seq,
                    id=r.id,
                    at=to_iso(r.at) or "",
                    principal=r.principal,
                    role=r.role,
                    action=r.action,
                    subject=r.subject,
                    detail=r.detail,
                    reason=r.reason,
                    before_digest=r.before_digest,
                    after_digest=r.after_digest,
                    hash=r.hash,
                )
                for r in page
            ],
            next_before_id=page[-1].id if len(rows) > where.limit else None,
        )
