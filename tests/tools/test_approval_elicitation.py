"""approval_decide without a decision asks the person at the client (MCP elicitation), on both
protocol eras; a client that cannot be asked is told to pass the decision."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mcp import Client
from mcp.types import ElicitRequestParams, ElicitResult

from server.metrics import Metrics
from server.services.container import Services
from tests.helpers import call, call_error
from tools import build_mcp

pytestmark = pytest.mark.anyio
MODES = ["auto", "legacy"]  # 2026-07-28 (InputRequiredResult) and 2025-11-25 (server-to-client request)


class Person:
    """Plays the human at the client: records each question and gives a scripted answer."""

    def __init__(self, action: str, content: dict[str, Any] | None = None) -> None:
        self.action = action
        self.content = content
        self.questions: list[ElicitRequestParams] = []

    async def __call__(self, _context: Any, params: ElicitRequestParams) -> ElicitResult:
        self.questions.append(params)
        return ElicitResult(action=self.action, content=self.content)


@asynccontextmanager
async def asking(services: Services, person: Person, mode: str) -> AsyncIterator[Client]:
    async with Client(build_mcp(services, Metrics(services.fleet)), mode=mode, elicitation_callback=person) as client:
        yield client


async def pending_task(client: Client) -> dict[str, Any]:
    receipt = await call(client, "task_submit", type="deploy", requires_approval=True, estimated_cost_usd="3")
    assert receipt["status"] == "pending_approval"
    return receipt


@pytest.mark.parametrize("mode", MODES)
async def test_the_person_is_asked_and_their_answer_decides(services, mode):
    person = Person("accept", {"decision": "approve", "note": "ship it"})
    async with asking(services, person, mode) as client:
        receipt = await pending_task(client)
        decided = await call(client, "approval_decide", approval_id=receipt["approval"]["id"])
        task = await call(client, "task_get", task_id=receipt["id"])
    [question] = person.questions
    assert receipt["id"] in question.message and "deploy" in question.message and "$3" in question.message
    assert "requires_approval" in question.message and "rejected" in question.message  # the default at expiry
    assert question.requested_schema["properties"]["decision"]["enum"] == ["approve", "reject"]
    assert decided["status"] == "approved" and decided["note"] == "ship it" and decided["decided_by"] == "admin"
    assert task["status"] == "queued" and task["approval"]["note"] == "ship it"


@pytest.mark.parametrize("mode", MODES)
async def test_a_person_who_declines_leaves_the_approval_pending(services, mode):
    person = Person("decline")
    async with asking(services, person, mode) as client:
        receipt = await pending_task(client)
        refused = await call_error(client, "approval_decide", approval_id=receipt["approval"]["id"])
        task = await call(client, "task_get", task_id=receipt["id"])
    assert refused.code == "invalid_input" and "declined" in refused.text
    assert len(person.questions) == 1
    assert task["status"] == "pending_approval" and task["approval"]["status"] == "pending"


@pytest.mark.parametrize("mode", MODES)
async def test_a_decision_given_in_the_call_asks_nobody(services, mode):
    person = Person("accept", {"decision": "approve"})
    async with asking(services, person, mode) as client:
        receipt = await pending_task(client)
        decided = await call(
            client, "approval_decide", approval_id=receipt["approval"]["id"], decision="reject", note="not today"
        )
    assert person.questions == []
    assert decided["status"] == "rejected" and decided["note"] == "not today"


async def test_a_client_that_cannot_be_asked_must_pass_the_decision(connect):
    async with connect() as client:  # no elicitation callback: the capability is not declared
        receipt = await pending_task(client)
        refused = await call_error(client, "approval_decide", approval_id=receipt["approval"]["id"])
        task = await call(client, "task_get", task_id=receipt["id"])
    assert refused.code == "invalid_input" and "decision is required" in refused.text
    assert task["status"] == "pending_approval"
