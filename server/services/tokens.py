"""Tokens for people and services: created, listed, revoked and rotated by the admin.

The secret is shown once, when it is made; the store keeps only its SHA-256 (it is 256 random
bits, so a fast hash loses nothing and keeps authentication one indexed lookup)."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection, Row, select, update

from server.clock import MICROS, Clock, to_iso
from server.domain.principal import TOKEN_ROLES, Principal, Role
from server.domain.views import IssuedToken, TokenList, TokenView
from server.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from server.ids import TOKEN, new_id
from server.services import audit
from server.services.auth import hash_token, new_principal_token
from server.store.database import Database
from server.store.tables import tokens

# Names are principal ids in audit rows: they must not look like an agent id or a built-in name.
TOKEN_NAME = r"^[a-z][a-z0-9_.@-]{0,59}$"
_RESERVED_PREFIXES = ("agt_", "tkn_")
_RESERVED_NAMES = frozenset({"admin", "reaper", "expiry", "system", "supervisor"})


def token_view(row: Row[Any], now: int) -> TokenView:
    return TokenView(
        id=row.id,
        name=row.name,
        role=row.role,
        created_by=row.created_by,
        created_at=to_iso(row.created_at) or "",
        rotated_at=to_iso(row.rotated_at),
        expires_at=to_iso(row.expires_at),
        revoked_at=to_iso(row.revoked_at),
        active=row.revoked_at is None and (row.expires_at is None or row.expires_at > now),
    )


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDenied("tokens are managed by the admin")


def _find(conn: Connection, ref: str) -> Row[Any]:
    column = tokens.c.id if ref.startswith(f"{TOKEN}_") else tokens.c.name
    row = conn.execute(select(tokens).where(column == ref)).first()
    if row is None:
        raise NotFound(f"no token {ref!r}: list them with `agentfleet token list` (or the token_list tool)")
    return row


class TokenService:
    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def create(self, principal: Principal, name: str, role: Role, expires_in_s: int | None) -> IssuedToken:
        _require_admin(principal)
        if not re.match(TOKEN_NAME, name) or name in _RESERVED_NAMES or name.startswith(_RESERVED_PREFIXES):
            raise InvalidInput(
                f"token name {name!r} is not allowed: lowercase letters, digits and _.@-, starting with a "
                f"letter, not agt_/tkn_, not one of {sorted(_RESERVED_NAMES)}"
            )
        if role not in TOKEN_ROLES:
            raise InvalidInput(f"a token's role is one of {[r.value for r in TOKEN_ROLES]}; agents get theirs at spawn")
        return await self._db.write(self._create_tx, principal, name, role, expires_in_s)

    def _create_tx(
        self, conn: Connection, principal: Principal, name: str, role: Role, expires_in_s: int | None
    ) -> IssuedToken:
        now = self._clock.now_us()
        if conn.execute(select(tokens.c.id).where(tokens.c.name == name)).first() is not None:
            raise Conflict(f"a token named {name!r} exists (or existed: names are never reused); pick another")
        secret = new_principal_token()
        values = dict(
            id=new_id(TOKEN),
            name=name,
            role=role.value,
            token_hash=hash_token(secret),
            created_by=principal.id,
            created_at=now,
            expires_at=None if expires_in_s is None else now + expires_in_s * MICROS,
        )
        row = conn.execute(tokens.insert().values(values).returning(*tokens.c)).one()
        audit.record(conn, now, principal, "token.create", row.id, {"name": name, "role": role.value}, after=row)
        return IssuedToken(token=secret, details=token_view(row, now))

    async def list(self, principal: Principal) -> TokenList:
        _require_admin(principal)
        return await self._db.read(self._list_tx)

    def _list_tx(self, conn: Connection) -> TokenList:
        now = self._clock.now_us()
        rows = conn.execute(select(tokens).order_by(tokens.c.id)).all()
        return TokenList(tokens=[token_view(r, now) for r in rows])

    async def revoke(self, principal: Principal, ref: str) -> TokenView:
        _require_admin(principal)
        return await self._db.write(self._revoke_tx, principal, ref)

    def _revoke_tx(self, conn: Connection, principal: Principal, ref: str) -> TokenView:
        now = self._clock.now_us()
        before = _find(conn, ref)
        if before.revoked_at is not None:
            return token_view(before, now)  # revoking twice is the same as once
        after = conn.execute(
            update(tokens).where(tokens.c.id == before.id).values(revoked_at=now).returning(*tokens.c)
        ).one()
        audit.record(conn, now, principal, "token.revoke", before.id, {"name": before.name}, before=before, after=after)
        return token_view(after, now)

    async def rotate(self, principal: Principal, ref: str) -> IssuedToken:
        _require_admin(principal)
        return await self._db.write(self._rotate_tx, principal, ref)

    def _rotate_tx(self, conn: Connection, principal: Principal, ref: str) -> IssuedToken:
        """A new secret under the same name and role; the old one stops working at commit."""
        now = self._clock.now_us()
        before = _find(conn, ref)
        if before.revoked_at is not None:
            raise Conflict(f"token {before.name!r} is revoked; create a new one")
        secret = new_principal_token()
        after = conn.execute(
            update(tokens)
            .where(tokens.c.id == before.id, tokens.c.revoked_at.is_(None))
            .values(token_hash=hash_token(secret), rotated_at=now)
            .returning(*tokens.c)
        ).one()
        audit.record(conn, now, principal, "token.rotate", before.id, {"name": before.name}, before=before, after=after)
        return IssuedToken(token=secret, details=token_view(after, now))
