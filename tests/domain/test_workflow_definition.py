"""Workflow definitions are checked whole before anything runs, each problem named by step and
field; the pure helpers (inputs, order, critical path, consensus) follow their stated rules."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.domain.task_spec import TaskSpec
from server.domain.workflow_definition import (
    MAX_FAN_OUT,
    MAX_STEPS,
    Combine,
    ConsensusOutcome,
    ConsensusSpec,
    InputType,
    OnFailure,
    Vote,
    WorkflowDefinition,
    bind_inputs,
    combine_votes,
    critical_path,
    fan_out_items,
    parse_definition,
    task_spec_for,
    upstream,
)
from server.errors import InvalidInput

EXAMPLE = """
name: review-change
description: optional text
version: 1.2.0
inputs: {topic: string, files: {type: list, default: [], description: "files to lint"}}
on_failure: fail_fast
steps:
  - id: research
    task: {type: research, payload: {topic: "{{ inputs.topic }}"}, capabilities: [research]}
  - id: review
    depends_on: [research]
    when: "steps.research.result.score >= 3"
    task: {type: review, payload: {text: "{{ steps.research.result.summary }}"}}
  - id: per_file
    depends_on: [research]
    for_each: "{{ inputs.files }}"
    task: {type: lint, payload: {file: "{{ item }}", n: "{{ index }}"}}
  - id: vote
    consensus: {agents: 3, combine: majority}
    task: {type: validate, payload: {claim: "x"}}
    on_failure: continue
