"""`agentfleet inbox`: an agent's (or a person's) unread messages in the terminal, or, with --hook,
in the form Claude Code hooks add to a session, so messages reach the agent's turn loop without it
polling (docs/messaging.md shows the hook configuration).

One MCP call to a running server with AGENTFLEET_URL / AGENTFLEET_TOKEN, like the operator CLI."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from server import operator_cli
from server.errors import InvalidInput, Unavailable

HOOK_EVENTS = ("UserPromptSubmit", "Stop", "SessionStart", "PostToolUse")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    inbox = commands.add_parser("inbox", help="unread messages (--hook: for a Claude Code hook)")
    operator_cli.add_connection_flags(inbox)
    inbox.add_argument(
        "--hook",
        nargs="?",
        const="UserPromptSubmit",
        choices=HOOK_EVENTS,
        help="print them as a Claude Code hook's output for this event (default UserPromptSubmit) and "
        "acknowledge them; print nothing when there are none",
    )
    inbox.add_argument("--ack", action="store_true", help="acknowledge what is shown")
    inbox.add_argument("--limit", type=int, default=20)
    inbox.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    url, token = operator_cli.connection(args)
    return asyncio.run(_run(url, token, args))


async def _run(url: str, token: str, args: argparse.Namespace) -> int:
    from server.worker.client import FleetClient, NeverReached, ToolError, Unauthorized, Unreachable

    client = FleetClient(url, token)
    try:
        page = await client.call("message_inbox", {"unread_only": True, "limit": args.limit})
        shown = page.get("messages") or []
        if shown and (args.ack or args.hook):
            await client.call("message_ack", {"message_ids": [m["id"] for m in shown]})
    except Unreachable as exc:
        if args.hook:
            return 0  # a hook must never block the session because the fleet is down
        raise Unavailable(f"cannot reach the server at {url} ({exc}): check --url / AGENTFLEET_URL") from None
    except Unauthorized:
        raise InvalidInput("the server refused the token (HTTP 401): check --token / AGENTFLEET_TOKEN") from None
    except (ToolError, NeverReached) as exc:
        print(f"agentfleet: {exc}", file=sys.stderr)
        return 0 if args.hook else 2
    finally:
        await client.aclose()
    if args.hook:
        if shown:
            print(json.dumps(hook_output(args.hook, shown)))
        return 0
    if args.json:
        print(json.dumps(page, indent=2))
    else:
        print(as_text(shown) if shown else "no unread messages")
    return 0


def as_text(messages: list[dict[str, Any]]) -> str:
    lines = [f"You have {len(messages)} unread agentfleet message(s):"]
    for message in reversed(messages):  # oldest first reads like a conversation
        subject = f" — {message['subject']}" if message.get("subject") else ""
        lines.append(
            f"\n[{message['id']}] from {message['sender']} ({message['importance']}){subject}, "
            f"thread {message['thread_id']}:\n{message['body']}"
        )
    lines.append("\nReply with message_send(to=[sender], reply_to=<id>, body=…).")
    return "\n".join(lines)


def hook_output(event: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """Claude Code: context added to the turn (UserPromptSubmit, SessionStart, PostToolUse), or for
    Stop a block whose reason makes the agent go on and answer."""
    text = as_text(messages)
    if event == "Stop":
        return {"decision": "block", "reason": text}
    return {"hookSpecificOutput": {"hookEventName": event, "additionalContext": text}}
