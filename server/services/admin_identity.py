"""One admin per store. The first server to start on a store records its admin token's sha256;
every replica after it must start with the same token, or it refuses to start. Replicas with
different admin tokens would each accept a different admin, and seal MCP request state with
different keys, so a client's follow-up on another replica would fail for no reason it could see."""

from __future__ import annotations

import hmac

from sqlalchemy import Connection, select, update

from server.clock import Clock
from server.domain.principal import ADMIN
from server.errors import Conflict
from server.services import audit
from server.services.auth import hash_token
from server.store.database import Database
from server.store.dialect import insert_ignoring_duplicates
from server.store.tables import admin_identity

_ADOPT_HINT = "`agentfleet token adopt-admin`"


def claim_admin_identity(db: Database, clock: Clock, admin_token: str) -> None:
    """Record this token as the store's admin if it has none; refuse a different one."""
    stored = db.write_sync(_stored_hash, clock, hash_token(admin_token))
    if not hmac.compare_digest(stored, hash_token(admin_token)):
        raise Conflict(
            "this store already has another admin token: start every replica with the same "
            "AGENTFLEET_ADMIN_TOKEN (or DATA_DIR/admin.token) as the servers already using it, or make this "
            f"one the admin with {_ADOPT_HINT} (the old admin token then stops working everywhere)"
        )


def adopt_admin_identity(db: Database, clock: Clock, admin_token: str) -> bool:
    """Make this token the store's admin (a deliberate rotation); True if it changed anything."""
    return db.write_sync(_adopt, clock, hash_token(admin_token))


def _adopt(conn: Connection, clock: Clock, new_hash: str) -> bool:
    if hmac.compare_digest(_stored_hash(conn, clock, new_hash), new_hash):
        return False
    now = clock.now_us()
    conn.execute(update(admin_identity).where(admin_identity.c.id == 1).values(token_hash=new_hash, set_at=now))
    audit.record(conn, now, ADMIN, "admin.adopt", "admin", {})
    return True


def _stored_hash(conn: Connection, clock: Clock, candidate: str) -> str:
    insert_ignoring_duplicates(conn, admin_identity, {"id": 1, "token_hash": candidate, "set_at": clock.now_us()}, "id")
    return str(conn.execute(select(admin_identity.c.token_hash).where(admin_identity.c.id == 1)).scalar_one())
