"""A2A push notifications over a real `agentfleet serve`: an a2a-sdk client registers push configs
(with its message, and with CreateTaskPushNotificationConfig), an agent works the task over MCP,
and a receiver started here gets each state change as an A2A StreamResponse carrying the
config's token and authentication. Configs are the owner's only, checked before anything is
stored, and private addresses are refused unless AGENTFLEET_PUSH_ALLOW_PRIVATE is set."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from a2a.types import (
    AuthenticationInfo,
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    ListTaskPushNotificationConfigsRequest,
    StreamResponse,
    TaskPushNotificationConfig,
    TaskState,
)
from google.protobuf.json_format import ParseDict
from sqlalchemy import select

from server.store.database import create_store_engine
from server.store.tables import notification_channels
from tests.a2a.support import claim, open_a2a, request_for, send, spawn_worker
from tests.conftest import TEST_PROFILES
from tests.events.receiver import receiver
from tests.helpers import call

if TYPE_CHECKING:
    from tests.serving import FleetServer, ServeFactory

pytest_plugins = ["tests.serving"]
pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ENV = {"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES), "AGENTFLEET_PUSH_ALLOW_PRIVATE": "true"}


def spec(capability: str) -> dict[str, object]:
    return {"type": "review", "payload": {"pr": 7}, "capabilities": [capability]}


@pytest.fixture
def fleet(serve: ServeFactory, database_url: str) -> FleetServer:
    return serve(database_url, env=ENV)


def pushed_states(bodies: list[StreamResponse]) -> list[str]:
    return [TaskState.Name(b.status_update.status.state).removeprefix("TASK_STATE_").lower() for b in bodies]


def a2a_channel_cursors(database_url: str) -> list[str]:
    engine = create_store_engine(database_url)
    try:
        with engine.connect() as conn:
            kind = notification_channels.c.kind == "a2a"
            return list(conn.execute(select(notification_channels.c.cursor).where(kind)).scalars())
    finally:
        engine.dispose()


async def test_a_push_config_sent_with_the_message_gets_each_state(fleet: FleetServer, database_url: str):
    capability, agent_token = await spawn_worker(fleet)
    async with receiver() as hook, open_a2a(fleet) as client, fleet.mcp(agent_token) as agent:
        request = request_for(spec(capability))
        request.configuration.task_push_notification_config.CopyFrom(
            TaskPushNotificationConfig(
                url=hook.url,
                token="tok-123",
                authentication=AuthenticationInfo(scheme="Bearer", credentials="peer-credential"),
            )
        )
        [response] = [r async for r in client.send_message(request)]
        task_id = response.task.id
        await claim(agent, task_id)
        await call(agent, "task_complete", task_id=task_id, result={"ok": True})
        got = await hook.wait_for(2)
    bodies = [ParseDict(r.json, StreamResponse()) for r in got]
    assert pushed_states(bodies) == ["working", "completed"]
    assert {b.status_update.task_id for b in bodies} == {task_id}
    assert {b.status_update.context_id for b in bodies} == {response.task.context_id}
    assert all(r.headers["x-a2a-notification-token"] == "tok-123" for r in got)
    assert all(r.headers["authorization"] == "Bearer peer-credential" for r in got)
    # The task ended: its config's channel no longer follows the log.
    assert a2a_channel_cursors(database_url) == ["f" * 32]


async def test_configs_are_created_read_listed_and_deleted(fleet: FleetServer):
    capability, agent_token = await spawn_worker(fleet)
    async with receiver() as first, receiver() as second, open_a2a(fleet) as client, fleet.mcp(agent_token) as agent:
        task = await send(client, spec(capability))
        made = await client.create_task_push_notification_config(
            TaskPushNotificationConfig(task_id=task.id, id="one", url=first.url, token="t1")
        )
        await client.create_task_push_notification_config(
            TaskPushNotificationConfig(task_id=task.id, id="two", url=second.url)
        )
        got = await client.get_task_push_notification_config(
            GetTaskPushNotificationConfigRequest(task_id=task.id, id="one")
        )
        listed = await client.list_task_push_notification_configs(
            ListTaskPushNotificationConfigsRequest(task_id=task.id)
        )
        await client.delete_task_push_notification_config(
            DeleteTaskPushNotificationConfigRequest(task_id=task.id, id="two")
        )
        after = await client.list_task_push_notification_configs(
            ListTaskPushNotificationConfigsRequest(task_id=task.id)
        )
        await claim(agent, task.id)
        await call(agent, "task_complete", task_id=task.id, result={"ok": True})
        await first.wait_for(2)
    async with fleet.mcp() as admin:
        trail = await call(admin, "audit_query", subject=task.id)
    actions = [e["action"] for e in trail["entries"] if e["action"].startswith("a2a_push_config.")]
    assert actions == ["a2a_push_config.delete", "a2a_push_config.create", "a2a_push_config.create"]
    assert (made.id, made.url, got.token) == ("one", first.url, "t1")
    assert sorted(c.id for c in listed.configs) == ["one", "two"]
    assert [c.id for c in after.configs] == ["one"]
    assert pushed_states([ParseDict(r.json, StreamResponse()) for r in first.accepted]) == ["working", "completed"]
    assert second.got == []  # deleted before anything happened


async def test_bad_configs_are_refused_and_store_nothing(fleet: FleetServer):
    capability, _ = await spawn_worker(fleet)
    async with fleet.mcp() as admin:
        operator = await call(admin, "token_create", name="someone-else", role="operator")
        viewer = await call(admin, "token_create", name="looker", role="viewer")
    async with open_a2a(fleet) as client:
        task = await send(client, spec(capability))
        for url in ("ftp://example.com/hook", "file:///etc/passwd", "not a url"):
            with pytest.raises(Exception, match="http"):
                await client.create_task_push_notification_config(
                    TaskPushNotificationConfig(task_id=task.id, id="bad", url=url)
                )
        with pytest.raises(Exception, match="config id"):
            await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task.id, id="no spaces", url="http://127.0.0.1:9/x")
            )
        request = request_for(spec(capability))
        request.configuration.task_push_notification_config.CopyFrom(TaskPushNotificationConfig(url="gopher://x"))
        with pytest.raises(Exception, match="http"):
            [_ async for _ in client.send_message(request)]
        listed = await client.list_task_push_notification_configs(
            ListTaskPushNotificationConfigsRequest(task_id=task.id)
        )
    assert list(listed.configs) == []
    async with open_a2a(fleet, token=operator["token"]) as other:
        with pytest.raises(Exception, match="no task"):
            await other.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task.id, id="steal", url="http://127.0.0.1:9/x")
            )
    async with open_a2a(fleet, token=viewer["token"]) as looker:
        with pytest.raises(Exception, match="permission_denied"):
            await looker.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task.id, id="peek", url="http://127.0.0.1:9/x")
            )
    async with fleet.mcp() as admin:
        tasks = await call(admin, "task_list", type="review")
    assert len(tasks["tasks"]) == 1  # the refused message queued nothing


async def test_private_addresses_are_refused_by_default(serve: ServeFactory, database_url: str):
    fleet = serve(database_url, env={"AGENTFLEET_PROFILES_DIR": str(TEST_PROFILES)})
    capability, _ = await spawn_worker(fleet)
    async with fleet.http() as http:
        card = (await http.get("/.well-known/agent-card.json")).json()
    async with open_a2a(fleet) as client:
        task = await send(client, spec(capability))
        for url in ("http://127.0.0.1:8080/hook", "http://169.254.169.254/latest/meta-data", "http://[::1]/x"):
            with pytest.raises(Exception, match="private"):
                await client.create_task_push_notification_config(
                    TaskPushNotificationConfig(task_id=task.id, id="inside", url=url)
                )
    assert card["capabilities"]["pushNotifications"] is True
