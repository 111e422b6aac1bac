"""The workflow template and condition language: placeholders render, conditions evaluate, and
every malformed path or expression is refused with a message naming it."""

from __future__ import annotations

from typing import Any

import pytest

from server.domain.workflow_template import (
    MAX_CONDITION_CHARS,
    MAX_CONDITION_DEPTH,
    Condition,
    Reference,
    list_source,
    references,
    render,
)
from server.errors import InvalidInput

SCOPE: dict[str, Any] = {
    "inputs": {"topic": "tides", "n": 3, "files": ["a.py", "b.py"], "opts": {"deep": True}, "none": None},
    "steps": {
        "research": {"status": "succeeded", "result": {"summary": "ok", "score": 4, "items": [{"k": 1}, {"k": 2}]}},
        "split-2": {"status": "succeeded", "result": ["x", "y"]},
        "pending": {"status": "running"},
    },
    "item": {"name": "a.py", "size": 10},
    "index": 1,
}


def test_references_walk_values_in_order_but_not_keys():
    value = {
        "{{ inputs.ignored }}": "{{ inputs.topic }}",
        "list": [1, None, "x {{ steps.research.result.items.0.k }} y {{ index }}"],
        "deep": {"deeper": ["{{item.name}}", "{{ steps.split-2.status }}"]},
    }
    refs = references(value)
    assert [r.text for r in refs] == [
        "inputs.topic",
        "steps.research.result.items.0.k",
        "index",
        "item.name",
        "steps.split-2.status",
    ]
    assert refs[1] == Reference("steps", ("research", "result", "items", "0", "k"), "steps.research.result.items.0.k")
    assert refs[1].step_id == "research" and refs[4].step_id == "split-2"
    assert refs[0].step_id is None and refs[0].path == ("topic",)
    assert refs[2] == Reference("index", (), "index")


def test_references_of_plain_values_are_empty():
    assert references({"a": 1, "b": [True, None, 2.5, "no braces } here"]}) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ secrets.key }}", "unknown root 'secrets'"),
        ("{{ }}", "fix the placeholder {{  }}"),
        ("{{ inputs }}", "name an input"),
        ("{{ inputs..topic }}", "fix the placeholder {{ inputs..topic }}"),
        ("{{ inputs.a b }}", "fix the placeholder {{ inputs.a b }}"),
        ("{{ steps.research }}", "steps.<step_id>.result"),
        ("{{ steps.research.output }}", "steps.<step_id>.result"),
        ("{{ steps.research.status.x }}", "status is a string"),
        ("{{ index.0 }}", "index is a number"),
        ("text {{ inputs.topic", "has no matching '}}'"),
        ("{{ inputs.topic }} and {{ inputs.n", "has no matching '}}'"),
    ],
)
def test_malformed_placeholders_are_refused(text: str, expected: str):
    with pytest.raises(InvalidInput) as caught:
        references({"payload": [text]})
    assert expected in caught.value.message


def test_a_sole_placeholder_keeps_the_value_type():
    assert render("{{ inputs.n }}", SCOPE) == 3
    assert render("  {{inputs.files}}\n", SCOPE) == ["a.py", "b.py"]
    assert render("{{ inputs.opts }}", SCOPE) == {"deep": True}
    assert render("{{ inputs.none }}", SCOPE) is None
    assert render("{{ steps.research.result.items.1 }}", SCOPE) == {"k": 2}
    assert render("{{ steps.split-2.result.0 }}", SCOPE) == "x"
    assert render("{{ steps.pending.status }}", SCOPE) == "running"
    assert render("{{ item.size }}", SCOPE) == 10
    assert render("{{ index }}", SCOPE) == 1


def test_embedded_placeholders_are_stringified():
    text = "{{ inputs.topic }}/{{ inputs.n }}/{{ inputs.files }}/{{ inputs.opts }}/{{ inputs.none }}/{{ item.name }}"
    assert render(text, SCOPE) == 'tides/3/["a.py","b.py"]/{"deep":true}/null/a.py'


def test_render_walks_structures_and_leaves_keys_and_other_values_alone():
    payload = {"{{ inputs.topic }}": ["{{ index }}", {"n": "{{ inputs.n }}"}], "k": 7, "b": False, "s": "plain"}
    assert render(payload, SCOPE) == {"{{ inputs.topic }}": [1, {"n": 3}], "k": 7, "b": False, "s": "plain"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ inputs.missing }}", "{{ inputs.missing }} has nothing to read: inputs has no key 'missing'"),
        ("x {{ inputs.opts.shallow }}", "{{ inputs.opts.shallow }} has nothing to read: inputs.opts has no key"),
        ("{{ inputs.files.5 }}", "inputs.files has no index '5'"),
        ("{{ inputs.files.name }}", "inputs.files has no key 'name'"),
        ("{{ steps.research.result.items.0.v }}", "steps.research.result.items.0 has no key 'v'"),
        ("{{ steps.pending.result }}", "step 'pending' has no result yet"),
        ("{{ steps.ghost.status }}", "step 'ghost' has no status yet"),
    ],
)
def test_render_names_the_placeholder_and_what_is_missing(text: str, expected: str):
    with pytest.raises(InvalidInput) as caught:
        render({"p": text}, SCOPE)
    assert expected in caught.value.message


