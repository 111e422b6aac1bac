"""Our task as an A2A message, and the peer's artifacts as our task's result (the shape is in
server/runtime/a2a_peer.py's docstring). protobuf carries numbers as doubles: whole ones come
back as ints."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from a2a.helpers import new_data_part, new_message, new_text_part
from a2a.types import Artifact, Message, Part, Role
from google.protobuf.json_format import MessageToDict

from server.a2a.mapping import restore_ints
from server.domain.views import TaskView


def task_message(task: TaskView) -> Message:
    """Our task as the user message of a SendMessage."""
    parts = [new_data_part({"type": task.type, "payload": task.payload})]
    payload = task.payload
    text = payload if isinstance(payload, str) else None
    if isinstance(payload, dict) and list(payload) == ["text"] and isinstance(payload["text"], str):
        text = payload["text"]
    if text:
        parts.append(new_text_part(text))
    message = new_message(parts, role=Role.ROLE_USER)
    message.metadata.update({"agentfleet_task_id": task.id, "agentfleet_attempt": task.attempts})
    return message


def _part(part: Part) -> dict[str, Any]:
    kind = part.WhichOneof("content")
    if kind == "text":
        return {"text": part.text}
    if kind == "data":
        return {"data": restore_ints(MessageToDict(part.data))}
    body: dict[str, Any] = {}
    if kind == "url":
        body["url"] = part.url
    elif kind == "raw":
        body["raw"] = base64.b64encode(part.raw).decode()
    if part.media_type:
        body["media_type"] = part.media_type
    if part.filename:
        body["filename"] = part.filename
    return body


def result_of(artifacts: Sequence[Artifact]) -> Any:
    """The task result from the peer's artifacts (see the module docstring for the shape)."""
    parts = [part for artifact in artifacts for part in artifact.parts]
    if len(parts) == 1 and parts[0].HasField("data"):
        return restore_ints(MessageToDict(parts[0].data))
    return {
        "artifacts": [{"name": a.name or None, "parts": [_part(p) for p in a.parts]} for a in artifacts],
        "text": "\n".join(p.text for p in parts if p.HasField("text")),
    }
