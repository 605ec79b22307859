"""`Idempotency-Key` on the POSTs that create something, as Stripe defines it (docs/API.md, "Idempotency").

A route opts in with `@idempotent` under its decorator, on a router made with `route_class=IdempotentRoute`.
A request that sends the header claims (owner, key) before the route runs (shared/idempotency.py):
- a repeat while the first still runs is a 409 with Retry-After, so two requests never both create;
- the first's 2xx answer (status, JSON body, Location) is kept for LORABAKE_IDEMPOTENCY_HOURS and replayed
  to a repeat with the same fingerprint (method, path, query, media type, body); another body is a 422;
- any other outcome (a refusal, an outage, a crash) lets go of the key: nothing was created, nothing is
  kept, and a retry with the same key runs afresh.

The body is hashed as it streams past the route, never read twice into memory. A multipart form is hashed
part by part (headers, then a digest of the data) so that its boundary, new at each send, does not count.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from api.deps import current_identity
from api.schemas import ErrorResponse
from api.state import AppState
from shared.db.models import new_id
from shared.errors import ConflictError, LorabakeError, PayloadTooLargeError
from shared.idempotency import CLAIM_SECONDS, DONE, Claim, Held, finish, key_sha256, release, renew, take

log = logging.getLogger("lorabake.api")

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"  # on a replayed answer, as Stripe marks it
RETRY_SECONDS = 2  # a 409's Retry-After: most creating requests take a second or two
_MARK = "__lorabake_idempotent__"
_KEPT_HEADERS = ("location",)
Handler = Callable[[Request], Awaitable[Response]]
F = TypeVar("F", bound=Callable[..., Any])

PARAMETER = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    "description": (
        "Any 1-255 printable ASCII characters (a random UUID is best): a repeat with the same key and body "
        "gets the first answer again (marked `Idempotent-Replayed: true`) instead of creating a second; the "
        "same key with another body is a 422, and a repeat while the first still runs a 409 with "
        "Retry-After. Answers are kept LORABAKE_IDEMPOTENCY_HOURS (24) per owner; a refusal is not kept."
    ),
}
IN_USE_RESPONSE = {
    "model": ErrorResponse,
    "description": f"`idempotency_key_in_use`: a request with this {HEADER} is still running (Retry-After)",
}


def idempotent(*, secret_fields: Sequence[str] = ()) -> Callable[[F], F]:
    """Marks a route as honouring Idempotency-Key. `secret_fields` of its answer (a key shown once) are
    kept sealed with the Idempotency-Key itself, which is kept only as a hash."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, _MARK, tuple(secret_fields))
        return endpoint

    return mark


class IdempotentRoute(APIRoute):
    """An APIRoute that runs its `@idempotent` endpoints through `honour_key`, and documents the header."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if hasattr(endpoint, _MARK):
            responses = dict(kwargs.get("responses") or {})
            responses[409] = {**responses.get(409, {}), **IN_USE_RESPONSE}
            extra = dict(kwargs.get("openapi_extra") or {})
            extra["parameters"] = [*extra.get("parameters", []), PARAMETER]
            kwargs.update(responses=responses, openapi_extra=extra)
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        secret_fields = getattr(self.endpoint, _MARK, None)
        return handler if secret_fields is None else honour_key(handler, secret_fields)


class KeyInUse(ConflictError):
    code = "idempotency_key_in_use"

    def __init__(self) -> None:
        super().__init__(
            f"a request with this {HEADER} is still in progress; retry after Retry-After for its answer",
            details={"field": HEADER},
        )
        self.retry_after = RETRY_SECONDS


def header_error(message: str, code: str) -> LorabakeError:
    return LorabakeError(message, code=code, details={"field": HEADER}, status_code=422)


def checked_key(raw: str) -> str:
    if not 1 <= len(raw) <= 255 or not all(" " <= ch <= "~" for ch in raw):
        raise header_error(f"{HEADER} must be 1 to 255 printable ASCII characters", "invalid_idempotency_key")
    return raw


class _FormDigest:
    """A multipart body as its parts: each part's headers, then a digest of its data."""

    def __init__(self, boundary: bytes) -> None:
        self.digest = hashlib.sha256()
        self.ended = False
        self._field, self._value = bytearray(), bytearray()
        self._headers, self._data = hashlib.sha256(), hashlib.sha256()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
                "on_header_end": self._header_end,
                "on_part_data": lambda data, start, end: self._data.update(data[start:end]),
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def write(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def _part_begin(self) -> None:
        self._headers, self._data = hashlib.sha256(), hashlib.sha256()

    def _header_end(self) -> None:
        # length-prefixed, so that no two different header lists hash alike
        for piece in (bytes(self._field).lower(), bytes(self._value)):
            self._headers.update(len(piece).to_bytes(4, "big") + piece)
        self._field.clear()
        self._value.clear()

    def _part_end(self) -> None:
        self.digest.update(self._headers.digest() + self._data.digest())

    def _end(self) -> None:
        self.ended = True


class _Body:
    """The request's receive channel, hashing the body as the route reads it."""

    def __init__(self, request: Request) -> None:
        media_type, options = parse_options_header(request.headers.get("content-type", ""))
        query = request.scope.get("query_string", b"").decode("latin-1")
        self.head = f"{request.method} {request.url.path}?{query}\n{media_type.decode('latin-1')}\n"
        self.raw = hashlib.sha256()
        boundary = options.get(b"boundary") if media_type == b"multipart/form-data" else None
        self.form: _FormDigest | None = _FormDigest(boundary) if boundary else None
        self.done = False
        self.size = 0
        self._upstream = request.receive

    async def receive(self) -> Message:
        message = await self._upstream()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self.size += len(chunk)
            self.raw.update(chunk)
            if self.form is not None:
                try:
                    self.form.write(chunk)
                except FormParserError:
                    self.form = None  # not a form after all: its raw bytes stand for it
            self.done = not message.get("more_body", False)
        elif message["type"] == "http.disconnect":
            self.done = True
        return message

    async def drain(self, max_bytes: int | None = None) -> None:
        """Reads what the route left of the body (a repeat's, all of it), so the fingerprint covers it. A
        body over the upload limit cannot be one the route took: a 413, as the route would answer."""
        while not self.done:
            await self.receive()
            if max_bytes is not None and self.size > max_bytes:
                raise PayloadTooLargeError(
                    f"the body exceeds the limit of {max_bytes} bytes", details={"limit_bytes": max_bytes}
                )

    def fingerprint(self) -> str:
        form = self.form if self.form is not None and self.form.ended else None
        body = f"form:{form.digest.hexdigest()}" if form else self.raw.hexdigest()
        return hashlib.sha256(f"{self.head}{body}".encode()).hexdigest()


def _pad(key: str, nonce: str, size: int) -> bytes:
    return hashlib.shake_256(f"lorabake idempotency\0{nonce}\0{key}".encode()).digest(size)


def _xor(data: bytes, pad: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, pad, strict=True))


