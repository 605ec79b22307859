"""Automatic captioning of a dataset's training images: BLIP sentences or WD14 tags (Kohya's two captioners),
or captions from a vision-language model (Florence-2, Qwen2.5-VL / Qwen3-VL, JoyCaption).

``runner.caption_dataset`` is the entry point. This package root stays light (no torch, no onnxruntime): it
holds the errors and the model lookup that every captioner shares, so callers can catch the errors cheaply.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from shared.catalogue.captioners import download_command
from shared.errors import LorabakeError

# org/name, as in worker.training.model_loading (a hub repo id, never a path with more parts).
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class CaptionModelUnavailable(LorabakeError):
    """The captioning model cannot be found or loaded; the message says what was looked for, and where."""

    status_code = 422
    code = "caption_model_unavailable"

    def __init__(self, kind: str, ref: str, reason: str, command: str | None = None) -> None:
        self.kind = kind
        self.ref = ref
        self.reason = reason
        self.command = command
        details = {"caption_model": ref, "method": kind.lower()}
        if command:
            details["download_command"] = command
        super().__init__(
            f"{kind} captioning model {ref!r} is not available: {reason}"
            + (f"; to get it, run on the worker: {command}" if command else ""),
            details=details,
        )


class CaptionSetupError(LorabakeError):
    """The caption config cannot run on this worker (a precision its device lacks, a missing library)."""

    status_code = 422
    code = "caption_setup_error"

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message, details={"field": field})


class CaptioningCanceled(Exception):
    """should_cancel() turned true between batches; nothing was returned, so no caption was changed."""

    def __init__(self, done: int, total: int) -> None:
        self.done = done
        self.total = total
        super().__init__(f"captioning canceled after {done} of {total} images")


def _is_within(path: Path, root: Path) -> bool:
    # Lexical check (no symlink resolution): symlinks the operator put in models_dir are allowed on purpose.
    return Path(os.path.normpath(path)).is_relative_to(Path(os.path.normpath(root)))


def _missing(folder: Path, required: Sequence[str]) -> list[str]:
    return [name for name in required if not (folder / name).is_file()]


def resolve_caption_model(
    kind: str,
    ref: str,
    models_dir: Path,
    *,
    required_files: Sequence[str],
    download_patterns: Sequence[str],
    allow_download: bool = False,
    cache_dir: Path | None = None,
) -> Path:
    """The folder holding the captioning model ``ref``, with every file in ``required_files``.

    Looked for, first match wins (the rules of ``resolve_base_model``, plus Kohya's tagger folder name):

    1. ``models_dir/ref`` (a relative path; an absolute path must lie inside models_dir; no ``..``);
    2. for a hub id ``org/name``: ``models_dir/org_name`` (where Kohya's tagger script keeps its models);
    3. for a hub id: the Hugging Face cache (``cache_dir`` or the default one); with ``allow_download`` the
       files matching ``download_patterns`` are fetched first when missing.

    Raises CaptionModelUnavailable naming every place looked at and, for a hub id, the ``hf download``
    command that puts the model where (1) finds it.
    """
    try:
        return _resolve(kind, ref, models_dir, required_files, download_patterns, allow_download, cache_dir)
    except CaptionModelUnavailable as exc:
        if exc.command is not None or not _HUB_REPO_ID.match(exc.ref):
            raise
        command = download_command(exc.ref, Path(models_dir), download_patterns)
        raise CaptionModelUnavailable(exc.kind, exc.ref, exc.reason, command) from exc.__cause__


def _resolve(
    kind: str,
    ref: str,
    models_dir: Path,
    required_files: Sequence[str],
    download_patterns: Sequence[str],
    allow_download: bool,
    cache_dir: Path | None,
) -> Path:
    models_dir = Path(models_dir)
    ref = ref.strip() if isinstance(ref, str) else ""
    if not ref or "\x00" in ref:
        raise CaptionModelUnavailable(kind, ref, "empty or invalid reference")
    raw = Path(ref)
    if ".." in raw.parts:
        raise CaptionModelUnavailable(kind, ref, f"path escapes the models folder {models_dir} ('..')")
    is_hub_id = not raw.is_absolute() and bool(_HUB_REPO_ID.match(ref))
    if raw.is_absolute():
        if not (_is_within(raw, models_dir) or _is_within(raw, models_dir.resolve())):
            raise CaptionModelUnavailable(
                kind, ref, f"absolute path is outside the models folder {models_dir}"
            )
        candidates = [raw]
    else:
        candidates = [models_dir / raw]
        if is_hub_id:
            candidates.append(models_dir / ref.replace("/", "_"))
    for folder in candidates:
        if folder.is_dir():
            missing = _missing(folder, required_files)
            if missing:
                raise CaptionModelUnavailable(kind, ref, f"{folder} has no {', '.join(missing)}")
            return folder
    looked = ", ".join(str(c) for c in candidates)
    if not is_hub_id:
        raise CaptionModelUnavailable(kind, ref, f"no model folder at {looked}")
    return _from_hub_cache(kind, ref, looked, required_files, download_patterns, allow_download, cache_dir)


def _from_hub_cache(
    kind: str,
    ref: str,
    looked: str,
    required_files: Sequence[str],
    download_patterns: Sequence[str],
    allow_download: bool,
    cache_dir: Path | None,
) -> Path:
    from huggingface_hub import snapshot_download

    cache = (
        f"the Hugging Face cache {cache_dir}" if cache_dir is not None else "the default Hugging Face cache"
    )
    how = "downloads allowed" if allow_download else "downloads are disabled"
    try:
        snapshot = Path(snapshot_download(ref, cache_dir=cache_dir, local_files_only=True))
        missing = _missing(snapshot, required_files)
    except Exception:
        snapshot, missing = None, list(required_files)
    if missing and allow_download:
        try:
            snapshot = Path(
                snapshot_download(ref, cache_dir=cache_dir, allow_patterns=list(download_patterns))
            )
            missing = _missing(snapshot, required_files)
        except Exception as exc:
            raise CaptionModelUnavailable(
                kind,
                ref,
                f"not found at {looked}; downloading it into {cache} failed: {type(exc).__name__}: {exc}",
            ) from exc
    if snapshot is None or missing:
        found = f"cached snapshot {snapshot} lacks {', '.join(missing)}" if snapshot else "not there"
        raise CaptionModelUnavailable(
            kind,
            ref,
            f"looked for a folder at {looked}, then for hub repo {ref!r} in {cache}: {found} ({how}); "
            "put the model under the models folder or pre-fill the cache",
        )
    return snapshot
