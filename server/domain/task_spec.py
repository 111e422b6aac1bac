"""What a caller asks for when submitting a task, validated before anything is written."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from server.domain.money import MAX_USD
from server.domain.priority import Priority
from server.domain.resources import ResourceRequest

TASK_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$"


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(pattern=TASK_TYPE_PATTERN)
    payload: Any = None
    capabilities: tuple[str, ...] = ()
    priority: Priority = Priority.NORMAL
    pinned_agent_id: str | None = None
    max_attempts: int = Field(3, ge=1, le=100)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    not_before: datetime | None = Field(None, description="not claimable before this UTC time")
    lease_s: int = Field(60, ge=5, le=3600, description="lease length; each task_heartbeat renews it")
    backoff_base_s: float = Field(1.0, ge=0.01, le=3600)
    backoff_cap_s: float = Field(300.0, ge=0.01, le=86_400)
    allow_unroutable: bool = Field(False, description="queue even if no live agent or profile can run it")
    resources: tuple[ResourceRequest, ...] = Field((), description="claimed only together with these locks")
    estimated_cost_usd: Decimal | None = Field(
        None, ge=0, le=MAX_USD, decimal_places=6, description="set aside from the claiming agent's budgets per attempt"
    )
    requires_approval: bool = Field(False, description="wait in pending_approval until an admin or operator decides")
    timeout_s: int | None = Field(None, ge=1, le=7 * 86_400, description="wall-clock limit of one attempt")

    @field_validator("not_before")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("not_before needs a timezone, e.g. 2026-01-01T12:00:00Z")
        return value

    @model_validator(mode="after")
    def _cap_not_below_base(self) -> TaskSpec:
        if self.backoff_cap_s < self.backoff_base_s:
            raise ValueError("backoff_cap_s must be at least backoff_base_s")
        return self

    def canonical_json(self) -> str:
        body = self.model_dump(mode="json", exclude={"idempotency_key", "allow_unroutable"})
        for added_later in ("requires_approval", "timeout_s"):
            if not body[added_later]:
                del body[added_later]  # so specs hashed before the field existed hash the same
        body["capabilities"] = sorted(set(body["capabilities"]))
        body["resources"] = sorted(body["resources"], key=lambda r: r["name"])
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def spec_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def payload_size(payload: Any) -> int:
    return len(json.dumps(payload, separators=(",", ":")).encode())
