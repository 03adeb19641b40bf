"""ASGI layers around the whole rater app: security headers on every response, and a request body limit.

Both wrap the app *outside* Starlette's ServerErrorMiddleware (see `RaterApp`), so a 500 and a 413 carry
the headers too; FastAPI's own `add_middleware` would put them inside it, where a crash skips them.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"x-frame-options", b"DENY"),
           (b"referrer-policy", b"no-referrer")]  # invite links carry their token in the path
MAX_BODY = 1 << 20
"""Largest request body (bytes) for everything but an admin's queue import: 1 MiB holds the largest
guidelines (200,000 characters) and any rating many times over."""
MAX_IMPORT_BODY = 64 << 20
"""Largest body of a queue import (`IMPORT_PATHS`), accepted only from a signed-in admin's session."""
IMPORT_PATHS = ("/admin/import", "/api/admin/import")


class RaterApp(FastAPI):
    """FastAPI with `SecurityHeaders(BodyLimit(...))` outside its whole middleware stack."""

    body_limit_for: Callable[[dict], int] | None = None
    """scope -> the body limit of that request; set by `create_app` (it needs the accounts to see an admin)."""

    def build_middleware_stack(self) -> Any:
        return SecurityHeaders(BodyLimit(super().build_middleware_stack(), lambda scope: self._limit(scope)))

    def _limit(self, scope: dict) -> int:
        return self.body_limit_for(scope) if self.body_limit_for else MAX_BODY


class SecurityHeaders:
    """Pure ASGI middleware adding HEADERS (and no-store outside /static/) to every response.

    Not `@app.middleware("http")`: that wraps each response in a stream, which costs more per request.
    """

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = HEADERS if scope["path"].startswith("/static/") else HEADERS + [(b"cache-control", b"no-store")]

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """413 for a body over the request's limit, before the app reads it whole.

    A Content-Length over the limit is refused without reading a byte; a chunked body is counted as it
    arrives, and at the limit the app is told the client left (it stops reading) and the client gets 413.
    """

    def __init__(self, app: Any, limit_for: Callable[[dict], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _too_large(send, limit)
        received, over, started = 0, False, False

        async def counted() -> dict:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal started
            if over:
                return  # the app's answer to a body it never got whole: ours (413) goes out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _too_large(send, limit)


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"detail": f"request body: larger than {limit:,} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def finite(value: Any) -> Any:
    """`value` with NaN and +-Infinity floats replaced by their names (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


async def on_invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, but one that can always be written: a body with NaN or Infinity (Python's JSON reader
    takes those literals) used to crash the error response itself into a 500."""
    return JSONResponse({"detail": finite(jsonable_encoder(err.errors()))}, status_code=422)
