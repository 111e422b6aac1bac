"""Notification tools: channels that POST the fleet's events to a webhook or Slack, and their deliveries."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from server.domain.notification import ChannelKind, DeliveryStatus
from server.services.events.notifications import ChannelList, ChannelSpec, ChannelView, DeliveryPage
from tools.annotations import DESTRUCTIVE, READ_ONLY, WRITES
from tools.context import FleetContext, caller, services_of

ChannelRef = Annotated[str, Field(min_length=1, max_length=100, description="the channel's name, or its id (ntc_…)")]


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=WRITES)
    async def notification_channel_create(
        ctx: FleetContext,
        name: Annotated[str, Field(min_length=1, max_length=100, description="unique: letters, digits, _ . -")],
        url: Annotated[str, Field(min_length=1, max_length=2000, description="http(s) URL the events are POSTed to")],
        event_types: Annotated[
            list[Annotated[str, Field(max_length=60)]],
            Field(min_length=1, max_length=50, description="types or families: task.dead, approval.*, * (all)"),
        ],
        kind: Annotated[
            Literal["webhook", "slack"],
            Field(description="webhook: the event as JSON; slack: a Slack incoming-webhook {text} message"),
        ] = "webhook",
        secret: Annotated[
            str | None,
            Field(
                min_length=1,
                max_length=200,
                description="signs each body: X-Agentfleet-Signature-256: sha256=<HMAC-SHA256 hex>; never shown again",
            ),
        ] = None,
        filter: Annotated[
            str | None,
            Field(
                max_length=2000,
                description="only events where this holds, e.g. event.data.type == 'deploy' "
                "(the workflow `when` language over event.type, event.subject, event.actor, event.data.…)",
            ),
        ] = None,
        max_attempts: Annotated[
            int, Field(ge=1, le=20, description="tries per event before it is dead (dead-lettered)")
        ] = 5,
    ) -> ChannelView:
        """Send the fleet's events out (admin only): each event of the given types (and filter)
        committed from now on is POSTed to url, at least once, in log order per channel, with
        headers X-Agentfleet-Event (type), X-Agentfleet-Delivery (the same id on every retry) and,
        with a secret, X-Agentfleet-Signature-256. A 2xx answer delivers it; anything else is
        retried with exponential backoff, and after max_attempts the delivery is dead and the
        channel goes on with the next event. notification_deliveries shows each one."""
        principal = await caller(ctx)
        spec = ChannelSpec(name, ChannelKind(kind), url, secret, tuple(event_types), filter, max_attempts)
        return await services_of(ctx).notifications.create(principal, spec)

    @mcp.tool(annotations=READ_ONLY)
    async def notification_channel_list(ctx: FleetContext) -> ChannelList:
        """Notification channels (admin and operator), with how many deliveries are pending,
        delivered and dead. Secrets are never shown; a Slack webhook URL shows only its host."""
        principal = await caller(ctx)
        return await services_of(ctx).notifications.list(principal)

    @mcp.tool(annotations=DESTRUCTIVE)
    async def notification_channel_delete(ctx: FleetContext, channel: ChannelRef) -> ChannelView:
        """Delete a channel and its deliveries, pending ones included (admin only)."""
        principal = await caller(ctx)
        return await services_of(ctx).notifications.delete(principal, channel)

    @mcp.tool(annotations=READ_ONLY)
    async def notification_deliveries(
        ctx: FleetContext,
        channel: ChannelRef | None = None,
        status: Annotated[
            DeliveryStatus | None, Field(description="pending (queued or retrying), delivered, dead")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=500)] = 50,
    ) -> DeliveryPage:
        """Deliveries, newest first (admin and operator): the event, its status, attempts so far,
        when a pending one is tried next and the last error (an HTTP status or a network error)."""
        principal = await caller(ctx)
        return await services_of(ctx).notifications.deliveries(principal, channel, status, limit)
