"""A small HTTP server of the test's own, on 127.0.0.1: it receives webhooks (POST) as a user's receiver
does, serves files (GET) for `dataset_url`, and takes PUTs as a storage host would, recording each request
with the answer it gave."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    method: str
    path: str  # without the query
    query: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    answer: int  # the status code this server answered with

    @property
    def json(self) -> dict:
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.files: dict[str, bytes] = {}  # path -> body, for GET
        self.answers: dict[str, int] = {}  # path -> status code for PUT and POST (default 200)
        # webhook event types whose first attempt (per webhook-id) is answered 503, to see the retry
        self.fail_first: set[str] = set()
        self._changed = threading.Condition()
        self._failed_ids: set[str] = set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def _record(self, answer: int, body: bytes) -> None:
                path, _, query = self.path.partition("?")
                headers = {k.lower(): v for k, v in self.headers.items()}
                with owner._changed:
                    owner.received.append(Received(self.command, path, query, headers, body, answer))
                    owner._changed.notify_all()

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.partition("?")[0]
                data = owner.files.get(path)
                answer = 200 if data is not None else 404
                self._record(answer, b"")
                self.send_response(answer)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def do_PUT(self) -> None:  # noqa: N802
                self._answer(self._body())

            def do_POST(self) -> None:  # noqa: N802
                body = self._body()
                webhook_id = self.headers.get("webhook-id", "")
                try:
                    event_type = json.loads(body).get("type")
                except ValueError:
                    event_type = None
                with owner._changed:
                    fail = event_type in owner.fail_first and webhook_id not in owner._failed_ids
                    if fail:
                        owner._failed_ids.add(webhook_id)
                self._answer(body, 503 if fail else None)

            def _answer(self, body: bytes, status: int | None = None) -> None:
                answer = status or owner.answers.get(self.path.partition("?")[0], 200)
                self._record(answer, body)
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests(self, path: str, method: str | None = None) -> list[Received]:
        with self._changed:
            return [r for r in self.received if r.path == path and (method is None or r.method == method)]

    def wait_for(self, what: str, done: Callable[[], bool], timeout: float = 60.0) -> None:
        """Until `done()` holds (checked at each request received); fails naming `what` otherwise."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; received {self.received!r}"[:4000])
                self._changed.wait(min(left, 1.0))
