"""Messaging tools: agents and people talk through the fleet — direct, to relatives, to a profile
or label, to topics, to operators — with threads, acknowledgements, request/reply and search."""

from __future__ import annotations

from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import Field

from server.services.messages.service import MAX_REQUEST_WAIT_S, MAX_WAIT_S, Outgoing
from server.services.messages.views import (
    AckResult,
    MessagePage,
    RequestAnswer,
    SentMessage,
    ThreadView,
    TopicSubscription,
)
from tools.annotations import IDEMPOTENT_WRITE, READ_ONLY, WRITES
from tools.context import FleetContext, caller, services_of

MessageId = Annotated[str, Field(pattern=r"^msg_[0-9A-V]+$", max_length=40, description="a message id, msg_…")]
ThreadId = Annotated[str, Field(pattern=r"^thr_[0-9A-V]+$", max_length=40, description="a thread id, thr_…")]
Recipients = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200)]],
    Field(
        min_length=1,
        max_length=50,
        description="agent ids and selectors: parent, children, tree (your subtree), profile:<name>, "
        "label:<k=v>, topic:<name>, operators (people), requester (who submitted the task you hold)",
    ),
]
Body = Annotated[str, Field(min_length=1, max_length=65536, description="Markdown")]
Subject = Annotated[str | None, Field(max_length=300)]
Importance = Annotated[Literal["low", "normal", "high", "urgent"], Field(description="how soon it wants attention")]
Attachments = Annotated[
    list[Annotated[str, Field(max_length=500)]],
    Field(max_length=20, description="references, not blobs: task ids, lock names, URLs"),
]
Topic = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,99}$", description="a topic name")]


def register(mcp: MCPServer) -> None:
    @mcp.tool(annotations=WRITES)
    async def message_send(
        ctx: FleetContext,
        to: Recipients,
        body: Body,
        subject: Subject = None,
        thread_id: ThreadId | None = None,
        reply_to: Annotated[MessageId | None, Field(description="answer this message (joins its thread)")] = None,
        importance: Importance = "normal",
        ttl_s: Annotated[int | None, Field(ge=1, le=30 * 86400, description="unread after this long: gone")] = None,
        ack_required: Annotated[bool, Field(description="the thread shows who has not acknowledged it")] = False,
        attachments: Attachments = [],  # noqa: B006 - pydantic copies defaults
    ) -> SentMessage:
        """Send a message. One send is one transaction: every recipient's inbox gets it, or none
        does. An agent may message its parent, children, subtree, siblings, the requester of its
        work and operators; topics, other profiles and labels need its profile's permissions.message.
        Recipients read it with message_inbox (which it wakes); answer with reply_to."""
        principal = await caller(ctx)
        outgoing = Outgoing(
            to=list(to),
            body=body,
            subject=subject,
            thread_id=thread_id,
            reply_to=reply_to,
            importance=importance,
            ttl_s=ttl_s,
            ack_required=ack_required,
            attachments=tuple(attachments),
        )
        return await services_of(ctx).messages.send(principal, outgoing)

    @mcp.tool(annotations=READ_ONLY)
    async def message_inbox(
        ctx: FleetContext,
        wait_s: Annotated[
            float, Field(ge=0, le=MAX_WAIT_S, description="long-poll: wait this long for a first message")
        ] = 0,
        unread_only: Annotated[bool, Field(description="only messages not yet acknowledged")] = True,
        thread_id: ThreadId | None = None,
        sender: Annotated[str | None, Field(max_length=60, description="only messages from this sender")] = None,
        limit: Annotated[int, Field(ge=1, le=200)] = 50,
        cursor: Annotated[MessageId | None, Field(description="next_cursor of the previous page")] = None,
    ) -> MessagePage:
        """Your inbox, newest first (operators and the admin also see the operators' inbox). With
        wait_s the call returns as soon as a message arrives, sent on any replica. Acknowledge what
        you handled with message_ack, so unread_only stops showing it."""
        principal = await caller(ctx)
        return await services_of(ctx).messages.inbox(principal, wait_s, unread_only, thread_id, sender, limit, cursor)

    @mcp.tool(annotations=IDEMPOTENT_WRITE)
    async def message_ack(
        ctx: FleetContext,
        message_ids: Annotated[list[MessageId], Field(min_length=1, max_length=200)],
    ) -> AckResult:
        """Mark messages in your inbox read and acknowledged (the sender of an ack_required message
        sees who has not)."""
        principal = await caller(ctx)
        return await services_of(ctx).messages.ack(principal, list(message_ids))

    @mcp.tool(annotations=READ_ONLY)
    async def message_thread(ctx: FleetContext, thread_id: ThreadId) -> ThreadView:
        """A conversation in order, oldest first: every message of a thread you sent to or received
        in. For an ack_required message you sent, who has not acknowledged it."""
        principal = await caller(ctx)
        return await services_of(ctx).messages.thread(principal, thread_id)

    @mcp.tool(annotations=WRITES)
    async def message_request(
        ctx: FleetContext,
        to: Recipients,
        body: Body,
        wait_s: Annotated[
            float, Field(ge=0, le=MAX_REQUEST_WAIT_S, description="how long to wait for the first reply")
        ] = 60,
        subject: Subject = None,
        importance: Importance = "normal",
    ) -> RequestAnswer:
        """Ask and wait: send a message in a new thread and return with the first reply to it (a
        sub-agent asking its parent a question), or with reply=null at wait_s. The other side answers
        with message_send(reply_to=…)."""
        principal = await caller(ctx)
        outgoing = Outgoing(to=list(to), body=body, subject=subject, importance=importance)
        return await services_of(ctx).messages.request(principal, outgoing, wait_s)

    @mcp.tool(annotations=READ_ONLY)
    async def message_search(
        ctx: FleetContext,
        query: Annotated[str, Field(min_length=1, max_length=500, description="words to find (all of them)")],
        limit: Annotated[int, Field(ge=1, le=100)] = 20,
    ) -> MessagePage:
        """Full-text search over the messages you may read (sent or received; staff: all), newest first."""
        principal = await caller(ctx)
        return await services_of(ctx).messages.search(principal, query, limit)

    @mcp.tool(annotations=IDEMPOTENT_WRITE)
    async def topic_subscribe(ctx: FleetContext, topic: Topic) -> TopicSubscription:
        """Receive messages sent to topic:<topic> from now on (not earlier ones). An agent needs its
        profile's permissions.message to list the topic."""
        principal = await caller(ctx)
        return await services_of(ctx).messages.subscribe(principal, topic, True)

    @mcp.tool(annotations=IDEMPOTENT_WRITE)
    async def topic_unsubscribe(ctx: FleetContext, topic: Topic) -> TopicSubscription:
        """Stop receiving messages sent to topic:<topic>."""
        principal = await caller(ctx)
        return await services_of(ctx).messages.subscribe(principal, topic, False)