def seal(value: str, key: str, nonce: str) -> str:
    data = value.encode()
    return base64.b64encode(_xor(data, _pad(key, nonce, len(data)))).decode()


def unseal(value: str, key: str, nonce: str) -> str:
    data = base64.b64decode(value)
    return _xor(data, _pad(key, nonce, len(data))).decode()


def _answer(response: Response, secret_fields: Sequence[str], key: str, nonce: str) -> Any:
    """The JSON body of a 2xx answer as kept (secrets sealed); None when there is none to keep."""
    raw = getattr(response, "body", None)
    if not 200 <= response.status_code < 300 or not isinstance(raw, bytes):
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    for name in secret_fields:
        if isinstance(body, dict) and isinstance(body.get(name), str):
            body[name] = seal(body[name], key, nonce)
    return body


def _replay(held: Held, secret_fields: Sequence[str], key: str) -> Response:
    body = held.body
    if isinstance(body, dict):
        body = {
            k: unseal(v, key, held.token) if k in secret_fields and isinstance(v, str) else v
            for k, v in body.items()
        }
    status = held.status_code or 200
    return JSONResponse(body, status_code=status, headers={**held.headers, REPLAYED: "true"})


async def _keep_claimed(state: AppState, claim: Claim) -> None:
    while True:
        await asyncio.sleep(CLAIM_SECONDS / 3)
        try:
            await run_in_threadpool(renew, state.sessions, claim)
        except Exception as exc:  # the database is down: the claim lapses, as the request will fail
            log.warning("could not renew an idempotency claim: %s", type(exc).__name__)


async def _let_go(state: AppState, claim: Claim) -> None:
    with anyio.CancelScope(shield=True):  # a canceled request lets go too
        try:
            await run_in_threadpool(release, state.sessions, claim)
        except Exception:
            log.warning("could not release an idempotency key; it lapses in %.0f s", CLAIM_SECONDS)


def honour_key(handler: Handler, secret_fields: Sequence[str]) -> Handler:
    async def handle(request: Request) -> Response:
        raw_key = request.headers.get(HEADER)
        if raw_key is None:
            return await handler(request)
        state: AppState = request.app.state.lorabake
        identity = await current_identity(request, state)  # remembered: the route's own check costs nothing
        key = checked_key(raw_key)
        body = _Body(request)
        claim = Claim(identity.owner, key_sha256(key), new_id())
        held = await run_in_threadpool(take, state.sessions, claim)
        if held is not None:
            if held.state != DONE:
                raise KeyInUse()
            await body.drain(state.settings.max_upload_bytes)
            if body.fingerprint() != held.fingerprint:
                raise header_error(
                    f"this {HEADER} was used with another request (method, path or body); "
                    "send a new key for a new request",
                    "idempotency_key_reused",
                )
            return _replay(held, secret_fields, key)

        renewing = asyncio.create_task(_keep_claimed(state, claim))
        try:
            response = await handler(Request(request.scope, body.receive))
        except BaseException:
            await _let_go(state, claim)
            raise
        finally:
            renewing.cancel()
        kept = _answer(response, secret_fields, key, claim.token)
        if kept is None:
            await _let_go(state, claim)
            return response
        await body.drain()  # the route took the request; what it left unread (if anything) is small
        headers = {name: response.headers[name] for name in _KEPT_HEADERS if name in response.headers}
        try:
            await run_in_threadpool(
                finish,
                state.sessions,
                claim,
                body.fingerprint(),
                response.status_code,
                kept,
                headers,
                state.settings.idempotency_hours,
            )
        except Exception:  # what was made stands: the caller gets it now, only a lost answer could repeat it
            log.exception("could not keep an answer for its idempotency key; it lapses unkept")
        return response

    return handle
