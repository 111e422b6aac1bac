"""What a caller asks for when submitting a task, validated before anything is written."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from server.domain.priority import Priority

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

    def canonical_json(self) -> str:
        body = self.model_dump(mode="json", exclude={"idempotency_key"})
        body["capabilities"] = sorted(set(body["capabilities"]))
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def spec_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def payload_size(payload: Any) -> int:
    return len(json.dumps(payload, separators=(",", ":")).encode())
