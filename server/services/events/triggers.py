"""Triggers: make, change, list, fire. A firing creates its work (a task or a workflow run) as the
trigger's owner, inside the same transaction that records the firing under a unique occasion (a
due time, an event, a webhook delivery), so however many replicas see the occasion it fires once.

The loops that find due schedules, new events and absences are in `trigger_loop.py`."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from server.clock import Clock, to_iso
from server.domain.principal import Principal, Role
from server.domain.statuses import TaskStatus
from server.domain.storable import require_storable, scrubbed
from server.domain.trigger import (
    AbsenceConfig,
    EventConfig,
    ScheduleConfig,
    TriggerAction,
    TriggerKind,
    parse_action,
    parse_config,
    parse_filter,
    task_for,
    workflow_inputs,
)
from server.domain.webhook_signature import delivery_id, is_authentic
from server.domain.workflow_status import RunStatus
from server.errors import Conflict, FleetError, InvalidInput, NotFound, PermissionDenied
from server.ids import TASK, TRIGGER, TRIGGER_RUN, new_id
from server.services import audit
from server.services.access import AccessPolicy
from server.services.events import log as events
from server.services.events.trigger_views import TriggerCreated, TriggerList, TriggerRunView, TriggerView
from server.services.tasks import TaskService
from server.services.workflows import WorkflowService
from server.store.database import Database
from server.store.dialect import insert_ignoring_duplicates
from server.store.tables import agents, tasks, trigger_runs, triggers, workflow_runs

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"
_LIVE_TASK = [TaskStatus.PENDING_APPROVAL.value, TaskStatus.QUEUED.value, TaskStatus.RUNNING.value]
_RECENT_RUNS = 20


def _record_run(dialect: Any) -> Any:
    """INSERT the firing unless its occasion is recorded: built once per dialect (the hot path of a
    burst of due schedules)."""
    statement = dialect.insert(trigger_runs).values(
        id=bindparam("id"),
        trigger_id=bindparam("trigger_id"),
        occasion=bindparam("occasion"),
        reason=bindparam("reason"),
        at=bindparam("at"),
        status="firing",
    )
    return statement.on_conflict_do_nothing(index_elements=["trigger_id", "occasion"]).returning(trigger_runs.c.id)


_RECORD_RUN = {"postgresql": _record_run(postgresql), "sqlite": _record_run(sqlite)}
_UPCOMING = 5


@dataclass(frozen=True)
class TriggerSpec:
    """What trigger_create and trigger_update carry, before validation."""

    config: dict[str, Any]
    action: dict[str, Any]


def owner_of(row: Row[Any]) -> Principal:
    return Principal(Role(row.owner_role), row.owner, row.owner_profile)


def visible(principal: Principal, row: Row[Any]) -> bool:
    return principal.sees_all or principal.id == row.owner


class TriggerService:
    def __init__(
        self, db: Database, clock: Clock, tasks: TaskService, workflows: WorkflowService, access: AccessPolicy
    ) -> None:
        self._db = db
        self._clock = clock
        self._tasks = tasks
        self._workflows = workflows
        self._access = access
        self._actions: dict[tuple[str, int], TriggerAction] = {}

    # -- making and changing -------------------------------------------------------------------
    def _validated(self, principal: Principal, kind: TriggerKind, spec: TriggerSpec) -> TriggerAction:
        require_storable({"config": spec.config, "action": spec.action}, "trigger")
        config = parse_config(kind, spec.config)
        if isinstance(config, EventConfig | AbsenceConfig):
            events.check_types(config.event_types)
            parse_filter(config.filter)
        action = parse_action(kind, spec.action)
        self._check_owner_may(principal, action)
        return action

    def _check_owner_may(self, owner: Principal, action: TriggerAction) -> None:
        """A trigger creates work as its owner: only work the owner could create by hand."""
        if action.task is not None:
            self._access.check_tool(owner, "task_submit")
            self._access.check_task_type(owner, str(action.task.get("type", "")))
        else:
            self._access.check_tool(owner, "workflow_run")

    async def create(
        self,
        principal: Principal,
        name: str,
        kind: TriggerKind,
        spec: TriggerSpec,
        enabled: bool,
        secret: str | None,
    ) -> TriggerCreated:
        self._validated(principal, kind, spec)
        if kind is TriggerKind.WEBHOOK:
            secret = secret or secrets.token_urlsafe(32)
        elif secret is not None:
            raise InvalidInput("only webhook triggers take a secret")
        view = await self._db.write(self._create_tx, principal, name, kind, spec, enabled, secret)
        return TriggerCreated(trigger=view, secret=secret)

    def _create_tx(
        self,
        conn: Connection,
        principal: Principal,
        name: str,
        kind: TriggerKind,
        spec: TriggerSpec,
        enabled: bool,
        secret: str | None,
    ) -> TriggerView:
        now = self._clock.now_us()
        trigger_id = new_id(TRIGGER)
        values = dict(
            id=trigger_id,
            name=name,
            kind=kind.value,
            enabled=enabled,
            config=spec.config,
            action=spec.action,
            secret=secret,
            owner=principal.id,
            owner_role=principal.role.value,
            owner_profile=principal.profile,
            cursor=events.newest_cursor(conn),
            created_at=now,
            updated_at=now,
            fired=0,
        )
        values["next_due_at"] = self._first_due(kind, spec.config, now, now)
        try:
            with conn.begin_nested():
                conn.execute(triggers.insert().values(values))
        except IntegrityError:
            raise Conflict(f"a trigger named {name!r} exists; pick another name or trigger_update it") from None
        audit.record(conn, now, principal, "trigger.create", trigger_id, {"name": name, "kind": kind.value})
        return self._view(conn, self._row(conn, trigger_id), with_runs=False)

    @staticmethod
    def _first_due(kind: TriggerKind, config: dict[str, Any], after_us: int, anchor_us: int) -> int | None:
        if kind is TriggerKind.SCHEDULE:
            return ScheduleConfig.model_validate(config).due_after(after_us, anchor_us)
        if kind is TriggerKind.ABSENCE:
            return after_us + AbsenceConfig.model_validate(config).within_s * 1_000_000
        return None

    async def update(
        self,
        principal: Principal,
        ref: str,
        config: dict[str, Any] | None,
        action: dict[str, Any] | None,
        enabled: bool | None,
    ) -> TriggerView:
        return await self._db.write(self._update_tx, principal, ref, config, action, enabled)

    def _update_tx(
        self,
        conn: Connection,
        principal: Principal,
        ref: str,
        config: dict[str, Any] | None,
        action: dict[str, Any] | None,
        enabled: bool | None,
    ) -> TriggerView:
        row = self._mine(conn, principal, ref, lock=True)
        kind = TriggerKind(row.kind)
        spec = TriggerSpec(config if config is not None else row.config, action if action is not None else row.action)
        self._validated(principal, kind, spec)
        now = self._clock.now_us()
        values: dict[str, Any] = {"config": spec.config, "action": spec.action, "updated_at": now}
        if enabled is not None:
            values["enabled"] = enabled
        if config is not None or (enabled and not row.enabled):
            values["next_due_at"] = self._first_due(kind, spec.config, now, row.created_at)
        if enabled and not row.enabled and kind in (TriggerKind.EVENT, TriggerKind.ABSENCE):
            values["cursor"] = events.newest_cursor(conn)  # switched back on: from now, not a backlog
        conn.execute(update(triggers).where(triggers.c.id == row.id).values(values))
        changed = sorted(k for k, v in (("config", config), ("action", action), ("enabled", enabled)) if v is not None)
        audit.record(conn, now, principal, "trigger.update", row.id, {"changed": changed}, before=row)
        return self._view(conn, self._row(conn, row.id), with_runs=False)

    async def delete(self, principal: Principal, ref: str) -> TriggerView:
        return await self._db.write(self._delete_tx, principal, ref)

    def _delete_tx(self, conn: Connection, principal: Principal, ref: str) -> TriggerView:
        row = self._mine(conn, principal, ref, lock=True)
        view = self._view(conn, row, with_runs=False)
        conn.execute(delete(trigger_runs).where(trigger_runs.c.trigger_id == row.id))
        conn.execute(delete(triggers).where(triggers.c.id == row.id))
        audit.record(conn, self._clock.now_us(), principal, "trigger.delete", row.id, {"name": row.name}, before=row)
        return view

    # -- reading -------------------------------------------------------------------------------
    async def list(self, principal: Principal, kind: TriggerKind | None) -> TriggerList:
        return await self._db.read(self._list_tx, principal, kind)

    def _list_tx(self, conn: Connection, principal: Principal, kind: TriggerKind | None) -> TriggerList:
        query = select(triggers).order_by(triggers.c.name)
        if kind is not None:
            query = query.where(triggers.c.kind == kind.value)
        if not principal.sees_all:
            query = query.where(triggers.c.owner == principal.id)
        return TriggerList(triggers=[self._view(conn, row, with_runs=False) for row in conn.execute(query).all()])

    async def get(self, principal: Principal, ref: str) -> TriggerView:
        return await self._db.read(self._get_tx, principal, ref)

    def _get_tx(self, conn: Connection, principal: Principal, ref: str) -> TriggerView:
        return self._view(conn, self._mine(conn, principal, ref), with_runs=True)

    def _row(self, conn: Connection, ref: str, lock: bool = False) -> Row[Any]:
        column = triggers.c.id if ref.startswith(f"{TRIGGER}_") else triggers.c.name
        query = select(triggers).where(column == ref)
        if lock and conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"no trigger {ref!r}; trigger_list shows them")
        return row

    def owned_row(self, conn: Connection, principal: Principal, ref: str) -> Row[Any]:
        """The trigger `ref` (id or name) if `principal` may see it; not_found otherwise."""
        return self._mine(conn, principal, ref)

    def _mine(self, conn: Connection, principal: Principal, ref: str, lock: bool = False) -> Row[Any]:
        row = self._row(conn, ref, lock)
        if not visible(principal, row):
            raise NotFound(f"no trigger {ref!r}; trigger_list shows them")
        return row

    def _view(self, conn: Connection, row: Row[Any], with_runs: bool) -> TriggerView:
        upcoming: list[str] = []
        if row.kind == TriggerKind.SCHEDULE and row.enabled and row.next_due_at is not None:
            schedule = ScheduleConfig.model_validate(row.config)
            times = [row.next_due_at, *schedule.upcoming(row.next_due_at, row.created_at, _UPCOMING - 1)]
            upcoming = [to_iso(t) or "" for t in times]
        runs = None
        if with_runs:
            recent = conn.execute(
                select(trigger_runs)
                .where(trigger_runs.c.trigger_id == row.id)
                .order_by(trigger_runs.c.at.desc(), trigger_runs.c.id.desc())
                .limit(_RECENT_RUNS)
            ).all()
            runs = [TriggerRunView.of(run) for run in recent]
        return TriggerView.of(row, upcoming, runs)

    # -- firing --------------------------------------------------------------------------------
    async def fire(self, principal: Principal, ref: str, body: Any) -> TriggerRunView:
        """A manual run: `body` is what `{{ body.… }}` reads."""
        require_storable({"input": body}, "trigger_fire")
        return await self._db.write(self._manual_tx, principal, ref, body)

    def _manual_tx(self, conn: Connection, principal: Principal, ref: str, body: Any) -> TriggerRunView:
        row = self._mine(conn, principal, ref)
        run = self.fire_in(conn, row, f"manual:{new_id(TRIGGER_RUN)}", "manual", {"body": body}, 0, by=principal)
        assert run is not None  # a fresh occasion always fires
        return run

    async def receive_webhook(self, name: str, headers: Mapping[str, str], body: bytes) -> tuple[TriggerRunView, bool]:
        """An outside system posted to /hooks/{name}: check its signature, then fire once per delivery
        id. Returns the run and whether this delivery is new (a redelivery returns the first run)."""
        row = await self._db.read(self._webhook_row, name)
        if row is None or not row.enabled:
            raise NotFound(f"no enabled webhook trigger named {scrubbed(name)[:100]!r}")
        if not is_authentic(row.secret or "", headers, body):
            raise PermissionDenied("the webhook's signature does not match its trigger's secret")
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput("a webhook body must be JSON") from None
        require_storable({"body": parsed}, "webhook")
        delivery = delivery_id(headers) or new_id(TRIGGER_RUN)
        require_storable({"delivery": delivery}, "webhook")
        return await self._db.write(self._webhook_tx, row.id, f"dlv:{delivery}", parsed)

    @staticmethod
    def _webhook_row(conn: Connection, name: str) -> Row[Any] | None:
        query = select(triggers).where(triggers.c.name == name[:100], triggers.c.kind == TriggerKind.WEBHOOK.value)
        return conn.execute(query).first()

    def _webhook_tx(self, conn: Connection, trigger_id: str, occasion: str, body: Any) -> tuple[TriggerRunView, bool]:
        row = conn.execute(select(triggers).where(triggers.c.id == trigger_id)).one()
        run = self.fire_in(conn, row, occasion, "webhook", {"body": body}, 0)
        if run is not None:
            return run, True
        first = conn.execute(
            select(trigger_runs).where(
                trigger_runs.c.trigger_id == trigger_id, trigger_runs.c.occasion == occasion[:120]
            )
        ).one()
        return TriggerRunView.of(first), False

    def fire_in(
        self,
        conn: Connection,
        row: Row[Any],
        occasion: str,
        reason: str,
        scope: Mapping[str, Any],
        depth: int,
        by: Principal | None = None,
    ) -> TriggerRunView | None:
        """Record the occasion and create the work, in the caller's transaction. None when the
        occasion had already fired (here or on another replica)."""
        now = self._clock.now_us()
        run_id = new_id(TRIGGER_RUN)
        values = {"id": run_id, "trigger_id": row.id, "occasion": occasion[:120], "reason": reason, "at": now}
        first = conn.execute(_RECORD_RUN[conn.dialect.name], values).first() is not None
        if not first:
            return None
        owner = owner_of(row)
        events.set_depth(conn, depth)
        status, kind, created, error = self._create_work(conn, row, owner, dict(scope))
        conn.execute(
            update(trigger_runs)
            .where(trigger_runs.c.id == run_id)
            .values(status=status, created_kind=kind, created_id=created, error=error)
        )
        conn.execute(
            update(triggers).where(triggers.c.id == row.id).values(fired=triggers.c.fired + 1, last_fired_at=now)
        )
        detail = {"occasion": occasion[:120], "reason": reason, "status": status, "created": created, "error": error}
        audit.record(conn, now, by or owner, "trigger.fire", row.id, detail)
        data = {"name": row.name, "kind": row.kind, **detail, "created_kind": kind}
        events.emit(conn, now, "trigger.fired", row.id, data, actor=(by or owner), owner=row.owner)
        events.set_depth(conn, 0)
        return TriggerRunView(
            id=run_id,
            occasion=occasion[:120],
            reason=reason,
            at=to_iso(now) or "",
            status=status,
            created_kind=kind,
            created_id=created,
            error=error,
        )

    def _create_work(
        self, conn: Connection, row: Row[Any], owner: Principal, scope: dict[str, Any]
    ) -> tuple[str, str | None, str | None, str | None]:
        """(status, created kind, created id, error). A refusal or a bad template is recorded on the
        run, not raised: the firing itself happened."""
        if not row.enabled:
            return "skipped", None, None, "the trigger is disabled"
        try:
            with audit.savepoint(conn):
                self._check_owner_alive(conn, owner)
                action = self._action_of(row)
                self._check_owner_may(owner, action)
                if action.task is not None:
                    spec = task_for(action, scope)
                    return "created", "task", self._tasks.submit_in(conn, owner, spec, new_id(TASK)).id, None
                assert action.workflow is not None
                inputs = workflow_inputs(action, scope)
                workflow = action.workflow
                run_id = self._workflows.run_in(conn, owner, workflow.definition, workflow.template, inputs)
                return "created", "workflow", run_id, None
        except FleetError as exc:
            return "failed", None, None, str(exc)[:2000]

    def _action_of(self, row: Row[Any]) -> TriggerAction:
        """A trigger's parsed action, once per version of the trigger (validated when it was saved)."""
        key = (row.id, row.updated_at)
        action = self._actions.get(key)
        if action is None:
            if len(self._actions) > 10_000:
                self._actions.clear()
            action = self._actions[key] = parse_action(TriggerKind(row.kind), row.action)
        return action

    @staticmethod
    def _check_owner_alive(conn: Connection, owner: Principal) -> None:
        if owner.role is not Role.AGENT:
            return
        status = conn.execute(select(agents.c.status).where(agents.c.id == owner.id)).scalar()
        if status is None or status in ("terminated", "stopping", "failed"):
            raise PermissionDenied(f"the trigger's owner {owner.id} is {status or 'gone'}; its triggers create nothing")

    def still_running(self, conn: Connection, trigger_id: str) -> str | None:
        """The work of this trigger's last firing, if it is still going (for overlap: skip)."""
        last = conn.execute(
            select(trigger_runs.c.created_kind, trigger_runs.c.created_id)
            .where(trigger_runs.c.trigger_id == trigger_id, trigger_runs.c.status == "created")
            .order_by(trigger_runs.c.at.desc(), trigger_runs.c.id.desc())
            .limit(1)
        ).first()
        if last is None or last.created_id is None:
            return None
        if last.created_kind == "task":
            status = conn.execute(select(tasks.c.status).where(tasks.c.id == last.created_id)).scalar()
            return last.created_id if status in _LIVE_TASK else None
        status = conn.execute(select(workflow_runs.c.status).where(workflow_runs.c.id == last.created_id)).scalar()
        return last.created_id if status == RunStatus.RUNNING.value else None

    def record_skip(self, conn: Connection, row: Row[Any], occasion: str, reason: str, why: str) -> None:
        now = self._clock.now_us()
        insert_ignoring_duplicates(
            conn,
            trigger_runs,
            {
                "id": new_id(TRIGGER_RUN),
                "trigger_id": row.id,
                "occasion": occasion[:120],
                "reason": reason,
                "at": now,
                "status": "skipped",
                "error": why,
            },
            ["trigger_id", "occasion"],
        )
