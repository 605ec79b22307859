"""Request ids and a log line per request, as a plain ASGI middleware (Starlette's `@app.middleware("http")`
runs each request through extra tasks and streams, a cost on every call).

Which requests are logged is `LORABAKE_ACCESS_LOG`: `errors` (the default: 4xx/5xx answers and requests
slower than a second, each with its request id), `all`, or `off`. A line for every poll costs about a fifth
of the job poll's throughput (bench/api_read.py); a reverse proxy usually logs those anyway."""

from __future__ import annotations

import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("lorabake.api")


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if given.isprintable() and 0 < len(given) <= 200:
                return given
    return uuid.uuid4().hex


SLOW_SECONDS = 1.0


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp, access_log: str = "errors") -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            if self.access_log == "all" or (
                self.access_log == "errors" and (status >= 400 or status == 0 or elapsed > SLOW_SECONDS)
            ):
                log.info(
                    "%s %s -> %s in %.1f ms [request %s]",
                    scope["method"],
                    scope["path"],
                    status,
                    1000 * elapsed,
                    rid,
                )
