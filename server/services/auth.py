"""Bearer tokens to principals. Agent tokens are stored only as SHA-256 hashes: they are 256-bit
random values, so a fast hash is enough and keeps authentication one indexed lookup."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import Connection, select

from server.domain.principal import ADMIN, Principal, Role
from server.domain.statuses import LIVE_AGENT_STATUSES
from server.store.database import Database
from server.store.tables import agents

AGENT_TOKEN_PREFIX = "afa_"
ADMIN_TOKEN_PREFIX = "afk_"


def new_agent_token() -> str:
    return AGENT_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_admin_token() -> str:
    return ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    def __init__(self, db: Database, admin_token: str) -> None:
        self._db = db
        self._admin_token = admin_token.encode()

    @property
    def admin_token_bytes(self) -> bytes:
        return self._admin_token

    def _lookup(self, conn: Connection, token_hash: str) -> str | None:
        row = conn.execute(select(agents.c.id, agents.c.status).where(agents.c.token_hash == token_hash)).first()
        if row is None or row.status not in LIVE_AGENT_STATUSES:
            return None
        return row.id

    async def authenticate(self, token: str | None) -> Principal | None:
        if not token:
            return None
        if hmac.compare_digest(token.encode(), self._admin_token):
            return ADMIN
        if not token.startswith(AGENT_TOKEN_PREFIX):
            return None
        agent_id = await self._db.read(self._lookup, hash_token(token))
        return Principal(Role.AGENT, agent_id) if agent_id else None
