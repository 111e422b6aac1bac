"""Write docs/tools.md from the tools' own schemas and descriptions, so the reference cannot drift
from the server (tests/test_docs.py checks the committed file equals what this prints).

    python scripts/gen_tools_doc.py > docs/tools.md"""

from __future__ import annotations

import inspect
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

HEADER = """# MCP tools

Generated from the tools' own schemas by `scripts/gen_tools_doc.py`; do not edit by hand.

Arguments are flat and named; results are structured JSON. Unknown arguments are refused, and every
argument must have the JSON type its schema names (`"3"` is not an integer, `"yes"` not a boolean)
and text both stores can keep (no NUL byte, no lone surrogate). Each caller's `tools/list` shows
only the tools its role and profile let it call; the roles below are the most any profile allows.
Resources: `agentfleet://agents/{agent_id}` and `agentfleet://tasks/{task_id}` (JSON; read as
`agent_get` and `task_get`).

## Errors

Every failure a caller can cause is a tool error (`isError: true`), an A2A error, or an HTTP 4xx
whose text starts with a stable code, then a sentence saying what to do: `not_found`,
`invalid_input`, `conflict`, `permission_denied`, `budget_exceeded`, `lock_timeout`, `deadlock`,
`lease_expired`, `approval_required`, `rate_limited`, `unavailable`. A refused call changes nothing
but the audit trail (refusals by policy leave a `request.refused` row). An HTTP request without a
valid token gets a plain `401` (see [security.md](security.md)). For example:

```
invalid_input: task_submit has no argument(s) priorty; it takes: capabilities, idempotency_key, …
```

## Tools
"""


def _type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[1]]
        if "enum" in target:
            return " | ".join(f"`{v}`" for v in target["enum"])
        return _type(target, defs) if "type" in target else schema["$ref"].rsplit("/", 1)[1]
    if "enum" in schema:
        return " | ".join(f"`{v}`" for v in schema["enum"])
    if "anyOf" in schema:
        kinds = [_type(option, defs) for option in schema["anyOf"] if option.get("type") != "null"]
        nullable = any(option.get("type") == "null" for option in schema["anyOf"])
        return " or ".join(kinds) + (" or null" if nullable else "")
    kind = schema.get("type", "any")
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"array of {_type(schema['items'], defs)}"
    return str(kind)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _arguments(schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    if not properties:
        return ["No arguments.", ""]
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    rows = ["| argument | type | required | default | description |", "|---|---|---|---|---|"]
    for name, prop in properties.items():
        default = f"`{prop['default']}`" if "default" in prop and prop["default"] not in (None, [], {}) else ""
        rows.append(
            f"| `{name}` | {_cell(_type(prop, defs))} | {'yes' if name in required else ''} | {_cell(default)} "
            f"| {_cell(prop.get('description', ''))} |"
        )
    return [*rows, ""]


def _hints(tool: Any) -> str:
    notes = tool.annotations
    if notes is None:
        return ""
    marks = [m for m, on in (("read-only", notes.read_only_hint), ("destructive", notes.destructive_hint)) if on]
    return f" ({', '.join(marks)})" if marks else ""


def render() -> str:
    from server.domain.permissions import roles_for
    from server.metrics import Metrics
    from server.services.container import build_services
    from server.settings import Settings
    from tools import build_mcp

    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(data_dir=Path(scratch), database_url=f"sqlite:///{scratch}/doc.db", port=8765)
        services = build_services(settings, "afk_" + "0" * 40)
        try:
            tools = build_mcp(services, Metrics(services.fleet))._tool_manager.list_tools()  # noqa: SLF001
        finally:
            services.close()
    lines = [HEADER]
    for tool in sorted(tools, key=lambda t: t.name):
        roles = ", ".join(sorted(role.value for role in roles_for(tool.name)))
        lines += [f"### `{tool.name}`", "", f"For: {roles}{_hints(tool)}.", ""]
        lines += [inspect.cleandoc(tool.description or ""), ""]
        lines += _arguments(tool.parameters)
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
