"""GET /events: the event log as Server-Sent Events.

Each event is sent with its cursor as the SSE `id`, so a client that reconnects with
`Last-Event-ID` (browsers' EventSource do it by themselves) resumes exactly after the last event it
got. Query: `types` (comma-separated types or families such as task.*), `subject`, `after` (a cursor;
`Last-Event-ID` wins), `from=now` to start at the head instead of the oldest kept event."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from sse_starlette.sse import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.errors import FleetError
from server.http.bearer import principal_from
from server.services.container import Services
from server.services.events.log import START, EventQuery, check_types, decode_cursor

_PAGE = 200
_WAIT_S = 15.0


def _query(request: Request, head: str) -> EventQuery:
    params = request.query_params
    types = tuple(t for t in (params.get("types") or "").split(",") if t)
    after = (
        request.headers.get("last-event-id") or params.get("after") or (head if params.get("from") == "now" else START)
    )
    decode_cursor(after)
    subject = params.get("subject")
    if subject is not None and len(subject) > 40:
        subject = subject[:40]
    return EventQuery(tuple(check_types(types)), subject, after, _PAGE)


def event_stream(services: Services) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        principal = principal_from(request.user.access_token)
        try:
            query = _query(request, await services.events.head())
        except FleetError as exc:
            return JSONResponse({"error": exc.code, "message": str(exc)}, status_code=400)

        async def stream() -> AsyncIterator[ServerSentEvent]:
            current = query
            while not services.events.bus.closed:
                page = await services.events.list(principal, current, _WAIT_S)
                for event in page.events:
                    yield ServerSentEvent(data=event.model_dump_json(), event=event.type, id=event.cursor)
                current = EventQuery(current.types, current.subject, page.next_cursor, _PAGE)

        return EventSourceResponse(stream())

    return endpoint
