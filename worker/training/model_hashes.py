"""Base-model hashes for ss_sd_model_hash / ss_new_sd_model_hash, as A1111 (and so sd-scripts) computes them.

- ``legacy``: A1111's old "model hash", sd-scripts' ``train_util.model_hash``: the first 8 hex digits of the
  sha256 of the 64 KiB at offset 1 MiB (``ss_sd_model_hash``);
- ``sha256``: A1111's current hash, sd-scripts' ``train_util.calculate_sha256``: the sha256 of the whole
  file, all 64 hex digits (``ss_new_sd_model_hash``; A1111 shows its first 10 as the short hash).

Diffusers folders (and hub snapshots) have no single file A1111 could hash; sd-scripts writes "IsADirectory"
for them, which identifies nothing. Here a folder's ``sha256`` is the sha256 of a manifest listing each
weight file (``*.safetensors``/``*.bin`` one level down, sorted by relative path) with its own sha256, one
``<path>\\t<sha256>\\n`` line each, and ``legacy`` its first 8 hex digits: stable for the same weights and
different for any other weights, though no A1111 checkpoint list will match it.

Hashing a multi-GB file takes seconds to a minute, so results are cached per file by (resolved path, size,
mtime_ns): in memory for the process, and in a JSON file when the caller names one (the worker's data dir),
so a second job on the same base model reads no weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

LEGACY_OFFSET, LEGACY_LENGTH = 0x100000, 0x10000
CHUNK = 1 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin")

_memory: dict[tuple[str, int, int], ModelHashes] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class ModelHashes:
    legacy: str  # ss_sd_model_hash
    sha256: str  # ss_new_sd_model_hash


def hash_file(path: Path) -> ModelHashes:
    """Both hashes of one file, reading it once (A1111 reads it twice)."""
    full = hashlib.sha256()
    window = bytearray()
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            lo, hi = max(LEGACY_OFFSET - offset, 0), min(LEGACY_OFFSET + LEGACY_LENGTH - offset, len(chunk))
            if lo < hi:
                window += chunk[lo:hi]
            full.update(chunk)
            offset += len(chunk)
    return ModelHashes(legacy=hashlib.sha256(window).hexdigest()[:8], sha256=full.hexdigest())


def _key(path: Path) -> tuple[str, int, int]:
    resolved = path.resolve()
    st = resolved.stat()
    return str(resolved), st.st_size, st.st_mtime_ns


def _read_cache(cache_file: Path | None) -> dict[str, dict]:
    if cache_file is None:
        return {}
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or damaged: recompute, never fail a job over a cache
    return data if isinstance(data, dict) else {}


def _write_cache(cache_file: Path, data: dict[str, dict]) -> None:
    """Atomic replace: concurrent workers may lose each other's new entries (recomputed later), but never
    leave a half-written file."""
    with contextlib.suppress(OSError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{cache_file.name}.", dir=cache_file.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, cache_file)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def cached_file_hashes(path: Path, cache_file: Path | None = None) -> ModelHashes:
    """hash_file, unless this (path, size, mtime) was hashed before, in this process or in cache_file."""
    key = _key(Path(path))
    with _lock:
        if key in _memory:
            return _memory[key]
    entry = _read_cache(cache_file).get(key[0])
    if isinstance(entry, dict) and (entry.get("size"), entry.get("mtime_ns")) == key[1:]:
        hashes = ModelHashes(legacy=str(entry["legacy"]), sha256=str(entry["sha256"]))
    else:
        hashes = hash_file(Path(key[0]))
        if cache_file is not None:
            data = _read_cache(cache_file)
            size, mtime_ns = key[1:]
            data[key[0]] = {
                "size": size,
                "mtime_ns": mtime_ns,
                "legacy": hashes.legacy,
                "sha256": hashes.sha256,
            }
            _write_cache(cache_file, data)
    with _lock:
        _memory[key] = hashes
    return hashes


def folder_weight_files(folder: Path) -> list[Path]:
    """The weight files of a diffusers pipeline folder: <component>/<name>.safetensors|.bin, sorted."""
    files = [p for p in folder.glob("*/*") if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def base_model_hashes(path: Path, cache_file: Path | None = None) -> ModelHashes:
    """The hashes of a single-file checkpoint, or the manifest hashes of a diffusers folder (module doc)."""
    path = Path(path)
    if not path.is_dir():
        return cached_file_hashes(path, cache_file)
    manifest = "".join(
        f"{p.relative_to(path).as_posix()}\t{cached_file_hashes(p, cache_file).sha256}\n"
        for p in folder_weight_files(path)
    )
    digest = hashlib.sha256(manifest.encode("utf-8")).hexdigest()
    return ModelHashes(legacy=digest[:8], sha256=digest)
