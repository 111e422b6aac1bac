"""The small template and condition language of workflows: `{{ path }}` placeholders and `when` tests.

Deliberately tiny and evaluated by hand (no eval, no Jinja): a workflow definition comes from a
caller, so the language may only read values, never call anything. A path is one of
`inputs.<name>[.<key>…]`, `steps.<step_id>.result[.<key>…]`, `steps.<step_id>.status`,
`item[.<key>…]` or `index`; a segment of digits indexes a list.

The scope a template reads is
`{"inputs": {...}, "steps": {step_id: {"status": str, "result": Any}}, "item": Any, "index": int}`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from server.errors import InvalidInput

ROOTS = ("inputs", "steps", "item", "index", "event", "body")
MAX_CONDITION_CHARS = 2_000
MAX_CONDITION_DEPTH = 32

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_OPEN, _CLOSE = "{{", "}}"
_SOLE_PLACEHOLDER = re.compile(r"\s*\{\{((?:(?!\}\}).)*)\}\}\s*", re.DOTALL)
_PATH_HELP = "paths start with inputs.<name>, steps.<step_id>.result, steps.<step_id>.status, item or index"


@dataclass(frozen=True)
class Reference:
    """One path read by a template or a condition."""

    root: str  # "inputs" | "steps" | "item" | "index"
    path: tuple[str, ...]  # after the root, e.g. ("research", "result", "summary")
    text: str  # the path as written, without the braces, for error messages

    @property
    def step_id(self) -> str | None:
        return self.path[0] if self.root == "steps" else None


def parse_path(text: str) -> Reference:
    """A placeholder's path such as `steps.split.result.items.0`; InvalidInput when it is malformed."""
    written = text.strip()
    problem = path_problem(written)
    if problem is not None:
        raise InvalidInput(f"fix the placeholder {{{{ {written} }}}}: {problem}")
    segments = written.split(".")
    return Reference(root=segments[0], path=tuple(segments[1:]), text=written)


def path_problem(written: str) -> str | None:
    """What is wrong with a path, or None when it is well formed."""
    segments = written.split(".")
    if not written or not all(_SEGMENT.fullmatch(s) for s in segments):
        return f"{_PATH_HELP}, joined by dots (letters, digits, _ and -)"
    root, rest = segments[0], segments[1:]
    if root not in ROOTS:
        return f"unknown root {root!r}; {_PATH_HELP}"
    if root == "inputs" and not rest:
        return "name an input, e.g. inputs.topic"
    if root == "index" and rest:
        return "index is a number and has no keys"
    if root == "steps" and (len(rest) < 2 or rest[1] not in ("result", "status")):
        return "write steps.<step_id>.result[.<key>…] or steps.<step_id>.status"
    if root == "steps" and rest[1] == "status" and len(rest) > 2:
        return "a step's status is a string and has no keys"
    return None


