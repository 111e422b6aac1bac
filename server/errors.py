"""One exception tree. Every failure a caller can cause is a FleetError with a stable code.

Adapters (MCP tools, A2A, HTTP, CLI) map these through one table each; nothing else
crosses a protocol boundary.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FleetError(Exception):
    code: ClassVar[str] = "unavailable"
    http_status: ClassVar[int] = 503

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class NotFound(FleetError):
    code = "not_found"
    http_status = 404


class InvalidInput(FleetError):
    code = "invalid_input"
    http_status = 400


class Conflict(FleetError):
    code = "conflict"
    http_status = 409


class PermissionDenied(FleetError):
    code = "permission_denied"
    http_status = 403


class BudgetExceeded(FleetError):
    code = "budget_exceeded"
    http_status = 402


class LockTimeout(FleetError):
    code = "lock_timeout"
    http_status = 409


class Deadlock(FleetError):
    code = "deadlock"
    http_status = 409


class LeaseExpired(FleetError):
    code = "lease_expired"
    http_status = 409


class ApprovalRequired(FleetError):
    code = "approval_required"
    http_status = 409


class RateLimited(FleetError):
    code = "rate_limited"
    http_status = 429


class Unavailable(FleetError):
    code = "unavailable"
    http_status = 503


ERROR_CODES: tuple[str, ...] = tuple(
    cls.code
    for cls in (
        NotFound,
        InvalidInput,
        Conflict,
        PermissionDenied,
        BudgetExceeded,
        LockTimeout,
        Deadlock,
        LeaseExpired,
        ApprovalRequired,
        RateLimited,
        Unavailable,
    )
)
