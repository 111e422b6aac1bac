"""Logging: one formatter for people (text) and one for machines (JSON lines), both carrying the
request id and the trace id of the work in progress, neither ever carrying a secret.

`AGENTFLEET_LOG_FORMAT=json|text` chooses; unset, a terminal gets text and anything else (a
container, a file, a pipe to a collector) gets JSON. A record's structured fields travel in
`extra={"fields": {...}}`; `access` (HTTP) and `tool` (MCP) records are one per request."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

from server.errors import InvalidInput

FORMATS = ("json", "text")
LEVELS = ("debug", "info", "warning", "error")

# The request being served (HTTP middleware sets it; MCP tool records read it).
request_id_var: ContextVar[str | None] = ContextVar("agentfleet_request_id", default=None)

# Every token this server issues starts with one of these prefixes (server/services/auth.py); a
# bearer header's value is a secret whatever it looks like. Whatever reaches a log line, however
# it got there (an exception's text, a library's debug line), leaves with these masked.
_SECRET = re.compile(r"\b(af[akp]_)[A-Za-z0-9_\-]{6,}|(?i:\b(bearer)\s+)[A-Za-z0-9_\-.~+/=]{6,}")


def _mask(match: re.Match[str]) -> str:
    prefix = match.group(1)
    return f"{prefix}***" if prefix else f"{match.group(2)} ***"


def redact(text: str) -> str:
    return _SECRET.sub(_mask, text) if ("af" in text or "earer" in text or "EARER" in text) else text


def current_trace_id() -> str | None:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request_id, trace_id, then the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        trace_id = current_trace_id()
        if trace_id is not None:
            entry["trace_id"] = trace_id
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value …` for a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = dict(_fields(record))
        request_id = request_id_var.get()
        if request_id is not None:
            extra.setdefault("request_id", request_id)
        trace_id = current_trace_id()
        if trace_id is not None:
            extra.setdefault("trace_id", trace_id)
        if extra:
            head, sep, tail = line.partition("\n")  # a traceback stays below the first line
            line = head + "".join(f" {k}={v}" for k, v in extra.items()) + sep + tail
        return redact(line)


def resolve_format(value: str | None, stream: TextIO) -> str:
    if value is None or value == "":
        return "text" if stream.isatty() else "json"
    if value not in FORMATS:
        raise InvalidInput(f"AGENTFLEET_LOG_FORMAT must be json or text, got {value!r}")
    return value


def resolve_level(value: str | None) -> str:
    level = (value or "info").lower()
    if level not in LEVELS:
        raise InvalidInput(f"AGENTFLEET_LOG_LEVEL must be one of {', '.join(LEVELS)}, got {value!r}")
    return level


def configure_logging(level: str, log_format: str | None, stream: TextIO | None = None) -> None:
    """Install one stderr handler on the root logger (before MCPServer is built: it calls
    basicConfig, and stdout must stay clean for stdio). Uvicorn's loggers go through it too."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if resolve_format(log_format, stream) == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(resolve_level(level).upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        noisy = logging.getLogger(name)
        noisy.handlers.clear()
        noisy.propagate = True
