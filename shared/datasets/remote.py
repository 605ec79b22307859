"""Dataset zips that arrive other than in the request body: an object in storage (an upload put straight
there) or an http(s) URL the service fetches. Either ends as a local temp file with its size and sha256,
which then goes through the same checks as a zip uploaded to the API.

The URL is fetched under the same rules as webhooks (shared/net/public_http.py): public hosts only, checked
at every connection (redirects included), no proxies from the environment, bounded connect and read times,
plus a deadline for the whole download and the upload size cap.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import httpx

from shared.errors import LorabakeError, PayloadTooLargeError
from shared.net.public_http import (
    BlockedAddress,
    TooLarge,
    UnsafeURL,
    capped_bytes,
    check_url,
    private_host_refused,
    public_client,
)


@dataclass(frozen=True)
class LocalZip:
    path: Path
    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class FetchLimits:
    max_bytes: int
    timeout_seconds: float  # connect, and each read
    max_seconds: float  # the whole download
    allow_private: bool = False


def too_large(field: str, max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{field}: the dataset is larger than the limit of {max_bytes} bytes",
        details={"field": field, "limit_bytes": max_bytes},
    )


def copy_capped(
    chunks: Iterable[bytes], directory: Path, filename: str, max_bytes: int, field: str
) -> LocalZip:
    """`chunks` written to a new temp file in `directory`, hashed on the way; past `max_bytes` the file is
    removed and a 413 naming `field` raised. On any error nothing is left on disk."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".zip", delete=False) as out:
        path = Path(out.name)
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise too_large(field, max_bytes)
                digest.update(chunk)
                out.write(chunk)
        except BaseException:
            out.close()
            path.unlink(missing_ok=True)
            raise
    return LocalZip(path, filename, size, digest.hexdigest())


def url_filename(url: str) -> str:
    """The last segment of the URL's path (what the dataset is named after), or dataset.zip."""
    name = unquote(httpx.URL(url).path.rsplit("/", 1)[-1])
    return name or "dataset.zip"


def _refused(message: str, code: str, field: str, **details: object) -> LorabakeError:
    return LorabakeError(message, code=code, details={"field": field, **details}, status_code=422)


def _deadline_chunks(
    chunks: Iterable[bytes], deadline: float, field: str, max_seconds: float
) -> Iterable[bytes]:
    # httpx's timeouts bound each read; a server that trickles bytes forever is cut off here
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise _refused(
                f"{field}: the download took longer than {max_seconds:g} s", "dataset_url_timeout", field
            )
        yield chunk


def fetch_zip(url: str, directory: Path, limits: FetchLimits, field: str = "dataset_url") -> LocalZip:
    """The zip at `url` as a local temp file. Every failure is a 4xx naming `field`: 422 for a URL that is
    not allowed, cannot be reached or does not answer 2xx, 413 for a body over `limits.max_bytes`."""
    check_url(url, field, allow_private=limits.allow_private)
    deadline = time.monotonic() + limits.max_seconds
    headers = {"Accept-Encoding": "identity", "User-Agent": "lorabake"}  # zips are compressed already
    try:
        with (
            public_client(
                allow_private=limits.allow_private, timeout=limits.timeout_seconds, follow_redirects=True
            ) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if not response.is_success:
                raise _refused(
                    f"{field}: the server answered {response.status_code} {response.reason_phrase}",
                    "dataset_url_failed",
                    field,
                    status=response.status_code,
                )
            body = _deadline_chunks(
                capped_bytes(response, limits.max_bytes), deadline, field, limits.max_seconds
            )
            return copy_capped(body, directory, url_filename(url), limits.max_bytes, field)
    except TooLarge as exc:
        raise too_large(field, limits.max_bytes) from exc
    except httpx.TooManyRedirects as exc:
        raise _refused(f"{field}: too many redirects", "dataset_url_failed", field) from exc
    except httpx.TimeoutException as exc:
        raise _refused(
            f"{field}: the server did not answer within {limits.timeout_seconds:g} s",
            "dataset_url_unreachable",
            field,
        ) from exc
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        message = f"{field}: a redirect led to a URL that is not http(s)"
        raise UnsafeURL(message, details={"field": field}) from exc
    except httpx.TransportError as exc:
        if isinstance(exc.__cause__, BlockedAddress) or isinstance(exc.__context__, BlockedAddress):
            raise private_host_refused(field, "leads to an address that is not public") from exc
        raise _refused(f"{field}: cannot fetch it: {exc}", "dataset_url_unreachable", field) from exc
    except httpx.HTTPError as exc:  # the rest of what a server can make httpx raise (a body it cannot decode)
        raise _refused(f"{field}: cannot read its answer: {exc}", "dataset_url_failed", field) from exc