def test_render_without_item_in_scope_is_refused():
    with pytest.raises(InvalidInput, match="there is no 'item' here"):
        render("{{ item }}", {"inputs": {}, "steps": {}})


def test_list_source_is_exactly_one_placeholder():
    assert list_source("{{ inputs.files }}") == Reference("inputs", ("files",), "inputs.files")
    assert list_source("  {{steps.split-2.result}} ").step_id == "split-2"
    for bad in ["inputs.files", "x {{ inputs.files }}", "{{ inputs.a }}{{ inputs.b }}", "{{ inputs.files"]:
        with pytest.raises(InvalidInput, match="exactly one placeholder"):
            list_source(bad)
    with pytest.raises(InvalidInput, match="unknown root"):
        list_source("{{ files }}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps.research.result.score >= 3", True),
        ("steps.research.result.score > 4", False),
        ("steps.research.result.score <= 4.0", True),
        ("steps.research.result.score < -1", False),
        ("inputs.topic == 'tides'", True),
        ('inputs.topic != "tides"', False),
        ("steps.research.status == 'succeeded' and index == 1", True),
        ("false or not inputs.opts.deep", False),
        ("not false and false", False),  # not binds tighter than and
        ("true or false and false", True),  # and binds tighter than or
        ("(true or false) and false", False),
        ("'a.py' in inputs.files", True),
        ("'c.py' not in inputs.files", True),
        ("'ide' in inputs.topic", True),
        ("'deep' in inputs.opts", True),
        ("inputs.n in [1, 2.5, 3]", True),
        ("[1, 'a'] == [1, 'a']", True),
        ("item.name in ['a.py', 'b.py']", True),
        ("steps.research.result.items.1.k == 2", True),
        ("steps.research.result.missing == null", True),
        ("steps.ghost.result.x == null and steps.ghost.status == null", True),
        ("steps.research.result.missing", False),
        ("inputs.files", True),
        ("steps.split-2.result.1 == 'y'", True),
        ("{{ inputs.n == 3 }}", True),
        ("1 == 1.0", True),
        ("true == 1", False),
        ("0 == false", False),
        ("'it\\'s' == \"it's\"", True),
        ("'a' < 'b'", True),
    ],
)
def test_conditions_evaluate(text: str, expected: bool):
    assert Condition.parse(text).evaluate(SCOPE) is expected


@pytest.mark.parametrize(
    "text",
    ["'a' < 3", "null >= 0", "true > false", "[1] < [2]", "'a' in 3", "'a' not in 3", "1 in 'abc'", "1 not in null"],
)
def test_incomparable_types_are_false_not_errors(text: str):
    assert Condition.parse(text).evaluate(SCOPE) is False


def test_condition_references_in_order():
    condition = Condition.parse("steps.a.result.x > 1 or (inputs.t in [item.k, 2] and not steps.b-1.status == 'ok')")
    assert [r.text for r in condition.references] == [
        "steps.a.result.x",
        "inputs.t",
        "item.k",
        "steps.b-1.status",
    ]
    assert condition.references[3].step_id == "b-1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "this one is empty"),
        ("{{ }}", "this one is empty"),
        ("inputs.n ==", "ends too early"),
        ("inputs.n == 1 1", "unexpected '1'"),
        ("1 < 2 < 3", "unexpected '<'"),
        ("(true", "expected ')'"),
        ("[1, 2", "expected ']'"),
        ("'open", 'unexpected "\'"'),
        ("inputs.n = 1", "unexpected '='"),
        ("os.system('x')", "path 'os.system': unknown root 'os'"),
        ("__import__('os')", "unknown root '__import__'"),
        ("steps.a.output == 1", "steps.<step_id>.result"),
        ("and true", "expected a value before 'and'"),
        ("inputs.n in", "ends too early"),
        ("{{ a }} and {{ b }}", "wrapped in exactly one {{ }}"),
        ("1 + 2", "unexpected '+'"),
    ],
)
def test_condition_syntax_errors_are_invalid_input(text: str, expected: str):
    with pytest.raises(InvalidInput) as caught:
        Condition.parse(text)
    assert expected in caught.value.message


def test_condition_size_and_depth_are_bounded():
    long = "true or " * 300 + "true"
    assert len(long) > MAX_CONDITION_CHARS
    with pytest.raises(InvalidInput, match="shorten the condition"):
        Condition.parse(long)
    assert Condition.parse("(" * MAX_CONDITION_DEPTH + "true" + ")" * MAX_CONDITION_DEPTH).evaluate({})
    for deep in [
        "(" * (MAX_CONDITION_DEPTH + 1) + "true" + ")" * (MAX_CONDITION_DEPTH + 1),
        "not " * (MAX_CONDITION_DEPTH + 1) + "true",
        "[" * (MAX_CONDITION_DEPTH + 1) + "]" * (MAX_CONDITION_DEPTH + 1) + " == 1",
    ]:
        with pytest.raises(InvalidInput, match="nesting deeper than"):
            Condition.parse(deep)
