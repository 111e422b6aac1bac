"""Webhooks and the SSE stream against a real `agentfleet serve`: signed deliveries become work once,
bad ones are refused with nothing stored, and /events resumes from Last-Event-ID."""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING

import pytest

from server.domain.webhook_signature import is_authentic, sign
from tests.helpers import call

if TYPE_CHECKING:
    from tests.serving import FleetServer

pytest_plugins = ["tests.serving"]
pytestmark = pytest.mark.anyio


def test_githubs_documented_signature_vector_checks_out():
    # https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries#testing-the-webhook-payload-validation
    secret, body = "It's a Secret to Everybody", b"Hello, World!"
    expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert sign(secret, body) == expected
    assert is_authentic(secret, {"x-hub-signature-256": expected}, body)
    assert not is_authentic(secret, {"x-hub-signature-256": expected}, body + b" ")
    assert not is_authentic(secret, {}, body)


async def _webhook(fleet: FleetServer) -> tuple[str, str]:
    name = f"ci-{uuid.uuid4().hex[:8]}"
    async with fleet.mcp() as admin:
        made = await call(
            admin,
            "trigger_create",
            name=name,
            kind="webhook",
            task={
                "type": "ci-failure",
                "payload": {"repo": "{{ body.repository.full_name }}", "sha": "{{ body.sha }}"},
            },
        )
    return name, made["secret"]


async def test_a_signed_delivery_creates_its_task_once(shared_fleet: FleetServer):
    name, secret = await _webhook(shared_fleet)
    body = json.dumps({"repository": {"full_name": "acme/api"}, "sha": "abc123"}).encode()
    headers = {
        "content-type": "application/json",
        "x-hub-signature-256": sign(secret, body),
        "x-github-delivery": str(uuid.uuid4()),
    }
    async with shared_fleet.http() as http:
        first = await http.post(f"/hooks/{name}", content=body, headers=headers)
        again = await http.post(f"/hooks/{name}", content=body, headers=headers)
    assert first.status_code == 202 and first.json()["status"] == "created"
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    async with shared_fleet.mcp() as admin:
        task = await call(admin, "task_get", task_id=first.json()["created_id"])
        runs = (await call(admin, "trigger_get", trigger=name))["runs"]
    assert task["type"] == "ci-failure" and task["payload"] == {"repo": "acme/api", "sha": "abc123"}
    assert len(runs) == 1


async def test_bad_deliveries_are_refused_and_store_nothing(shared_fleet: FleetServer):
    name, secret = await _webhook(shared_fleet)
    body = b'{"sha": "x"}'
    async with shared_fleet.http() as http:
        forged = await http.post(f"/hooks/{name}", content=body, headers={"x-hub-signature-256": sign("guess", body)})
        unsigned = await http.post(f"/hooks/{name}", content=body)
        not_json = await http.post(
            f"/hooks/{name}", content=b"Hello, World!", headers={"x-hub-signature-256": sign(secret, b"Hello, World!")}
        )
        huge = b'{"x": "' + b"a" * (1024 * 1024) + b'"}'
        oversize = await http.post(f"/hooks/{name}", content=huge, headers={"x-hub-signature-256": sign(secret, huge)})
        nul = b'{"x": "a\\u0000b"}'
        with_nul = await http.post(f"/hooks/{name}", content=nul, headers={"authorization": f"Bearer {secret}"})
        unknown = await http.post(
            "/hooks/no-such-hook", content=body, headers={"x-hub-signature-256": sign(secret, body)}
        )
    assert (forged.status_code, unsigned.status_code) == (401, 401)
    assert forged.json()["error"] == "permission_denied"
    assert not_json.status_code == 400 and not_json.json()["error"] == "invalid_input"
    assert oversize.status_code == 413
    assert with_nul.status_code == 400
    assert unknown.status_code == 404
    async with shared_fleet.mcp() as admin:
        got = await call(admin, "trigger_get", trigger=name)
    assert got["runs"] == [] and got["fired"] == 0
    async with shared_fleet.http(shared_fleet.admin_token) as http:
        metrics = (await http.get("/metrics")).text
    refused = re.search(r'^agentfleet_webhook_deliveries_total\{outcome="unauthorized"\} (\d+)', metrics, re.M)
    assert refused is not None and float(refused.group(1)) >= 2  # the forged and the unsigned one


async def _read_events(response, kind: str, count: int) -> list[tuple[str, str, dict]]:
    """SSE events from the stream until `count` of them are about tasks of type `kind` (a shared
    server may interleave others' events); returns every event read."""
    found: list[tuple[str, str, dict]] = []
    ours = 0
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                data = json.loads(fields["data"])
                found.append((fields.get("id", ""), fields.get("event", ""), data))
                ours += data["data"].get("type") == kind
                if ours == count:
                    return found
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            fields[key] = value.lstrip(" ")
    return found


async def test_the_event_stream_resumes_after_last_event_id(shared_fleet: FleetServer):
    kind = f"sse-{uuid.uuid4().hex[:8]}"
    async with shared_fleet.mcp() as admin:
        head = (await call(admin, "event_list", types=["task.submitted"]))["next_cursor"]
        ids = [(await call(admin, "task_submit", type=kind))["id"] for _ in range(4)]
    async with shared_fleet.http(shared_fleet.admin_token) as http:
        params = {"types": "task.submitted", "after": head}
        async with http.stream("GET", "/events", params=params) as response:
            assert response.status_code == 200
            first = await _read_events(response, kind, 2)
        resume = {"last-event-id": first[-1][0]}
        async with http.stream("GET", "/events", params={"types": "task.submitted"}, headers=resume) as response:
            rest = await _read_events(response, kind, 2)
        unauthenticated = await http.get("/events", headers={"authorization": "Bearer nope"})
    seen = [data["subject"] for _, _, data in first + rest if data["data"].get("type") == kind]
    assert seen == ids  # in order, none twice, none lost across the reconnect
    assert {event for _, event, _ in first + rest} == {"task.submitted"}
    cursors = [cursor for cursor, _, _ in first + rest]
    assert cursors == sorted(cursors) and len(set(cursors)) == len(cursors)
    assert unauthenticated.status_code == 401
