"""What the trigger tools return."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Row

from server.clock import to_iso


class TriggerRunView(BaseModel):
    id: str
    occasion: str = Field(description="what it fired for: due:<time>, evt:<event id>, dlv:<delivery>, manual:…")
    reason: str = Field(description="schedule, event, absence, webhook, manual or replay")
    at: str
    status: str = Field(description="created (work made), failed (see error), skipped (overlap, disabled, missed)")
    created_kind: str | None = Field(description="task or workflow")
    created_id: str | None = Field(description="the task (tsk_…) or workflow run (wfr_…) it created")
    error: str | None

    @classmethod
    def of(cls, row: Row[Any]) -> TriggerRunView:
        return cls(
            id=row.id,
            occasion=row.occasion,
            reason=row.reason,
            at=to_iso(row.at) or "",
            status=row.status,
            created_kind=row.created_kind,
            created_id=row.created_id,
            error=row.error,
        )


class TriggerView(BaseModel):
    id: str
    name: str
    kind: str
    enabled: bool
    config: dict[str, Any]
    action: dict[str, Any]
    owner: str = Field(description="whose work it creates: the principal that made it")
    created_at: str
    updated_at: str
    fired: int = Field(description="how many times it has fired")
    last_fired_at: str | None
    next_fire_times: list[str] = Field(description="schedules: the next due times (UTC)")
    window_ends_at: str | None = Field(description="absence: it fires if no matching event comes by then")
    webhook_path: str | None = Field(description="webhooks: POST here with the signed body")
    runs: list[TriggerRunView] | None = Field(description="recent firings, newest first (trigger_get)")

    @classmethod
    def of(cls, row: Row[Any], upcoming: list[str], runs: list[TriggerRunView] | None) -> TriggerView:
        return cls(
            id=row.id,
            name=row.name,
            kind=row.kind,
            enabled=row.enabled,
            config=row.config,
            action=row.action,
            owner=row.owner,
            created_at=to_iso(row.created_at) or "",
            updated_at=to_iso(row.updated_at) or "",
            fired=row.fired,
            last_fired_at=to_iso(row.last_fired_at),
            next_fire_times=upcoming,
            window_ends_at=to_iso(row.next_due_at) if row.kind == "absence" else None,
            webhook_path=f"/hooks/{row.name}" if row.kind == "webhook" else None,
            runs=runs,
        )


class TriggerCreated(BaseModel):
    trigger: TriggerView
    secret: str | None = Field(
        description="webhooks: the signing secret, shown once (HMAC-SHA256 of the body, GitHub's "
        "X-Hub-Signature-256 form, or Authorization: Bearer <secret>)"
    )


class TriggerList(BaseModel):
    triggers: list[TriggerView]


class ReplayResult(BaseModel):
    examined: int = Field(description="events in the range that the trigger's types and filter matched")
    fired: list[TriggerRunView] = Field(description="firings made now; events already replayed are not fired again")
