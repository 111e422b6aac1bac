"""Messaging through MCP: who reaches whom, fan-out, long-poll, request/reply, acks, threads,
search, topics, retention, and bad input that stores nothing."""

from __future__ import annotations

import anyio
import pytest
from sqlalchemy import func, select

from server.store.tables import inbox, messages
from tests.helpers import call, call_error

pytestmark = pytest.mark.anyio


async def _family(admin) -> dict[str, dict]:
    """parent P with children C1 (who has child G) and C2, and an unrelated agent X."""
    p = await call(admin, "agent_spawn", profile="worker", name="p", labels={"team": "red"})
    c1 = await call(
        admin, "agent_spawn", profile="worker", name="c1", parent_id=p["agent"]["id"], labels={"team": "red"}
    )
    c2 = await call(admin, "agent_spawn", profile="worker", name="c2", parent_id=p["agent"]["id"])
    g = await call(admin, "agent_spawn", profile="worker", name="g", parent_id=c1["agent"]["id"])
    x = await call(admin, "agent_spawn", profile="worker", name="x")
    return {"p": p, "c1": c1, "c2": c2, "g": g, "x": x}


def _id(agent: dict) -> str:
    return agent["agent"]["id"]


async def _inbox_senders(connect, agent: dict) -> list[str]:
    async with connect(agent["token"]) as client:
        page = await call(client, "message_inbox")
    return [m["sender"] for m in page["messages"]]


def _count(services) -> tuple[int, int]:
    with services.db.engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(messages)).scalar_one(),
            conn.execute(select(func.count()).select_from(inbox)).scalar_one(),
        )


async def test_children_tree_and_parent_reach_the_right_inboxes(connect):
    async with connect() as admin:
        f = await _family(admin)
    async with connect(f["p"]["token"]) as parent:
        to_children = await call(parent, "message_send", to=["children"], body="stand-up in 5")
        to_tree = await call(parent, "message_send", to=["tree"], body="freeze merges")
    async with connect(f["g"]["token"]) as grandchild:
        await call(grandchild, "message_send", to=["parent"], body="done with my part")
    assert to_children["recipients"] == 2 and to_tree["recipients"] == 3
    assert await _inbox_senders(connect, f["c1"]) == [_id(f["g"]), _id(f["p"]), _id(f["p"])]
    assert await _inbox_senders(connect, f["c2"]) == [_id(f["p"]), _id(f["p"])]
    assert await _inbox_senders(connect, f["g"]) == [_id(f["p"])]
    assert await _inbox_senders(connect, f["x"]) == []


async def test_an_unrelated_agent_is_refused_and_nothing_is_stored(connect, services):
    async with connect() as admin:
        f = await _family(admin)
    before = _count(services)
    async with connect(f["x"]["token"]) as outsider:
        direct = await call_error(outsider, "message_send", to=[_id(f["p"])], body="hi")
        by_label = await call_error(outsider, "message_send", to=["label:team=red"], body="hi")
        topic = await call_error(outsider, "topic_subscribe", topic="reviews")
    assert {direct.code, by_label.code, topic.code} == {"permission_denied"}
    assert _count(services) == before


async def test_staff_fan_out_by_label_and_profile_and_agents_reach_operators(connect):
    async with connect() as admin:
        f = await _family(admin)
        sent = await call(admin, "message_send", to=["label:team=red"], body="red team: rebase")
        everyone = await call(admin, "message_send", to=["profile:worker"], body="all workers")
        async with connect(f["x"]["token"]) as agent:
            await call(agent, "message_send", to=["operators"], body="I am stuck", importance="high")
        ops = await call(admin, "message_inbox")
    assert sent["recipients"] == 2 and everyone["recipients"] == 5
    assert [(m["sender"], m["importance"]) for m in ops["messages"]] == [(_id(f["x"]), "high")]


async def test_a_long_poll_is_answered_by_the_send(connect):
    async with connect() as admin:
        f = await _family(admin)
    got: dict = {}

    async def wait_for_mail() -> None:
        async with connect(f["c1"]["token"]) as child:
            got.update(await call(child, "message_inbox", wait_s=30))

    async with anyio.create_task_group() as group:
        group.start_soon(wait_for_mail)
        await anyio.sleep(0.3)
        assert got == {}
        async with connect(f["p"]["token"]) as parent:
            with anyio.fail_after(10):
                await call(parent, "message_send", to=[_id(f["c1"])], body="wake up")
    assert [m["body"] for m in got["messages"]] == ["wake up"]


async def test_request_reply_between_child_and_parent(connect):
    async with connect() as admin:
        f = await _family(admin)
    answer: dict = {}

    async def ask() -> None:
        async with connect(f["c1"]["token"]) as child:
            answer.update(await call(child, "message_request", to=["parent"], body="which branch?", wait_s=30))

    async def reply() -> None:
        async with connect(f["p"]["token"]) as parent:
            question = (await call(parent, "message_inbox", wait_s=30))["messages"][0]
            await call(parent, "message_send", to=[question["sender"]], reply_to=question["id"], body="main")

    async with anyio.create_task_group() as group:
        group.start_soon(ask)
        group.start_soon(reply)
    assert answer["reply"]["body"] == "main" and answer["reply"]["thread_id"] == answer["sent"]["thread_id"]