"""


def step(step_id: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": step_id, "task": {"type": "work", "payload": None}}
    body.update(fields)
    return body


def workflow(*steps: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"name": "wf", "inputs": {"topic": "string", "files": "list"}, "steps": list(steps), **fields}


def refused(source: Any) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_definition(source)
    return caught.value.message


def test_the_example_parses_from_yaml():
    definition = parse_definition(EXAMPLE)
    assert definition.name == "review-change" and definition.version == "1.2.0"
    assert [s.id for s in definition.steps] == ["research", "review", "per_file", "vote"]
    assert definition.inputs["topic"].type is InputType.STRING and definition.inputs["topic"].required
    assert definition.inputs["files"].default == [] and not definition.inputs["files"].required
    research, review, per_file, vote = definition.steps
    assert research.task == TaskSpec(
        type="research", payload={"topic": "{{ inputs.topic }}"}, capabilities=("research",)
    )
    assert review.condition is not None and review.condition.evaluate(
        {"steps": {"research": {"status": "succeeded", "result": {"score": 3}}}}
    )
    assert per_file.source is not None and per_file.source.text == "inputs.files"
    assert vote.consensus == ConsensusSpec(agents=3, combine=Combine.MAJORITY)
    assert definition.on_failure_of(research) is OnFailure.FAIL_FAST
    assert definition.on_failure_of(vote) is OnFailure.CONTINUE


def test_json_text_and_dicts_parse_the_same():
    definition = parse_definition(EXAMPLE)
    as_json = json.dumps(definition.model_dump(mode="json", exclude_unset=True))
    assert parse_definition(as_json) == definition
    assert parse_definition(definition.model_dump(mode="json")) == definition


def test_yaml_dates_stay_strings_and_aliases_are_refused():
    text = (
        "name: wf\nsteps:\n- id: a\n  task: {type: t, payload: {day: 2026-01-02}, not_before: 2026-01-01T00:00:00Z}\n"
    )
    definition = parse_definition(text)
    assert definition.steps[0].task.payload == {"day": "2026-01-02"}
    assert definition.steps[0].task.not_before is not None
    bomb = "name: wf\nx: &a [1, 1]\nsteps: [{id: a, task: {type: t, payload: [*a, *a]}}]\n"
    assert "aliases (*name) are not allowed" in refused(bomb)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("name: [", "not valid YAML or JSON"),
        ("- 1\n- 2\n", "as a mapping with name and steps"),
        ("{name: wf, steps: []}", "add at least one step"),
        ('{"name": "wf", "steps": [{"id": "a", "task": {"type": "t"}}], "extra": 1}', "field 'extra'"),
        ("{name: 'has space', steps: [{id: a, task: {type: t}}]}", "field 'name'"),
    ],
)
def test_unreadable_sources_are_refused(source: str, expected: str):
    assert expected in refused(source)


@pytest.mark.parametrize("version", ["1.2.0", "0.0.1", "10.20.30", "1.0.0-alpha.1", "1.0.0+build.5", "1.0.0-rc.1+b"])
def test_semantic_versions_are_accepted(version: str):
    assert parse_definition(workflow(step("a"), version=version)).version == version


@pytest.mark.parametrize("version", ["1.2", "v1.2.0", "01.2.0", "1.2.0-", "1.2.0+", "1.2.0-01", "latest"])
def test_other_versions_are_refused(version: str):
    assert "field 'version': write version as MAJOR.MINOR.PATCH" in refused(workflow(step("a"), version=version))


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([step("a"), step("b"), step("a")], "give each step its own id: 'a' is used by steps[0] and steps[2]"),
        ([step("a", depends_on=["zz"])], "step 'a', field 'depends_on': fix 'zz', there is no such step"),
        ([step("a", depends_on=["a"])], "step 'a', field 'depends_on': remove 'a', a step cannot depend on itself"),
        (
            [
                step("x"),
                step("a", depends_on=["x", "c"]),
                step("b", depends_on=["a"]),
                step("c", depends_on=["b"]),
            ],
            "break the dependency cycle: a -> c -> b -> a",
        ),
        ([step("b", depends_on=["a"]), step("a", depends_on=["b"])], "cycle: b -> a -> b"),
        (
            [step("a", task={"type": "t", "payload": {"x": ["{{ inputs.nope }}"]}})],
            "step 'a', field 'task.payload': declare the input 'nope' under inputs",
        ),
        (
            [step("a"), step("b", task={"type": "t", "payload": "{{ steps.a.result }}"})],
            "step 'b', field 'task.payload': add 'a' to depends_on to read {{ steps.a.result }}",
        ),
        (
            [step("a"), step("b", depends_on=["a"]), step("c", when="steps.b.status == 'ok' and steps.a.result")],
            "step 'c', field 'when': add 'b' to depends_on",
        ),
        (
            [step("a", task={"type": "t", "payload": "{{ steps.a.result }}"})],
            "step 'a', field 'task.payload': add 'a' to depends_on",
        ),
        (
            [step("a", when="steps.ghost.status == 'succeeded'")],
            "step 'a', field 'when': {{ steps.ghost.status }} reads step 'ghost', and there is no such step",
        ),
        (
            [step("a"), step("b", for_each="{{ steps.a.result.items }}")],
            "step 'b', field 'for_each': add 'a' to depends_on",
        ),
        (
            [step("a", task={"type": "t", "payload": {"f": "{{ item }}"}})],
            "step 'a', field 'task.payload': add for_each to use {{ item }}",
        ),
        ([step("a", when="index > 0")], "step 'a', field 'when': add for_each to use {{ index }}"),
        (
            [step("a", for_each="{{ inputs.files }}", when="item == 'x'")],
            "step 'a', field 'when': {{ item }} is usable only in task.payload",
        ),
        ([step("a", for_each="inputs.files")], "step 'a', field 'for_each': write for_each as exactly one placeholder"),
        (
            [step("a", for_each="{{ inputs.files }} {{ inputs.topic }}")],
            "step 'a', field 'for_each': write for_each as exactly one placeholder",
        ),
        (
            [step("a", for_each="{{ item }}")],
            "step 'a', field 'for_each': read a list from inputs or steps.<id>.result, not item",
        ),
        (
            [step("a"), step("b", depends_on=["a"], for_each="{{ steps.a.status }}")],
            "step 'b', field 'for_each': read a list from inputs or steps.<id>.result",
        ),
        (
            [step("a", for_each="{{ inputs.files }}", consensus={"agents": 3})],
            "step 'a': use for_each or consensus, not both",
        ),
        ([step("a", consensus={"agents": 1})], "step 'a', field 'consensus.agents': Input should be greater than"),
        ([step("a", consensus={"agents": 10})], "step 'a', field 'consensus.agents': Input should be less than"),
        (
            [step("a", consensus={"agents": 3, "combine": "first_k"})],
            "step 'a', field 'consensus': first_k needs k between 1 and agents (3)",
        ),
        (
            [step("a", consensus={"agents": 3, "combine": "first_k", "k": 4})],
            "step 'a', field 'consensus': first_k needs k between 1 and agents (3)",
        ),
        (
            [step("a", consensus={"agents": 3, "combine": "first_k", "k": 0})],
            "step 'a', field 'consensus': first_k needs k between 1 and agents (3)",
        ),
        (
            [step("a", consensus={"agents": 3, "combine": "unanimous", "k": 2})],
            "step 'a', field 'consensus': k applies only to combine first_k, not unanimous",
        ),
        ([step("a", consensus={"agents": 3, "compare": "a..b"})], "step 'a', field 'consensus.compare'"),
        ([step("a", task={"type": "t", "lease_s": 1})], "step 'a', field 'task.lease_s': Input should be greater"),
        ([step("a", task={"type": "no spaces"})], "step 'a', field 'task.type': String should match pattern"),
        (
            [step("a", task={"type": "t", "backoff_base_s": 10, "backoff_cap_s": 1})],
            "step 'a', field 'task': backoff_cap_s must be at least backoff_base_s",
        ),
        (
            [step("a", task={"type": "t", "pinned_agent_id": "agent-1"})],
            "step 'a', field 'task': pinned_agent_id is not allowed in workflows",
        ),
        ([step("a", task={"type": "t", "colour": "red"})], "step 'a', field 'task.colour': Extra inputs"),
        ([step("a", when="steps.a.result.x >")], "step 'a', field 'when': fix the condition"),
        (
            [step("a", task={"type": "t", "payload": {"k": "{{ inputs.topic"}})],
            "step 'a', field 'task.payload': close the placeholder",
        ),
        (
            [step("a", task={"type": "t", "payload": "{{ secrets.token }}"})],
            "step 'a', field 'task.payload': fix the placeholder {{ secrets.token }}: unknown root 'secrets'",
        ),
        ([step("ok"), step("bad id!")], "step 'bad id!', field 'id': String should match pattern"),
        ([step("a", retries=3)], "step 'a', field 'retries': Extra inputs are not permitted"),
        ([step("a", on_failure="retry")], "step 'a', field 'on_failure'"),
    ],
)
def test_each_problem_names_the_step_and_field(steps: list[dict[str, Any]], expected: str):
    message = refused(workflow(*steps))
    assert message.startswith("fix workflow 'wf': ")
    assert expected in message
    assert "Tuple should have" not in message


def test_too_many_steps_are_refused_before_validation():
    chain = [step(f"s{i}", depends_on=[f"s{i - 1}"] if i else []) for i in range(MAX_STEPS)]
    assert len(parse_definition(workflow(*chain)).steps) == MAX_STEPS
    message = refused(workflow(*chain, step("one-more")))
    assert f"it has {MAX_STEPS + 1} steps, at most {MAX_STEPS}" in message


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "integer", "default": True}, "field 'inputs.x': the default true is not of type integer"),
        ({"type": "integer", "default": 1.5}, "the default 1.5 is not of type integer"),
        ({"type": "number", "default": "1"}, "the default '1' is not of type number"),
        ({"type": "string", "default": None}, "the default null is not of type string"),
        ({"type": "list", "default": {}}, "the default {} is not of type list"),
        ({"type": "object", "default": []}, "the default [] is not of type object"),
        ({"type": "boolean", "default": 0}, "the default 0 is not of type boolean"),
        ("float", "field 'inputs.x.type'"),
        ({"type": "string", "required": True}, "field 'inputs.x.required'"),
    ],
)
def test_input_defaults_must_match_their_type(spec: Any, expected: str):
    assert expected in refused({"name": "wf", "inputs": {"x": spec}, "steps": [step("a")]})


def test_input_names_are_identifiers():
    assert "field 'inputs.bad-name.[key]': String should match pattern" in refused(
        {"name": "wf", "inputs": {"bad-name": "string"}, "steps": [step("a")]}
    )


def test_every_input_type_accepts_a_fitting_default():
    inputs = {
        "s": {"type": "string", "default": ""},
        "n": {"type": "number", "default": 2},
        "f": {"type": "number", "default": 2.5},
        "i": {"type": "integer", "default": 0},
        "b": {"type": "boolean", "default": False},
        "l": {"type": "list", "default": [1]},
        "o": {"type": "object", "default": {"k": 1}},
        "a": {"type": "any", "default": None},
    }
    definition = parse_definition({"name": "wf", "inputs": inputs, "steps": [step("a")]})
    assert bind_inputs(definition, None) == {
        "s": "",
        "n": 2,
        "f": 2.5,
        "i": 0,
        "b": False,
        "l": [1],
        "o": {"k": 1},
        "a": None,
    }


def test_bind_inputs_fills_defaults_without_sharing_them():
    definition = parse_definition(EXAMPLE)
    first = bind_inputs(definition, {"topic": "tides"})
    assert first == {"topic": "tides", "files": []}
    first["files"].append("mutated")
    assert bind_inputs(definition, {"topic": "x"})["files"] == []
    assert definition.inputs["files"].default == []
    assert bind_inputs(definition, {"topic": "x", "files": ["a"]}) == {"topic": "x", "files": ["a"]}


def test_bind_inputs_refuses_unknown_and_missing_inputs():
    definition = parse_definition(EXAMPLE)
    with pytest.raises(InvalidInput) as caught:
        bind_inputs(definition, {"topic": "x", "tpoic": "y", "zeta": 1})
    assert caught.value.message == "remove unknown inputs tpoic, zeta; workflow 'review-change' takes: topic, files"
    with pytest.raises(InvalidInput) as caught:
        bind_inputs(definition, {})
    assert caught.value.message == "give the required inputs of workflow 'review-change': topic (string)"


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("integer", [0, -3, 10**12], [True, 1.0, "1", None]),
        ("number", [1, 1.5, -0.0], [False, "1.5", None]),
        ("boolean", [True, False], [0, 1, "true", None]),
        ("string", ["", "x"], [1, None, ["x"]]),
        ("list", [[], [1, "a"]], [{}, "ab", None]),
        ("object", [{}, {"a": 1}], [[], "a", None]),
        ("any", [None, 1, "x", [], {}], []),
    ],
)
def test_bind_inputs_checks_types(kind: str, good: list[Any], bad: list[Any]):
    definition = parse_definition({"name": "wf", "inputs": {"v": kind}, "steps": [step("a")]})
    for value in good:
        assert bind_inputs(definition, {"v": value}) == {"v": value}
    for value in bad:
        with pytest.raises(InvalidInput, match=f"give input 'v' as {kind}; got"):
            bind_inputs(definition, {"v": value})


def test_task_spec_for_puts_the_rendered_payload_in_the_static_task():
    definition = parse_definition(
        workflow(step("a", task={"type": "t", "payload": "{{ inputs.topic }}", "lease_s": 30, "priority": "high"}))
    )
    spec = task_spec_for(definition.steps[0], {"topic": "tides"})
    assert spec == TaskSpec(type="t", payload={"topic": "tides"}, lease_s=30, priority="high")
    assert definition.steps[0].task.payload == "{{ inputs.topic }}"  # the definition keeps its template


def test_task_spec_for_names_the_step_when_the_spec_is_invalid():
    definition = parse_definition(workflow(step("a")))
    broken = definition.steps[0].model_copy(update={"task": definition.steps[0].task.model_copy(update={"lease_s": 1})})
    with pytest.raises(InvalidInput) as caught:
        task_spec_for(broken, None)
    assert caught.value.message.startswith("fix step 'a': field 'task.lease_s': Input should be greater")


def test_fan_out_items_reads_a_bounded_list():
    definition = parse_definition(EXAMPLE)
    per_file = definition.step("per_file")
    assert fan_out_items(per_file, {"inputs": {"files": ["a", "b"]}}) == ["a", "b"]
    with pytest.raises(InvalidInput, match="make for_each of step 'per_file' read a list; {{ inputs.files }} is 'a'"):
        fan_out_items(per_file, {"inputs": {"files": "a"}})
    assert len(fan_out_items(per_file, {"inputs": {"files": [0] * MAX_FAN_OUT}})) == MAX_FAN_OUT
    with pytest.raises(InvalidInput, match=f"at most {MAX_FAN_OUT} items; it got {MAX_FAN_OUT + 1}"):
        fan_out_items(per_file, {"inputs": {"files": [0] * (MAX_FAN_OUT + 1)}})
    with pytest.raises(InvalidInput, match="step 'research' has no for_each"):
        fan_out_items(definition.step("research"), {})
    with pytest.raises(InvalidInput, match="it has no step 'nope'"):
        definition.step("nope")


def diamond() -> WorkflowDefinition:
    return parse_definition(
        workflow(
            step("late"),
            step("d", depends_on=["b", "c"]),
            step("b", depends_on=["a"]),
            step("c", depends_on=["a"]),
            step("a"),
            step("e", depends_on=["d", "late"]),
        )
    )


def test_upstream_is_transitive():
    assert upstream(diamond()) == {
        "late": frozenset(),
        "a": frozenset(),
        "b": frozenset({"a"}),
        "c": frozenset({"a"}),
        "d": frozenset({"a", "b", "c"}),
        "e": frozenset({"a", "b", "c", "d", "late"}),
    }


def test_a_step_may_read_any_transitive_upstream():
    definition = parse_definition(
        workflow(step("a"), step("b", depends_on=["a"]), step("c", depends_on=["b"], when="steps.a.result.ok"))
    )
    assert upstream(definition)["c"] == {"a", "b"}


def test_critical_path_takes_the_longest_chain():
    depends_on = {"a": [], "b": ["a"], "c": ["a"], "d": ["b", "c"], "x": []}
    assert critical_path(depends_on, {"a": 1, "b": 5, "c": 2, "d": 1, "x": 6.5}) == (["a", "b", "d"], 7.0)
    assert critical_path(depends_on, {"a": 1, "b": 1, "c": 2, "d": 1, "x": 3.5}) == (["a", "c", "d"], 4.0)
    assert critical_path(depends_on, {"x": 9}) == (["x"], 9.0)
    assert critical_path(depends_on, {"c": 1.5}) == (["a", "c", "d"], 1.5)  # missing steps count 0
    assert critical_path(depends_on, {"b": 1, "c": 1}) == (["a", "b", "d"], 1.0)  # ties: listed first
    assert critical_path({}, {}) == ([], 0.0)
    assert critical_path({"b": ["a"]}, {"a": 2, "b": 3}) == (["a", "b"], 5.0)  # a dependency need not be a key
    with pytest.raises(InvalidInput, match="cycle: a -> b -> a"):
        critical_path({"a": ["b"], "b": ["a"]}, {})


def vote(agents: int, combine: str = "majority", **fields: Any) -> ConsensusSpec:
    return ConsensusSpec(agents=agents, combine=Combine(combine), **fields)


def test_majority_decides_as_soon_as_one_value_has_more_than_half():
    spec = vote(5)
    assert combine_votes(spec, []) == ConsensusOutcome("pending", None, [], 0, False, None)
    assert combine_votes(spec, ["a", "b", "a"]).state == "pending"
    outcome = combine_votes(spec, ["b", "a", "a", "a"])
    assert outcome == ConsensusOutcome("decided", "a", [Vote("a", 3), Vote("b", 1)], 4, True, None)


def test_majority_fails_when_it_became_impossible():
    three = vote(3)
    assert combine_votes(three, ["yes", "no"]).state == "pending"
    outcome = combine_votes(three, ["yes", "no", "maybe"])
    assert outcome.state == "failed" and outcome.value is None and outcome.disagreement
    assert outcome.reason == "no majority: 1 'yes', 1 'no', 1 'maybe' of 3"
    assert combine_votes(vote(4), ["a", "a", "b", "b"]).reason == "no majority: 2 'a', 2 'b' of 4"
    assert combine_votes(vote(5), ["a", "b", "c", "d"]).state == "failed"  # 1 + 1 outstanding < 3
    assert combine_votes(vote(5), ["a", "b", "c"]).state == "pending"  # a can still reach 3


def test_unanimous_decides_when_all_agree_and_fails_at_the_first_disagreement():
    spec = vote(3, "unanimous")
    assert combine_votes(spec, [{"v": 1}, {"v": 1}]).state == "pending"
    decided = combine_votes(spec, [{"v": 1}, {"v": 1}, {"v": 1}])
    assert decided.state == "decided" and decided.value == {"v": 1} and not decided.disagreement
    failed = combine_votes(spec, [{"v": 1}, {"v": 2}])
    assert failed.state == "failed" and failed.reason == 'not unanimous: 1 {"v":1}, 1 {"v":2} of 3'


def test_first_k_decides_on_k_agreeing_results():
    spec = vote(5, "first_k", k=2)
    assert combine_votes(spec, ["a", "b"]).state == "pending"
    outcome = combine_votes(spec, ["a", "b", "b"])
    assert outcome.state == "decided" and outcome.value == "b" and outcome.votes == [Vote("b", 2), Vote("a", 1)]
    assert combine_votes(vote(3, "first_k", k=1), ["z"]).value == "z"
    failed = combine_votes(vote(3, "first_k", k=3), ["a", "b"])
    assert failed.state == "failed" and failed.reason == "no 3 agreeing results: 1 'a', 1 'b' of 3"


def test_compare_path_picks_the_first_full_result_of_the_winner():
    spec = vote(3, compare="verdict.ok")
    results = [
        {"verdict": {"ok": False}, "by": 1},
        {"verdict": {"ok": True}, "by": 2},
        {"verdict": {"ok": True}, "by": 3},
    ]
    outcome = combine_votes(spec, results)
    assert outcome.state == "decided" and outcome.value == {"verdict": {"ok": True}, "by": 2}
    assert outcome.votes == [Vote(True, 2), Vote(False, 1)] and outcome.disagreement


def test_whole_results_compare_by_canonical_json():
    outcome = combine_votes(vote(3), [{"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}])
    assert outcome.state == "decided" and outcome.votes == [Vote({"a": 1, "b": [1, 2]}, 2)]
    assert not outcome.disagreement
    missing = combine_votes(vote(3, compare="x"), [{"y": 1}, {"z": 2}])  # a missing compare path votes null
    assert missing.state == "decided" and missing.value == {"y": 1} and missing.votes == [Vote(None, 2)]


def test_lost_agents_make_a_vote_fail_early():
    assert combine_votes(vote(3), ["a"], lost=1).state == "pending"
    failed = combine_votes(vote(3), ["a", "b"], lost=1)
    assert failed.state == "failed" and failed.reason == "no majority: 1 'a', 1 'b' of 3 (1 lost)"
    assert combine_votes(vote(3, "unanimous"), ["a"], lost=1).state == "failed"
    with pytest.raises(InvalidInput, match="at most 3 results"):
        combine_votes(vote(3), ["a", "a", "a", "a"])
