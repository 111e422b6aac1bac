"""Messages: send (one transaction: the message and every recipient's inbox row), read one's inbox
(long-polling, woken by the event that names the inbox), acknowledge, follow a thread, ask and wait
for the reply, search, and topic subscriptions."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from contextlib import suppress
from dataclasses import dataclass

from sqlalchemy import Connection, and_, delete, func, or_, select, text, update

from server.clock import MICROS, Clock, to_iso
from server.domain.principal import Principal
from server.errors import InvalidInput, NotFound
from server.ids import MESSAGE, THREAD, new_id
from server.services import audit
from server.services.events import log as events
from server.services.messages.recipients import OPERATORS, RecipientResolver
from server.services.messages.views import (
    AckResult,
    MessagePage,
    MessageView,
    RequestAnswer,
    SentMessage,
    ThreadView,
    TopicSubscription,
)
from server.services.signals import KeyedSignals
from server.store.database import Database, after_commit
from server.store.dialect import insert_ignoring_duplicates
from server.store.tables import inbox, messages, topic_subscriptions

MAX_BODY_CHARS = 64 * 1024
MAX_WAIT_S = 60
MAX_REQUEST_WAIT_S = 300
_LISTED_RECIPIENTS = 200  # an event names at most this many inboxes; more wakes every inbox follower
_WORD = re.compile(r"\w+", re.UNICODE)


def inbox_key(principal_id: str) -> str:
    return f"inbox:{principal_id}"


@dataclass(frozen=True)
class Outgoing:
    to: list[str]
    body: str
    subject: str | None = None
    thread_id: str | None = None
    reply_to: str | None = None
    importance: str = "normal"
    ttl_s: int | None = None
    ack_required: bool = False
    attachments: tuple[str, ...] = ()


def _inboxes_of(principal: Principal) -> list[str]:
    """The inboxes a principal reads: its own, and for staff also the operators' one."""
    return [principal.id, OPERATORS] if principal.can_operate else [principal.id]


