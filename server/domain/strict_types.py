"""JSON types as the schema says, with no coercion: `"0"`, `"yes"` or `true` where an integer or a
boolean is expected is a mistake (LLMs make it), and a call that changes state must not guess.

The SDK validates arguments with pydantic in lax mode, which turns `"5"` into 5 and `"yes"` into
True. Before that, each call's arguments are checked against the tool's own input schema, using only
the structural keywords (types, properties, items, unions, references): value rules stay pydantic's,
so each mistake is still described once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.errors import InvalidInput

_STRUCTURAL = ("type", "properties", "items", "prefixItems", "anyOf", "oneOf", "allOf", "$ref", "additionalProperties")

Check = Callable[[dict[str, Any]], None]


def _validator_class() -> Any:
    # Imported on first use: jsonschema costs start-up time that a stdio launch should not pay.
    from jsonschema import validators

    base = validators.Draft202012Validator
    keywords = {name: base.VALIDATORS[name] for name in _STRUCTURAL}
    return validators.create(meta_schema=base.META_SCHEMA, validators=keywords, type_checker=base.TYPE_CHECKER)


def compile_check(tool: str, schema: dict[str, Any]) -> Check:
    """A function raising InvalidInput when arguments do not have the schema's JSON types."""
    validator = _validator_class()(schema)

    def check(arguments: dict[str, Any]) -> None:
        error = next(iter(validator.iter_errors(arguments)), None)
        if error is None:
            return
        where = ".".join(str(part) for part in error.absolute_path) or "arguments"
        raise InvalidInput(
            f"bad arguments for {tool}: {where}: {repr(error.instance)[:80]} is not of the expected type "
            f"({_expected(error.schema)}); send it as that JSON type, not as text or another type"
        )

    return check


def _expected(schema: Any) -> str:
    if not isinstance(schema, dict):
        return "see the tool's schema"
    if "type" in schema:
        kind = schema["type"]
        return " or ".join(kind) if isinstance(kind, list) else str(kind)
    options = schema.get("anyOf") or schema.get("oneOf") or []
    kinds = [str(option.get("type")) for option in options if isinstance(option, dict) and "type" in option]
    return " or ".join(kinds) or "see the tool's schema"
