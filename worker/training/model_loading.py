"""Find and load the base model a training job asks for, offline, failing before any training starts.

A job's ``base_model`` reference is one of:

- a path relative to ``models_dir`` (or an absolute path inside it) naming a diffusers folder (with
  ``model_index.json``) or a single-file checkpoint (``.safetensors`` / ``.ckpt``);
- a hub repo id such as ``runwayml/stable-diffusion-v1-5``, used only if it is already in the Hugging Face
  cache (nothing is downloaded).

Every failure is raised as :class:`BaseModelError`, whose message names what was asked for and why it failed.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import StableDiffusionPipeline

from shared.errors import LorabakeError

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
SHARED_SD15_CONFIG = Path("configs") / "sd15"
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class BaseModelError(LorabakeError):
    """The requested base model cannot be found or loaded (the project's error shape: code + message)."""

    status_code = 422
    code = "base_model"

    def __init__(self, ref: str, reason: str) -> None:
        self.ref = ref
        self.reason = reason
        super().__init__(f"base model {ref!r}: {reason}", details={"base_model": ref})


@dataclass(frozen=True)
class ResolvedModel:
    ref: str  # what the job asked for, verbatim
    kind: Literal["diffusers", "single_file"]
    source: Literal["local", "hub"]
    path: Path  # the diffusers folder (for hub ids: the cached snapshot) or the single file
    models_dir: Path

    @property
    def repo_id(self) -> str | None:
        return self.ref if self.source == "hub" else None


def _is_within(path: Path, root: Path) -> bool:
    # Lexical check (no symlink resolution): symlinks the operator put in models_dir are allowed on purpose.
    return Path(os.path.normpath(path)).is_relative_to(Path(os.path.normpath(root)))


def _classify_local(ref: str, path: Path, models_dir: Path) -> ResolvedModel:
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise BaseModelError(
                ref, f"{path} is a folder without model_index.json (not a diffusers model folder)"
            )
        return ResolvedModel(ref, "diffusers", "local", path, models_dir)
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise BaseModelError(
            ref,
            f"{path.name} is not a supported single-file checkpoint "
            f"(expected {', '.join(SINGLE_FILE_SUFFIXES)})",
        )
    return ResolvedModel(ref, "single_file", "local", path, models_dir)


def _resolve_hub(ref: str, models_dir: Path, cache_dir: Path | None) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    try:
        # local_files_only: only what is already cached; downloads are never started from here.
        snapshot = Path(snapshot_download(ref, cache_dir=cache_dir, local_files_only=True))
    except Exception as exc:
        raise BaseModelError(
            ref,
            f"looks like a hub repo id but is not in the Hugging Face cache ({cache_dir or 'default cache'}) "
            f"and downloads are disabled; put the model under {models_dir} or pre-fill the cache "
            f"({type(exc).__name__})",
        ) from exc
    if not (snapshot / "model_index.json").is_file():
        raise BaseModelError(
            ref, f"cached snapshot {snapshot} has no model_index.json (not a diffusers pipeline)"
        )
    return ResolvedModel(ref, "diffusers", "hub", snapshot, models_dir)


def resolve_base_model(ref: str, models_dir: Path, cache_dir: Path | None = None) -> ResolvedModel:
    """Classify ``ref`` and check it exists; raise BaseModelError otherwise.

    Local paths win over hub ids: ``org/name`` is a hub id only if ``models_dir/org/name`` does not exist.
    Paths may not leave ``models_dir`` (no ``..``; absolute paths must lie inside it). ``cache_dir``
    overrides the Hugging Face cache location for hub ids.
    """
    models_dir = Path(models_dir)
    if not isinstance(ref, str) or not ref.strip() or "\x00" in ref:
        raise BaseModelError(str(ref), "empty or invalid reference")
    ref = ref.strip()
    raw = Path(ref)
    if ".." in raw.parts:
        raise BaseModelError(ref, f"path escapes the models folder {models_dir} ('..' is not allowed)")
    if raw.is_absolute():
        if not (_is_within(raw, models_dir) or _is_within(raw, models_dir.resolve())):
            raise BaseModelError(ref, f"absolute path is outside the models folder {models_dir}")
        path = raw
    else:
        path = models_dir / raw
    if path.exists():
        return _classify_local(ref, path, models_dir)
    if not raw.is_absolute() and _HUB_REPO_ID.match(ref) and raw.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        return _resolve_hub(ref, models_dir, cache_dir)
    raise BaseModelError(ref, f"file not found: {path}")


def find_single_file_config(resolved: ResolvedModel, config_dir: Path | None = None) -> Path:
    """The diffusers folder whose configs (and tokenizer/scheduler) go with a single-file checkpoint.

    Single files hold weights only; diffusers needs a config folder and must not fetch one from the hub.
    First match wins:

    1. ``config_dir`` given by the caller;
    2. ``<stem>.config/`` next to the file (``models/foo.safetensors`` -> ``models/foo.config/``);
    3. ``<stem>.config/`` at the top of models_dir;
    4. ``configs/sd15/`` under models_dir (one shared SD1.5 config for all SD1.x single files).

    Each must be a diffusers pipeline folder (model_index.json, unet/vae/text_encoder/tokenizer/scheduler
    configs); weights in it are not needed.
    """
    if config_dir is not None:
        if not (Path(config_dir) / "model_index.json").is_file():
            raise BaseModelError(resolved.ref, f"config folder {config_dir} has no model_index.json")
        return Path(config_dir)
    stem_dir = resolved.path.stem + ".config"
    candidates = [
        resolved.path.parent / stem_dir,
        resolved.models_dir / stem_dir,
        resolved.models_dir / SHARED_SD15_CONFIG,
    ]
    for candidate in candidates:
        if (candidate / "model_index.json").is_file():
            return candidate
    raise BaseModelError(
        resolved.ref,
        "single-file checkpoint has no diffusers config folder; looked for model_index.json in "
        + ", ".join(str(c) for c in candidates),
    )


def _check_pipeline_class(resolved: ResolvedModel, folder: Path) -> None:
    try:
        class_name = json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError) as exc:
        raise BaseModelError(resolved.ref, f"unreadable {folder / 'model_index.json'}: {exc}") from exc
    if class_name != "StableDiffusionPipeline":
        raise BaseModelError(
            resolved.ref, f"{folder} holds a {class_name}, expected a StableDiffusionPipeline (SD1.x)"
        )