class MessageService:
    def __init__(self, db: Database, clock: Clock, resolver: RecipientResolver, changes: KeyedSignals) -> None:
        self._db = db
        self._clock = clock
        self._resolver = resolver
        self._changes = changes

    # -- send ----------------------------------------------------------------------------------
    async def send(self, principal: Principal, outgoing: Outgoing) -> SentMessage:
        if len(outgoing.body) > MAX_BODY_CHARS:
            raise InvalidInput(f"the body has {len(outgoing.body)} characters; the limit is {MAX_BODY_CHARS}")
        if not outgoing.to:
            raise InvalidInput("name at least one recipient in `to`")
        return await self._db.write(self._send_tx, principal, outgoing)

    def _send_tx(self, conn: Connection, principal: Principal, outgoing: Outgoing) -> SentMessage:
        now = self._clock.now_us()
        thread_id = self._thread_for(conn, principal, outgoing)
        resolved = self._resolver.resolve(conn, principal, outgoing.to)
        message_id = new_id(MESSAGE)
        conn.execute(
            messages.insert().values(
                id=message_id,
                thread_id=thread_id,
                sender=principal.id,
                sender_role=principal.role.value,
                subject=outgoing.subject,
                body=outgoing.body,
                importance=outgoing.importance,
                reply_to=outgoing.reply_to,
                attachments=list(outgoing.attachments),
                ack_required=outgoing.ack_required,
                recipients=list(outgoing.to),
                created_at=now,
                expires_at=None if outgoing.ttl_s is None else now + outgoing.ttl_s * MICROS,
            )
        )
        if resolved.recipients:
            rows = [
                {
                    "recipient": r,
                    "message_id": message_id,
                    "thread_id": thread_id,
                    "sender": principal.id,
                    "created_at": now,
                }
                for r in resolved.recipients
            ]
            conn.execute(inbox.insert(), rows)
        digest = hashlib.sha256(outgoing.body.encode()).hexdigest()
        detail = {"to": list(outgoing.to)[:20], "recipients": len(resolved.recipients), "body_sha256": digest}
        audit.record(conn, now, principal, "message.send", message_id, detail)
        listed = resolved.recipients[:_LISTED_RECIPIENTS]
        data = {
            "thread_id": thread_id,
            "recipients": listed,
            "count": len(resolved.recipients),
            "importance": outgoing.importance,
        }
        events.emit(conn, now, "message.sent", message_id, data, actor=principal, owner=principal.id)
        keys = [inbox_key(r) for r in resolved.recipients]
        after_commit(conn, lambda: self._changes.wake(keys))
        return SentMessage(
            id=message_id,
            thread_id=thread_id,
            recipients=len(resolved.recipients),
            topics=resolved.topics,
            created_at=to_iso(now) or "",
        )

    def _thread_for(self, conn: Connection, principal: Principal, outgoing: Outgoing) -> str:
        if outgoing.reply_to is not None:
            original = conn.execute(select(messages).where(messages.c.id == outgoing.reply_to)).first()
            if original is None or not self._may_read(conn, principal, original.thread_id):
                raise NotFound(f"no message {outgoing.reply_to} that you can read")
            if outgoing.thread_id is not None and outgoing.thread_id != original.thread_id:
                raise InvalidInput(
                    f"{outgoing.reply_to} belongs to thread {original.thread_id}, not {outgoing.thread_id}"
                )
            return str(original.thread_id)
        if outgoing.thread_id is not None:
            if not self._may_read(conn, principal, outgoing.thread_id):
                raise NotFound(f"no thread {outgoing.thread_id} that you can read")
            return outgoing.thread_id
        return new_id(THREAD)

    def _may_read(self, conn: Connection, principal: Principal, thread_id: str) -> bool:
        if principal.sees_all:
            return (
                conn.execute(select(messages.c.id).where(messages.c.thread_id == thread_id).limit(1)).first()
                is not None
            )
        mine = or_(
            messages.c.sender == principal.id,
            messages.c.id.in_(
                select(inbox.c.message_id).where(inbox.c.thread_id == thread_id, inbox.c.recipient == principal.id)
            ),
        )
        query = select(messages.c.id).where(messages.c.thread_id == thread_id, mine).limit(1)
        return conn.execute(query).first() is not None

    # -- read ----------------------------------------------------------------------------------
    async def inbox(
        self,
        principal: Principal,
        wait_s: float = 0,
        unread_only: bool = True,
        thread_id: str | None = None,
        sender: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> MessagePage:
        """Newest first. With wait_s, wait for a first matching message when there is none."""
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_WAIT_S)
        keys = [inbox_key(box) for box in _inboxes_of(principal)]
        with self._changes.watch(keys[0]) as woken, self._changes.watch(keys[-1]) as woken_too:
            while True:
                woken.clear()
                woken_too.clear()
                page = await self._db.read(self._inbox_tx, principal, unread_only, thread_id, sender, limit, cursor)
                remaining = deadline - time.monotonic()
                if page.messages or remaining <= 0 or self._changes.closed:
                    return page
                waits = [asyncio.ensure_future(woken.wait()), asyncio.ensure_future(woken_too.wait())]
                try:
                    await asyncio.wait(waits, timeout=min(remaining, 10.0), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()

    def _inbox_tx(
        self,
        conn: Connection,
        principal: Principal,
        unread_only: bool,
        thread_id: str | None,
        sender: str | None,
        limit: int,
        cursor: str | None,
    ) -> MessagePage:
        now = self._clock.now_us()
        query = (
            select(messages, inbox.c.read_at, inbox.c.acked_at)
            .join(inbox, inbox.c.message_id == messages.c.id)
            .where(inbox.c.recipient.in_(_inboxes_of(principal)))
            .where(or_(messages.c.expires_at.is_(None), messages.c.expires_at > now))
            .order_by(inbox.c.message_id.desc())
            .limit(limit + 1)
        )
        if unread_only:
            query = query.where(inbox.c.read_at.is_(None))
        if thread_id is not None:
            query = query.where(messages.c.thread_id == thread_id)
        if sender is not None:
            query = query.where(messages.c.sender == sender)
        if cursor is not None:
            query = query.where(inbox.c.message_id < cursor)
        rows = conn.execute(query).all()
        page = [MessageView.of(row, row.read_at, row.acked_at) for row in rows[:limit]]
        return MessagePage(messages=page, next_cursor=page[-1].id if len(rows) > limit else None)

    async def ack(self, principal: Principal, message_ids: list[str]) -> AckResult:
        return await self._db.write(self._ack_tx, principal, message_ids)

    def _ack_tx(self, conn: Connection, principal: Principal, message_ids: list[str]) -> AckResult:
        now = self._clock.now_us()
        mine = and_(inbox.c.recipient.in_(_inboxes_of(principal)), inbox.c.message_id.in_(message_ids))
        found = set(conn.execute(select(inbox.c.message_id).where(mine)).scalars())
        missing = sorted(set(message_ids) - found)
        if missing:
            raise NotFound(f"not in your inbox: {', '.join(missing[:5])}")
        conn.execute(
            update(inbox)
            .where(mine)
            .values(read_at=func.coalesce(inbox.c.read_at, now), acked_at=func.coalesce(inbox.c.acked_at, now))
        )
        return AckResult(acked=sorted(found))

    async def thread(self, principal: Principal, thread_id: str) -> ThreadView:
        return await self._db.read(self._thread_tx, principal, thread_id)

    def _thread_tx(self, conn: Connection, principal: Principal, thread_id: str) -> ThreadView:
        if not self._may_read(conn, principal, thread_id):
            raise NotFound(f"no thread {thread_id} that you can read")
        rows = conn.execute(
            select(messages).where(messages.c.thread_id == thread_id).order_by(messages.c.created_at, messages.c.id)
        ).all()
        views = []
        for row in rows:
            view = MessageView.of(row)
            if row.ack_required and (principal.sees_all or row.sender == principal.id):
                pending = conn.execute(
                    select(inbox.c.recipient).where(inbox.c.message_id == row.id, inbox.c.acked_at.is_(None))
                ).scalars()
                view = view.model_copy(update={"not_acked_by": sorted(pending)})
            views.append(view)
        return ThreadView(thread_id=thread_id, messages=views)

    # -- request / reply -----------------------------------------------------------------------
    async def request(self, principal: Principal, outgoing: Outgoing, wait_s: float) -> RequestAnswer:
        """Send, then wait for the first reply in the thread from someone else."""
        sent = await self.send(principal, outgoing)
        deadline = time.monotonic() + min(max(wait_s, 0.0), MAX_REQUEST_WAIT_S)
        keys = [inbox_key(box) for box in _inboxes_of(principal)]
        with self._changes.watch(keys[0]) as woken:
            while True:
                woken.clear()
                reply = await self._db.read(self._reply_tx, principal, sent.thread_id, sent.id)
                remaining = deadline - time.monotonic()
                if reply is not None or remaining <= 0 or self._changes.closed:
                    return RequestAnswer(sent=sent, reply=reply)
                with suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(remaining, 10.0))

    @staticmethod
    def _reply_tx(conn: Connection, principal: Principal, thread_id: str, after_id: str) -> MessageView | None:
        row = conn.execute(
            select(messages, inbox.c.read_at, inbox.c.acked_at)
            .join(inbox, inbox.c.message_id == messages.c.id)
            .where(
                inbox.c.recipient.in_(_inboxes_of(principal)),
                messages.c.thread_id == thread_id,
                messages.c.id > after_id,
                messages.c.sender != principal.id,
            )
            .order_by(messages.c.id)
            .limit(1)
        ).first()
        return None if row is None else MessageView.of(row, row.read_at, row.acked_at)

    # -- search --------------------------------------------------------------------------------
    async def search(self, principal: Principal, query: str, limit: int) -> MessagePage:
        words = _WORD.findall(query)
        if not words:
            raise InvalidInput("search for at least one word")
        return await self._db.read(self._search_tx, principal, words[:20], limit)

    def _search_tx(self, conn: Connection, principal: Principal, words: list[str], limit: int) -> MessagePage:
        if conn.dialect.name == "postgresql":
            matches = text(
                "to_tsvector('simple', coalesce(orch_messages.subject, '') || ' ' || orch_messages.body) "
                "@@ plainto_tsquery('simple', :words)"
            ).bindparams(words=" ".join(words))
        else:
            phrase = " ".join('"' + word.replace('"', "") + '"' for word in words)
            matches = text(
                "orch_messages.rowid IN (SELECT rowid FROM orch_messages_fts WHERE orch_messages_fts MATCH :phrase)"
            ).bindparams(phrase=phrase)
        query = select(messages).where(matches).order_by(messages.c.id.desc()).limit(limit)
        if not principal.sees_all:
            readable = or_(
                messages.c.sender == principal.id,
                messages.c.id.in_(select(inbox.c.message_id).where(inbox.c.recipient == principal.id)),
            )
            query = query.where(readable)
        return MessagePage(messages=[MessageView.of(row) for row in conn.execute(query).all()], next_cursor=None)

    # -- topics --------------------------------------------------------------------------------
    async def subscribe(self, principal: Principal, topic: str, on: bool) -> TopicSubscription:
        if on:
            self._resolver.may_use_topic(principal, topic)
        return await self._db.write(self._subscribe_tx, principal, topic, on)

    def _subscribe_tx(self, conn: Connection, principal: Principal, topic: str, on: bool) -> TopicSubscription:
        now = self._clock.now_us()
        if on:
            insert_ignoring_duplicates(
                conn,
                topic_subscriptions,
                {"topic": topic, "principal": principal.id, "created_at": now},
                ["topic", "principal"],
            )
        else:
            conn.execute(
                delete(topic_subscriptions).where(
                    topic_subscriptions.c.topic == topic, topic_subscriptions.c.principal == principal.id
                )
            )
        audit.record(conn, now, principal, "topic.subscribe" if on else "topic.unsubscribe", topic[:40], {})
        return TopicSubscription(topic=topic, subscribed=on)

    # -- retention -----------------------------------------------------------------------------
    async def prune(self, retention_days: int) -> int:
        """Messages past their ttl, or older than the retention whose every copy was read, go. A
        read first: the reaper calls this every round, and most rounds have nothing to prune."""
        if not await self._db.read(self._doomed_tx, retention_days, 1):
            return 0
        return await self._db.write(self._prune_tx, retention_days)

    def _doomed_tx(self, conn: Connection, retention_days: int, limit: int) -> list[str]:
        now = self._clock.now_us()
        cutoff = now - retention_days * 86_400 * MICROS
        unread = select(inbox.c.message_id).where(inbox.c.read_at.is_(None))
        expired = and_(messages.c.expires_at.is_not(None), messages.c.expires_at <= now)
        old_and_read = and_(messages.c.created_at < cutoff, messages.c.id.not_in(unread))
        return list(conn.execute(select(messages.c.id).where(or_(expired, old_and_read)).limit(limit)).scalars())

    def _prune_tx(self, conn: Connection, retention_days: int) -> int:
        ids = self._doomed_tx(conn, retention_days, 1000)
        if ids:
            conn.execute(delete(inbox).where(inbox.c.message_id.in_(ids)))
            conn.execute(delete(messages).where(messages.c.id.in_(ids)))
        return len(ids)
