"""On PostgreSQL the event log shows a row once every write transaction older than it has ended,
anywhere on the cluster (server/services/events/log.py). Another test process creating a database
is such a transaction, so a test that reads right after writing first waits until nothing it wrote
is held back."""

from __future__ import annotations

import anyio
from sqlalchemy import func, select

from server.services.container import Services
from server.services.events.log import encode_cursor, head_cursor
from server.store.tables import event_log


def _settled(conn) -> bool:  # type: ignore[no-untyped-def]
    newest = conn.execute(select(func.max(event_log.c.tx), func.max(event_log.c.seq))).first()
    if newest is None or newest[0] is None:
        return True
    top = conn.execute(
        select(event_log.c.tx, event_log.c.seq).order_by(event_log.c.tx.desc(), event_log.c.seq.desc()).limit(1)
    ).one()
    return head_cursor(conn) >= encode_cursor(top.tx, top.seq)


async def settled(services: Services, timeout: float = 20) -> None:
    """Return once every committed event is readable."""
    with anyio.fail_after(timeout):
        while not await services.db.read(_settled):
            await anyio.sleep(0.02)
