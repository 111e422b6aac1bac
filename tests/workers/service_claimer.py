"""A claimer in its own OS process: claims and completes tasks through the service layer on a
shared store until told the queue is drained, then prints what it did as JSON lines.

usage: python -m tests.workers.service_claimer DATABASE_URL TOKEN [TOKEN ...]
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

from server.services.container import build_services
from server.settings import Settings

ADMIN = "afk_unused-by-claimers-000000000000000000000"


async def drain(services, token: str) -> list[str]:
    principal = await services.auth.authenticate(token)
    assert principal is not None, "token not accepted"
    done: list[str] = []
    idle_rounds = 0
    while idle_rounds < 3:
        claimed = await services.leases.claim(principal, wait_s=0.3)
        if claimed.task is None:
            idle_rounds += 1
            continue
        idle_rounds = 0
        await services.leases.complete(principal, claimed.task.id, {"by": principal.id})
        done.append(claimed.task.id)
    return done


async def main(url: str, tokens: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="agentfleet-claimer-") as data_dir:  # removed when it exits
        settings = Settings(
            data_dir=Path(data_dir), database_url=url, profiles_dir=Path(__file__).parents[1] / "profiles"
        )
        services = build_services(settings, ADMIN, run_migrations=False)
        try:
            results = await asyncio.gather(*(drain(services, t) for t in tokens))
        finally:
            services.close()
    for token, done in zip(tokens, results, strict=True):
        print(json.dumps({"token_tail": token[-6:], "completed": done}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
