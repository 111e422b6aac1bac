"""The door every request passes: may this principal make this call at all, and is it within its
rate? Refusals, here or deeper in a service, leave an audit row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.domain.principal import Principal
from server.errors import Refusal
from server.services.access import AccessPolicy
from server.services.audit import AuditService
from server.services.rate_limits import RateLimiter

# Arguments that name what a request acts on, most specific first: the refusal's audit subject.
_SUBJECT_ARGUMENTS = ("task_id", "lock_id", "hold_id", "approval_id", "token", "agent_id", "parent_id", "scope")


def subject_of(request: str, arguments: Mapping[str, Any]) -> str:
    for name in _SUBJECT_ARGUMENTS:
        value = arguments.get(name)
        if isinstance(value, str) and value:
            return value[:40]
    return request


class Gate:
    def __init__(self, access: AccessPolicy, limiter: RateLimiter, audit: AuditService) -> None:
        self._access = access
        self._limiter = limiter
        self._audit = audit

    async def admit(self, principal: Principal, request: str) -> None:
        """`request` is a tool name (A2A operations use the tool they stand for)."""
        self._access.check_tool(principal, request)
        await self._limiter.take(principal)

    async def refused(self, principal: Principal, request: str, arguments: Mapping[str, Any], error: Refusal) -> None:
        await self._audit.refused(principal, request, subject_of(request, arguments), error)
