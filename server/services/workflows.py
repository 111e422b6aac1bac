"""Workflows: durable DAGs of tasks. A run's progress lives in orch_workflow_runs and
orch_workflow_steps, and it advances inside the very transaction that ends one of its tasks
(`TaskEnds`), under a lock on the run's row: a crash cannot fall between a task's end and the
step it finishes, and two replicas never advance one step twice."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Row, func, select, update

from server.clock import Clock
from server.domain.cursor import decode_cursor, encode_cursor
from server.domain.principal import Principal, Role
from server.domain.statuses import TaskStatus
from server.domain.task_spec import TaskSpec
from server.domain.views import CriticalPath, WorkflowList, WorkflowView
from server.domain.workflow_definition import (
    StepSpec,
    WorkflowDefinition,
    bind_inputs,
    combine_votes,
    critical_path,
    fan_out_items,
    parse_definition,
    task_spec_for,
)
from server.domain.workflow_status import FINAL_STEP, RunStatus, StepStatus
from server.domain.workflow_template import render
from server.errors import Conflict, FleetError, InvalidInput, NotFound, PermissionDenied
from server.ids import TASK, WORKFLOW_RUN, new_id
from server.instruments import Instruments
from server.services import audit
from server.services.access import AccessPolicy
from server.services.events import log as events
from server.services.task_ends import TaskEnds
from server.services.tasks import TaskService, WorkflowPlace
from server.services.workflow_rows import MAX_LISTED_TASKS, run_summary, run_view, step_view
from server.services.workflow_templates import resolve_template
from server.store.database import Database
from server.store.dialect import lock_row
from server.store.tables import tasks, workflow_runs, workflow_steps

DEFINITION_CACHE = 256
FAILED_TASK = frozenset({TaskStatus.FAILED.value, TaskStatus.DEAD.value, TaskStatus.CANCELLED.value})


class WorkflowService:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        tasks_service: TaskService,
        access: AccessPolicy,
        task_ends: TaskEnds,
        instruments: Instruments | None = None,
    ) -> None:
        self._instruments = instruments or Instruments()
        self._db = db
        self._clock = clock
        self._tasks = tasks_service
        self._access = access
        self._definitions: OrderedDict[str, WorkflowDefinition] = OrderedDict()
        task_ends.subscribe(self._task_ended)

    def _definition(self, run: Row[Any]) -> WorkflowDefinition:
        """A run's definition never changes once stored, so each replica validates it once, not
        at every task end (a fan-out's thousand). The cache is bounded; a miss re-reads the row."""
        cached = self._definitions.get(run.id)
        if cached is None:
            cached = self._definitions[run.id] = WorkflowDefinition.model_validate(run.definition)
            while len(self._definitions) > DEFINITION_CACHE:
                self._definitions.popitem(last=False)
        else:
            self._definitions.move_to_end(run.id)
        return cached

    # -- starting ------------------------------------------------------------------------------
    async def run(
        self,
        principal: Principal,
        definition: str | Mapping[str, Any] | None,
        template: str | None,
        inputs: Mapping[str, Any] | None,
    ) -> str:
        """Validate everything, then create the run and start its first steps in one transaction.
        Returns the run id."""
        if (definition is None) == (template is None):
            raise InvalidInput("give a workflow definition or a template reference (name@range), not both")
        parsed = parse_definition(definition) if definition is not None else None
        if parsed is not None:
            self._check_task_types(principal, parsed)
            bound = bind_inputs(parsed, inputs)
        else:
            bound = dict(inputs or {})
        return await self._db.write(self._run_tx, principal, parsed, template, bound)

    def run_in(
        self,
        conn: Connection,
        principal: Principal,
        definition: str | Mapping[str, Any] | None,
        template: str | None,
        inputs: Mapping[str, Any] | None,
    ) -> str:
        """Start a run inside the caller's transaction (a trigger firing). Returns the run id."""
        if (definition is None) == (template is None):
            raise InvalidInput("give a workflow definition or a template reference (name@range), not both")
        parsed = parse_definition(definition) if definition is not None else None
        if parsed is not None:
            self._check_task_types(principal, parsed)
            return self._run_tx(conn, principal, parsed, None, bind_inputs(parsed, inputs))
        return self._run_tx(conn, principal, None, template, dict(inputs or {}))

    def _check_task_types(self, principal: Principal, definition: WorkflowDefinition) -> None:
        for step in definition.steps:
            self._access.check_task_type(principal, step.task.type)

    def _run_tx(
        self,
        conn: Connection,
        principal: Principal,
        parsed: WorkflowDefinition | None,
        template: str | None,
        inputs: dict[str, Any],
    ) -> str:
        ref = None
        if parsed is None:
            assert template is not None
            source, ref = resolve_template(conn, template)
            parsed = parse_definition(source)
            self._check_task_types(principal, parsed)
            inputs = bind_inputs(parsed, inputs)
        now = self._clock.now_us()
        run_id = new_id(WORKFLOW_RUN)
        conn.execute(
            workflow_runs.insert().values(
                id=run_id,
                name=parsed.name,
                template=ref,
                definition=parsed.model_dump(mode="json", exclude_none=True),
                inputs=inputs,
                status=RunStatus.RUNNING.value,
                on_failure=parsed.on_failure,
                submitted_by=principal.id,
                submitter_role=principal.role.value,
                submitter_profile=principal.profile,
                created_at=now,
                updated_at=now,
            )
        )
        conn.execute(
            workflow_steps.insert(),
            [
                {"run_id": run_id, "step_id": step.id, "position": n, "status": StepStatus.PENDING.value}
                for n, step in enumerate(parsed.steps)
            ],
        )
        audit.record(conn, now, principal, "workflow.run", run_id, {"name": parsed.name, "template": ref})
        data = {"name": parsed.name, "template": ref}
        events.emit(conn, now, "workflow.started", run_id, data, actor=principal, owner=principal.id)
        run = conn.execute(select(workflow_runs).where(workflow_runs.c.id == run_id)).one()
        self._advance(conn, run, now, strict=True)
        return run_id

    # -- advancing -----------------------------------------------------------------------------
    def _task_ended(self, conn: Connection, task: Row[Any]) -> None:
        """Called in the transaction that gave one of a run's tasks its final status."""
        run = lock_row(conn, workflow_runs, workflow_runs.c.id == task.workflow_run_id)
        if run is None or run.status != RunStatus.RUNNING.value:
            return  # the run already ended (failed fast, cancelled): late task ends change nothing
        step = self._step_row(conn, run.id, task.workflow_step)
        if step.status != StepStatus.RUNNING.value:
            return
        now = self._clock.now_us()
        spec = self._definition(run).step(task.workflow_step)
        if spec.consensus is not None:
            ended = self._count_vote(conn, run, step, spec, now)
        elif task.status in FAILED_TASK:
            ended = self._finish_step(conn, run, step.step_id, StepStatus.FAILED, None, _task_error(task), now)
        elif spec.for_each is None:
            ended = self._finish_step(conn, run, step.step_id, StepStatus.COMPLETED, task.result, None, now)
        else:
            ended = self._count_instance(conn, run, step, now)
        if ended:  # only a step's end can let another start: a fan-out's 999 other ends stay O(1)
            self._advance(conn, run, now)

    def _count_instance(self, conn: Connection, run: Row[Any], step: Row[Any], now: int) -> bool:
        finished = conn.execute(
            update(workflow_steps)
            .where(workflow_steps.c.run_id == run.id, workflow_steps.c.step_id == step.step_id)
            .values(finished=workflow_steps.c.finished + 1)
            .returning(workflow_steps.c.finished)
        ).scalar_one()
        if finished < step.expected:
            return False
        results = conn.execute(
            select(tasks.c.result)
            .where(tasks.c.workflow_run_id == run.id, tasks.c.workflow_step == step.step_id)
            .order_by(tasks.c.workflow_index)
        ).scalars()
        return self._finish_step(conn, run, step.step_id, StepStatus.COMPLETED, list(results), None, now)

    def _count_vote(self, conn: Connection, run: Row[Any], step: Row[Any], spec: StepSpec, now: int) -> bool:
        """Each vote's end re-tallies the step's ended votes: a few rows (agents <= 9)."""
        assert spec.consensus is not None
        ended = conn.execute(
            select(tasks.c.status, tasks.c.result, tasks.c.agent_id)
            .where(
                tasks.c.workflow_run_id == run.id,
                tasks.c.workflow_step == step.step_id,
                tasks.c.status.in_([TaskStatus.COMPLETED.value, *FAILED_TASK]),
            )
            .order_by(tasks.c.finished_at, tasks.c.workflow_index)
        ).all()
        votes = [v for v in ended if v.status == TaskStatus.COMPLETED.value]
        outcome = combine_votes(spec.consensus, [v.result for v in votes], lost=len(ended) - len(votes))
        if outcome.state == "pending":
            return False
        result = {
            "value": outcome.value,
            "decided": outcome.state == "decided",
            "disagreement": outcome.disagreement,
            "received": outcome.received,
            "votes": [{"value": v.value, "count": v.count} for v in outcome.votes],
            "agents": [v.agent_id for v in votes],
        }
        status = StepStatus.COMPLETED if outcome.state == "decided" else StepStatus.FAILED
        return self._finish_step(conn, run, step.step_id, status, result, outcome.reason, now)

    def _finish_step(
        self,
        conn: Connection,
        run: Row[Any],
        step_id: str,
        status: StepStatus,
        result: Any,
        error: str | None,
        now: int,
    ) -> bool:
        ended = conn.execute(
            update(workflow_steps)
            .where(
                workflow_steps.c.run_id == run.id,
                workflow_steps.c.step_id == step_id,
                workflow_steps.c.status == StepStatus.RUNNING.value,
            )
            .values(status=status.value, result=result, error=error, finished_at=now)
            .returning(workflow_steps.c.started_at)
        ).first()
        if ended is not None and ended.started_at is not None:
            self._instruments.step_finished(run.name, status.value, now - ended.started_at)
        # A decided consensus or a failed step leaves sibling tasks with nothing to contribute.
        self._tasks.cancel_in(conn, self._open_tasks(conn, run.id, step_id), f"workflow step {step_id} ended", now)
        if status is StepStatus.FAILED:
            audit.record(conn, now, _submitter(run), "workflow.step_failed", run.id, {"step": step_id, "error": error})
        if ended is not None:
            data = {"step": step_id, "status": status.value, "error": error, "name": run.name}
            events.emit(
                conn, now, f"workflow.step_{status.value}", run.id, data, actor="system", owner=run.submitted_by
            )
        return ended is not None

    def _advance(self, conn: Connection, run: Row[Any], now: int, strict: bool = False) -> None:
        """Start every step whose dependencies have all ended, skip those that cannot run, and end
        the run when every step has. Repeats until nothing changes (skips cascade). `strict`: a
        step that cannot start is the caller's error (workflow_run), not a failed step."""
        definition = self._definition(run)
        while True:
            states = self._step_states(conn, run.id)
            failed = [s for s, st in states.items() if st["status"] == StepStatus.FAILED.value]
            if failed and self._fails_fast(definition, failed):
                self._end_run(conn, run, RunStatus.FAILED, f"step {failed[0]} failed", now)
                return
            ready = [
                s
                for s in definition.steps
                if states[s.id]["status"] == StepStatus.PENDING.value
                and all(states[d]["status"] in FINAL_STEP for d in s.depends_on)
            ]
            if not ready:
                break
            for step in ready:
                self._start_or_skip(conn, run, step, states, now, strict)
        states = self._step_states(conn, run.id)
        if all(st["status"] in FINAL_STEP for st in states.values()):
            failed = [s for s, st in states.items() if st["status"] == StepStatus.FAILED.value]
            status = RunStatus.FAILED if failed else RunStatus.COMPLETED
            self._end_run(conn, run, status, f"step {failed[0]} failed" if failed else None, now)

    @staticmethod
    def _fails_fast(definition: WorkflowDefinition, failed: list[str]) -> bool:
        return any(definition.on_failure_of(definition.step(s)) == "fail_fast" for s in failed)

    def _start_or_skip(
        self, conn: Connection, run: Row[Any], step: StepSpec, states: dict[str, dict[str, Any]], now: int, strict: bool
    ) -> None:
        deps = [states[d]["status"] for d in step.depends_on]
        scope = {"inputs": run.inputs, "steps": states}
        reason = None
        if any(d in (StepStatus.FAILED.value, StepStatus.CANCELLED.value) for d in deps):
            reason = "a step it depends on failed"
        elif deps and all(d == StepStatus.SKIPPED.value for d in deps):
            reason = "every step it depends on was skipped"
        elif step.condition is not None and not step.condition.evaluate(scope):
            reason = f"when: {step.when} is false"
        if reason is not None:
            self._set_step(conn, run.id, step.id, status=StepStatus.SKIPPED.value, error=reason, finished_at=now)
            return
        try:
            # A savepoint: a step whose tenth task is refused leaves none of the first nine queued.
            with audit.savepoint(conn):
                specs = self._instances(step, scope)
                self._submit(conn, run, step, specs)
        except FleetError as exc:
            if strict:
                raise type(exc)(f"step {step.id!r} cannot start: {exc}") from exc
            self._set_step(conn, run.id, step.id, status=StepStatus.FAILED.value, error=str(exc), finished_at=now)
            return
        if specs:
            self._set_step(conn, run.id, step.id, status=StepStatus.RUNNING.value, expected=len(specs), started_at=now)
        else:  # for_each over an empty list: nothing to wait for
            self._set_step(
                conn, run.id, step.id, status=StepStatus.COMPLETED.value, result=[], started_at=now, finished_at=now
            )

    def _submit(self, conn: Connection, run: Row[Any], step: StepSpec, specs: list[TaskSpec]) -> None:
        submitter = _submitter(run)
        group = f"{run.id}/{step.id}" if step.consensus is not None else None
        for index, spec in enumerate(specs):
            place = WorkflowPlace(run.id, step.id, index, group)
            self._tasks.submit_in(conn, submitter, spec, new_id(TASK), place)

    @staticmethod
    def _instances(step: StepSpec, scope: dict[str, Any]) -> list[TaskSpec]:
        """The task specs a step runs: one, one per for_each item, or one per consensus agent."""
        payload = step.task.payload
        if step.for_each is not None:
            return [
                task_spec_for(step, render(payload, {**scope, "item": item, "index": n}))
                for n, item in enumerate(fan_out_items(step, scope))
            ]
        spec = task_spec_for(step, render(payload, scope))
        copies = step.consensus.agents if step.consensus is not None else 1
        return [spec] * copies

    # -- ending --------------------------------------------------------------------------------
    def _end_run(self, conn: Connection, run: Row[Any], status: RunStatus, error: str | None, now: int) -> None:
        ended = conn.execute(
            update(workflow_runs)
            .where(workflow_runs.c.id == run.id, workflow_runs.c.status == RunStatus.RUNNING.value)
            .values(status=status.value, error=error, finished_at=now, updated_at=now)
        ).rowcount
        if not ended:
            return
        conn.execute(
            update(workflow_steps)
            .where(
                workflow_steps.c.run_id == run.id,
                workflow_steps.c.status.in_([StepStatus.PENDING.value, StepStatus.RUNNING.value]),
            )
            .values(status=StepStatus.CANCELLED.value, finished_at=now)
        )
        self._tasks.cancel_in(conn, self._open_tasks(conn, run.id), f"workflow {run.id} {status.value}", now)
        audit.record(conn, now, _submitter(run), f"workflow.{status.value}", run.id, {"error": error})
        data = {"name": run.name, "error": error}
        events.emit(conn, now, f"workflow.{status.value}", run.id, data, actor="system", owner=run.submitted_by)

    async def cancel(self, principal: Principal, run_id: str, reason: str | None) -> None:
        await self._db.write(self._cancel_tx, principal, run_id, reason)

    def _cancel_tx(self, conn: Connection, principal: Principal, run_id: str, reason: str | None) -> None:
        run = lock_row(conn, workflow_runs, workflow_runs.c.id == run_id)
        if run is None or not _may_see(principal, run):
            raise NotFound(f"no workflow run {run_id}")
        if not (principal.can_operate or principal.id == run.submitted_by):
            raise PermissionDenied(
                f"workflow run {run_id} is not yours to cancel: only its submitter or an operator may"
            )
        if run.status != RunStatus.RUNNING.value:
            raise Conflict(f"workflow run {run_id} is already {run.status}")
        error = f"cancelled by {principal.id}" + (f": {reason}" if reason else "")
        self._end_run(conn, run, RunStatus.CANCELLED, error, self._clock.now_us())

    # -- reading -------------------------------------------------------------------------------
    async def get(self, principal: Principal, run_id: str) -> WorkflowView:
        return await self._db.read(self._get_tx, principal, run_id)

    def _get_tx(self, conn: Connection, principal: Principal, run_id: str) -> WorkflowView:
        run = conn.execute(select(workflow_runs).where(workflow_runs.c.id == run_id)).first()
        if run is None or not _may_see(principal, run):
            raise NotFound(f"no workflow run {run_id}")
        now = self._clock.now_us()
        definition = self._definition(run)
        rows = {r.step_id: r for r in conn.execute(select(workflow_steps).where(workflow_steps.c.run_id == run_id))}
        counts: dict[str, dict[str, int]] = {}
        for step_id, status, count in conn.execute(
            select(tasks.c.workflow_step, tasks.c.status, func.count())
            .where(tasks.c.workflow_run_id == run_id)
            .group_by(tasks.c.workflow_step, tasks.c.status)
        ):
            counts.setdefault(step_id, {})[status] = count
        steps = [
            step_view(spec, rows[spec.id], counts.get(spec.id, {}), self._task_ids(conn, run_id, spec.id, counts), now)
            for spec in definition.steps
        ]
        durations = {s.id: s.duration_s or 0.0 for s in steps}
        path, total = critical_path({s.id: s.depends_on for s in definition.steps}, durations)
        return run_view(run, steps, CriticalPath(steps=path, duration_s=round(total, 3)), now)

    @staticmethod
    def _task_ids(conn: Connection, run_id: str, step_id: str, counts: dict[str, dict[str, int]]) -> list[str] | None:
        if sum(counts.get(step_id, {}).values()) > MAX_LISTED_TASKS:
            return None
        return list(
            conn.execute(
                select(tasks.c.id)
                .where(tasks.c.workflow_run_id == run_id, tasks.c.workflow_step == step_id)
                .order_by(tasks.c.workflow_index)
            ).scalars()
        )

    async def list(
        self, principal: Principal, status: RunStatus | None, name: str | None, limit: int, cursor: str | None
    ) -> WorkflowList:
        after = decode_cursor(cursor) if cursor else None
        return await self._db.read(self._list_tx, principal, status, name, limit, after)

    @staticmethod
    def _list_tx(
        conn: Connection,
        principal: Principal,
        status: RunStatus | None,
        name: str | None,
        limit: int,
        after: str | None,
    ) -> WorkflowList:
        query = select(workflow_runs).order_by(workflow_runs.c.id.desc()).limit(limit + 1)
        if status is not None:
            query = query.where(workflow_runs.c.status == status.value)
        if name is not None:
            query = query.where(workflow_runs.c.name == name)
        if after is not None:
            query = query.where(workflow_runs.c.id < after)
        if not principal.sees_all:
            query = query.where(workflow_runs.c.submitted_by == principal.id)
        rows = conn.execute(query).all()
        page = rows[:limit]
        steps: dict[str, dict[str, int]] = {}
        if page:
            for run_id, step_status, count in conn.execute(
                select(workflow_steps.c.run_id, workflow_steps.c.status, func.count())
                .where(workflow_steps.c.run_id.in_([r.id for r in page]))
                .group_by(workflow_steps.c.run_id, workflow_steps.c.status)
            ):
                steps.setdefault(run_id, {})[step_status] = count
        return WorkflowList(
            runs=[run_summary(r, steps.get(r.id, {})) for r in page],
            next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None,
        )

    # -- rows ----------------------------------------------------------------------------------
    @staticmethod
    def _step_row(conn: Connection, run_id: str, step_id: str) -> Row[Any]:
        return conn.execute(
            select(workflow_steps).where(workflow_steps.c.run_id == run_id, workflow_steps.c.step_id == step_id)
        ).one()

    @staticmethod
    def _step_states(conn: Connection, run_id: str) -> dict[str, dict[str, Any]]:
        rows = conn.execute(
            select(workflow_steps.c.step_id, workflow_steps.c.status, workflow_steps.c.result).where(
                workflow_steps.c.run_id == run_id
            )
        )
        return {r.step_id: {"status": r.status, "result": r.result} for r in rows}

    @staticmethod
    def _set_step(conn: Connection, run_id: str, step_id: str, **values: Any) -> None:
        conn.execute(
            update(workflow_steps)
            .where(workflow_steps.c.run_id == run_id, workflow_steps.c.step_id == step_id)
            .values(**values)
        )

    @staticmethod
    def _open_tasks(conn: Connection, run_id: str, step_id: str | None = None) -> list[str]:
        query = select(tasks.c.id).where(
            tasks.c.workflow_run_id == run_id,
            tasks.c.status.in_([TaskStatus.PENDING_APPROVAL.value, TaskStatus.QUEUED.value, TaskStatus.RUNNING.value]),
        )
        if step_id is not None:
            query = query.where(tasks.c.workflow_step == step_id)
        return list(conn.execute(query).scalars())


def _submitter(run: Row[Any]) -> Principal:
    return Principal(Role(run.submitter_role), run.submitted_by, run.submitter_profile)


def _may_see(principal: Principal, run: Row[Any]) -> bool:
    return principal.sees_all or principal.id == run.submitted_by


def _task_error(task: Row[Any]) -> str:
    return f"task {task.id} {task.status}: {task.error or 'no error given'}"
