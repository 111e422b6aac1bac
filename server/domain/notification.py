"""What a notification channel is and what it sends: its kinds, a URL it may call, the filter it
applies to events, the payload per kind and the signature over it. Pure: no store, no network."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from server.domain.storable import scrubbed
from server.domain.workflow_template import Condition
from server.errors import InvalidInput

SIGNATURE_HEADER = "X-Agentfleet-Signature-256"
EVENT_HEADER = "X-Agentfleet-Event"
DELIVERY_HEADER = "X-Agentfleet-Delivery"
A2A_TOKEN_HEADER = "X-A2A-Notification-Token"
MAX_URL = 2000
MAX_SECRET = 200
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# The families the event log writes; a pattern naming another family could never match.
FAMILIES = frozenset({"task", "workflow", "agent", "lock", "budget", "approval", "message", "trigger"})
_TYPE = re.compile(r"^[a-z_]+(\.[a-z_]+)*(\.\*)?$|^\*$")


class ChannelKind(StrEnum):
    WEBHOOK = "webhook"
    SLACK = "slack"
    A2A = "a2a"  # an A2A push notification config: made over A2A, not with the channel tools


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise InvalidInput(
            f"channel name {scrubbed(name)[:60]!r}: use 1-100 letters, digits, '_', '.' or '-', starting with "
            "a letter or digit"
        )
    return name


def check_url(url: str, what: str = "url") -> str:
    """An absolute http(s) URL with a host; nothing else is ever called."""
    if len(url) > MAX_URL:
        raise InvalidInput(f"{what} is {len(url)} characters; at most {MAX_URL}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise InvalidInput(f"{what} {scrubbed(url)[:80]!r} does not parse as a URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"{what} must be an http:// or https:// URL with a host, e.g. https://hooks.example.com/fleet; "
            f"got {scrubbed(url)[:80]!r}"
        )
    if any(ch.isspace() for ch in url):
        raise InvalidInput(f"{what} must not contain spaces or line breaks")
    return url


def is_private_address(host: str) -> bool:
    """Loopback, private, link-local (cloud metadata), shared, reserved, multicast or unspecified."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return bool(
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
        or address in ipaddress.ip_network("100.64.0.0/10")
    )


def shown_url(kind: str, url: str) -> str:
    """A URL as the channel list shows it: never credentials or a query; a Slack webhook's path is
    itself a credential, so only its origin is shown."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    origin = f"{parts.scheme}://{host}{'' if parts.port is None else f':{parts.port}'}"
    if kind == ChannelKind.SLACK:
        return f"{origin}/…"
    return f"{origin}{parts.path}"


def check_event_types(patterns: Iterable[str]) -> list[str]:
    """Exact types (`task.dead`), families (`approval.*`) or everything (`*`), of a family the log writes."""
    checked: list[str] = []
    for pattern in patterns:
        if not _TYPE.fullmatch(pattern):
            raise InvalidInput(
                f"event type {scrubbed(pattern)[:60]!r} is not a type or pattern: write e.g. task.dead, approval.* or *"
            )
        family = pattern.split(".", 1)[0]
        if pattern != "*" and (family not in FAMILIES or "." not in pattern):
            raise InvalidInput(
                f"event type {pattern!r} names no kind of event the fleet records; families are "
                f"{', '.join(f'{f}.*' for f in sorted(FAMILIES))}"
            )
        if pattern not in checked:
            checked.append(pattern)
    if not checked:
        raise InvalidInput("name at least one event type, e.g. task.dead, approval.* or *")
    return checked


def parse_filter(text: str | None) -> Condition | None:
    """A `when`-style condition over the event (`event.type`, `event.data.…`, `event.subject`, …)."""
    if text is None:
        return None
    condition = Condition.parse(text)
    for ref in condition.references:
        if ref.root != "event":
            raise InvalidInput(
                f"a channel filter reads the event: write event.type, event.subject, event.data.…; not {ref.text}"
            )
    return condition


def canonical(body: Any) -> bytes:
    """The exact bytes sent (and signed)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, body: bytes) -> str:
    """GitHub's form: sha256=<hex HMAC-SHA256 of the raw body, keyed by the secret>."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_body(event: Mapping[str, Any]) -> dict[str, Any]:
    return dict(event)


def slack_body(event: Mapping[str, Any]) -> dict[str, Any]:
    """Slack's incoming-webhook payload: one line a person reads, with the event's essentials."""
    data = event.get("data") or {}
    details = ", ".join(f"{key}={value}" for key, value in data.items() if isinstance(value, str | int | float | bool))[
        :500
    ]
    text = f"agentfleet: {event['type']} {event['subject']}" + (f" ({details})" if details else "")
    return {"text": text}


# The A2A state a task event puts its A2A task in (events of other types are not pushed).
A2A_STATE_OF_EVENT = {
    "task.submitted": "TASK_STATE_SUBMITTED",
    "task.retrying": "TASK_STATE_SUBMITTED",
    "task.claimed": "TASK_STATE_WORKING",
    "task.progress": "TASK_STATE_WORKING",
    "task.completed": "TASK_STATE_COMPLETED",
    "task.failed": "TASK_STATE_FAILED",
    "task.dead": "TASK_STATE_FAILED",
    "task.cancelled": "TASK_STATE_CANCELED",
}


def a2a_body(event: Mapping[str, Any], context_id: str) -> dict[str, Any] | None:
    """An A2A StreamResponse carrying a TaskStatusUpdateEvent, as the spec's push notifications do."""
    state = A2A_STATE_OF_EVENT.get(str(event["type"]))
    if state is None:
        return None
    return {
        "statusUpdate": {
            "taskId": event["subject"],
            "contextId": context_id,
            "status": {"state": state, "timestamp": event["at"]},
            "metadata": {"event": event["type"], "eventId": event["id"]},
        }
    }
