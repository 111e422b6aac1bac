"""Notifications out, through the MCP tools and a real HTTP receiver: signed deliveries, retries
with backoff, dead letters, order per channel, refusals that store nothing. The delivery loop's
two steps (queue, deliver) are driven one pass at a time here, with the fake clock where retry
timing matters; test_notification_loop.py runs the loop itself inside `agentfleet serve`."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from sqlalchemy import select

from server.clock import MICROS
from server.services.events.log import encode_cursor, head_cursor
from server.store.tables import event_log
from tests.events.receiver import receiver
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio

SECRET = "s3cret-for-hmac"
BACKOFF_CAP_S = 301  # past the default backoff cap (300 s): any retry is due


def micros(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * MICROS)


def _log_is_readable(conn) -> bool:
    newest = conn.execute(
        select(event_log.c.tx, event_log.c.seq).order_by(event_log.c.tx.desc(), event_log.c.seq.desc())
    )
    row = newest.first()
    return row is None or head_cursor(conn) >= encode_cursor(row.tx, row.seq)


async def log_readable(services) -> None:
    """On PostgreSQL a reader sees events only below the oldest transaction still running anywhere
    on the cluster (see events/log.py); wait until every committed event is readable."""
    async with asyncio.timeout(20):
        while not await services.db.read(_log_is_readable):
            await asyncio.sleep(0.02)


async def deliver_all(services) -> int:
    """One queue pass and delivery passes until nothing is due now."""
    await log_readable(services)
    await services.notifications.queue()
    sent = 0
    while attempted := await services.notifications.deliver_due():
        sent += attempted
    return sent


async def test_a_signed_delivery_carries_the_event(connect, services):
    async with receiver() as hook, connect() as admin:
        channel = await call(
            admin, "notification_channel_create", name="ops", url=hook.url, event_types=["task.*"], secret=SECRET
        )
        assert channel["signed"] is True and SECRET not in str(channel)
        task = await call(admin, "task_submit", type="build", payload={"ref": "main"})
        await deliver_all(services)
        [got] = await hook.wait_for(1)
        page = await call(admin, "notification_deliveries", channel="ops")
        listed = await call(admin, "notification_channel_list")
    assert got.signed_with(SECRET) and not got.signed_with("another secret")
    body = got.json
    assert (body["type"], body["subject"], body["data"]["type"]) == ("task.submitted", task["id"], "build")
    assert got.headers["x-agentfleet-event"] == "task.submitted"
    [delivery] = page["deliveries"]
    assert got.headers["x-agentfleet-delivery"] == delivery["id"]
    assert (delivery["status"], delivery["attempts"], delivery["event_id"]) == ("delivered", 1, body["id"])
    [shown] = listed["channels"]
    assert (shown["delivered"], shown["pending"]) == (1, 0) and SECRET not in str(listed)


async def test_a_channel_gets_only_events_from_its_creation_on(connect, services):
    async with receiver() as hook, connect() as admin:
        before = await call(admin, "task_submit", type="build")
        await call(admin, "notification_channel_create", name="late", url=hook.url, event_types=["task.submitted"])
        after = await call(admin, "task_submit", type="build")
        await deliver_all(services)
        await hook.wait_for(1)
    assert [r.json["subject"] for r in hook.got] == [after["id"]]
    assert before["id"] != after["id"]


async def test_retries_after_a_500_then_delivers_with_the_same_delivery_id(fake_connect, fake_time_services, clock):
    services = fake_time_services
    async with receiver(answers=[500, 503]) as hook, fake_connect() as admin:
        await call(admin, "notification_channel_create", name="flaky", url=hook.url, event_types=["task.submitted"])
        await call(admin, "task_submit", type="build")
        await deliver_all(services)
        assert [r.status for r in hook.got] == [500]
        [pending] = (await call(admin, "notification_deliveries", status="pending"))["deliveries"]
        assert pending["attempts"] == 1 and pending["last_error"].startswith("HTTP 500")
        assert micros(pending["next_attempt_at"]) >= clock.now_us()
        clock.advance(BACKOFF_CAP_S)
        await deliver_all(services)
        clock.advance(BACKOFF_CAP_S)
        await deliver_all(services)
        done = (await call(admin, "notification_deliveries"))["deliveries"]
    assert [r.status for r in hook.got] == [500, 503, 200]
    assert len({r.headers["x-agentfleet-delivery"] for r in hook.got}) == 1
    assert [(d["status"], d["attempts"]) for d in done] == [("delivered", 3)]
    assert done[0]["last_error"].startswith("HTTP 503")  # the last failure stays visible


async def test_a_retry_waits_for_its_backoff(fake_connect, fake_time_services, clock):
    services = fake_time_services
    async with receiver(answers=[500]) as hook, fake_connect() as admin:
        await call(admin, "notification_channel_create", name="wait", url=hook.url, event_types=["task.submitted"])
        await call(admin, "task_submit", type="build")
        await deliver_all(services)
        [pending] = (await call(admin, "notification_deliveries"))["deliveries"]
        if micros(pending["next_attempt_at"]) > clock.now_us():  # full jitter may draw a zero delay
            assert await services.notifications.deliver_due() == 0
            assert len(hook.got) == 1


async def test_dead_letters_after_max_attempts_and_the_channel_moves_on(fake_connect, fake_time_services, clock):
    services = fake_time_services
    async with receiver(answers=[500, 500, 500]) as hook, fake_connect() as admin:
        await call(
            admin,
            "notification_channel_create",
            name="dl",
            url=hook.url,
            event_types=["task.submitted"],
            max_attempts=3,
        )
        first = await call(admin, "task_submit", type="first")
        second = await call(admin, "task_submit", type="second")
        for _ in range(4):
            await deliver_all(services)
            clock.advance(BACKOFF_CAP_S)
        dead = (await call(admin, "notification_deliveries", status="dead"))["deliveries"]
        delivered = (await call(admin, "notification_deliveries", status="delivered"))["deliveries"]
        [channel] = (await call(admin, "notification_channel_list"))["channels"]
    assert [r.json["subject"] for r in hook.got] == [first["id"]] * 3 + [second["id"]]
    assert [(d["attempts"], d["event_type"]) for d in dead] == [(3, "task.submitted")]
    assert dead[0]["last_error"].startswith("HTTP 500") and dead[0]["next_attempt_at"] is None
    assert len(delivered) == 1 and (channel["dead"], channel["delivered"]) == (1, 1)


async def test_deliveries_go_out_in_event_order_per_channel(fake_connect, fake_time_services, clock):
    services = fake_time_services
    async with receiver(answers=[500, 500]) as hook, fake_connect() as admin:
        await call(admin, "notification_channel_create", name="order", url=hook.url, event_types=["task.submitted"])
        ids = [(await call(admin, "task_submit", type=f"t{i}"))["id"] for i in range(4)]
        for _ in range(8):
            await deliver_all(services)
            clock.advance(BACKOFF_CAP_S)
    delivered = [r.json["subject"] for r in hook.accepted]
    assert delivered == ids
    assert [r.json["subject"] for r in hook.got[:3]] == [ids[0]] * 3  # the next waits for the first


async def test_slack_gets_a_text_message_and_a_filter_picks_events(connect, services):
    async with receiver() as hook, connect() as admin:
        await call(
            admin,
            "notification_channel_create",
            name="people",
            kind="slack",
            url=hook.url + "/T000/B000/XXXX",
            event_types=["task.*"],
            filter="event.type == 'task.cancelled' and event.data.type == 'deploy'",
        )
        kept = await call(admin, "task_submit", type="deploy")
        other = await call(admin, "task_submit", type="build")
        await call(admin, "task_cancel", task_id=other["id"])
        await call(admin, "task_cancel", task_id=kept["id"])
        await deliver_all(services)
        [got] = await hook.wait_for(1)
        [listed] = (await call(admin, "notification_channel_list"))["channels"]
    assert set(got.json) == {"text"} and "task.cancelled" in got.json["text"] and kept["id"] in got.json["text"]
    assert "x-agentfleet-signature-256" not in got.headers
    assert listed["url"].endswith("/…") and "XXXX" not in listed["url"]


async def test_two_replicas_queue_and_send_each_event_once(connect, services):
    """Passes run at once (on PostgreSQL in parallel transactions): the cursor's compare-and-set and
    the delivery lease let each event through exactly once."""
    async with receiver() as hook, connect() as admin:
        await call(admin, "notification_channel_create", name="once", url=hook.url, event_types=["task.submitted"])
        ids = [(await call(admin, "task_submit", type="x"))["id"] for _ in range(5)]
        await log_readable(services)
        await asyncio.gather(*(services.notifications.queue() for _ in range(4)))
        for _ in range(10):
            await asyncio.gather(*(services.notifications.deliver_due() for _ in range(3)))
        page = (await call(admin, "notification_deliveries"))["deliveries"]
    assert sorted(r.json["subject"] for r in hook.got) == sorted(ids)
    assert len(page) == 5 and {d["status"] for d in page} == {"delivered"}


async def test_an_unreachable_url_is_retried_with_the_network_error(fake_connect, fake_time_services):
    from tests.events.receiver import free_port

    async with fake_connect() as admin:
        url = f"http://127.0.0.1:{free_port()}/nobody-listens"
        await call(admin, "notification_channel_create", name="void", url=url, event_types=["task.submitted"])
        await call(admin, "task_submit", type="x")
        await deliver_all(fake_time_services)
        [pending] = (await call(admin, "notification_deliveries"))["deliveries"]
    assert pending["status"] == "pending" and pending["attempts"] == 1 and "Connect" in pending["last_error"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"url": "ftp://example.com/x"}, "http"),
        ({"url": "file:///etc/passwd"}, "http"),
        ({"url": "http:///no-host"}, "host"),
        ({"url": "not a url"}, "http"),
        ({"url": "http://example.com:99999/x"}, "parse"),
        ({"filter": "event.type =="}, ""),
        ({"filter": "inputs.x == 1"}, "event"),
        ({"event_types": ["frob.*"]}, "families"),
        ({"event_types": ["task;drop"]}, "task.dead"),
        ({"event_types": []}, ""),
        ({"name": "bad name!"}, "letters"),
        ({"name": "nul\x00name"}, ""),
        ({"url": "http://example.com/\x00"}, ""),
        ({"secret": "nul\x00secret"}, ""),
        ({"kind": "email"}, ""),
        ({"max_attempts": 0}, ""),
    ],
)
async def test_bad_input_is_refused_and_stores_nothing(connect, arguments, expected):
    good = {"name": "fine", "url": "https://hooks.example.com/x", "event_types": ["task.dead"]}
    async with connect() as admin:
        failed = await call_error(admin, "notification_channel_create", **{**good, **arguments})
        listed = await call(admin, "notification_channel_list")
        audit = await call(admin, "audit_query", action="notification_channel.create")
    assert failed.code == "invalid_input" and expected in failed.text
    assert listed["channels"] == [] and audit["entries"] == []


async def test_a_name_is_taken_once(connect):
    async with connect() as admin:
        args = {"name": "dup", "url": "https://hooks.example.com/x", "event_types": ["*"]}
        await call(admin, "notification_channel_create", **args)
        again = await call_error(admin, "notification_channel_create", **args)
    assert again.code == "conflict"


async def test_agents_and_viewers_cannot_make_the_server_call_a_url(connect):
    async with connect() as admin:
        agent = await call(admin, "agent_spawn", profile="worker", name="w")
        viewer = await call(admin, "token_create", name="watcher", role="viewer")
        operator = await call(admin, "token_create", name="oper", role="operator")
    args = {"name": "exfil", "url": "http://169.254.169.254/latest", "event_types": ["*"]}
    async with connect(agent["token"]) as as_agent:
        refused = await call_error(as_agent, "notification_channel_create", **args)
        listing = await call_error(as_agent, "notification_deliveries")
    async with connect(viewer["token"]) as as_viewer:
        viewer_refused = await call_error(as_viewer, "notification_channel_list")
    async with connect(operator["token"]) as as_operator:
        operator_refused = await call_error(as_operator, "notification_channel_create", **args)
        operator_list = await call(as_operator, "notification_channel_list")
    assert refused.code == listing.code == viewer_refused.code == operator_refused.code == "permission_denied"
    assert operator_list["channels"] == []


async def test_delete_drops_the_channel_and_its_deliveries_and_is_audited(connect, services):
    async with receiver([500]) as hook, connect() as admin:
        made = await call(admin, "notification_channel_create", name="gone", url=hook.url, event_types=["task.*"])
        await call(admin, "task_submit", type="x")
        await deliver_all(services)
        deleted = await call(admin, "notification_channel_delete", channel="gone")
        again = await call_error(admin, "notification_channel_delete", channel=made["id"])
        left = await call(admin, "notification_deliveries")
        unknown = await call_error(admin, "notification_deliveries", channel="gone")
        trail = await call(admin, "audit_query", subject=made["id"])
    assert deleted["id"] == made["id"] and again.code == "not_found" and unknown.code == "not_found"
    assert left["deliveries"] == []
    assert [e["action"] for e in trail["entries"]] == ["notification_channel.delete", "notification_channel.create"]
    assert SECRET not in str(trail)


@pytest.mark.parametrize("placeholder", ["{{ event.data.x }}", "{{ body.ref }}"])
def test_a_workflow_refuses_the_trigger_and_filter_roots(placeholder):
    from server.domain.workflow_definition import parse_definition
    from server.errors import InvalidInput

    definition = {"name": "w", "steps": [{"id": "a", "task": {"type": "t", "payload": {"x": placeholder}}}]}
    with pytest.raises(InvalidInput, match="for triggers"):
        parse_definition(definition)


async def test_finished_deliveries_are_kept_a_week_then_dropped(fake_connect, fake_time_services, clock):
    services = fake_time_services
    async with receiver(answers=[500]) as hook, fake_connect() as admin:
        await call(
            admin, "notification_channel_create", name="keep", url=hook.url, event_types=["task.*"], max_attempts=1
        )
        await call(admin, "task_submit", type="dies")  # its delivery answers 500: dead at once
        await call(admin, "task_submit", type="lands")
        await deliver_all(services)
        clock.advance(6 * 86_400)
        assert await services.notifications.prune() == 0
        clock.advance(2 * 86_400)
        await call(admin, "task_submit", type="late")  # queued now, not yet sent: pending
        await log_readable(services)
        await services.notifications.queue()
        assert await services.notifications.prune() == 2
        left = (await call(admin, "notification_deliveries"))["deliveries"]
    assert [(d["status"], d["event_type"]) for d in left] == [("pending", "task.submitted")]
