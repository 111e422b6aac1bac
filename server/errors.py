"""One exception tree. Every failure a caller can cause is a FleetError with a stable code.

Adapters (MCP tools, A2A, HTTP, CLI) map these through one table each; nothing else
crosses a protocol boundary.
"""

from __future__ import annotations

from typing import ClassVar


class FleetError(Exception):
    code: ClassVar[str] = "unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class NotFound(FleetError):
    code = "not_found"


class InvalidInput(FleetError):
    code = "invalid_input"


class Conflict(FleetError):
    code = "conflict"


class Refusal(FleetError):
    """A policy said no (not a mistake in the request): every refusal leaves an audit row."""


class PermissionDenied(Refusal):
    code = "permission_denied"


class BudgetExceeded(Refusal):
    code = "budget_exceeded"


class LockTimeout(FleetError):
    code = "lock_timeout"


class Deadlock(FleetError):
    code = "deadlock"


class LeaseExpired(FleetError):
    code = "lease_expired"


class ApprovalRequired(Refusal):
    code = "approval_required"


class RateLimited(Refusal):
    code = "rate_limited"


class Unavailable(FleetError):
    code = "unavailable"
