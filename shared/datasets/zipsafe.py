"""Open uploaded dataset zips without trusting them.

Everything is judged from the central directory before a byte is extracted (paths, links, encryption,
declared sizes, compression ratios), and extraction then counts the bytes it really writes, because
headers can lie. Stdlib only, so the API can inspect an upload and the worker can extract it.
"""

from __future__ import annotations

import lzma
import os
import re
import stat
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.datasets.layout import is_junk
from shared.datasets.problems import Problems
from shared.errors import DatasetError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Small entries compress absurdly well legitimately (a caption of spaces); judge ratios above this size.
RATIO_MIN_SIZE = 1 * MiB
_CHUNK = 1 * MiB
_DRIVE = re.compile(r"^[A-Za-z]:")
_SUPPORTED_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_MAX_NAME_BYTES = 255  # one path component, as most filesystems allow
# What zipfile raises reading a member whose data is damaged (bad CRC, truncated or invalid stream).
_READ_ERRORS = (zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)


@dataclass(frozen=True)
class ZipLimits:
    max_entries: int = 10_000
    max_total_uncompressed: int = 4 * GiB
    max_entry_uncompressed: int = 256 * MiB
    max_compression_ratio: float = 100.0
    max_image_pixels: int = 64_000_000  # not used here: callers pass it to shared.datasets.images.probe_image


def inspect_zip(path: Path, limits: ZipLimits) -> list[str]:
    """Validate the archive without extracting; return its file names in archive order.

    Names come back exactly as stored (they must be canonical: no `.` or empty parts); folders and junk
    (`__MACOSX/`, `.DS_Store`, hidden files, see `dataset_layout.is_junk`) are left out, and `extract_zip`
    skips them too. Every problem found is raised at once (shared.datasets.problems).
    """
    problems = Problems()
    names = scan_zip(path, limits, problems)
    problems.raise_any()
    return names


def scan_zip(path: Path, limits: ZipLimits, problems: Problems) -> list[str]:
    """`inspect_zip` that adds what is wrong to `problems` and returns the names of the entries that passed,
    so the caller can go on checking them. An archive that cannot be listed at all still raises."""
    with _open_zip(path, limits) as zf:
        return [name for name, _ in _validate(zf, limits, problems)]


def extract_zip(path: Path, dest: Path, limits: ZipLimits) -> list[str]:
    """Validate, then stream each kept member into `dest`; returns the extracted relative paths.

    Regular files only: links are never created or followed, and every target must resolve inside `dest`.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written_total = 0
    names: list[str] = []
    problems = Problems()
    with _open_zip(path, limits) as zf:
        kept = _validate(zf, limits, problems)
        problems.raise_any()
        for name, info in kept:
            budget = min(limits.max_entry_uncompressed, limits.max_total_uncompressed - written_total)
            written_total += _extract_member(zf, info, name, _target(root, name), budget, limits)
            names.append(name)
    return names


# --- validation ----------------------------------------------------------------------------------------


def _open_zip(path: Path, limits: ZipLimits) -> zipfile.ZipFile:
    """Open the archive, refusing a huge entry count from the end record before zipfile lists them all."""
    try:
        with open(path, "rb") as fp:
            declared = _declared_entry_count(fp)
        if declared is not None and declared > limits.max_entries:
            raise _too_many(declared, limits)
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise DatasetError(f"The upload is not a readable zip archive ({exc}).", code="not_a_zip") from exc


def _declared_entry_count(fp: BinaryIO) -> int | None:
    """Entry count from the end record. Uses zipfile's private reader (handles zip64, stable for decades);
    if a future Python drops it we fall back to counting after zipfile has parsed the directory."""
    try:
        reader, index = zipfile._EndRecData, zipfile._ECD_ENTRIES_TOTAL  # type: ignore[attr-defined]
    except AttributeError:
        return None
    end = reader(fp)
    if end is None:
        raise zipfile.BadZipFile("no end of central directory record")
    return int(end[index])


def _too_many(count: int, limits: ZipLimits) -> DatasetError:
    return DatasetError(
        f"The zip has {count} entries; at most {limits.max_entries} are allowed.",
        code="too_many_entries",
        status_code=413,
    )


def _validate(
    zf: zipfile.ZipFile, limits: ZipLimits, problems: Problems
) -> list[tuple[str, zipfile.ZipInfo]]:
    """Check every entry, adding each one's first problem to `problems`; return `(name, info)` for the
    regular, non-junk files that passed. Past the total size limit the rest is not looked at (a bomb)."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise _too_many(len(infos), limits)
    kept: list[tuple[str, zipfile.ZipInfo]] = []
    seen: dict[str, str] = {}
    offsets: set[int] = set()
    total = compressed = 0
    for info in infos:
        raw = info.orig_filename  # zipfile cuts `filename` at a NUL; the original keeps it for us to see
        total += info.file_size
        compressed += info.compress_size
        if total > limits.max_total_uncompressed:
            limit = limits.max_total_uncompressed
            problems.add(_bomb(f"The zip unpacks to more than {limit} bytes (limit), at {raw!r}.", raw))
            return kept
        try:
            name = _safe_name(raw)
            _check_entry_kind(info, raw)
            _check_entry_size(info, raw, limits)
            if info.header_offset in offsets:  # overlapping entries: one compressed blob counted many times
                raise _bomb(f"{raw!r} shares its data with another entry (overlapping-entry zip bomb).", raw)
            offsets.add(info.header_offset)
            if raw.endswith("/") or is_junk(name):
                continue
            _check_unique(name, raw, seen)
        except DatasetError as exc:
            problems.add(exc)
            continue
        kept.append((name, info))
    _check_overall_ratio(total, compressed, limits, problems)
    return _without_file_dir_clashes(kept, problems)