def _check_ckpt_is_weights_only(resolved: ResolvedModel) -> None:
    """Refuse a .ckpt whose pickle needs more than tensors/containers/numbers (i.e. could run code).

    diffusers itself loads .ckpt with weights_only=True, but swallows the reason into a generic OSError; this
    gate gives a clear message and keeps the guarantee in our code. mmap keeps it cheap on multi-GB files.
    """
    try:
        torch.load(
            resolved.path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(resolved.path)
        )
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BaseModelError(
            resolved.ref,
            f"refusing to load {resolved.path}: it cannot be read with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {first_line[:300]}); convert it to .safetensors with a trusted tool",
        ) from exc


def load_sd15_pipeline(
    resolved: ResolvedModel, dtype: torch.dtype = torch.float32, config_dir: Path | None = None
) -> StableDiffusionPipeline:
    """Load an SD1.x pipeline offline (``local_files_only``) from a resolved reference.

    - diffusers folders (and cached hub snapshots): ``from_pretrained``;
    - single files: ``from_single_file(config=...)`` with the config folder chosen by
      :func:`find_single_file_config` (``config_dir`` first). ``.ckpt`` files are pickles: they are first
      checked with ``torch.load(weights_only=True)`` here, and diffusers 0.42 also reads them that way
      (``diffusers.models.model_loading_utils.load_state_dict``), so a pickle that needs anything but
      tensors/containers/numbers is refused, never executed; tests pin both.

    The safety checker is never loaded: training does not use it, and it is ~1.2 GB on the real SD1.5.
    Any failure is raised as BaseModelError.
    """
    kwargs = {
        "dtype": dtype,
        "local_files_only": True,
        "safety_checker": None,
        "requires_safety_checker": False,
    }
    try:
        if resolved.kind == "diffusers":
            _check_pipeline_class(resolved, resolved.path)
            pipe = StableDiffusionPipeline.from_pretrained(resolved.path, **kwargs)
        else:
            config = find_single_file_config(resolved, config_dir)
            _check_pipeline_class(resolved, config)
            if resolved.path.suffix.lower() == ".ckpt":
                _check_ckpt_is_weights_only(resolved)
            pipe = StableDiffusionPipeline.from_single_file(str(resolved.path), config=str(config), **kwargs)
    except BaseModelError:
        raise
    except Exception as exc:
        raise BaseModelError(
            resolved.ref, f"failed to load {resolved.path}: {type(exc).__name__}: {exc}"
        ) from exc
    return pipe
