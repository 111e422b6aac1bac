"""Workflow definitions: the steps, their dependencies and inputs, checked whole before anything runs,
plus the pure helpers a runner needs (input binding, ordering, critical path, consensus votes).

Only `task.payload`, `for_each` and `when` may hold templates; everything else in a step's task is
a TaskSpec checked as written, so a definition that parses can only fail later on what its
templates read at run time.
"""

from __future__ import annotations

import copy
import heapq
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from server.domain.task_spec import TASK_TYPE_PATTERN, TaskSpec
from server.domain.workflow_template import (
    Condition,
    Reference,
    list_source,
    lookup_path,
    references,
    render,
)
from server.errors import InvalidInput

MAX_STEPS = 200
MAX_FAN_OUT = 1000
MAX_INPUTS = 64
MAX_SOURCE_CHARS = 1_000_000
STEP_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
INPUT_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
COMPARE_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+){0,31}$"
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(-(0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(\.(0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*)?"
    r"(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?"
)


class InputType(StrEnum):
    STRING = "string"
    NUMBER = "number"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    LIST = "list"
    OBJECT = "object"
    ANY = "any"


class OnFailure(StrEnum):
    FAIL_FAST = "fail_fast"  # a failed step fails the workflow; steps not yet started are skipped
    CONTINUE = "continue"  # a failed step only skips the steps that depend on it


class Combine(StrEnum):
    MAJORITY = "majority"
    UNANIMOUS = "unanimous"
    FIRST_K = "first_k"


def type_accepts(kind: InputType, value: Any) -> bool:
    """JSON types: a boolean is not a number, a number accepts integers."""
    if kind is InputType.ANY:
        return True
    if isinstance(value, bool):
        return kind is InputType.BOOLEAN
    checks: dict[InputType, Callable[[Any], bool]] = {
        InputType.STRING: lambda v: isinstance(v, str),
        InputType.NUMBER: lambda v: isinstance(v, int | float),
        InputType.INTEGER: lambda v: isinstance(v, int),
        InputType.BOOLEAN: lambda v: False,  # booleans were accepted above
        InputType.LIST: lambda v: isinstance(v, list | tuple),
        InputType.OBJECT: lambda v: isinstance(v, Mapping),
    }
    return checks[kind](value)


class InputSpec(BaseModel):
    """One input; written in full or as the shorthand `name: <type>`. No default means required."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: InputType
    default: Any = None
    description: str | None = Field(None, max_length=2000)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"type": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _default_fits(self) -> InputSpec:
        if not self.required and not type_accepts(self.type, self.default):
            raise ValueError(f"the default {_show(self.default)} is not of type {self.type.value}")
        return self

    @model_serializer(mode="wrap")
    def _without_absent_default(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A required input has no default; dumping `default: null` would make it optional on reload."""
        body: dict[str, Any] = handler(self)
        if self.required:
            body.pop("default", None)
        return body

    @property
    def required(self) -> bool:
        return "default" not in self.model_fields_set


class ConsensusSpec(BaseModel):
    """Run the task on several agents and combine their results into one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agents: int = Field(ge=2, le=9, description="how many agents run the task")
    combine: Combine = Combine.MAJORITY
    k: int | None = Field(None, description="first_k: this many agreeing results decide")
    compare: str | None = Field(
        None, pattern=COMPARE_PATTERN, description="dotted path inside each result to compare; unset: the whole result"
    )

    @model_validator(mode="after")
    def _k_fits(self) -> ConsensusSpec:
        if self.combine is Combine.FIRST_K:
            if self.k is None or not 1 <= self.k <= self.agents:
                raise ValueError(f"first_k needs k between 1 and agents ({self.agents})")
        elif self.k is not None:
            raise ValueError(f"k applies only to combine first_k, not {self.combine.value}")
        return self


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=STEP_ID_PATTERN)
    task: TaskSpec = Field(description="a task spec; only its payload may hold {{ }} placeholders")
    depends_on: tuple[str, ...] = Field((), max_length=MAX_STEPS)
    when: str | None = Field(None, description="run the step only if this condition holds; else it is skipped")
    for_each: str | None = Field(None, description="one placeholder reading a list: one task per item")
    consensus: ConsensusSpec | None = None
    on_failure: OnFailure | None = Field(None, description="unset: the workflow's on_failure")

    @field_validator("task", mode="wrap")
    @classmethod
    def _static_task(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> TaskSpec:
        """Validate everything but the payload now; the payload is a template until the step runs,
        so it is kept as written, beside a spec that was checked with payload=None."""
        if isinstance(value, Mapping):
            spec: TaskSpec = handler({**value, "payload": None}).model_copy(update={"payload": value.get("payload")})
        else:
            spec = handler(value)
        if spec.pinned_agent_id is not None:
            raise ValueError("pinned_agent_id is not allowed in workflows; route the task with capabilities")
        if spec.idempotency_key is not None:
            # The run is the unit of idempotency; one key on a fan-out would fold its tasks into one.
            raise ValueError("idempotency_key is not allowed in workflow steps; each run makes its own tasks")
        return spec

    @model_validator(mode="after")
    def _templates(self) -> StepSpec:
        if self.for_each is not None and self.consensus is not None:
            raise ValueError("use for_each or consensus, not both: each item of a fan-out cannot be voted on")
        reads = self.reads()
        source = self.source
        if source is not None and not (
            source.root == "inputs" or (source.root == "steps" and source.path[1] == "result")
        ):
            raise ValueError(f"field 'for_each': read a list from inputs or steps.<id>.result, not {source.text}")
        for where, ref in reads:
            if ref.root not in ("item", "index"):
                continue
            if self.for_each is None:
                raise ValueError(f"field '{where}': add for_each to use {{{{ {ref.text} }}}}, or remove it")
            if where != "task.payload":
                raise ValueError(
                    f"field '{where}': {{{{ {ref.text} }}}} is usable only in task.payload; "
                    f"{where} is decided once for the whole step"
                )
        return self

    @property
    def condition(self) -> Condition | None:
        return Condition.parse(self.when) if self.when is not None else None

    @property
    def source(self) -> Reference | None:
        """What for_each reads."""
        return list_source(self.for_each) if self.for_each is not None else None

    def reads(self) -> list[tuple[str, Reference]]:
        """Every path the step reads, with the field it is written in; a syntax error raises ValueError
        so that pydantic reports it at this step."""
        found: list[tuple[str, Reference]] = []
        for where, parse in (
            ("task.payload", lambda: references(self.task.payload)),
            ("for_each", self._source_reads),
            ("when", self._condition_reads),
        ):
            try:
                found.extend((where, ref) for ref in parse())
            except InvalidInput as exc:
                raise ValueError(f"field '{where}': {exc.message}") from None
        return found

    def _source_reads(self) -> list[Reference]:
        source = self.source
        return [source] if source is not None else []

    def _condition_reads(self) -> list[Reference]:
        condition = self.condition
        return condition.references if condition is not None else []


InputName = Annotated[str, Field(pattern=INPUT_NAME_PATTERN)]


class WorkflowDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=TASK_TYPE_PATTERN)
    description: str | None = Field(None, max_length=4000)
    version: str | None = Field(None, description="semantic version, e.g. 1.2.0")
    inputs: dict[InputName, InputSpec] = Field(default_factory=dict, max_length=MAX_INPUTS)
    on_failure: OnFailure = OnFailure.FAIL_FAST
    # Not min_length=1: pydantic would also report an empty tuple whenever one step is invalid.
    steps: tuple[StepSpec, ...] = Field(max_length=MAX_STEPS)

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str | None) -> str | None:
        if value is not None and not _SEMVER.fullmatch(value):
            raise ValueError(f"write version as MAJOR.MINOR.PATCH with optional -prerelease/+build, not {value!r}")
        return value

    @model_validator(mode="after")
    def _graph(self) -> WorkflowDefinition:
        if not self.steps:
            raise ValueError("add at least one step under steps")
        _check_ids(self.steps)
        _check_cycles(self.steps)
        above = upstream(self)
        for step in self.steps:
            _check_reads(step, set(self.inputs), above[step.id], {s.id for s in self.steps})
        return self

    def step(self, step_id: str) -> StepSpec:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise InvalidInput(f"name a step of workflow {self.name!r}; it has no step {step_id!r}")

    def on_failure_of(self, step: StepSpec) -> OnFailure:
        return step.on_failure or self.on_failure


def _check_ids(steps: Sequence[StepSpec]) -> None:
    seen: dict[str, int] = {}
    for index, step in enumerate(steps):
        if step.id in seen:
            raise ValueError(
                f"give each step its own id: {step.id!r} is used by steps[{seen[step.id]}] and steps[{index}]"
            )
        seen[step.id] = index
    for step in steps:
        for needed in step.depends_on:
            if needed == step.id:
                raise ValueError(
                    f"step {step.id!r}, field 'depends_on': remove {step.id!r}, a step cannot depend on itself"
                )
            if needed not in seen:
                raise ValueError(
                    f"step {step.id!r}, field 'depends_on': fix {needed!r}, there is no such step; "
                    f"steps are {', '.join(seen)}"
                )


def _check_cycles(steps: Sequence[StepSpec]) -> None:
    cycle = _find_cycle({s.id: s.depends_on for s in steps})
    if cycle is not None:
        raise ValueError(
            f"break the dependency cycle: {' -> '.join(cycle)} (each step depends on the next); "
            "remove one of these depends_on entries"
        )


def _find_cycle(depends_on: Mapping[str, Sequence[str]]) -> list[str] | None:
    """The first cycle met walking steps in definition order, starting at its earliest-defined member."""
    order = {node: index for index, node in enumerate(depends_on)}
    state: dict[str, str] = {}  # "open" while on the walk, "done" once fully explored
    trail: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = "open"
        trail.append(node)
        for needed in depends_on.get(node, ()):
            if state.get(needed) == "open":
                loop = trail[trail.index(needed) :]
                first = min(range(len(loop)), key=lambda i: order.get(loop[i], len(order)))
                loop = loop[first:] + loop[:first]
                return [*loop, loop[0]]
            if needed not in state and (found := walk(needed)) is not None:
                return found
        trail.pop()
        state[node] = "done"
        return None

    for node in depends_on:
        if node not in state and (found := walk(node)) is not None:
            return found
    return None


def _check_reads(step: StepSpec, inputs: set[str], above: frozenset[str], known: set[str]) -> None:
    for where, ref in step.reads():
        at = f"step {step.id!r}, field '{where}'"
        if ref.root in ("event", "body"):
            raise ValueError(f"{at}: {{{{ {ref.text} }}}} is for triggers' actions; a workflow reads inputs and steps")
        if ref.root == "inputs" and ref.path[0] not in inputs:
            declared = ", ".join(sorted(inputs)) or "none"
            raise ValueError(
                f"{at}: declare the input {ref.path[0]!r} under inputs, or fix {{{{ {ref.text} }}}}; "
                f"declared inputs: {declared}"
            )
        if ref.root == "steps" and ref.path[0] not in above:
            other = ref.path[0]
            if other not in known:
                raise ValueError(f"{at}: {{{{ {ref.text} }}}} reads step {other!r}, and there is no such step")
            raise ValueError(
                f"{at}: add {other!r} to depends_on to read {{{{ {ref.text} }}}}; "
                f"a step reads only steps it depends on (directly or through others)"
            )


def parse_definition(source: str | Mapping[str, Any]) -> WorkflowDefinition:
    """Everything is checked before anything runs; every problem raises InvalidInput naming the step
    and the field."""
    raw = _load(source) if isinstance(source, str) else source
    if not isinstance(raw, Mapping):
        raise InvalidInput("write the workflow definition as a mapping with name and steps (YAML or JSON)")
    name = raw.get("name") if isinstance(raw.get("name"), str) else None
    steps = raw.get("steps")
    if isinstance(steps, list | tuple) and len(steps) > MAX_STEPS:
        raise InvalidInput(f"split workflow {name!r} into smaller ones: it has {len(steps)} steps, at most {MAX_STEPS}")
    try:
        return WorkflowDefinition.model_validate(dict(raw))
    except ValidationError as exc:
        label = f"workflow {name!r}" if name else "the workflow definition"
        raise InvalidInput(f"fix {label}: {_describe(exc, steps)}") from exc


class _Loader(yaml.SafeLoader):
    """safe_load, minus two things a JSON document cannot hold: aliases (a few lines of `*a` can
    expand to billions of nodes once walked) and dates (a payload must stay JSON)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "write the value out: aliases (*name) are not allowed", mark)
        return super().compose_node(parent, index)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _load(text: str) -> Any:
    if len(text) > MAX_SOURCE_CHARS:
        raise InvalidInput(f"shorten the workflow definition: {len(text)} characters, at most {MAX_SOURCE_CHARS}")
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise InvalidInput(f"fix the workflow definition: it is not valid YAML or JSON ({exc})") from exc


def _describe(error: ValidationError, steps: Any) -> str:
    """pydantic's errors as sentences naming the step by id (not by index) and the field."""
    parts = []
    for item in error.errors()[:5]:
        loc = list(item["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
            where = f"step {_step_label(steps, loc[1])}"
            loc = loc[2:]
        if loc:
            field = ".".join(str(p) for p in loc)
            where = f"{where}, field {field!r}" if where else f"field {field!r}"
        context = item.get("ctx") or {}
        message = str(context["error"]) if item["type"] == "value_error" and "error" in context else item["msg"]
        joint = ", " if message.startswith("field '") else ": "  # a step's own check names its field
        parts.append(f"{where}{joint}{message}" if where else message)
    return "; ".join(parts)


def _step_label(steps: Any, index: int) -> str:
    raw = steps[index] if isinstance(steps, list | tuple) and index < len(steps) else None
    step_id = raw.get("id") if isinstance(raw, Mapping) else None
    return repr(step_id) if isinstance(step_id, str) else f"steps[{index}]"


def bind_inputs(definition: WorkflowDefinition, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults filled, types checked (integer is not boolean; number accepts ints), unknown or
    missing inputs refused."""
    given = given or {}
    declared = definition.inputs
    unknown = sorted(set(given) - set(declared))
    if unknown:
        takes = ", ".join(declared) or "no inputs"
        raise InvalidInput(f"remove unknown inputs {', '.join(unknown)}; workflow {definition.name!r} takes: {takes}")
    missing = [f"{name} ({spec.type.value})" for name, spec in declared.items() if spec.required and name not in given]
    if missing:
        raise InvalidInput(f"give the required inputs of workflow {definition.name!r}: {', '.join(missing)}")
    bound: dict[str, Any] = {}
    for name, spec in declared.items():
        value = given[name] if name in given else copy.deepcopy(spec.default)
        if not type_accepts(spec.type, value):
            raise InvalidInput(f"give input {name!r} as {spec.type.value}; got {_show(value)}")
        bound[name] = value
    return bound


def task_spec_for(step: StepSpec, payload: Any) -> TaskSpec:
    """The step's task with the rendered payload, validated."""
    fields = step.task.model_dump(exclude={"payload"}, exclude_unset=True)
    try:
        return TaskSpec.model_validate({**fields, "payload": payload})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "task"
        raise InvalidInput(f"fix step {step.id!r}: field 'task.{field}': {first['msg']}") from exc


def fan_out_items(step: StepSpec, scope: Mapping[str, Any]) -> list[Any]:
    """The list a for_each step fans out over, read from the scope and bounded by MAX_FAN_OUT."""
    if step.for_each is None:
        raise InvalidInput(f"step {step.id!r} has no for_each; run it as one task")
    items = render(step.for_each, scope)
    if not isinstance(items, list | tuple):
        raise InvalidInput(f"make for_each of step {step.id!r} read a list; {step.for_each.strip()} is {_show(items)}")
    if len(items) > MAX_FAN_OUT:
        raise InvalidInput(f"fan out step {step.id!r} over at most {MAX_FAN_OUT} items; it got {len(items)}")
    return list(items)


def upstream(definition: WorkflowDefinition) -> dict[str, frozenset[str]]:
    """Transitive dependencies of each step."""
    found: dict[str, frozenset[str]] = {}
    depends_on = {s.id: s.depends_on for s in definition.steps}
    for step_id in _stable_order(list(depends_on), depends_on):
        found[step_id] = frozenset().union(*(found[d] | {d} for d in depends_on[step_id]))
    return found


def _stable_order(nodes: Sequence[str], depends_on: Mapping[str, Sequence[str]]) -> list[str]:
    position = {node: index for index, node in enumerate(nodes)}
    waiting = {node: len(set(depends_on.get(node, ()))) for node in nodes}
    needed_by: dict[str, list[str]] = {node: [] for node in nodes}
    for node in nodes:
        for needed in set(depends_on.get(node, ())):
            needed_by[needed].append(node)
    ready = [position[node] for node in nodes if waiting[node] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for later in needed_by[node]:
            waiting[later] -= 1
            if waiting[later] == 0:
                heapq.heappush(ready, position[later])
    if len(order) < len(nodes):
        cycle = _find_cycle(depends_on) or []
        raise InvalidInput(f"break the dependency cycle: {' -> '.join(cycle)}")
    return order


def critical_path(depends_on: Mapping[str, Sequence[str]], durations: Mapping[str, float]) -> tuple[list[str], float]:
    """The chain of steps with the largest total duration (steps missing from durations count 0),
    first to last, and its total. It ends at a step nothing depends on; ties go to the step listed first."""
    nodes = list(dict.fromkeys([*depends_on, *(d for deps in depends_on.values() for d in deps)]))
    if not nodes:
        return [], 0.0
    total: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for node in _stable_order(nodes, depends_on):
        before = max(depends_on.get(node, ()), key=total.__getitem__, default=None)
        total[node] = float(durations.get(node, 0.0)) + (total[before] if before is not None else 0.0)
        via[node] = before
    # End at a step nothing depends on: with zero durations a chain could otherwise stop short.
    needed = {d for deps in depends_on.values() for d in deps}
    last: str | None = max((node for node in nodes if node not in needed), key=total.__getitem__)
    end_total = total[last]
    chain: list[str] = []
    while last is not None:
        chain.append(last)
        last = via[last]
    return chain[::-1], end_total


class ConsensusState(StrEnum):
    PENDING = "pending"
    DECIDED = "decided"
    FAILED = "failed"


@dataclass(frozen=True)
class Vote:
    value: Any  # the compared value (the `compare` path of a result, or the whole result)
    count: int


@dataclass(frozen=True)
class ConsensusOutcome:
    state: str  # a ConsensusState: "pending" | "decided" | "failed"
    value: Any  # the winning full result (the first whose compared value won); None unless decided
    votes: list[Vote]  # distinct compared values with their counts, most votes first
    received: int
    disagreement: bool  # more than one distinct compared value among those received
    reason: str | None  # why it failed, e.g. "no majority: 1 'yes', 1 'no', 1 'maybe' of 3"


def combine_votes(consensus: ConsensusSpec, results: Sequence[Any], *, lost: int = 0) -> ConsensusOutcome:
    """Combine results arriving in completion order. `lost` counts agents that will never answer
    (their task failed), so a vote that can no longer be won fails now rather than waiting forever."""
    if len(results) + lost > consensus.agents:
        raise InvalidInput(f"pass at most {consensus.agents} results and lost agents; got {len(results)} + {lost}")
    votes, first_result = _tally(consensus.compare, results)
    outstanding = consensus.agents - len(results) - lost
    leader = votes[0].count if votes else 0
    disagreement = len(votes) > 1

    def outcome(state: ConsensusState, reason: str | None = None) -> ConsensusOutcome:
        winner = first_result[0] if state is ConsensusState.DECIDED else None
        return ConsensusOutcome(state.value, winner, votes, len(results), disagreement, reason)

    if consensus.combine is Combine.UNANIMOUS:
        if disagreement or lost:
            return outcome(ConsensusState.FAILED, f"not unanimous: {_tallies(votes, consensus.agents, lost)}")
        done = leader == consensus.agents
        return outcome(ConsensusState.DECIDED if done else ConsensusState.PENDING)
    needed = consensus.k if consensus.combine is Combine.FIRST_K else consensus.agents // 2 + 1
    assert needed is not None  # ConsensusSpec guarantees k for first_k
    if leader >= needed:
        return outcome(ConsensusState.DECIDED)
    if leader + outstanding < needed:
        what = "no majority" if consensus.combine is Combine.MAJORITY else f"no {needed} agreeing results"
        return outcome(ConsensusState.FAILED, f"{what}: {_tallies(votes, consensus.agents, lost)}")
    return outcome(ConsensusState.PENDING)


def _tally(compare: str | None, results: Sequence[Any]) -> tuple[list[Vote], list[Any]]:
    """Votes most first (ties: first received first) and, in the same order, the first full result of each."""
    counts: dict[str, int] = {}
    values: dict[str, Any] = {}
    firsts: dict[str, Any] = {}
    for result in results:
        value = lookup_path(result, compare)
        key = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        counts[key] = counts.get(key, 0) + 1
        values.setdefault(key, value)
        firsts.setdefault(key, result)
    ranked = sorted(counts, key=lambda key: -counts[key])  # stable: first received wins a tie
    return [Vote(values[key], counts[key]) for key in ranked], [firsts[key] for key in ranked]


def _tallies(votes: Sequence[Vote], agents: int, lost: int) -> str:
    shown = ", ".join(f"{vote.count} {_show(vote.value)}" for vote in votes) or "no results"
    return f"{shown} of {agents}" + (f" ({lost} lost)" if lost else "")


def _show(value: Any, limit: int = 60) -> str:
    text = f"'{value}'" if isinstance(value, str) else json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
