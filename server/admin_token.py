"""The admin token: AGENTFLEET_ADMIN_TOKEN if set, else DATA_DIR/admin.token, made on first start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from server.settings import Settings


@dataclass(frozen=True)
class AdminToken:
    value: str
    path: Path | None  # where it is kept; None when it came from the environment
    created: bool  # True only on the start that generated it


def ensure_admin_token(settings: Settings) -> AdminToken:
    if settings.admin_token:
        return AdminToken(settings.admin_token, None, False)
    path = settings.data_dir / "admin.token"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once cannot both create (and print) a token.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return AdminToken(path.read_text(encoding="utf-8").strip(), path, False)
    from server.services.auth import new_admin_token  # not at import: `agentfleet worker` starts without the store

    token = new_admin_token()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return AdminToken(token, path, True)
