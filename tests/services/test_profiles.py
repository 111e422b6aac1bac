"""Profiles load from YAML and fail loudly, naming the file and the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.errors import InvalidInput
from server.services.profiles import ProfileRegistry, shipped_profiles_dir


def write(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(body)
    return path


def test_shipped_profiles_load():
    registry = ProfileRegistry.load([shipped_profiles_dir()])
    runtimes = {p.name: p.runtime.value for p in registry.all()}
    assert runtimes == {
        "default": "external",
        "developer": "external",
        "researcher": "external",
        "reviewer": "external",
        "python-echo": "process",
        "shell-worker": "process",
        "claude-code": "process",
    }
    for profile in registry.all():
        assert profile.description and profile.max_concurrency >= 1
        if profile.process is not None:  # the server's own `agentfleet worker` runs each command
            assert profile.process.command[:3] == ("agentfleet", "worker", "--")
    claude = registry.resolve("claude-code").process
    assert claude is not None and "ANTHROPIC_API_KEY" in claude.env_passthrough


RUNTIME_MISTAKES = [
    ("runtime: process\n", "needs a `process:` section"),
    ("process: {command: [x]}\n", "needs a `process:` section"),
    ("runtime: process\nprocess: {command: []}\n", "process.command"),
    ("runtime: process\nprocess: {command: [x], env: {AGENTFLEET_TOKEN: t}}\n", "the server sets them"),
    ('runtime: process\nprocess: {command: [x], env_passthrough: ["BAD NAME"]}\n', "env_passthrough"),
    ("autoscale: {max: 2}\n", "runtime process only"),
    ("runtime: process\nprocess: {command: [x]}\nautoscale: {min: 3, max: 2}\n", "must not exceed"),
    ("runtime: a2a\na2a: {url: ftp://peer}\n", "a2a.url"),
    ("a2a: {url: http://peer}\n", "needs runtime a2a"),
    ("runtime: process\nprocess: {command: [x]}\nrestart: {max_restarts: -1}\n", "restart.max_restarts"),
]


@pytest.mark.parametrize(("block", "complaint"), RUNTIME_MISTAKES)
def test_runtime_sections_are_checked_when_the_profile_loads(tmp_path, block, complaint):
    write(tmp_path, "p.yaml", "name: p\nversion: 1.0.0\ndescription: x\n" + block)
    with pytest.raises(InvalidInput, match=re.escape(complaint)):
        ProfileRegistry.load([tmp_path])


def test_a_bad_field_is_named_with_its_file(tmp_path):
    path = write(tmp_path, "broken.yaml", "name: broken\nversion: 1.0.0\ndescription: x\nmax_concurrency: 0\n")
    with pytest.raises(InvalidInput) as err:
        ProfileRegistry.load([tmp_path])
    assert str(path) in err.value.message and "max_concurrency" in err.value.message


def test_unknown_fields_and_bad_yaml_are_refused(tmp_path):
    write(tmp_path / "a", "typo.yaml", "name: typo\nversion: 1.0.0\ndescription: x\ncapabilites: [x]\n")
    with pytest.raises(InvalidInput, match="capabilites"):
        ProfileRegistry.load([tmp_path / "a"])
    write(tmp_path / "b", "bad.yaml", "name: [unclosed\n")
    with pytest.raises(InvalidInput, match="not valid YAML"):
        ProfileRegistry.load([tmp_path / "b"])
    write(tmp_path / "c", "limits.yaml", "name: lim\nversion: 1.0.0\ndescription: x\nlimits: {max_depth: -1}\n")
    with pytest.raises(InvalidInput, match=r"limits\.max_depth"):
        ProfileRegistry.load([tmp_path / "c"])


@pytest.mark.parametrize(
    ("block", "complaint"),
    [
        ("permissions: {tools: [task_clam]}", "'task_clam' matches no tool"),
        ("permissions: {lock_resources: ['repo:/src/*']}", "permissions.lock_resources"),
        ("permissions: {task_types: []}", None),  # an empty list is allowed: it forbids every type
        ("approvals: {task_types: [deploy], on_expiry: maybe}", "approvals.on_expiry"),
        ("approvals: {timeout_s: 5}", "approvals.timeout_s"),
        ("limits: {rate_per_s: 0}", "limits.rate_per_s"),
    ],
)
def test_governance_blocks_are_checked_when_the_profile_loads(tmp_path, block, complaint):
    write(tmp_path, "gov.yaml", f"name: gov\nversion: 1.0.0\ndescription: x\n{block}\n")
    if complaint is None:
        assert ProfileRegistry.load([tmp_path]).resolve("gov").permissions.task_types == ()
        return
    with pytest.raises(InvalidInput) as err:
        ProfileRegistry.load([tmp_path])
    assert complaint in err.value.message


def test_versions_resolve_newest_or_exact(tmp_path):
    write(tmp_path, "a1.yaml", "name: coder\nversion: 1.2.0\ndescription: old\n")
    write(tmp_path, "a2.yaml", "name: coder\nversion: 1.10.0\ndescription: new\n")
    registry = ProfileRegistry.load([tmp_path])
    assert registry.resolve("coder").version == "1.10.0"
    assert registry.resolve("coder@1.2.0").description == "old"
    with pytest.raises(InvalidInput, match="no version 2.0.0"):
        registry.resolve("coder@2.0.0")


def test_a_duplicate_version_is_refused(tmp_path):
    write(tmp_path, "a.yaml", "name: dup\nversion: 1.0.0\ndescription: a\n")
    write(tmp_path, "b.yaml", "name: dup\nversion: 1.0.0\ndescription: b\n")
    with pytest.raises(InvalidInput, match="defined twice"):
        ProfileRegistry.load([tmp_path])
