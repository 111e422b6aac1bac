"""Notifications out: channels that POST matching events to a URL, delivered at least once, in log
order per channel, with retries, backoff and a dead-letter state.

Two steps, each safe on any number of replicas:

- queue: for each channel, read the events after its cursor that match its types, subject and
  filter, insert one delivery per event and move the cursor, in one transaction whose cursor move
  is a compare-and-set (`UPDATE … WHERE cursor = <read>`): a replica that lost the race moves
  nothing and inserts nothing. `UNIQUE (channel_id, event_id)` is the database's own rule.
- deliver: per channel only the oldest pending delivery is tried, once its `next_attempt_at` is
  due, claimed by a conditional UPDATE that sets a short lease (`claimed_until`), so two replicas
  never send it at once; the result is written only by the lease holder. A 2xx delivers it;
  anything else is retried with exponential backoff until `max_attempts`, then it is dead and the
  channel moves on to the next.

Delivery never runs inside the transaction that made the event: the loop reads the log after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, Field
from sqlalchemy import Connection, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from server import __version__
from server.clock import Clock, to_iso
from server.domain.backoff import backoff_delay_us
from server.domain.notification import (
    A2A_TOKEN_HEADER,
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    ChannelKind,
    DeliveryStatus,
    a2a_body,
    canonical,
    check_event_types,
    check_name,
    check_url,
    is_private_address,
    parse_filter,
    shown_url,
    signature,
    slack_body,
    webhook_body,
)
from server.domain.principal import Principal
from server.errors import Conflict, FleetError, InvalidInput, NotFound
from server.ids import CHANNEL, DELIVERY, new_id
from server.services import audit
from server.services.events.log import (
    Event,
    EventBus,
    EventQuery,
    head_cursor,
    newest_cursor,
    read_events,
)
from server.services.events.service import EventView
from server.settings import Settings
from server.store.database import Database
from server.store.tables import a2a_push_configs, a2a_tasks
from server.store.tables import notification_channels as channels
from server.store.tables import notification_deliveries as deliveries

log = logging.getLogger("agentfleet.notifications")

QUEUE_BATCH = 500
END = "f" * 32  # a cursor past every event: a channel there follows the log no more
A2A_FINAL = frozenset({"task.completed", "task.failed", "task.dead", "task.cancelled"})
DELIVER_BATCH = 50
PRUNE_EVERY_S = 60.0
DELIVER_ROUNDS = 20  # then the loop queues new events before delivering more
LEASE_MARGIN_S = 5.0
MAX_ERROR = 500
ERROR_BODY_BYTES = 200


class ChannelView(BaseModel):
    id: str
    name: str
    kind: str
    url: str = Field(description="where it posts (a Slack webhook shows only its host: its path is a credential)")
    signed: bool = Field(description="whether deliveries carry X-Agentfleet-Signature-256 (a secret is set)")
    event_types: list[str]
    filter: str | None
    max_attempts: int
    created_by: str
    created_at: str
    pending: int = 0
    delivered: int = 0
    dead: int = 0


class ChannelList(BaseModel):
    channels: list[ChannelView]


class DeliveryView(BaseModel):
    id: str = Field(description="sent as X-Agentfleet-Delivery, the same on every retry")
    channel_id: str
    channel: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    max_attempts: int
    next_attempt_at: str | None = Field(description="when a pending delivery is tried next")
    last_error: str | None
    created_at: str
    delivered_at: str | None


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryView]


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    kind: ChannelKind
    url: str
    secret: str | None
    event_types: tuple[str, ...]
    filter: str | None
    max_attempts: int


@dataclass(frozen=True)
class Claim:
    """A delivery this replica holds (until `lease`) and is about to send."""

    id: str
    channel_id: str
    kind: str
    url: str
    secret: str | None
    body: Any
    event_type: str
    attempts: int
    max_attempts: int
    lease: int
    token: str | None = None
    auth: str | None = None


def _channel_view(row: Any, counts: dict[str, int] | None = None) -> ChannelView:
    return ChannelView(
        id=row.id,
        name=row.name,
        kind=row.kind,
        url=shown_url(row.kind, row.url),
        signed=row.secret is not None,
        event_types=list(row.event_types),
        filter=row.filter,
        max_attempts=row.max_attempts,
        created_by=row.created_by,
        created_at=to_iso(row.created_at) or "",
        **(counts or {}),
    )


def new_channel_row(
    conn: Connection,
    spec: ChannelSpec,
    created_by: str,
    now: int,
    subject: str | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Insert a channel that starts at the log's head (or after `cursor`): it gets the events from
    its creation on."""
    row = {
        "id": new_id(CHANNEL),
        "name": spec.name,
        "kind": spec.kind.value,
        "url": spec.url,
        "secret": spec.secret,
        "event_types": list(spec.event_types),
        "filter": spec.filter,
        "max_attempts": spec.max_attempts,
        "cursor": cursor or newest_cursor(conn),
        "created_by": created_by,
        "created_at": now,
        "subject": subject,
    }
    if conn.execute(select(channels.c.id).where(channels.c.name == spec.name)).first() is not None:
        raise Conflict(f"a channel named {spec.name!r} exists; delete it first or pick another name")
    conn.execute(channels.insert().values(row))
    return row


