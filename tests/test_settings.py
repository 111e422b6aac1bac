"""Settings precedence (flag > environment > default) and the admin token's life."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from server.admin_token import ensure_admin_token
from server.errors import InvalidInput
from server.settings import Settings, load_settings


def test_defaults():
    settings = load_settings(env={})
    assert (settings.host, settings.port) == ("127.0.0.1", 8765)
    assert settings.data_dir == Path.home() / ".local" / "share" / "agentfleet"
    assert settings.resolved_database_url == f"sqlite:///{settings.data_dir / 'agentfleet.db'}"


def test_flag_beats_environment_beats_default(tmp_path):
    env = {"AGENTFLEET_PORT": "9000", "AGENTFLEET_HOST": "0.0.0.0", "AGENTFLEET_DATA_DIR": str(tmp_path / "env")}
    from_env = load_settings(env=env)
    assert (from_env.port, from_env.host, from_env.data_dir) == (9000, "0.0.0.0", tmp_path / "env")
    flagged = load_settings(env=env, port=9100, data_dir=str(tmp_path / "flag"))
    assert (flagged.port, flagged.host, flagged.data_dir) == (9100, "0.0.0.0", tmp_path / "flag")


def test_a_malformed_number_is_a_clear_error():
    with pytest.raises(InvalidInput, match="AGENTFLEET_PORT must be an integer"):
        load_settings(env={"AGENTFLEET_PORT": "eighty"})


def test_admin_token_is_made_once_with_mode_0600(tmp_path):
    settings = Settings(data_dir=tmp_path / "data")
    first = ensure_admin_token(settings)
    second = ensure_admin_token(settings)
    assert first.created and not second.created and first.value == second.value
    assert first.path is not None and stat.S_IMODE(first.path.stat().st_mode) == 0o600


def test_environment_admin_token_overrides_the_file(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", admin_token="afk_from-env")
    token = ensure_admin_token(settings)
    assert token.value == "afk_from-env" and token.path is None and not (tmp_path / "data" / "admin.token").exists()


def test_log_level_format_and_metrics_token_from_the_environment():
    settings = load_settings(
        env={"AGENTFLEET_LOG_LEVEL": "WARNING", "AGENTFLEET_LOG_FORMAT": "text", "AGENTFLEET_METRICS_TOKEN": "s3cret"}
    )
    assert (settings.log_level, settings.log_format, settings.metrics_token) == ("warning", "text", "s3cret")
    assert load_settings(env={}).log_format is None  # decided by the stream: text on a terminal, json otherwise
    with pytest.raises(InvalidInput, match="AGENTFLEET_LOG_LEVEL must be one of debug, info, warning, error"):
        load_settings(env={"AGENTFLEET_LOG_LEVEL": "verbose"})
    with pytest.raises(InvalidInput, match="AGENTFLEET_LOG_FORMAT must be json or text"):
        load_settings(env={"AGENTFLEET_LOG_FORMAT": "yaml"})
