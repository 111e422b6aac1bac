"""POST /hooks/{name}: outside systems (CI, alert managers, issue trackers) fire webhook triggers.

No bearer token: the trigger's secret authenticates the sender (an HMAC signature over the body,
or the secret as a bearer token). The body is bounded and read before anything else is done."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from server.errors import FleetError, InvalidInput, NotFound, PermissionDenied
from server.services.container import Services

MAX_BODY_BYTES = 1024 * 1024
_STATUS = {NotFound: 404, PermissionDenied: 401, InvalidInput: 400}
_OUTCOME = {404: "not_found", 401: "unauthorized", 400: "invalid", 413: "invalid"}


async def _bounded_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise InvalidInput(f"the body is over {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InvalidInput(f"the body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _error(exc: FleetError) -> Response:
    status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 503)
    if isinstance(exc, InvalidInput) and "bytes" in exc.message:
        status = 413
    return JSONResponse({"error": exc.code, "message": str(exc)}, status_code=status)


def webhook_endpoint(services: Services) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            body = await _bounded_body(request)
            run, new = await services.triggers.receive_webhook(request.path_params["name"], dict(request.headers), body)
        except FleetError as exc:
            refused = _error(exc)
            services.instruments.webhook(_OUTCOME.get(refused.status_code, "error"))
            return refused
        services.instruments.webhook("created" if new else "duplicate")
        return JSONResponse(run.model_dump(mode="json"), status_code=202 if new else 200)

    return endpoint
