"""The audit trail: one append-only row per state change, written in the change's own transaction
and chained by hash to the row before it (server/domain/audit_chain.py).

Rows are staged during the unit of work and chained as its last step: the chain needs the newest
row's hash, so chaining takes turns — under SQLite's write lock, or a transaction-scoped advisory
lock on PostgreSQL shared by every replica — and doing it last keeps that turn as short as the
commit itself."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select, text

from server.clock import to_iso
from server.domain.audit_chain import GENESIS, row_hash
from server.domain.principal import Principal
from server.domain.views import AuditEntry, AuditPage
from server.errors import PermissionDenied
from server.ids import EVENT, new_id
from server.store.database import Database, before_commit
from server.store.tables import audit_log

# Built once: executing a prebuilt statement with a parameter dict skips per-call statement
# construction and cache-key work (measured: the largest cost on the hot path).
_INSERT = audit_log.insert()
_HEAD = select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
_CHAIN_LOCK = text("SELECT pg_advisory_xact_lock(7340222)")  # any fixed number, one per purpose
_PENDING = "agentfleet_audit_pending"
_VERIFY_BATCH = 1000


def record(
    conn: Connection,
    at_us: int,
    principal: Principal,
    action: str,
    subject: str,
    detail: dict[str, Any] | None = None,
) -> None:
    pending = conn.info.get(_PENDING)
    if pending is None:
        pending = conn.info[_PENDING] = []
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
        }
    )


def _chain(conn: Connection) -> None:
    rows: list[dict[str, Any]] = conn.info.pop(_PENDING)
    if conn.dialect.name == "postgresql":
        conn.execute(_CHAIN_LOCK)
    head = conn.execute(_HEAD).first()
    seq, prev = (head.seq, head.hash) if head is not None else (0, GENESIS)
    for row in rows:
        seq += 1
        row.update(seq=seq, prev_hash=prev)
        row["hash"] = prev = row_hash(row)
    conn.execute(_INSERT, rows)


@dataclass(frozen=True)
class ChainReport:
    rows: int
    head_seq: int
    head_hash: str
    broken_at: str | None = None  # "seq N (evt_…): why", for the first bad row

    @property
    def intact(self) -> bool:
        return self.broken_at is None


def _in_order(conn: Connection) -> Iterator[Any]:
    after = 0
    while True:
        batch = conn.execute(
            select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(_VERIFY_BATCH)
        ).all()
        yield from batch
        if len(batch) < _VERIFY_BATCH:
            return
        after = batch[-1].seq


def verify_chain(conn: Connection) -> ChainReport:
    """Walk the trail in order and recompute every link; report the first row that does not fit."""
    expected_seq, prev, count = 1, GENESIS, 0
    for row in _in_order(conn):
        where = f"seq {row.seq} ({row.id})"
        if row.seq != expected_seq:
            missing = f"{where}: rows {expected_seq}..{row.seq - 1} before it are missing"
            return ChainReport(count, expected_seq - 1, prev, missing)
        if row.prev_hash != prev:
            return ChainReport(count, row.seq - 1, prev, f"{where}: it does not link to the row before it")
        if row_hash(row) != row.hash:
            return ChainReport(count, row.seq - 1, prev, f"{where}: its content no longer matches its hash")
        expected_seq, prev, count = row.seq + 1, row.hash, count + 1
    return ChainReport(count, expected_seq - 1, prev)


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    subject: str | None = None
    action: str | None = None
    since_us: int | None = None
    until_us: int | None = None
    before_seq: int | None = None
    limit: int = 100


class AuditService:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def query(self, principal: Principal, where: AuditFilter) -> AuditPage:
        if not principal.is_admin:
            raise PermissionDenied("the audit trail is for the admin")
        return await self._db.read(self._query_tx, where)

    @staticmethod
    def _query_tx(conn: Connection, where: AuditFilter) -> AuditPage:
        query = select(audit_log).order_by(audit_log.c.seq.desc()).limit(where.limit + 1)
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
        if where.before_seq is not None:
            query = query.where(audit_log.c.seq < where.before_seq)
        rows = conn.execute(query).all()
        page = rows[: where.limit]
        return AuditPage(
            entries=[
                AuditEntry(
                    seq=r.seq,
                    id=r.id,
                    at=to_iso(r.at) or "",
                    principal=r.principal,
                    role=r.role,
                    action=r.action,
                    subject=r.subject,
                    detail=r.detail,
                    hash=r.hash,
                )
                for r in page
            ],
            next_before_seq=page[-1].seq if len(rows) > where.limit else None,
        )