def _excerpt(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def references(value: Any) -> list[Reference]:
    """Every placeholder in a JSON value (walks dicts, lists, strings). Raises InvalidInput on a
    syntax error or an unknown root."""
    if isinstance(value, str):
        return [ref for ref, _, _ in _spans(value)]
    if isinstance(value, Mapping):
        return [ref for item in value.values() for ref in references(item)]
    if isinstance(value, list | tuple):
        return [ref for item in value for ref in references(item)]
    return []


def list_source(text: str) -> Reference:
    """for_each: the text must be exactly one placeholder; InvalidInput otherwise."""
    match = _SOLE_PLACEHOLDER.fullmatch(text)
    if match is None or _OPEN in match.group(1):
        raise InvalidInput(
            f"write for_each as exactly one placeholder, e.g. '{{{{ inputs.files }}}}'; got {_excerpt(text)!r}"
        )
    return parse_path(match.group(1))


def _resolve(ref: Reference, scope: Mapping[str, Any]) -> tuple[Any, str | None]:
    """The value a reference reads and None, or None and what is missing. Reading never raises, so
    a condition can treat a missing value as null while rendering reports it."""
    if ref.root not in scope:
        return None, f"there is no {ref.root!r} here"
    current: Any = scope[ref.root]
    walked = ref.root
    keys = ref.path
    if ref.root == "steps":
        step = current.get(ref.path[0]) if isinstance(current, Mapping) else None
        field = ref.path[1]
        if not isinstance(step, Mapping) or field not in step:
            return None, f"step {ref.path[0]!r} has no {field} yet"
        current, walked, keys = step[field], f"steps.{ref.path[0]}.{field}", ref.path[2:]
    for key in keys:
        current, found = _step_into(current, key)
        if not found:
            return None, f"{walked} has no {'index' if key.isdigit() else 'key'} {key!r}"
        walked = f"{walked}.{key}"
    return current, None


def _step_into(container: Any, key: str) -> tuple[Any, bool]:
    if isinstance(container, Mapping):
        return (container[key], True) if key in container else (None, False)
    if isinstance(container, list | tuple) and key.isdigit() and int(key) < len(container):
        return container[int(key)], True
    return None, False


def lookup_path(value: Any, dotted: str | None) -> Any:
    """A dotted path inside one value (for consensus `compare`); None when any part is missing."""
    for key in dotted.split(".") if dotted else ():
        value, found = _step_into(value, key)
        if not found:
            return None
    return value


def render(value: Any, scope: Mapping[str, Any]) -> Any:
    """Substitute placeholders. A string that is exactly one placeholder (whitespace around it
    allowed) becomes the referenced value itself, any JSON type; placeholders embedded in longer text
    are stringified (strings as is, others as compact JSON). Dict keys are not templated. A missing
    key / index / a step without result raises InvalidInput naming the placeholder and what was missing."""
    if isinstance(value, str):
        return _render_text(value, scope)
    if isinstance(value, Mapping):
        return {key: render(item, scope) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [render(item, scope) for item in value]
    return value


def _render_text(text: str, scope: Mapping[str, Any]) -> Any:
    if _OPEN not in text:
        return text
    sole = _SOLE_PLACEHOLDER.fullmatch(text)
    if sole is not None and _OPEN not in sole.group(1):
        return _value_of(parse_path(sole.group(1)), scope)
    pieces: list[str] = []
    position = 0
    for ref, start, end in _spans(text):
        pieces.append(text[position:start])
        pieces.append(_as_text(_value_of(ref, scope)))
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def _spans(text: str) -> list[tuple[Reference, int, int]]:
    spans: list[tuple[Reference, int, int]] = []
    start = text.find(_OPEN)
    while start != -1:
        end = text.find(_CLOSE, start + len(_OPEN))
        if end == -1:
            raise InvalidInput(f"close the placeholder in {_excerpt(text)!r}: a '{{{{' has no matching '}}}}'")
        spans.append((parse_path(text[start + len(_OPEN) : end]), start, end + len(_CLOSE)))
        start = text.find(_OPEN, end + len(_CLOSE))
    return spans


def _value_of(ref: Reference, scope: Mapping[str, Any]) -> Any:
    value, missing = _resolve(ref, scope)
    if missing is not None:
        raise InvalidInput(f"placeholder {{{{ {ref.text} }}}} has nothing to read: {missing}")
    return value


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- conditions -----------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
    """,
    re.VERBOSE | re.DOTALL,
)
_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null"})
_CONSTANTS: dict[str, Any] = {"true": True, "false": False, "null": None}
_COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">=", "in", "not in"})
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


@dataclass(frozen=True)
class _Token:
    kind: str  # "number" | "string" | "word" | "op" | "end"
    text: str
    at: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise InvalidInput(
                f"fix the condition {_excerpt(text)!r}: unexpected {text[position]!r} at position {position}"
            )
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(_Token(kind, match.group(), position))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


@dataclass(frozen=True)
class _Const:
    value: Any


@dataclass(frozen=True)
class _Read:
    ref: Reference


@dataclass(frozen=True)
class _List:
    items: tuple[_Node, ...]


@dataclass(frozen=True)
class _Not:
    operand: _Node


@dataclass(frozen=True)
class _Logic:
    op: str  # "and" | "or"
    operands: tuple[_Node, ...]


@dataclass(frozen=True)
class _Compare:
    op: str
    left: _Node
    right: _Node


_Node = _Const | _Read | _List | _Not | _Logic | _Compare


class _Parser:
    """Recursive descent over: or → and ('or' and)*; and → not ('and' not)*; not → 'not' not | comparison;
    comparison → operand (op operand)?; operand → literal | list | path | '(' or ')'."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._tokens = _tokenize(text)
        self._at = 0
        self._depth = 0

    def parse(self) -> _Node:
        node = self._or()
        if self._peek().kind != "end":
            self._fail(f"unexpected {self._peek().text!r}")
        return node

    def _peek(self, ahead: int = 0) -> _Token:
        return self._tokens[min(self._at + ahead, len(self._tokens) - 1)]

    def _next(self) -> _Token:
        token = self._peek()
        self._at += 1
        return token

    def _is(self, text: str, ahead: int = 0) -> bool:
        token = self._peek(ahead)
        return token.kind in ("word", "op") and token.text == text

    def _fail(self, problem: str) -> NoReturn:
        where = self._peek().at
        raise InvalidInput(f"fix the condition {_excerpt(self._text)!r}: {problem} at position {where}")

    def _nested(self, parse: Callable[[], _Node]) -> _Node:
        self._depth += 1
        if self._depth > MAX_CONDITION_DEPTH:
            self._fail(f"nesting deeper than {MAX_CONDITION_DEPTH}")
        try:
            return parse()
        finally:
            self._depth -= 1

    def _or(self) -> _Node:
        return self._chain("or", self._and)

    def _and(self) -> _Node:
        return self._chain("and", self._not)

    def _chain(self, op: str, operand: Callable[[], _Node]) -> _Node:
        operands = [operand()]
        while self._is(op):
            self._next()
            operands.append(operand())
        return operands[0] if len(operands) == 1 else _Logic(op, tuple(operands))

    def _not(self) -> _Node:
        if self._is("not"):
            self._next()
            return _Not(self._nested(self._not))
        return self._comparison()

    def _comparison(self) -> _Node:
        left = self._operand()
        if self._is("not") and self._is("in", 1):
            self._at += 2
            return _Compare("not in", left, self._operand())
        token = self._peek()
        if token.text in _COMPARISONS and token.kind in ("op", "word"):
            self._next()
            return _Compare(token.text, left, self._operand())
        return left

    def _operand(self) -> _Node:
        token = self._peek()
        if token.kind == "number":
            self._next()
            return _Const(float(token.text) if "." in token.text else int(token.text))
        if token.kind == "string":
            self._next()
            return _Const(_unquote(token.text))
        if token.kind == "word":
            return self._word()
        if self._is("("):
            self._next()
            inner = self._nested(self._or)
            self._expect(")")
            return inner
        if self._is("["):
            return self._nested(self._list)
        self._fail("expected a value, a path or '('" if token.kind != "end" else "the condition ends too early")

    def _word(self) -> _Node:
        token = self._next()
        if token.text in _CONSTANTS:
            return _Const(_CONSTANTS[token.text])
        if token.text in _KEYWORDS:
            self._at -= 1
            self._fail(f"expected a value before {token.text!r}")
        problem = path_problem(token.text)
        if problem is not None:
            self._at -= 1
            self._fail(f"path {token.text!r}: {problem}")
        return _Read(parse_path(token.text))

    def _list(self) -> _Node:
        self._next()  # "["
        items: list[_Node] = []
        while not self._is("]"):
            items.append(self._operand())
            if not self._is(","):
                break
            self._next()
        self._expect("]")
        return _List(tuple(items))

    def _expect(self, text: str) -> None:
        if not self._is(text):
            self._fail(f"expected {text!r}")
        self._next()


def _unquote(quoted: str) -> str:
    body = quoted[1:-1]
    out: list[str] = []
    escaped = False
    for char in body:
        if escaped:
            out.append(_ESCAPES.get(char, char))
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


class Condition:
    """A parsed `when` test. Evaluation reads paths only; a missing path reads as null."""

    __slots__ = ("_tree", "text")

    def __init__(self, text: str, tree: _Node) -> None:
        self.text = text
        self._tree = tree

    @classmethod
    def parse(cls, text: str) -> Condition:
        """InvalidInput on a syntax error; the text may be a bare expression or wrapped in one {{ }}."""
        if len(text) > MAX_CONDITION_CHARS:
            raise InvalidInput(f"shorten the condition: it has {len(text)} characters, at most {MAX_CONDITION_CHARS}")
        sole = _SOLE_PLACEHOLDER.fullmatch(text)
        body = sole.group(1) if sole is not None else text
        if _OPEN in body or _CLOSE in body:
            raise InvalidInput(
                f"fix the condition {_excerpt(text)!r}: write it bare, or wrapped in exactly one {{{{ }}}}"
            )
        if not body.strip():
            raise InvalidInput("write a condition, e.g. steps.review.result.score >= 3; this one is empty")
        return cls(text, _Parser(body).parse())

    @property
    def references(self) -> list[Reference]:
        return _reads(self._tree)

    def evaluate(self, scope: Mapping[str, Any]) -> bool:
        return bool(_evaluate(self._tree, scope))

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"


def _reads(node: _Node) -> list[Reference]:
    if isinstance(node, _Read):
        return [node.ref]
    if isinstance(node, _List):
        return [ref for item in node.items for ref in _reads(item)]
    if isinstance(node, _Not):
        return _reads(node.operand)
    if isinstance(node, _Logic):
        return [ref for operand in node.operands for ref in _reads(operand)]
    if isinstance(node, _Compare):
        return _reads(node.left) + _reads(node.right)
    return []


def _evaluate(node: _Node, scope: Mapping[str, Any]) -> Any:
    if isinstance(node, _Const):
        return node.value
    if isinstance(node, _Read):
        value, missing = _resolve(node.ref, scope)
        return None if missing is not None else value
    if isinstance(node, _List):
        return [_evaluate(item, scope) for item in node.items]
    if isinstance(node, _Not):
        return not _evaluate(node.operand, scope)
    if isinstance(node, _Logic):
        test = any if node.op == "or" else all
        return test(_evaluate(operand, scope) for operand in node.operands)
    return _compare(node.op, _evaluate(node.left, scope), _evaluate(node.right, scope))


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "==":
        return json_equal(left, right)
    if op == "!=":
        return not json_equal(left, right)
    if op in ("in", "not in"):
        found = _contains(right, left)
        if found is None:  # incomparable: neither in nor not in holds
            return False
        return found if op == "in" else not found
    return _order(op, left, right)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def json_equal(left: Any, right: Any) -> bool:
    """Equality as JSON sees it: true is not 1, 1 is 1.0, lists and objects compare item by item."""
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    if isinstance(left, str) and isinstance(right, str):
        return bool(left == right)
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(json_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    return type(left) is type(right) and bool(left == right)  # booleans and null: only themselves


def _contains(container: Any, item: Any) -> bool | None:
    if isinstance(container, list | tuple):
        return any(json_equal(item, element) for element in container)
    if isinstance(container, str) and isinstance(item, str):
        return item in container
    if isinstance(container, Mapping) and isinstance(item, str):
        return item in container
    return None


def _order(op: str, left: Any, right: Any) -> bool:
    comparable = (_is_number(left) and _is_number(right)) or (isinstance(left, str) and isinstance(right, str))
    if not comparable:
        return False
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)
