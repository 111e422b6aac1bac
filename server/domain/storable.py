"""Text both stores can hold. PostgreSQL refuses a NUL byte in text and JSON, and no UTF-8 column
holds a lone surrogate; SQLite takes both. Refusing them at every adapter, before anything is
written, makes the two stores answer alike."""

from __future__ import annotations

from typing import Any

from server.errors import InvalidInput

_MAX_DEPTH = 64


def _bad_text(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL byte (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "a lone UTF-16 surrogate"
    return None


def _first_unstorable(value: Any, where: str, depth: int = 0) -> tuple[str, str] | None:
    if isinstance(value, str):
        problem = _bad_text(value)
        return (where, problem) if problem else None
    if depth > _MAX_DEPTH:
        return None  # the payload-depth rules of each field refuse such a value anyway
    if isinstance(value, dict):
        for key, item in value.items():
            key_text = str(key)
            if problem := _bad_text(key_text):
                return f"{where} (a key)", problem
            if found := _first_unstorable(item, f"{where}.{key_text[:40]}", depth + 1):
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            if found := _first_unstorable(item, f"{where}[{index}]", depth + 1):
                return found
    return None


def require_storable(arguments: dict[str, Any], what: str) -> None:
    """Raise InvalidInput naming the first argument holding text no store can keep."""
    for name, value in arguments.items():
        if found := _first_unstorable(value, name):
            where, problem = found
            raise InvalidInput(
                f"{what}: {where} holds {problem}, which the store cannot keep; remove it "
                "(send binary data base64-encoded)"
            )


def scrubbed(text: str) -> str:
    """The text with whatever no store can keep replaced by U+FFFD: for rows that must be written
    whatever a caller sent (the audit row of a refusal)."""
    if _bad_text(text) is None:
        return text
    return text.replace("\x00", "\ufffd").encode("utf-8", errors="replace").decode("utf-8")
