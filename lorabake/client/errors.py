"""What the client raises. Every failure is a LorabakeClientError, so a caller can catch one type."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class LorabakeClientError(Exception):
    """Base of every error the client raises."""


class LorabakeConnectionError(LorabakeClientError):
    """The server could not be reached (refused, DNS, TLS, timed out, connection dropped)."""


class LorabakeAPIError(LorabakeClientError):
    """The server answered with an error body: `{"error": {"code", "message", "details"}}`.

    `retry_after` (seconds) is set on 503 and 429 answers that carry `Retry-After`: the server asks to be
    tried again after that long (a database, storage or broker outage; nothing was stored)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        *,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message} (HTTP {status})")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.retry_after = retry_after
        self.request_id = request_id

    @property
    def fields(self) -> list[str]:
        """The request fields a 4xx names (`config.network_dim`, `cursor`...), from both shapes of details."""
        named = [f.get("field", "") for f in self.details.get("fields", []) if isinstance(f, dict)]
        if isinstance(self.details.get("field"), str):
            named.append(self.details["field"])
        return [f for f in named if f]


class ChecksumMismatchError(LorabakeClientError):
    """A downloaded file's sha256 is not the one the server recorded for it; the bad copy was removed."""

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        super().__init__(f"{path.name}: sha256 {actual} does not match the recorded {expected}")
        self.path = path
        self.expected = expected
        self.actual = actual