def check_spec(spec: ChannelSpec) -> ChannelSpec:
    """Every rule a channel must meet, checked before anything is stored."""
    check_name(spec.name)
    check_url(spec.url)
    if spec.secret is not None and not spec.secret:
        raise InvalidInput("secret must not be empty; omit it for unsigned deliveries")
    parse_filter(spec.filter)
    return ChannelSpec(
        spec.name,
        spec.kind,
        spec.url,
        spec.secret,
        tuple(check_event_types(spec.event_types)),
        spec.filter,
        spec.max_attempts,
    )


class NotificationService:
    def __init__(self, db: Database, clock: Clock, bus: EventBus, settings: Settings) -> None:
        self._db = db
        self._clock = clock
        self._bus = bus
        self._settings = settings
        self._filters: dict[str, Any] = {}

    # -- channels (the tools) ---------------------------------------------------------------
    async def create(self, principal: Principal, spec: ChannelSpec) -> ChannelView:
        if spec.kind not in (ChannelKind.WEBHOOK, ChannelKind.SLACK):
            raise InvalidInput("kind must be webhook or slack")
        checked = check_spec(spec)
        try:
            return await self._db.write(self._create_tx, principal, checked)
        except IntegrityError as exc:  # made at the same moment elsewhere
            raise Conflict(f"a channel named {spec.name!r} exists; delete it first or pick another name") from exc

    def _create_tx(self, conn: Connection, principal: Principal, spec: ChannelSpec) -> ChannelView:
        now = self._clock.now_us()
        row = new_channel_row(conn, spec, principal.id, now)
        detail = {
            "name": spec.name,
            "kind": spec.kind.value,
            "url": shown_url(spec.kind, spec.url),
            "event_types": list(spec.event_types),
            "filter": spec.filter,
            "signed": spec.secret is not None,
        }
        audit.record(conn, now, principal, "notification_channel.create", row["id"], detail)
        return _channel_view(conn.execute(select(channels).where(channels.c.id == row["id"])).one())

    async def list(self, principal: Principal) -> ChannelList:
        return await self._db.read(self._list_tx)

    @staticmethod
    def _list_tx(conn: Connection) -> ChannelList:
        rows = conn.execute(
            select(channels).where(channels.c.kind != ChannelKind.A2A.value).order_by(channels.c.name)
        ).all()
        counts: dict[str, dict[str, int]] = {}
        tally = (
            select(deliveries.c.channel_id, deliveries.c.status, func.count())
            .where(deliveries.c.channel_id.in_([r.id for r in rows]))
            .group_by(deliveries.c.channel_id, deliveries.c.status)
        )
        for channel_id, status, count in conn.execute(tally):
            counts.setdefault(channel_id, {})[status] = count
        return ChannelList(channels=[_channel_view(r, counts.get(r.id)) for r in rows])

    async def delete(self, principal: Principal, ref: str) -> ChannelView:
        return await self._db.write(self._delete_tx, principal, ref)

    def _delete_tx(self, conn: Connection, principal: Principal, ref: str) -> ChannelView:
        row = _find_channel(conn, ref)
        view = _channel_view(row)
        conn.execute(delete(deliveries).where(deliveries.c.channel_id == row.id))
        conn.execute(delete(channels).where(channels.c.id == row.id))
        now = self._clock.now_us()
        audit.record(conn, now, principal, "notification_channel.delete", row.id, {"name": row.name})
        return view

    async def deliveries(
        self, principal: Principal, channel: str | None, status: DeliveryStatus | None, limit: int
    ) -> DeliveryPage:
        return await self._db.read(self._deliveries_tx, channel, status, limit)

    @staticmethod
    def _deliveries_tx(
        conn: Connection, channel: str | None, status: DeliveryStatus | None, limit: int
    ) -> DeliveryPage:
        joined = deliveries.join(channels, channels.c.id == deliveries.c.channel_id)
        query = (
            select(deliveries, channels.c.name, channels.c.max_attempts)
            .select_from(joined)
            .where(channels.c.kind != ChannelKind.A2A.value)
            .order_by(deliveries.c.created_at.desc(), deliveries.c.id.desc())
            .limit(limit)
        )
        if channel is not None:
            query = query.where(channels.c.id == _find_channel(conn, channel).id)
        if status is not None:
            query = query.where(deliveries.c.status == status.value)
        return DeliveryPage(
            deliveries=[
                DeliveryView(
                    id=r.id,
                    channel_id=r.channel_id,
                    channel=r.name,
                    event_id=r.event_id,
                    event_type=r.event_type,
                    status=DeliveryStatus(r.status),
                    attempts=r.attempts,
                    max_attempts=r.max_attempts,
                    next_attempt_at=to_iso(r.next_attempt_at) if r.status == DeliveryStatus.PENDING else None,
                    last_error=r.last_error,
                    created_at=to_iso(r.created_at) or "",
                    delivered_at=to_iso(r.delivered_at),
                )
                for r in conn.execute(query)
            ]
        )

    # -- queueing ---------------------------------------------------------------------------
    async def queue(self) -> int:
        """One pass: every channel behind the log's head queues what it has not yet seen."""
        behind = await self._db.read(self._behind_tx)
        queued = 0
        for channel_id, cursor in behind:
            while True:
                added, more = await self._db.write(self._queue_tx, channel_id, cursor)
                queued += added
                if more is None:
                    break
                cursor = more
        return queued

    @staticmethod
    def _behind_tx(conn: Connection) -> list[tuple[str, str]]:
        head = head_cursor(conn)
        rows = conn.execute(select(channels.c.id, channels.c.cursor).where(channels.c.cursor < head)).all()
        return [(r.id, r.cursor) for r in rows]

    def _queue_tx(self, conn: Connection, channel_id: str, cursor: str) -> tuple[int, str | None]:
        """(deliveries queued, the cursor to go on from when a full batch was read, else None)."""
        row = conn.execute(select(channels).where(channels.c.id == channel_id)).first()
        if row is None or row.cursor != cursor:
            return 0, None  # deleted, or another replica queued these
        query = EventQuery(tuple(row.event_types), row.subject, cursor, QUEUE_BATCH)
        found, next_cursor = read_events(conn, query, None)
        if next_cursor == cursor:
            return 0, None
        if row.kind == ChannelKind.A2A and any(event.type in A2A_FINAL for event in found):
            # The task has ended: nothing more will be pushed, so the channel stops following the log
            # (a finished task's config costs no work per event from now on).
            next_cursor, found = END, found[: 1 + next(i for i, e in enumerate(found) if e.type in A2A_FINAL)]
        moved = conn.execute(
            update(channels).where(channels.c.id == channel_id, channels.c.cursor == cursor).values(cursor=next_cursor)
        )
        if moved.rowcount != 1:
            return 0, None
        now = self._clock.now_us()
        rows = []
        for event in found:
            if not self._matches(row.filter, event):
                continue
            body = self._payload(conn, row.kind, event)
            if body is None:
                continue
            rows.append(
                {
                    "id": new_id(DELIVERY),
                    "channel_id": channel_id,
                    "event_seq": int(event.cursor[16:], 16),
                    "event_id": event.id,
                    "event_cursor": event.cursor,
                    "event_type": event.type,
                    "body": body,
                    "status": DeliveryStatus.PENDING.value,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
            )
        if rows:
            conn.execute(deliveries.insert(), rows)
        return len(rows), next_cursor if len(found) == QUEUE_BATCH and next_cursor != END else None

    def _matches(self, text: str | None, event: Event) -> bool:
        if text is None:
            return True
        condition = self._filters.get(text)
        if condition is None:
            try:
                condition = self._filters[text] = parse_filter(text)
            except InvalidInput:
                return False  # checked at creation; a stored filter that no longer parses matches nothing
        return bool(condition.evaluate({"event": event.as_scope()}))

    @staticmethod
    def _payload(conn: Connection, kind: str, event: Event) -> Any:
        as_json = EventView.of(event).model_dump(mode="json")
        if kind == ChannelKind.SLACK:
            return slack_body(as_json)
        if kind == ChannelKind.A2A:
            context_id = conn.execute(select(a2a_tasks.c.context_id).where(a2a_tasks.c.id == event.subject)).scalar()
            return a2a_body(as_json, context_id or event.subject)
        return webhook_body(as_json)

    # -- delivering -------------------------------------------------------------------------
    async def deliver_due(self, client: httpx.AsyncClient | None = None) -> int:
        """Claim each channel's oldest pending delivery that is due, send them all at once, record
        each outcome and, in the same transaction, claim what is due next (a channel's backlog goes
        out one transaction per event), for up to DELIVER_ROUNDS rounds. How many were attempted."""
        claims = await self._db.write(self._claim_tx)
        attempted = 0
        rounds = DELIVER_ROUNDS
        async with contextlib.AsyncExitStack() as stack:
            if client is None and claims:
                client = await stack.enter_async_context(httpx.AsyncClient())
            while claims:
                assert client is not None
                outcomes = await asyncio.gather(*(self._send(client, claim) for claim in claims))
                attempted += len(claims)
                rounds -= 1
                claims = await self._db.write(self._settle_tx, list(zip(claims, outcomes, strict=True)), rounds > 0)
        return attempted

    def _lease_us(self) -> int:
        return int((self._settings.notify_timeout_s + LEASE_MARGIN_S) * 1_000_000)

    def _claim_tx(self, conn: Connection, limit: int = DELIVER_BATCH) -> list[Claim]:
        now = self._clock.now_us()
        oldest = deliveries.alias("oldest")
        first_pending = (
            select(func.min(oldest.c.event_cursor))
            .where(oldest.c.channel_id == deliveries.c.channel_id, oldest.c.status == DeliveryStatus.PENDING.value)
            .scalar_subquery()
        )
        free = or_(deliveries.c.claimed_until.is_(None), deliveries.c.claimed_until <= now)
        due = conn.execute(
            select(
                deliveries.c.id,
                deliveries.c.channel_id,
                deliveries.c.body,
                deliveries.c.event_type,
                deliveries.c.attempts,
                channels.c.kind,
                channels.c.url,
                channels.c.secret,
                channels.c.max_attempts,
                a2a_push_configs.c.token,
                a2a_push_configs.c.auth_scheme,
                a2a_push_configs.c.auth_credentials,
            )
            .select_from(
                deliveries.join(channels, channels.c.id == deliveries.c.channel_id).outerjoin(
                    a2a_push_configs, a2a_push_configs.c.channel_id == channels.c.id
                )
            )
            .where(
                deliveries.c.status == DeliveryStatus.PENDING.value,
                deliveries.c.event_cursor == first_pending,
                deliveries.c.next_attempt_at <= now,
                free,
            )
            .limit(limit)
        ).all()
        lease = now + self._lease_us()
        claims = []
        for row in due:
            mine = conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id == row.id,
                    deliveries.c.status == DeliveryStatus.PENDING.value,
                    deliveries.c.attempts == row.attempts,
                    free,
                )
                .values(claimed_until=lease)
            )
            if mine.rowcount != 1:
                continue  # another replica claimed it first
            auth = f"{row.auth_scheme} {row.auth_credentials}" if row.auth_scheme and row.auth_credentials else None
            claims.append(
                Claim(
                    id=row.id,
                    channel_id=row.channel_id,
                    kind=row.kind,
                    url=row.url,
                    secret=row.secret,
                    body=row.body,
                    event_type=row.event_type,
                    attempts=row.attempts,
                    max_attempts=row.max_attempts,
                    lease=lease,
                    token=row.token,
                    auth=auth,
                )
            )
        return claims

    async def _send(self, client: httpx.AsyncClient, claim: Claim) -> str | None:
        """None when the receiver took it (2xx); else what went wrong, for last_error."""
        body = canonical(claim.body)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"agentfleet/{__version__}",
            EVENT_HEADER: claim.event_type,
            DELIVERY_HEADER: claim.id,
        }
        if claim.secret:
            headers[SIGNATURE_HEADER] = signature(claim.secret, body)
        if claim.kind == ChannelKind.A2A:
            if claim.token:
                headers[A2A_TOKEN_HEADER] = claim.token
            if claim.auth:
                headers["Authorization"] = claim.auth
            if not self._settings.push_allow_private and (problem := await private_address_problem(claim.url)):
                return f"refused: {problem} (AGENTFLEET_PUSH_ALLOW_PRIVATE is off)"
        try:
            async with client.stream(
                "POST", claim.url, content=body, headers=headers, timeout=self._settings.notify_timeout_s
            ) as response:
                if 200 <= response.status_code < 300:
                    return None
                said = b""
                async for chunk in response.aiter_bytes():  # a few bytes of why, never a whole body
                    said += chunk
                    if len(said) >= ERROR_BODY_BYTES:
                        break
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:MAX_ERROR] if str(exc) else type(exc).__name__
        text = said[:ERROR_BODY_BYTES].decode("utf-8", "replace")
        return f"HTTP {response.status_code}: {text}"[:MAX_ERROR]

    def _settle_tx(self, conn: Connection, outcomes: list[tuple[Claim, str | None]], claim_next: bool) -> list[Claim]:
        now = self._clock.now_us()
        for claim, error in outcomes:
            attempts = claim.attempts + 1
            values: dict[str, Any] = {"attempts": attempts, "claimed_until": None}
            if error is None:
                values.update(status=DeliveryStatus.DELIVERED.value, delivered_at=now)
            elif attempts >= claim.max_attempts:
                values.update(status=DeliveryStatus.DEAD.value, last_error=error)
            else:
                delay = backoff_delay_us(
                    attempts, self._settings.notify_backoff_base_ms, self._settings.notify_backoff_cap_ms
                )
                values.update(last_error=error, next_attempt_at=now + delay)
            # Only the lease holder records an outcome: a replica whose lease lapsed mid-send
            # (the other one sent it again) leaves the row to the newer claim.
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == claim.id, deliveries.c.claimed_until == claim.lease)
                .values(values)
            )
            if error is not None:
                log.info(
                    "delivery %s to channel %s failed (attempt %d): %s", claim.id, claim.channel_id, attempts, error
                )
        return self._claim_tx(conn) if claim_next else []

    # -- retention --------------------------------------------------------------------------
    async def prune(self) -> int:
        """Forget delivered and dead deliveries older than AGENTFLEET_NOTIFY_KEEP_S; pending ones stay."""
        return await self._db.write(self._prune_tx)

    def _prune_tx(self, conn: Connection) -> int:
        cutoff = self._clock.now_us() - self._settings.notify_keep_s * 1_000_000
        finished = deliveries.c.status.in_([DeliveryStatus.DELIVERED.value, DeliveryStatus.DEAD.value])
        return int(conn.execute(delete(deliveries).where(finished, deliveries.c.created_at < cutoff)).rowcount)

    # -- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Queue and deliver until the server stops; woken by new events, and on a timer for
        retries that come due."""
        pruned_at = 0.0
        async with httpx.AsyncClient() as client:
            while not self._bus.closed:
                try:
                    if time.monotonic() - pruned_at >= PRUNE_EVERY_S:
                        await self.prune()
                        pruned_at = time.monotonic()
                    worked = await self.queue() + await self.deliver_due(client)
                    idle_s = 0.0 if worked else await self._idle_s()
                except FleetError as exc:  # the store is unreachable: try again shortly
                    log.warning("notification delivery paused: %s", exc)
                    idle_s = self._settings.notify_poll_s
                if idle_s:
                    await self._bus.wait(idle_s)

    async def _idle_s(self) -> float:
        """How long to wait for a wake-up: the poll interval, or less when a retry comes due sooner."""
        due = await self._db.read(self._next_due_tx)
        poll = self._settings.notify_poll_s
        if due is None:
            return poll
        return min(poll, max((due - self._clock.now_us()) / 1_000_000, 0.005))

    @staticmethod
    def _next_due_tx(conn: Connection) -> int | None:
        pending = deliveries.c.status == DeliveryStatus.PENDING.value
        return conn.execute(select(func.min(deliveries.c.next_attempt_at)).where(pending)).scalar()


def _find_channel(conn: Connection, ref: str) -> Any:
    row = conn.execute(
        select(channels).where(
            or_(channels.c.id == ref, channels.c.name == ref), channels.c.kind != ChannelKind.A2A.value
        )
    ).first()
    if row is None:
        raise NotFound(f"no notification channel {ref!r}; notification_channel_list shows them")
    return row


async def private_address_problem(url: str) -> str | None:
    """Why the server must not call this URL's host (it is, or resolves to, a private, loopback or
    link-local address, or does not resolve), or None."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if is_private_address(host):
        return f"{host} is a private, loopback or link-local address"
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except OSError:
        return f"{host} does not resolve"
    for info in infos:
        if is_private_address(str(info[4][0])):
            return f"{host} resolves to {info[4][0]}, a private, loopback or link-local address"
    return None
