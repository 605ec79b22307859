"""What base models a worker can train on, and what captioners it can caption with: the models folder and
the Hugging Face cache, read without torch.

Listed, with the name `base_model` takes:
- a diffusers folder (model_index.json of an SD1.x/SD2.x/SDXL or FLUX.1 pipeline), at the top of the models
  folder or one folder down (`models/sdxl/my-model/`);
- a single-file checkpoint (`.safetensors`, read from its header; `.ckpt`, whose family is only known
  when a job loads it, since reading its keys means unpickling);
- a hub repo in the Hugging Face cache whose snapshot is a diffusers pipeline (what a hub id loads
  offline);
- a captioner (kind `captioner`, not a base model): a BLIP, Florence-2, Qwen-VL or LLaVA (JoyCaption) folder
  in transformers' format, or a WD14 tagger folder, where the worker's captioning looks (captioners.py).

Not listed: `configs/` and `<stem>.config/` folders (configs for single files), other pipelines, LoRA or
VAE files, hidden entries. A file is read again only when its size or mtime changed, so a rescan is cheap.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.catalogue.captioners import captioner_method
from shared.catalogue.families import (
    SHARED_CONFIGS,
    SINGLE_FILE_SUFFIXES,
    ModelFamily,
    UnsupportedPipeline,
    config_candidates,
    family_from_keys,
    family_from_pipeline_configs,
    read_prediction_type,
    safetensors_shapes,
)

log = logging.getLogger("lorabake.worker")

_CONFIG_FOLDERS = {str(path.parts[0]) for path in SHARED_CONFIGS.values()}  # "configs"


@dataclass(frozen=True)
class ModelEntry:
    name: str  # what `base_model` takes: a path relative to the models folder, or a hub repo id
    family: ModelFamily | None  # None: a .ckpt, read when a job loads it
    prediction_type: str | None  # epsilon / v_prediction; None: not known until a job sets or loads it
    kind: Literal["diffusers", "single_file", "captioner"]
    source: Literal["local", "hub_cache"]
    size_bytes: int
    captioner: str | None = None  # kind captioner: the method it serves (blip, wd14, florence2, ...)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size  # follows the HF cache's blob links
            except OSError:
                continue
    return total


def pipeline_entry(folder: Path, name: str, source: Literal["local", "hub_cache"]) -> ModelEntry | None:
    """A diffusers folder as an entry, None when it is not an SD1.x/SD2.x/SDXL or FLUX.1 pipeline."""
    model_index = _read_json(folder / "model_index.json")
    if not model_index:
        return None
    unet, transformer = (_read_json(folder / part / "config.json") for part in ("unet", "transformer"))
    try:
        family = family_from_pipeline_configs(model_index, unet, transformer)
    except UnsupportedPipeline:
        return None
    prediction = read_prediction_type(folder)
    return ModelEntry(name, family, prediction, "diffusers", source, _folder_bytes(folder))


def captioner_entry(folder: Path, name: str, source: Literal["local", "hub_cache"]) -> ModelEntry | None:
    method = captioner_method(folder)
    if method is None:
        return None
    return ModelEntry(name, None, None, "captioner", source, _folder_bytes(folder), captioner=method)


def folder_entry(folder: Path, name: str, source: Literal["local", "hub_cache"]) -> ModelEntry | None:
    """A diffusers pipeline or a captioner, else None."""
    if (folder / "model_index.json").is_file():
        return pipeline_entry(folder, name, source)
    return captioner_entry(folder, name, source)


class ModelScanner:
    """Scans a models folder (and a hub cache); remembers what each single file was, by (size, mtime)."""

    def __init__(self, models_dir: Path, hub_cache: Path | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.hub_cache = hub_cache
        self._files: dict[Path, tuple[tuple[int, int], ModelFamily | None, bool]] = {}

    def scan(self) -> list[ModelEntry]:
        entries = self._scan_models_dir() + self._scan_hub_cache()
        return sorted({e.name: e for e in entries}.values(), key=lambda e: e.name)

    def _scan_models_dir(self) -> list[ModelEntry]:
        if not self.models_dir.is_dir():
            return []
        found: list[ModelEntry] = []
        for top in sorted(self.models_dir.iterdir()):
            if top.name.startswith(".") or top.name in _CONFIG_FOLDERS:
                continue
            entry = self._entry(top)
            if entry is not None:
                found.append(entry)
            elif (
                top.is_dir() and not top.name.endswith(".config") and not (top / "model_index.json").exists()
            ):
                found.extend(e for e in map(self._entry, sorted(top.iterdir())) if e is not None)
        return found

    def _entry(self, path: Path) -> ModelEntry | None:
        if path.name.startswith(".") or path.name.endswith(".config"):
            return None
        name = path.relative_to(self.models_dir).as_posix()
        if path.is_dir():
            return folder_entry(path, name, "local")
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES or not path.is_file():
            return None
        stat = path.stat()
        family, readable = self._single_file_family(path, (stat.st_size, stat.st_mtime_ns))
        if not readable:
            return None
        prediction = None
        if family is not None:
            for folder in config_candidates(path, self.models_dir, family):
                if (folder / "model_index.json").is_file():
                    prediction = read_prediction_type(folder)
                    break
        return ModelEntry(name, family, prediction, "single_file", "local", stat.st_size)

    def _single_file_family(self, path: Path, version: tuple[int, int]) -> tuple[ModelFamily | None, bool]:
        """(family, listed): a .ckpt is listed with no family; a .safetensors only when it is a base model."""
        known = self._files.get(path)
        if known is not None and known[0] == version:
            return known[1], known[2]
        family: ModelFamily | None = None
        listed = True
        if path.suffix.lower() == ".safetensors":
            try:
                family = family_from_keys(safetensors_shapes(path))
            except (OSError, ValueError) as exc:
                log.warning("models folder: %s is not a readable safetensors file (%s)", path.name, exc)
            listed = family is not None  # a LoRA, a VAE, another architecture: not a base model
        self._files[path] = (version, family, listed)
        return family, listed

    def _scan_hub_cache(self) -> list[ModelEntry]:
        """Hub repos in the cache, through huggingface_hub's own reader of its layout (installed with the
        worker; without it, or without a cache, none)."""
        try:
            from huggingface_hub import scan_cache_dir
            from huggingface_hub.errors import CacheNotFound
        except ImportError:
            return []
        try:
            cache = scan_cache_dir(self.hub_cache)
        except (CacheNotFound, OSError, ValueError):
            return []
        found: list[ModelEntry] = []
        for repo in cache.repos:
            if repo.repo_type != "model" or not repo.revisions:
                continue
            newest = max(repo.revisions, key=lambda r: r.last_modified)
            entry = folder_entry(Path(newest.snapshot_path), repo.repo_id, "hub_cache")
            if entry is not None:
                found.append(entry)
        return found