async def test_acks_threads_and_who_has_not_acked(connect):
    async with connect() as admin:
        f = await _family(admin)
    async with connect(f["p"]["token"]) as parent:
        sent = await call(parent, "message_send", to=["children"], body="read the RFC", ack_required=True)
        async with connect(f["c1"]["token"]) as child:
            mail = (await call(child, "message_inbox"))["messages"]
            await call(child, "message_ack", message_ids=[mail[0]["id"]])
            assert (await call(child, "message_inbox"))["messages"] == []
            await call(child, "message_send", to=["parent"], reply_to=sent["id"], body="done")
        thread = await call(parent, "message_thread", thread_id=sent["thread_id"])
    assert [m["body"] for m in thread["messages"]] == ["read the RFC", "done"]
    assert thread["messages"][0]["not_acked_by"] == [_id(f["c2"])]
    async with connect(f["x"]["token"]) as outsider:
        hidden = await call_error(outsider, "message_thread", thread_id=sent["thread_id"])
    assert hidden.code == "not_found"


async def test_topics_need_the_profile_and_reach_subscribers(connect):
    async with connect() as admin:
        chatty = await call(admin, "agent_spawn", profile="chatty", name="reviewer-bot")
        listener = await call(admin, "agent_spawn", profile="chatty", name="listener")
    async with connect(listener["token"]) as agent:
        await call(agent, "topic_subscribe", topic="reviews-api")
        refused = await call_error(agent, "topic_subscribe", topic="deploys")
    async with connect(chatty["token"]) as agent:
        sent = await call(agent, "message_send", to=["topic:reviews-api"], body="PR 12 needs eyes")
        not_allowed = await call_error(agent, "message_send", to=["topic:deploys"], body="x")
    assert refused.code == not_allowed.code == "permission_denied"
    assert sent["recipients"] == 1 and sent["topics"] == ["reviews-api"]
    assert await _inbox_senders(connect, listener) == [_id(chatty)]


async def test_search_finds_only_what_the_caller_may_read(connect):
    async with connect() as admin:
        f = await _family(admin)
        await call(admin, "message_send", to=[_id(f["c1"])], body="the flaky test is in payments")
        await call(admin, "message_send", to=[_id(f["c2"])], body="payments refactor plan")
        everything = await call(admin, "message_search", query="payments")
    async with connect(f["c1"]["token"]) as child:
        mine = await call(child, "message_search", query="payments")
        none = await call(child, "message_search", query="refactor")
    assert len(everything["messages"]) == 2
    assert [m["body"] for m in mine["messages"]] == ["the flaky test is in payments"]
    assert none["messages"] == []


async def test_bad_recipients_store_nothing(connect, services):
    async with connect() as admin:
        await _family(admin)
        before = _count(services)
        nobody = await call_error(admin, "message_send", to=["label:team=purple"], body="x")
        unknown = await call_error(admin, "message_send", to=["everyone"], body="x")
        no_agent = await call_error(admin, "message_send", to=["agt_0000NOSUCHAGENT"], body="x")
        nul = await call_error(admin, "message_send", to=["operators"], body="a\x00b")
        too_big = await call_error(admin, "message_send", to=["operators"], body="x" * 70_000)
        not_mine = await call_error(admin, "message_ack", message_ids=["msg_0000NOSUCH"])
    assert nobody.code == "invalid_input" and "label:team=purple" in nobody.text
    assert unknown.code == "invalid_input" and no_agent.code == "not_found"
    assert nul.code == too_big.code == "invalid_input" and not_mine.code == "not_found"
    assert _count(services) == before


async def test_retention_prunes_read_and_expired_messages(fake_connect, fake_time_services, clock):
    async with fake_connect() as admin:
        f = await _family(admin)
        kept = await call(admin, "message_send", to=[_id(f["c1"])], body="unread, kept")
        read = await call(admin, "message_send", to=[_id(f["c2"])], body="read, pruned later")
        await call(admin, "message_send", to=[_id(f["c2"])], body="short-lived", ttl_s=60)
    async with fake_connect(f["c2"]["token"]) as agent:
        await call(agent, "message_ack", message_ids=[read["id"]])
    clock.advance(120)
    assert await fake_time_services.messages.prune(retention_days=30) == 1  # the expired one
    clock.advance(31 * 86400)
    assert await fake_time_services.messages.prune(retention_days=30) == 1  # the read one
    async with fake_connect(f["c1"]["token"]) as agent:
        left = await call(agent, "message_inbox")
    assert [m["id"] for m in left["messages"]] == [kept["id"]]
