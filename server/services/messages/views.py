"""What the messaging tools return."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Row

from server.clock import to_iso


class MessageView(BaseModel):
    id: str
    thread_id: str
    sender: str = Field(description="who sent it: an agent id, a person's token name, or admin")
    subject: str | None
    body: str = Field(description="Markdown")
    importance: str
    reply_to: str | None
    attachments: list[str] = Field(description="references: task ids, lock names, URLs")
    ack_required: bool
    created_at: str
    expires_at: str | None
    read_at: str | None = Field(None, description="when you read it (your inbox)")
    acked_at: str | None = Field(None, description="when you acknowledged it (your inbox)")
    not_acked_by: list[str] | None = Field(
        None, description="ack_required, for its sender: recipients that have not acknowledged it"
    )

    @classmethod
    def of(cls, row: Row[Any], read_at: int | None = None, acked_at: int | None = None) -> MessageView:
        return cls(
            id=row.id,
            thread_id=row.thread_id,
            sender=row.sender,
            subject=row.subject,
            body=row.body,
            importance=row.importance,
            reply_to=row.reply_to,
            attachments=list(row.attachments or []),
            ack_required=row.ack_required,
            created_at=to_iso(row.created_at) or "",
            expires_at=to_iso(row.expires_at),
            read_at=to_iso(read_at),
            acked_at=to_iso(acked_at),
        )


class SentMessage(BaseModel):
    id: str
    thread_id: str
    recipients: int = Field(description="how many inboxes it reached (operators count as one)")
    topics: list[str] = Field(description="topics it went to (their current subscribers)")
    created_at: str


class MessagePage(BaseModel):
    messages: list[MessageView]
    next_cursor: str | None = Field(description="pass as cursor for older messages; null at the end")


class ThreadView(BaseModel):
    thread_id: str
    messages: list[MessageView] = Field(description="oldest first")


class RequestAnswer(BaseModel):
    sent: SentMessage
    reply: MessageView | None = Field(description="the first reply in the thread, or null if none came by wait_s")


class AckResult(BaseModel):
    acked: list[str] = Field(description="messages now acknowledged (read) in your inbox")


class TopicSubscription(BaseModel):
    topic: str
    subscribed: bool
