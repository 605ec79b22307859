"""Downloading one file into place: through a `.part` file, resumed with a Range request where the server
honours one (S3 does; the embedded mode streams the whole file), checked against the recorded sha256.

The `.part` is renamed to its name only once its size and sha256 are right, so a file under its own name is
always whole. A kept prefix can be stale (a re-run of the job replaced the file): when a resumed file does
not match, it is fetched once more from the start before the mismatch is an error.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import httpx

from lorabake.client.errors import ChecksumMismatchError, LorabakeConnectionError

CHUNK = 1024 * 1024
# Opens the file's bytes from `offset` (0: all of it); the response is 206 when the server honoured that.
RangeOpener = Callable[[int], AbstractContextManager[httpx.Response]]
ProgressHook = Callable[[int, int], None]  # (bytes done, bytes in all)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-\d+/(\d+|\*)")


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    size: int
    sha256: str
    resumed_from: int = 0  # bytes of an earlier .part that were kept (0: fetched whole)
    skipped: bool = False  # the file was already there, whole and matching


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: Path, expected_sha256: str) -> None:
    """Raises ChecksumMismatchError unless the file's sha256 is `expected_sha256`."""
    actual = sha256_file(path)
    if actual != expected_sha256.lower():
        raise ChecksumMismatchError(path, expected_sha256, actual)


def download_file(
    target: Path,
    size: int,
    sha256: str,
    open_at: RangeOpener,
    *,
    on_progress: ProgressHook | None = None,
    attempts: int = 3,
) -> DownloadResult:
    """`target` with exactly the recorded bytes; a dropped connection is resumed (`attempts` tries in all)."""
    if target.is_file() and target.stat().st_size == size and sha256_file(target) == sha256:
        if on_progress is not None:
            on_progress(size, size)
        return DownloadResult(target, size, sha256, skipped=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(target)
    offsets: list[int] = []  # where each fetch continued from (0: from the start)
    refetched = False
    tries = 0
    while True:
        tries += 1
        try:
            _fetch_into(part, size, open_at, on_progress, offsets)
        except httpx.TransportError as exc:  # what arrived stays in the .part for the next try
            if tries >= attempts:
                raise LorabakeConnectionError(f"could not download {target.name}: {exc}") from exc
            time.sleep(0.5 * tries)
            continue
        got = part.stat().st_size
        if got != size:
            if got > size:
                part.unlink()
            if tries >= attempts:
                raise LorabakeConnectionError(f"{target.name}: got {got} of {size} bytes")
            continue
        actual = sha256_file(part)
        if actual == sha256:
            part.replace(target)
            return DownloadResult(target, size, sha256, resumed_from=offsets[0] if offsets else 0)
        part.unlink()
        if any(offsets) and not refetched:  # a kept prefix may be of an older file: once more, whole
            refetched, offsets, tries = True, [], tries - 1
            continue
        raise ChecksumMismatchError(target, sha256, actual)


def _fetch_into(
    part: Path, size: int, open_at: RangeOpener, on_progress: ProgressHook | None, offsets: list[int]
) -> None:
    """Appends the missing bytes to `part`, or rewrites it when the server sends the whole file; records in
    `offsets` where it continued from."""
    offset = part.stat().st_size if part.is_file() else 0
    if offset > size:
        part.unlink()
        offset = 0
    if offset == size:  # whole already: the caller checks it
        offsets.append(offset)
        return
    with open_at(offset) as response:
        if offset and not _continues_at(response, offset):
            offset = 0  # 200 (no range support) or a range we did not ask for: start over
        offsets.append(offset)
        done = offset
        with open(part, "ab" if offset else "wb") as out:
            for chunk in response.iter_bytes(CHUNK):
                out.write(chunk)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done, size)


def _continues_at(response: httpx.Response, offset: int) -> bool:
    if response.status_code != 206:
        return False
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", "").strip())
    return match is not None and int(match.group(1)) == offset
