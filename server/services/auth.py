"""Bearer tokens to principals. Tokens are stored only as SHA-256 hashes: they are 256-bit random
values, so a fast hash is enough and keeps authentication one indexed lookup."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import Connection, bindparam, or_, select

from server.clock import Clock
from server.domain.principal import ADMIN, Principal, Role
from server.domain.statuses import LIVE_AGENT_STATUSES
from server.store.database import Database
from server.store.tables import agents, tokens

AGENT_TOKEN_PREFIX = "afa_"
ADMIN_TOKEN_PREFIX = "afk_"  # the bootstrap admin token (AGENTFLEET_ADMIN_TOKEN or DATA_DIR/admin.token)
PRINCIPAL_TOKEN_PREFIX = "afp_"  # tokens made with `agentfleet token create` / token_create

_LIVE = [s.value for s in LIVE_AGENT_STATUSES]
_AGENT = select(agents.c.id, agents.c.profile, agents.c.profile_version).where(
    agents.c.token_hash == bindparam("hash"), agents.c.status.in_(_LIVE)
)
_PRINCIPAL = select(tokens.c.name, tokens.c.role).where(
    tokens.c.token_hash == bindparam("hash"),
    tokens.c.revoked_at.is_(None),
    or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > bindparam("now")),
)


def new_agent_token() -> str:
    return AGENT_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_admin_token() -> str:
    return ADMIN_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_principal_token() -> str:
    return PRINCIPAL_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Authenticator:
    def __init__(self, db: Database, clock: Clock, admin_token: str) -> None:
        self._db = db
        self._clock = clock
        self._admin_token = admin_token.encode()

    @property
    def admin_token_bytes(self) -> bytes:
        return self._admin_token

    @staticmethod
    def _agent(conn: Connection, token_hash: str) -> Principal | None:
        row = conn.execute(_AGENT, {"hash": token_hash}).first()
        return None if row is None else Principal(Role.AGENT, row.id, f"{row.profile}@{row.profile_version}")

    def _principal(self, conn: Connection, token_hash: str) -> Principal | None:
        row = conn.execute(_PRINCIPAL, {"hash": token_hash, "now": self._clock.now_us()}).first()
        return None if row is None else Principal(Role(row.role), row.name)

    async def authenticate(self, token: str | None) -> Principal | None:
        if not token:
            return None
        if hmac.compare_digest(token.encode(), self._admin_token):
            return ADMIN
        if token.startswith(AGENT_TOKEN_PREFIX):
            return await self._db.read(self._agent, hash_token(token))
        if token.startswith(PRINCIPAL_TOKEN_PREFIX):
            return await self._db.read(self._principal, hash_token(token))
        return None
