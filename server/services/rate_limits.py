"""Rate limits: one token bucket per principal, kept in the store so every replica draws from the
same bucket. Taking a token is one conditional upsert: the bucket refills by elapsed time, and
the row changes only if a whole token is there, so concurrent callers can never overdraw it."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, Float, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite

from server.clock import MICROS
from server.domain.principal import Principal, Role
from server.errors import RateLimited
from server.services.access import AccessPolicy
from server.settings import Settings
from server.store.tables import rate_buckets

_EXEMPT = frozenset({Role.ADMIN, Role.SYSTEM})  # a limit must never lock out the one who fixes things


@dataclass(frozen=True)
class Rate:
    per_s: float
    burst: int


def _take_statement(dialect: str):  # type: ignore[no-untyped-def]
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    least, greatest = (func.least, func.greatest) if dialect == "postgresql" else (func.min, func.max)
    now = bindparam("now")
    elapsed = greatest(0, now - rate_buckets.c.updated_at)
    refilled = least(
        bindparam("burst", type_=Float), rate_buckets.c.tokens + elapsed * bindparam("per_us", type_=Float)
    )
    statement = insert(rate_buckets).values(principal=bindparam("who"), tokens=bindparam("fresh"), updated_at=now)
    return statement.on_conflict_do_update(
        index_elements=[rate_buckets.c.principal],
        set_={"tokens": refilled - 1, "updated_at": now},
        where=refilled >= 1,
    ).returning(rate_buckets.c.tokens)


class RateLimiter:
    def __init__(self, dialect: str, settings: Settings, access: AccessPolicy) -> None:
        self._default = Rate(settings.rate_limit_per_s, settings.rate_limit_burst)
        self._access = access
        self._take = _take_statement(dialect)
        self._peek = select(rate_buckets.c.tokens, rate_buckets.c.updated_at).where(
            rate_buckets.c.principal == bindparam("who")
        )

    def rate_for(self, principal: Principal) -> Rate | None:
        if principal.role in _EXEMPT:
            return None
        profile = self._access.profile_of(principal)
        limits = profile.limits if profile is not None else None
        per_s = limits.rate_per_s if limits is not None and limits.rate_per_s is not None else self._default.per_s
        burst = limits.rate_burst if limits is not None and limits.rate_burst is not None else self._default.burst
        return None if per_s <= 0 else Rate(per_s, burst)

    def take(self, conn: Connection, who: str, rate: Rate, now: int) -> None:
        """Spend one call from `who`'s bucket inside the caller's transaction, or rate_limited
        saying when to come back."""
        params = {"who": who, "now": now, "burst": float(rate.burst), "per_us": rate.per_s / MICROS}
        if conn.execute(self._take, {**params, "fresh": float(rate.burst - 1)}).first() is not None:
            return
        row = conn.execute(self._peek, {"who": who}).one()
        have = min(rate.burst, row.tokens + max(0, now - row.updated_at) * rate.per_s / MICROS)
        wait_s = max(0.001, (1 - have) / rate.per_s)
        raise RateLimited(
            f"{who} is over its rate limit of {rate.per_s:g} calls/s (burst {rate.burst}); retry in {wait_s:.3f} s"
        )
