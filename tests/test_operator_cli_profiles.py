"""`agentfleet profiles …` and `agentfleet scorecard` against a real server: export a version,
register the next from the file, roll it out, compare, deprecate and retire, each one tool call."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

from tests.test_operator_cli import cli, over_mcp

if TYPE_CHECKING:
    from tests.serving import FleetServer

pytest_plugins = ["tests.serving"]
pytestmark = pytest.mark.slow


def test_profiles_from_export_to_retire(module_fleet: FleetServer, capsys, tmp_path: Path):
    code, out, _ = cli(module_fleet, capsys, "profiles", "export", "worker@1.0.0")
    assert code == 0 and yaml.safe_load(out)["name"] == "worker"
    definition = yaml.safe_load(out) | {"version": "1.2.0", "max_concurrency": 3}
    path = tmp_path / "worker.yaml"
    path.write_text(yaml.safe_dump(definition))

    code, out, _ = cli(module_fleet, capsys, "profiles", "register", str(path), "--json")
    assert code == 0 and json.loads(out)["ref"] == "worker@1.2.0" and json.loads(out)["created"] is True
    code, out, _ = cli(module_fleet, capsys, "profiles", "list", "--name", "worker")
    assert code == 0 and "worker@1.2.0" in out and "registered" in out and "worker@1.0.0" in out

    code, out, _ = cli(
        module_fleet, capsys, "profiles", "rollout", "worker", "--weight", "1.2.0=25", "--weight", "1.0.0=75", "--json"
    )
    assert code == 0 and json.loads(out)["versions"] == {"1.2.0": 25, "1.0.0": 75}
    code, _, err = cli(module_fleet, capsys, "profiles", "rollout", "worker", "--weight", "1.2.0=30")
    assert code == 2 and err.startswith("agentfleet: invalid_input: versions: the weights sum to 30")
    code, out, _ = cli(module_fleet, capsys, "profiles", "rollout", "worker", "--weight", "1.2.0=100", "--json")
    assert code == 0 and json.loads(out)["previous"] == {"1.2.0": 25, "1.0.0": 75}
    code, out, _ = cli(module_fleet, capsys, "profiles", "rollout", "worker", "--rollback", "--json")
    assert code == 0 and json.loads(out)["versions"] == {"1.2.0": 25, "1.0.0": 75}
    code, out, _ = cli(module_fleet, capsys, "profiles", "rollout", "worker", "--json")
    assert code == 0 and json.loads(out)["versions"] == {}  # no --weight: cleared

    spawned = over_mcp(module_fleet, "agent_spawn", profile="worker@1.2.0")
    code, out, _ = cli(module_fleet, capsys, "scorecard", f"agent:{spawned['agent']['id']}", "--period", "24h")
    assert code == 0 and "current" in out and "previous" in out
    code, out, _ = cli(module_fleet, capsys, "profiles", "compare", "worker", "1.0.0", "1.2.0")
    assert code == 0 and "Nothing to compare" in out

    code, out, _ = cli(module_fleet, capsys, "profiles", "deprecate", "worker@1.2.0")
    assert code == 0 and "deprecated" in out
    code, out, _ = cli(module_fleet, capsys, "profiles", "retire", "worker@1.2.0", "--json")
    assert code == 0 and json.loads(out)["state"] == "retired"
    code, _, err = cli(module_fleet, capsys, "profiles", "deprecate", "worker@1.2.0")
    assert code == 2 and err.startswith("agentfleet: conflict:")
    code, _, err = cli(module_fleet, capsys, "profiles", "register", str(tmp_path / "missing.yaml"))
    assert code == 2 and "cannot read" in err
