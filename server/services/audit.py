"""The audit trail: one append-only row per state change, written in the change's own transaction."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from server.domain.principal import Principal
from server.ids import EVENT, new_id
from server.store.tables import audit_log

# Built once: executing a prebuilt statement with a parameter dict skips per-call statement
# construction and cache-key work (measured: the largest cost on the hot path).
_INSERT = audit_log.insert()


def record(
    conn: Connection,
    at_us: int,
    principal: Principal,
    action: str,
    subject: str,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        _INSERT,
        {
            "id": new_id(EVENT),
            "at": at_us,
            "principal": principal.id,
            "role": principal.role.value,
            "action": action,
            "subject": subject,
            "detail": detail or {},
        },
    )
