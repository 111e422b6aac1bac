"""One Settings object, read once at the entry point. Precedence: flag > environment > default."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from server.errors import InvalidInput

ENV_PREFIX = "AGENTFLEET_"


def default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "agentfleet"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = field(default_factory=default_data_dir)
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    admin_token: str | None = None
    profiles_dir: Path | None = None
    # Where this server is reached, for agents it starts and for the A2A card.
    public_url: str | None = None
    # The principal a stdio session acts as (unset: admin).
    token: str | None = None
    max_payload_bytes: int = 256 * 1024
    log_level: str = "info"
    # json or text; None: text on a terminal, json otherwise (server/logs.py).
    log_format: str | None = None
    # A token that may read /metrics and nothing else (scrapers); unset: any valid token may.
    metrics_token: str | None = None
    # How long a task must wait to outrank a fresh task one priority level above it.
    priority_aging_s: int = 600
    # How often the reaper looks for lapsed leases.
    reaper_interval_s: float = 1.0
    message_retention_days: int = 30
    # A parked claim re-checks the store this often even without a wake-up (safety net for
    # writers that cannot notify, e.g. another process on the same SQLite file).
    claim_recheck_s: float = 10.0
    # Token bucket per principal (admin exempt): refill per second, and calls allowed at once.
    # 0 turns rate limiting off.
    rate_limit_per_s: float = 100.0
    rate_limit_burst: int = 200
    # How long an approval waits for a person, and the decision taken when nobody decides.
    approval_timeout_s: int = 86_400
    approval_on_expiry: str = "reject"
    # Live agents the whole fleet may have at once (every replica counts against one limit).
    max_agents: int = 1000
    # Who runs this server's process agents: restarting with the same id re-adopts them.
    # Unset: <hostname>:<port>.
    replica_id: str | None = None
    # Each process agent's stdout and stderr files are trimmed to their last this-many bytes.
    agent_log_max_bytes: int = 1024 * 1024
    # How often the supervisor checks its processes, restarts and scaling.
    supervisor_interval_s: float = 0.5
    # How long a blocking A2A SendMessage waits for a final state before answering with the task
    # as it stands (kept under common HTTP client timeouts; streams and GetTask follow on).
    a2a_block_s: float = 3.0
    # How process agents are sandboxed: landlock (required; an agent does not start without it) or
    # none (they run with this server's user's full access: for development on a system without it).
    agent_confinement: str = "landlock"
    # Notification deliveries: how long one POST may take, how often the loop looks without a
    # wake-up, and the retry backoff (exponential with full jitter, from base up to cap).
    notify_timeout_s: float = 10.0
    notify_poll_s: float = 1.0
    notify_backoff_base_ms: int = 1000
    notify_backoff_cap_ms: int = 300_000
    # Delivered and dead deliveries are kept this long (for notification_deliveries), then dropped.
    notify_keep_s: int = 7 * 86_400
    # A2A push URLs are registered by peers: refuse private, loopback and link-local addresses
    # unless this is set (a fleet whose A2A clients live on its own network, or tests).
    push_allow_private: bool = False
    tool_output_schemas: bool = False

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'agentfleet.db'}"

    @property
    def resolved_replica_id(self) -> str:
        return self.replica_id or f"{socket.gethostname()}:{self.port}"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from None


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(ENV_PREFIX + name) or default
    if raw not in choices:
        raise InvalidInput(f"{ENV_PREFIX}{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw


def _float(env: Mapping[str, str], name: str, default: float, *, zero_ok: bool = False) -> float:
    raw = env.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{ENV_PREFIX}{name} must be a number, got {raw!r}") from None
    if value < 0 or (value == 0 and not zero_ok):
        raise InvalidInput(f"{ENV_PREFIX}{name} must be positive, got {raw!r}")
    return value


def _log_format(raw: str | None) -> str | None:
    if raw is not None and raw not in ("json", "text"):
        raise InvalidInput(
            f"{ENV_PREFIX}LOG_FORMAT must be json or text (unset: text on a terminal, json otherwise), got {raw!r}"
        )
    return raw


def load_settings(env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
    env = os.environ if env is None else env

    def text(name: str) -> str | None:
        return env.get(ENV_PREFIX + name) or None

    data_dir = text("DATA_DIR")
    profiles_dir = text("PROFILES_DIR")
    from_env = Settings(
        data_dir=Path(data_dir).expanduser() if data_dir else default_data_dir(),
        database_url=text("DATABASE_URL"),
        host=text("HOST") or "127.0.0.1",
        port=_int(env, "PORT", 8765),
        admin_token=text("ADMIN_TOKEN"),
        profiles_dir=Path(profiles_dir).expanduser() if profiles_dir else None,
        public_url=text("URL"),
        token=text("TOKEN"),
        max_payload_bytes=_int(env, "MAX_PAYLOAD_BYTES", 256 * 1024),
        log_level=_choice(
            {ENV_PREFIX + "LOG_LEVEL": (text("LOG_LEVEL") or "info").lower()},
            "LOG_LEVEL",
            "info",
            ("debug", "info", "warning", "error"),
        ),
        log_format=_log_format(text("LOG_FORMAT")),
        metrics_token=text("METRICS_TOKEN"),
        priority_aging_s=_int(env, "PRIORITY_AGING_S", 600),
        reaper_interval_s=_float(env, "REAPER_INTERVAL_S", 1.0),
        message_retention_days=_int(env, "MESSAGE_RETENTION_DAYS", 30),
        claim_recheck_s=_float(env, "CLAIM_RECHECK_S", 10.0),
        rate_limit_per_s=_float(env, "RATE_LIMIT_PER_S", 100.0, zero_ok=True),
        rate_limit_burst=_int(env, "RATE_LIMIT_BURST", 200),
        approval_timeout_s=_int(env, "APPROVAL_TIMEOUT_S", 86_400),
        approval_on_expiry=_choice(env, "APPROVAL_ON_EXPIRY", "reject", ("approve", "reject")),
        max_agents=_int(env, "MAX_AGENTS", 1000),
        replica_id=text("REPLICA_ID"),
        agent_log_max_bytes=_int(env, "AGENT_LOG_BYTES", 1024 * 1024),
        supervisor_interval_s=_float(env, "SUPERVISOR_INTERVAL_S", 0.5),
        a2a_block_s=_float(env, "A2A_BLOCK_S", 3.0),
        agent_confinement=_choice(env, "AGENT_CONFINEMENT", "landlock", ("landlock", "none")),
        notify_timeout_s=_float(env, "NOTIFY_TIMEOUT_S", 10.0),
        notify_poll_s=_float(env, "NOTIFY_POLL_S", 1.0),
        notify_backoff_base_ms=_int(env, "NOTIFY_BACKOFF_BASE_MS", 1000),
        notify_backoff_cap_ms=_int(env, "NOTIFY_BACKOFF_CAP_MS", 300_000),
        notify_keep_s=_int(env, "NOTIFY_KEEP_S", 7 * 86_400),
        push_allow_private=_choice(env, "PUSH_ALLOW_PRIVATE", "false", ("true", "false")) == "true",
        tool_output_schemas=_choice(env, "TOOL_OUTPUT_SCHEMAS", "false", ("true", "false")) == "true",
    )
    if from_env.rate_limit_burst < 1:
        raise InvalidInput(f"{ENV_PREFIX}RATE_LIMIT_BURST must be at least 1, got {from_env.rate_limit_burst}")
    if from_env.a2a_block_s < 0:
        raise InvalidInput(f"{ENV_PREFIX}A2A_BLOCK_S must be 0 or more, got {from_env.a2a_block_s}")
    if from_env.max_agents < 1:
        raise InvalidInput(f"{ENV_PREFIX}MAX_AGENTS must be at least 1, got {from_env.max_agents}")
    if from_env.agent_log_max_bytes < 4096:
        raise InvalidInput(f"{ENV_PREFIX}AGENT_LOG_BYTES must be at least 4096, got {from_env.agent_log_max_bytes}")
    if from_env.notify_backoff_base_ms < 1 or from_env.notify_backoff_cap_ms < from_env.notify_backoff_base_ms:
        raise InvalidInput(
            f"{ENV_PREFIX}NOTIFY_BACKOFF_BASE_MS must be at least 1 and {ENV_PREFIX}NOTIFY_BACKOFF_CAP_MS at least it"
        )
    if from_env.approval_timeout_s < 1:
        raise InvalidInput(f"{ENV_PREFIX}APPROVAL_TIMEOUT_S must be positive, got {from_env.approval_timeout_s}")
    for folder in ("data_dir", "profiles_dir"):  # flags arrive as text
        if flags.get(folder) is not None:
            flags[folder] = Path(flags[folder]).expanduser()
    return checked(from_env.with_overrides(**flags))


def checked(settings: Settings) -> Settings:
    """What flags and environment together must satisfy, each refusal naming the setting."""
    if not 1 <= settings.port <= 65535:
        raise InvalidInput(f"--port / {ENV_PREFIX}PORT must be a TCP port from 1 to 65535, got {settings.port}")
    if settings.database_url is not None:
        scheme = settings.database_url.partition(":")[0].lower()
        if scheme not in ("sqlite", "postgresql", "postgres", "postgresql+psycopg"):
            raise InvalidInput(
                f"--database-url / {ENV_PREFIX}DATABASE_URL must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB, "
                f"got {masked(settings.database_url)!r}"
            )
    if settings.profiles_dir is not None and not settings.profiles_dir.is_dir():
        raise InvalidInput(
            f"--profiles-dir / {ENV_PREFIX}PROFILES_DIR: no folder {settings.profiles_dir}; create it or fix the path"
        )
    return settings


def masked(url: str) -> str:
    """A URL as it may be shown: its password replaced."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"
