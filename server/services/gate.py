"""The door every request passes: may this principal make this call at all, and is it within its
rate? An agent's call is also its heartbeat. Refusals, here or deeper in a service, leave an
audit row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection

from server.clock import Clock
from server.domain.principal import Principal
from server.errors import Refusal
from server.services.access import AccessPolicy
from server.services.agent_rows import heard_from
from server.services.audit import AuditService
from server.services.rate_limits import Rate, RateLimiter
from server.store.database import Database

# Arguments that name what a request acts on, most specific first: the refusal's audit subject.
_SUBJECT_ARGUMENTS = ("task_id", "lock_id", "hold_id", "approval_id", "token", "agent_id", "parent_id", "scope")


def subject_of(request: str, arguments: Mapping[str, Any]) -> str:
    for name in _SUBJECT_ARGUMENTS:
        value = arguments.get(name)
        if isinstance(value, str) and value:
            return value[:40]
    return request


class Gate:
    def __init__(
        self, db: Database, clock: Clock, access: AccessPolicy, limiter: RateLimiter, audit: AuditService
    ) -> None:
        self._db = db
        self._clock = clock
        self._access = access
        self._limiter = limiter
        self._audit = audit

    async def admit(self, principal: Principal, request: str) -> None:
        """`request` is a tool name (A2A operations use the tool they stand for). Takes a token
        from the caller's rate bucket and, for an agent, records that it was heard from: one
        transaction, none at all for the admin."""
        await self._access.ensure_current(principal)
        self._access.check_tool(principal, request)
        rate = self._limiter.rate_for(principal)
        if rate is not None or principal.agent_id is not None:
            await self._db.write(self._door_tx, principal, rate)

    def _door_tx(self, conn: Connection, principal: Principal, rate: Rate | None) -> None:
        now = self._clock.now_us()
        if rate is not None:
            self._limiter.take(conn, principal.id, rate, now)
        if principal.agent_id is not None:
            heard_from(conn, principal.agent_id, now)

    async def refused(self, principal: Principal, request: str, arguments: Mapping[str, Any], error: Refusal) -> None:
        await self._audit.refused(principal, request, subject_of(request, arguments), error)
