"""Workflow tools: run DAGs of tasks, follow and cancel them, publish versioned templates."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from server.domain.profile import ProfileState
from server.domain.views import WorkflowList, WorkflowTemplateList, WorkflowTemplateView, WorkflowView
from server.domain.workflow_status import RunStatus
from server.services.waiting import MAX_WAIT_S
from tools.annotations import DESTRUCTIVE, IDEMPOTENT_WRITE, READ_ONLY, WRITES
from tools.arguments import Reason
from tools.context import FleetContext, caller, services_of

RunId = Annotated[
    str, Field(min_length=5, max_length=40, pattern=r"^wfr_[0-9A-Z]+$", description="a workflow run id, wfr_…")
]
Definition = Annotated[
    dict[str, Any] | str | None,
    Field(
        description=(
            "the workflow: {name, inputs?, on_failure?, steps: [{id, task, depends_on?, when?, for_each?, "
            "consensus?, on_failure?}]}, as an object or as YAML/JSON text"
        )
    ),
]


TemplateVersion = Annotated[str, Field(min_length=3, max_length=200, description="name@version, e.g. my-flow@1.2.0")]


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=WRITES)
    async def workflow_run(
        ctx: FleetContext,
        definition: Definition = None,
        template: Annotated[
            str | None,
            Field(max_length=200, description="a saved template instead: name, name@1.2.0 or name@^1 (newest match)"),
        ] = None,
        inputs: Annotated[dict[str, Any] | None, Field(description="values for the workflow's inputs")] = None,
        reason: Reason = None,
        wait_s: Annotated[
            float, Field(ge=0, le=MAX_WAIT_S, description="wait up to this long for the run to end (0: at once)")
        ] = 0,
    ) -> WorkflowView:
        """Run a workflow: a DAG of steps, each a task (as task_submit takes) that starts when the
        steps it depends_on have ended. Payloads may use {{ inputs.x }} and
        {{ steps.<id>.result.y }}; `when` skips a step on a condition; `for_each` fans a step out
        over a list (the next step receives all results in order); `consensus` has N distinct agents
        do it and combines their results (majority, unanimous, first_k). Everything is validated
        before anything runs. Returns the run; with wait_s, once it has ended (or at wait_s)."""
        principal = await caller(ctx, reason)
        services = services_of(ctx)
        run_id = await services.workflows.run(principal, definition, template, inputs)
        if wait_s > 0:
            return await services.waits.workflow(principal, run_id, wait_s)
        return await services.workflows.get(principal, run_id)

    @mcp.tool(annotations=READ_ONLY)
    async def workflow_get(
        ctx: FleetContext,
        run_id: RunId,
        wait_s: Annotated[
            float, Field(ge=0, le=MAX_WAIT_S, description="wait up to this long for the run to end (0: at once)")
        ] = 0,
    ) -> WorkflowView:
        """Show a workflow run: its status, each step's state, tasks, timings, result or error,
        and the critical path (the chain of steps that took longest). With wait_s, the call returns
        when the run ends (completed, failed, cancelled), or at wait_s with the run as it is."""
        principal = await caller(ctx)
        if wait_s > 0:
            return await services_of(ctx).waits.workflow(principal, run_id, wait_s)
        return await services_of(ctx).workflows.get(principal, run_id)

    @mcp.tool(annotations=READ_ONLY)
    async def workflow_list(
        ctx: FleetContext,
        status: Annotated[RunStatus | None, Field(description="only runs in this status")] = None,
        name: Annotated[str | None, Field(max_length=100, description="only runs of this workflow")] = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Field(max_length=200, description="next_cursor from the previous page")] = None,
    ) -> WorkflowList:
        """List workflow runs, newest first. You see the runs you started; admins, operators and
        viewers see all."""
        principal = await caller(ctx)
        return await services_of(ctx).workflows.list(principal, status, name, limit, cursor)

    @mcp.tool(annotations=DESTRUCTIVE)
    async def workflow_cancel(ctx: FleetContext, run_id: RunId, reason: Reason = None) -> WorkflowView:
        """Cancel a running workflow you started (an operator: any): steps not yet ended are
        cancelled, queued step tasks are cancelled at once and running ones are asked to stop."""
        principal = await caller(ctx, reason)
        services = services_of(ctx)
        await services.workflows.cancel(principal, run_id, reason)
        return await services.workflows.get(principal, run_id)

    @mcp.tool(annotations=WRITES)
    async def workflow_template_save(
        ctx: FleetContext,
        definition: Annotated[dict[str, Any] | str, Field(description="the workflow definition, object or YAML/JSON")],
        version: Annotated[
            str | None, Field(max_length=40, description="semver, e.g. 1.2.0 (or version: in the definition)")
        ] = None,
        reason: Reason = None,
    ) -> WorkflowTemplateView:
        """Publish a workflow definition as template name@version. Versions are immutable: saving
        the same version again with the same definition changes nothing, with another definition
        is a conflict. Run it with workflow_run(template="name@^1")."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).workflow_templates.save(principal, definition, version)

    @mcp.tool(annotations=READ_ONLY)
    async def workflow_template_list(ctx: FleetContext) -> WorkflowTemplateList:
        """The saved workflow templates you can run: each name with its versions (newest first), its
        inputs and steps. workflow_template_get shows one in full; workflow_run(template=…) runs it."""
        await caller(ctx)
        return await services_of(ctx).workflow_templates.list()

    @mcp.tool(annotations=READ_ONLY)
    async def workflow_template_get(
        ctx: FleetContext,
        template: Annotated[
            str, Field(min_length=1, max_length=200, description="name (newest), name@1.2.0 or a range name@^1")
        ],
    ) -> WorkflowTemplateView:
        """One workflow template in full: its definition (inputs with types, steps, conditions), as
        workflow_run(template=…) would run it."""
        await caller(ctx)
        return await services_of(ctx).workflow_templates.get(template)

    @mcp.tool(annotations=IDEMPOTENT_WRITE)
    async def workflow_template_deprecate(
        ctx: FleetContext, template: TemplateVersion, reason: Reason = None
    ) -> WorkflowTemplateView:
        """Deprecate name@version: workflow_run(template=name or a range) picks it only when no
        active version fits; named exactly it still runs. Runs already started are not touched."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).workflow_templates.set_state(principal, template, ProfileState.DEPRECATED)

    @mcp.tool(annotations=DESTRUCTIVE)
    async def workflow_template_retire(
        ctx: FleetContext, template: TemplateVersion, reason: Reason = None
    ) -> WorkflowTemplateView:
        """Retire name@version: it never runs again (workflow_run refuses it with conflict); runs
        already started finish. A retired version never comes back."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).workflow_templates.set_state(principal, template, ProfileState.RETIRED)