def _safe_name(raw: str) -> str:
    """The member's name if it is a plain relative path; `unsafe_path` for anything that could escape."""

    def unsafe(why: str) -> DatasetError:
        return DatasetError(f"Unsafe path in zip: {raw!r} ({why}).", code="unsafe_path", entry=raw)

    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise unsafe("control or NUL character")
    if "\\" in raw:
        raise unsafe("backslash; paths must use '/'")
    if raw.startswith("/"):
        raise unsafe("absolute path")
    if _DRIVE.match(raw):
        raise unsafe("drive letter")
    parts = (raw[:-1] if raw.endswith("/") else raw).split("/")  # a folder entry ends with "/"
    if ".." in parts:
        raise unsafe("'..' component")
    if any(p in ("", ".") for p in parts):
        # Callers open members by the name we return, so it must be the archive's own, already canonical.
        raise unsafe("empty or '.' component")
    if any(len(p.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES for p in parts):
        raise unsafe(f"a path component longer than {_MAX_NAME_BYTES} bytes")
    return raw.rstrip("/")


def _check_entry_kind(info: zipfile.ZipInfo, raw: str) -> None:
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DatasetError(
            f"{raw!r} is a symbolic link; links are not allowed.", code="symlink_entry", entry=raw
        )
    if info.flag_bits & 0x1:
        raise DatasetError(
            f"{raw!r} is encrypted; upload a zip without a password.", code="encrypted_entry", entry=raw
        )
    if info.compress_type not in _SUPPORTED_METHODS:
        raise DatasetError(
            f"{raw!r} uses compression method {info.compress_type}; use deflate or store.",
            code="unsupported_compression",
            entry=raw,
        )


def _check_entry_size(info: zipfile.ZipInfo, raw: str, limits: ZipLimits) -> None:
    if info.file_size > limits.max_entry_uncompressed:
        raise _bomb(
            f"{raw!r} unpacks to {info.file_size} bytes; per-file limit {limits.max_entry_uncompressed}.",
            raw,
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > RATIO_MIN_SIZE and ratio > limits.max_compression_ratio:
        raise _bomb(
            f"{raw!r} expands {ratio:.0f}x when unpacked; the limit is {limits.max_compression_ratio:g}x.",
            raw,
        )


def _check_overall_ratio(total: int, compressed: int, limits: ZipLimits, problems: Problems) -> None:
    ratio = total / max(compressed, 1)
    if total > RATIO_MIN_SIZE and ratio > limits.max_compression_ratio:
        limit = limits.max_compression_ratio
        problems.add(_bomb(f"The zip expands {ratio:.0f}x when unpacked; the limit is {limit:g}x.", None))


def _check_unique(name: str, raw: str, seen: dict[str, str]) -> None:
    key = unicodedata.normalize("NFC", name)  # macOS writes NFD: "é" twice would look like one file
    if key in seen:
        raise DatasetError(f"{raw!r} duplicates {seen[key]!r} in the zip.", code="duplicate_entry", entry=raw)
    seen[key] = raw


def _without_file_dir_clashes(
    kept: list[tuple[str, zipfile.ZipInfo]], problems: Problems
) -> list[tuple[str, zipfile.ZipInfo]]:
    """`a` as a file and `a/b` as another file cannot both be extracted: each such `a` is a problem."""
    files = {unicodedata.normalize("NFC", name): name for name, _ in kept}
    clashing: set[str] = set()
    for key, name in files.items():
        parent = key.rpartition("/")[0]
        while parent:
            if parent in files and files[parent] not in clashing:
                clashing.add(files[parent])
                problems.add(
                    DatasetError(
                        f"{files[parent]!r} is both a file and the folder of {name!r}.",
                        code="duplicate_entry",
                        entry=files[parent],
                    )
                )
            parent = parent.rpartition("/")[0]
    return [(name, info) for name, info in kept if name not in clashing]


def _bomb(message: str, entry: str | None) -> DatasetError:
    return DatasetError(message, code="zip_bomb", entry=entry, status_code=413)


# --- extraction ----------------------------------------------------------------------------------------


def _target(root: Path, name: str) -> Path:
    """The file's path under `root`, its folders created; refuses anything resolving outside `root`."""
    target = root.joinpath(*name.split("/"))
    if not target.parent.resolve().is_relative_to(root):  # resolve() sees through any link on the way
        raise DatasetError(
            f"{name!r} would be written outside the dataset folder.", code="unsafe_path", entry=name
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _extract_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, target: Path, budget: int, limits: ZipLimits
) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags, 0o644)
    except FileExistsError as exc:
        raise DatasetError(
            f"{name!r} already exists in the dataset folder.", code="duplicate_entry", entry=name
        ) from exc
    try:
        with os.fdopen(fd, "wb") as dst, zf.open(info) as src:
            return copy_limited(
                _chunks(src, name), dst, declared=info.file_size, budget=budget, entry=name, limits=limits
            )
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _chunks(src: BinaryIO, name: str) -> Iterator[bytes]:
    """The member's decompressed bytes; damaged data (bad CRC, truncated stream) is the uploader's problem."""
    while True:
        try:
            chunk = src.read(_CHUNK)
        except _READ_ERRORS as exc:
            raise _damaged(name, exc) from exc
        if not chunk:
            return
        yield chunk


def read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    """A member `scan_zip` kept (so within the size limits), whole; damaged data is a `corrupt_entry`."""
    try:
        return zf.read(name)
    except _READ_ERRORS as exc:
        raise _damaged(name, exc) from exc


def _damaged(name: str, exc: BaseException) -> DatasetError:
    return DatasetError(f"{name!r} is damaged in the zip ({exc}).", code="corrupt_entry", entry=name)


def copy_limited(
    chunks: Iterator[bytes], dst: BinaryIO, *, declared: int, budget: int, entry: str, limits: ZipLimits
) -> int:
    """Write chunks to `dst`, stopping at the first byte beyond the declared size or the byte budget."""
    written = 0
    for chunk in chunks:
        written += len(chunk)
        if written > declared:
            raise _bomb(f"{entry!r} unpacks to more than the {declared} bytes its header declares.", entry)
        if written > budget:
            raise _bomb(
                f"{entry!r} goes past the unpacked size limits (per file {limits.max_entry_uncompressed}, "
                f"total {limits.max_total_uncompressed} bytes).",
                entry,
            )
        dst.write(chunk)
    return written
