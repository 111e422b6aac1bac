"""A2A push notification configs, kept in the store so any replica delivers them.

Each config is delivered by a hidden notification channel of kind `a2a` that follows its task's
`task.*` events (`channels.subject` = the task id), so it rides the same delivery loop as the
admin's channels: at least once, in order, retried, dead-lettered. Only the owner of the A2A task
(or the admin) sees or changes its configs; someone else's task is not found.

A config makes the server call a URL a peer chose. Only http(s) is accepted, and unless
AGENTFLEET_PUSH_ALLOW_PRIVATE is set an address that is (or resolves to) a private, loopback or
link-local one is refused here and again before each delivery (see docs/notifications.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, select, update

from server.clock import Clock
from server.domain.notification import ChannelKind, check_url
from server.domain.principal import Principal
from server.domain.storable import scrubbed
from server.errors import InvalidInput, NotFound
from server.services import audit
from server.services.events.log import encode_cursor
from server.services.events.notifications import ChannelSpec, new_channel_row, private_address_problem
from server.settings import Settings
from server.store.database import Database
from server.store.tables import a2a_push_configs as configs
from server.store.tables import a2a_tasks, event_log
from server.store.tables import notification_channels as channels
from server.store.tables import notification_deliveries as deliveries

CONFIG_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_TOKEN = 500
MAX_SCHEME = 40
MAX_CREDENTIALS = 2000
PUSHED_TYPES = ("task.*",)


@dataclass(frozen=True)
class PushConfig:
    task_id: str
    id: str
    url: str
    token: str | None
    auth_scheme: str | None
    auth_credentials: str | None


def _config(row: Any) -> PushConfig:
    return PushConfig(row.task_id, row.id, row.url, row.token, row.auth_scheme, row.auth_credentials)


class A2APushService:
    def __init__(self, db: Database, clock: Clock, settings: Settings) -> None:
        self._db = db
        self._clock = clock
        self._settings = settings

    async def check(self, config: PushConfig) -> None:
        """Everything a config must meet before anything is stored."""
        if not CONFIG_ID.fullmatch(config.id):
            raise InvalidInput(
                f"push notification config id {scrubbed(config.id)[:70]!r}: use 1-64 letters, digits, _ . : or -"
            )
        check_url(config.url, "the push notification URL")
        for value, limit, what in (
            (config.token, MAX_TOKEN, "token"),
            (config.auth_scheme, MAX_SCHEME, "authentication scheme"),
            (config.auth_credentials, MAX_CREDENTIALS, "authentication credentials"),
        ):
            if value is not None and (len(value) > limit or any(ch in value for ch in "\r\n\x00")):
                raise InvalidInput(f"the push notification {what} must be at most {limit} characters on one line")
        if not self._settings.push_allow_private and (problem := await private_address_problem(config.url)):
            raise InvalidInput(
                f"the push notification URL cannot be used: {problem}; this server calls only public "
                "addresses (AGENTFLEET_PUSH_ALLOW_PRIVATE=true allows others)"
            )

    async def set(self, principal: Principal, config: PushConfig, from_submission: bool = False) -> PushConfig:
        """from_submission: the config came with the message that made the task, so it gets every
        change after the submission, even one made before this call (an agent may claim at once)."""
        await self.check(config)
        return await self._db.write(self._set_tx, principal, config, from_submission)

    def _set_tx(self, conn: Connection, principal: Principal, config: PushConfig, from_submission: bool) -> PushConfig:
        _own_task(conn, principal, config.task_id)
        now = self._clock.now_us()
        values = {
            "url": config.url,
            "token": config.token,
            "auth_scheme": config.auth_scheme,
            "auth_credentials": config.auth_credentials,
        }
        where = (configs.c.task_id == config.task_id, configs.c.id == config.id)
        existing = conn.execute(select(configs).where(*where)).first()
        detail = {"task_id": config.task_id, "config_id": config.id, "url": config.url}
        if existing is not None:
            conn.execute(update(configs).where(*where).values(values))
            conn.execute(update(channels).where(channels.c.id == existing.channel_id).values(url=config.url))
            audit.record(conn, now, principal, "a2a_push_config.update", config.task_id, detail)
            return config
        spec = ChannelSpec(
            name=f"a2a:{config.task_id}:{config.id}",
            kind=ChannelKind.A2A,
            url=config.url,
            secret=None,
            event_types=PUSHED_TYPES,
            filter=None,
            max_attempts=5,
        )
        start = _submission_cursor(conn, config.task_id) if from_submission else None
        channel = new_channel_row(conn, spec, principal.id, now, subject=config.task_id, cursor=start)
        conn.execute(
            configs.insert().values(
                task_id=config.task_id,
                id=config.id,
                owner=principal.id,
                channel_id=channel["id"],
                created_at=now,
                **values,
            )
        )
        audit.record(conn, now, principal, "a2a_push_config.create", config.task_id, detail)
        return config

    async def get(self, principal: Principal, task_id: str, config_id: str) -> PushConfig:
        found = [c for c in await self.list(principal, task_id) if c.id == config_id]
        if not found:
            raise NotFound(f"task {task_id} has no push notification config {config_id!r}")
        return found[0]

    async def list(self, principal: Principal, task_id: str) -> list[PushConfig]:
        return await self._db.read(self._list_tx, principal, task_id)

    @staticmethod
    def _list_tx(conn: Connection, principal: Principal, task_id: str) -> list[PushConfig]:
        _own_task(conn, principal, task_id)
        rows = conn.execute(select(configs).where(configs.c.task_id == task_id).order_by(configs.c.created_at))
        return [_config(row) for row in rows]

    async def delete(self, principal: Principal, task_id: str, config_id: str) -> None:
        await self._db.write(self._delete_tx, principal, task_id, config_id)

    def _delete_tx(self, conn: Connection, principal: Principal, task_id: str, config_id: str) -> None:
        _own_task(conn, principal, task_id)
        row = conn.execute(select(configs).where(configs.c.task_id == task_id, configs.c.id == config_id)).first()
        if row is None:
            raise NotFound(f"task {task_id} has no push notification config {config_id!r}")
        conn.execute(delete(deliveries).where(deliveries.c.channel_id == row.channel_id))
        conn.execute(delete(configs).where(configs.c.task_id == task_id, configs.c.id == config_id))
        conn.execute(delete(channels).where(channels.c.id == row.channel_id))
        detail = {"task_id": task_id, "config_id": config_id}
        audit.record(conn, self._clock.now_us(), principal, "a2a_push_config.delete", task_id, detail)


def _own_task(conn: Connection, principal: Principal, task_id: str) -> None:
    owner = conn.execute(select(a2a_tasks.c.owner).where(a2a_tasks.c.id == task_id)).scalar()
    if owner is None or not (principal.is_admin or owner == principal.id):
        raise NotFound(f"no task {task_id}")


def _submission_cursor(conn: Connection, task_id: str) -> str | None:
    submitted = (event_log.c.subject == task_id, event_log.c.type == "task.submitted")
    row = conn.execute(select(event_log.c.tx, event_log.c.seq).where(*submitted).limit(1)).first()
    return None if row is None else encode_cursor(row.tx, row.seq)
