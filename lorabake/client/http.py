"""The HTTP underneath the client: the key on each request, errors as LorabakeAPIError, GETs retried after
a 503/429's Retry-After, writes that carry an Idempotency-Key retried with it, streamed responses, and the
artifact redirect to storage."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from lorabake.client.errors import LorabakeAPIError, LorabakeClientError, LorabakeConnectionError

M = TypeVar("M", bound=BaseModel)
_IDEMPOTENT = {"GET", "HEAD"}
_RETRIED_STATUSES = (429, 503)
IDEMPOTENCY_HEADER = "Idempotency-Key"
KEY_IN_USE = "idempotency_key_in_use"  # a 409: the same key's first request is still running
RECONNECT_WAIT = 1.0  # seconds before a keyed write is sent again after its connection failed


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # absent, or an HTTP date (our server sends seconds)


def api_error(response: httpx.Response) -> LorabakeAPIError:
    """The error an answer >= 400 stands for; bodies that are not ours (a proxy's HTML) keep their text."""
    code, message, details = f"http_{response.status_code}", response.text[:300].strip(), {}
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or code)
        message = str(error.get("message") or message)
        details = error.get("details") if isinstance(error.get("details"), dict) else {}
    return LorabakeAPIError(
        response.status_code,
        code,
        message or response.reason_phrase,
        details,
        retry_after=retry_after(response),
        request_id=response.headers.get("x-request-id"),
    )


def _retried(method: str, error: LorabakeAPIError, *, keyed: bool) -> bool:
    if method in _IDEMPOTENT:
        return error.status in _RETRIED_STATUSES
    return keyed and (error.status == 503 or (error.status == 409 and error.code == KEY_IN_USE))


def same_origin(a: str, b: str) -> bool:
    x, y = urlsplit(a), urlsplit(b)
    return (x.scheme, x.hostname, x.port) == (y.scheme, y.hostname, y.port)


class ApiSession:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float,
        retries: int,
        max_retry_wait: float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"User-Agent": "lorabake-client"},
        )

    def close(self) -> None:
        self.http.close()

    @property
    def auth(self) -> dict[str, str]:
        # per request, not a client default: the presigned storage URLs we are redirected to must not get it
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        try:
            return self.http.send(request, stream=stream)
        except httpx.TransportError as exc:
            where = f"{request.url.scheme}://{request.url.netloc.decode()}"
            raise LorabakeConnectionError(f"cannot reach {where}: {str(exc) or type(exc).__name__}") from exc

    def request(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200,),
        timeout: float | None = None,
        idempotency_key: str | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """With `idempotency_key`, a write is sent again with the same key after a lost connection, a 503
        or a 409 `idempotency_key_in_use`: the server answers a repeat with the first answer, so it is never
        done twice. A 429 is not retried (a limit frees slowly: the caller decides)."""
        headers = {**self.auth, **kw.pop("headers", {})}
        if idempotency_key is not None:
            headers[IDEMPOTENCY_HEADER] = idempotency_key
        attempt = 0
        while True:
            request = self.http.build_request(
                method, path, headers=headers, timeout=timeout or self.timeout, **kw
            )
            attempt += 1
            try:
                response = self.send(request)
            except LorabakeConnectionError:
                if idempotency_key is None or attempt > self.retries:
                    raise
                time.sleep(min(self.max_retry_wait, RECONNECT_WAIT))
                continue
            if response.status_code in ok:
                return response
            error = api_error(response)
            if attempt <= self.retries and _retried(method, error, keyed=idempotency_key is not None):
                wait = error.retry_after if error.retry_after is not None else 1.0
                time.sleep(min(self.max_retry_wait, wait))
                continue
            raise error

    def parse(self, model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate(response.json())
        except (ValidationError, json.JSONDecodeError) as exc:
            raise self._unexpected(response, exc) from exc

    def parse_list(self, model: type[M], response: httpx.Response, key: str | None = None) -> list[M]:
        """A JSON list of `model`, or the list under `key` of a JSON object."""
        try:
            body = response.json()
            items = body.get(key) if key is not None and isinstance(body, dict) else body
            if not isinstance(items, list):
                raise ValueError("not a list")
            return [model.model_validate(item) for item in items]
        except (ValidationError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise self._unexpected(response, exc) from exc

    @staticmethod
    def _unexpected(response: httpx.Response, exc: Exception) -> LorabakeClientError:
        return LorabakeClientError(f"unexpected answer from {response.request.url.path}: {exc}"[:500])

    @contextmanager
    def stream(self, path: str, headers: dict[str, str], timeout: httpx.Timeout) -> Iterator[httpx.Response]:
        """A GET whose body is read as it arrives; an error answer raises before anything is yielded."""
        request = self.http.build_request("GET", path, headers={**self.auth, **headers}, timeout=timeout)
        response = self.send(request, stream=True)
        try:
            if response.status_code >= 300:
                response.read()
                raise api_error(response)
            yield response
        finally:
            response.close()

    @contextmanager
    def open_file(self, path: str, offset: int) -> Iterator[httpx.Response]:
        """An artifact's bytes from `offset`. The API redirects (307) to a presigned storage URL, which gets
        the Range header but not our key; or it streams the file itself (ignoring Range: a 200)."""
        ranged = {"Range": f"bytes={offset}-"} if offset else {}
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, 120.0))
        response = self.send(self._get(self._absolute(path), ranged, timeout), stream=True)
        try:
            if response.is_redirect and "location" in response.headers:
                location = urljoin(str(response.request.url), response.headers["location"])
                response.close()
                response = self.send(self._get(location, ranged, timeout), stream=True)
            if response.status_code >= 400:
                response.read()
                raise api_error(response)
            yield response
        finally:
            response.close()

    def _absolute(self, path: str) -> str:
        # as httpx joins a path to base_url: below its path, so a server mounted under a prefix works
        return path if urlsplit(path).scheme else f"{self.base_url}/{path.lstrip('/')}"

    def _get(self, url: str, headers: dict[str, str], timeout: httpx.Timeout) -> httpx.Request:
        """A GET that carries our key only to our server: a presigned storage URL has its own credentials
        (and S3 refuses a request that has two)."""
        auth = self.auth if same_origin(url, self.base_url) else {}
        return self.http.build_request("GET", url, headers={**auth, **headers}, timeout=timeout)
