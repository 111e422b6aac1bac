"""Profile tools: the versioned registry (list, get, register, deprecate, retire, export), each
name's rollout, and how well agents, versions and task types do (scorecard, profile_compare)."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from server.domain.profile import ProfileState
from server.domain.views import (
    ProfileComparison,
    ProfileExport,
    ProfileList,
    ProfileView,
    RolloutView,
    ScorecardView,
)
from tools.annotations import DESTRUCTIVE, IDEMPOTENT_WRITE, READ_ONLY
from tools.arguments import Reason
from tools.context import FleetContext, caller, services_of

ProfileName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="a profile name, e.g. reviewer")]
ProfileRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=120,
        description="name@version, e.g. reviewer@1.3.0",
    ),
]
ProfileQuery = Annotated[
    str,
    Field(
        min_length=1,
        max_length=120,
        description="name (the newest version), name@1.2.0, or name@<npm range> such as reviewer@^1",
    ),
]

Period = Annotated[
    str, Field(max_length=8, description="how far back from now: 24h, 7d, 4w (at most a year); default 7d")
]


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=READ_ONLY)
    async def profile_list(
        ctx: FleetContext,
        name: Annotated[str | None, Field(max_length=64, description="only this profile's versions")] = None,
        state: Annotated[ProfileState | None, Field(description="only versions in this state")] = None,
    ) -> ProfileList:
        """List profile versions (newest first within a name) with their state (active,
        deprecated, retired) and source (file or registered), and each name's rollout."""
        await caller(ctx)
        return await services_of(ctx).profile_catalog.list(name, state)

    @mcp.tool(annotations=READ_ONLY)
    async def profile_get(ctx: FleetContext, profile: ProfileQuery) -> ProfileView:
        """Show one profile version with its full definition: permissions, limits, runtime,
        spawn list (for a viewer, process env values are masked)."""
        principal = await caller(ctx)
        return await services_of(ctx).profile_catalog.get(profile, principal)

    @mcp.tool(annotations=READ_ONLY)
    async def profile_export(ctx: FleetContext, profile: ProfileQuery) -> ProfileExport:
        """A profile version as YAML: a file for AGENTFLEET_PROFILES_DIR, or the start of a new
        version for profile_register (bump `version:` first)."""
        await caller(ctx)
        return await services_of(ctx).profile_catalog.export(profile)

    @mcp.tool(annotations=IDEMPOTENT_WRITE)
    async def profile_register(
        ctx: FleetContext,
        definition: Annotated[
            dict[str, Any] | str,
            Field(
                description="the profile, as an object or YAML text, exactly as a profile file: {name, version "
                "(semver), description, runtime?, capabilities?, permissions?, limits?, spawn?, …}"
            ),
        ],
        reason: Reason = None,
    ) -> ProfileView:
        """Register a profile version, validated exactly as profile files are; every replica can
        spawn it at once. Versions are immutable: the same version with the same definition
        changes nothing (created=false), with another definition is a conflict. Runtime process
        profiles and a2a profiles with token_env are for the admin only."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).profile_catalog.register(principal, definition)

    @mcp.tool(annotations=IDEMPOTENT_WRITE)
    async def profile_deprecate(ctx: FleetContext, profile: ProfileRef, reason: Reason = None) -> ProfileView:
        """Deprecate name@version: it is no longer chosen by a name alone or by a range while an
        active version fits, but may still be spawned when named exactly. Running agents keep it."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).profile_catalog.set_state(principal, profile, ProfileState.DEPRECATED)

    @mcp.tool(annotations=DESTRUCTIVE)
    async def profile_retire(ctx: FleetContext, profile: ProfileRef, reason: Reason = None) -> ProfileView:
        """Retire name@version: no new agents of it (agent_spawn refuses it with conflict);
        running agents keep their pinned version. A retired version never comes back; a version
        still in its name's rollout must be moved out of it first."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).profile_catalog.set_state(principal, profile, ProfileState.RETIRED)

    @mcp.tool(annotations=IDEMPOTENT_WRITE)
    async def profile_rollout_set(
        ctx: FleetContext,
        name: ProfileName,
        versions: Annotated[
            dict[str, int] | None,
            Field(
                description='percent of spawns by version for spawns naming no version, e.g. {"1.3.0": 10, '
                '"1.2.0": 90}; the weights sum to 100; {"1.3.0": 100} promotes; {} clears the rollout'
            ),
        ] = None,
        rollback: Annotated[
            bool, Field(description="instead of versions: go back to the rollout before the current one")
        ] = False,
        reason: Reason = None,
    ) -> RolloutView:
        """Set which versions spawns of `name` without a version get (autoscaling included), by
        weight. Each spawn records the version it got (agent_get's profile). Give versions, or
        rollback=true."""
        principal = await caller(ctx, reason)
        return await services_of(ctx).profile_catalog.set_rollout(principal, name, versions, rollback)

    @mcp.tool(annotations=READ_ONLY)
    async def scorecard(
        ctx: FleetContext,
        scope: Annotated[
            str,
            Field(
                min_length=3,
                max_length=200,
                description="agent:<id>, profile:<name>, profile:<name>@<version> or task_type:<type>",
            ),
        ],
        period: Period = "7d",
    ) -> ScorecardView:
        """How a scope did over the period (by finish time) and the period before: tasks
        completed, failed and dead, success rate, retries per task, queue wait and run time
        p50/p95, cost per task from the usage ledger, feedback counts and mean score, and the
        trend (current minus previous). An agent sees its own scorecard and its descendants'."""
        principal = await caller(ctx)
        return await services_of(ctx).scorecards.scorecard(principal, scope, period)

    @mcp.tool(annotations=READ_ONLY)
    async def profile_compare(
        ctx: FleetContext,
        name: ProfileName,
        version_a: Annotated[str, Field(max_length=40, description="the baseline version, e.g. 1.2.0")],
        version_b: Annotated[str, Field(max_length=40, description="the version compared with it, e.g. 1.3.0")],
        period: Period = "7d",
    ) -> ProfileComparison:
        """Two versions of a profile side by side over the same period: each scorecard's figures,
        b minus a, whether the success rates differ (two-proportion z-test) and the run times
        (Mann-Whitney U on the most recent up to 5000 per version), significant at p < 0.05, and
        a plain verdict naming each test and its p-value."""
        principal = await caller(ctx)
        return await services_of(ctx).scorecards.compare(principal, name, version_a, version_b, period)
