"""Diffusers config folders for single-file checkpoints that came without one.

A single ``.safetensors`` / ``.ckpt`` holds weights only; diffusers' ``from_single_file`` also needs the
pipeline's configs, tokenizers and scheduler, and must not fetch them (it would ask the hub). lorabake ships
the architecture configs of the four base models it trains (``base_configs/<name>/``: model_index.json and
the unet / vae / text_encoder(_2) / scheduler configs, written from the public diffusers repos named in
:data:`TOKENIZERS`; no weights, no vocab files). The tokenizer files (a few MB, licensed with their models)
come from the Hugging Face cache, downloaded into it only when downloads are allowed.

:func:`assemble_config_folder` joins the two into a pipeline folder once per (config, prediction type,
tokenizer files) under a cache root, so every job after the first reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.catalogue.families import SingleFileVariant

BASE_CONFIGS = Path(__file__).parent / "base_configs"
ASSEMBLED_DIR_NAME = "lorabake-single-file-configs"
# A usable tokenizer folder: tokenizer_config.json plus tokenizer.json or vocab.json + merges.txt (the
# stabilityai repos have the latter only); special_tokens_map.json is taken when present.
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
)


class SingleFileConfigError(ValueError):
    """The shipped configs cannot be completed (tokenizer files missing, unwritable cache); the message says
    what to do and holds no server path."""


@dataclass(frozen=True)
class TokenizerSource:
    """Where a pipeline's ``folder`` (tokenizer / tokenizer_2) comes from: ``repo_id``'s ``subfolder`` ("" for
    the repo root), downloaded from there; ``also`` lists other (repo, subfolder) pairs with the same files,
    used when they are the ones in the cache."""

    folder: str
    repo_id: str
    subfolder: str
    also: tuple[tuple[str, str], ...] = ()

    def patterns(self) -> list[str]:
        return [self.path(name) for name in TOKENIZER_FILES]

    def path(self, name: str, subfolder: str | None = None) -> str:
        sub = self.subfolder if subfolder is None else subfolder
        return f"{sub}/{name}" if sub else name

    def shown(self) -> str:
        return f"{self.repo_id} ({self.subfolder}/)" if self.subfolder else f"{self.repo_id} (its root files)"


_SD2 = TokenizerSource(
    "tokenizer",
    "stabilityai/stable-diffusion-2-1",
    "tokenizer",
    also=(
        ("stabilityai/stable-diffusion-2-1-base", "tokenizer"),
        ("stabilityai/stable-diffusion-2", "tokenizer"),
        ("stabilityai/stable-diffusion-2-base", "tokenizer"),
    ),
)
# sd-scripts takes SD1's tokenizer from openai/clip-vit-large-patch14 and diffusers from the SD1.5 repo:
# the same files, so either is accepted from the cache. SD2's pads with "!" (not CLIP's <|endoftext|>), as
# does SDXL's second one: they must come from those repos, not be copied from SD1's.
TOKENIZERS: dict[str, tuple[TokenizerSource, ...]] = {
    "sd15": (
        TokenizerSource(
            "tokenizer",
            "openai/clip-vit-large-patch14",
            "",
            also=(
                ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
                ("runwayml/stable-diffusion-v1-5", "tokenizer"),
            ),
        ),
    ),
    "sd2-512": (_SD2,),
    "sd2-768-v": (_SD2,),
    "sdxl-base": (
        TokenizerSource("tokenizer", "stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"),
        TokenizerSource("tokenizer_2", "stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2"),
    ),
}


def _usable(files: Mapping[str, Path]) -> bool:
    return "tokenizer_config.json" in files and (
        "tokenizer.json" in files or {"vocab.json", "merges.txt"} <= files.keys()
    )


def cached_tokenizer_files(source: TokenizerSource, cache_dir: Path | None) -> dict[str, Path] | None:
    """The tokenizer files of ``source`` (or one of its ``also`` pairs) in the HF cache, or None. Reads the
    cache's refs/main only: nothing is asked of the hub."""
    from huggingface_hub import try_to_load_from_cache

    for repo_id, subfolder in ((source.repo_id, source.subfolder), *source.also):
        files: dict[str, Path] = {}
        for name in TOKENIZER_FILES:
            found = try_to_load_from_cache(repo_id, source.path(name, subfolder), cache_dir=cache_dir)
            if isinstance(found, str):  # None: not cached; a sentinel object: cached as missing
                files[name] = Path(found)
        if _usable(files):
            return files
    return None


def download_tokenizer_files(source: TokenizerSource, cache_dir: Path | None) -> dict[str, Path]:
    """Download ``source``'s tokenizer files into the HF cache (shared by the workers that mount it)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(source.repo_id, cache_dir=cache_dir, allow_patterns=source.patterns())
    except Exception as exc:
        raise SingleFileConfigError(
            f"could not download the tokenizer files of {source.shown()} into the Hugging Face cache: "
            f"{type(exc).__name__}"
        ) from exc
    files = cached_tokenizer_files(source, cache_dir)
    if files is None:
        raise SingleFileConfigError(
            f"{source.shown()} has no usable tokenizer files ({', '.join(TOKENIZER_FILES)})"
        )
    return files


def missing_tokenizers_message(sources: tuple[TokenizerSource, ...]) -> str:
    """What to put where, for an operator: the download command, the setting, or a config folder."""
    repos = dict.fromkeys(s.repo_id for s in sources)
    commands = []
    for repo in repos:
        subs = [s.subfolder for s in sources if s.repo_id == repo]
        include = " ".join(f"'{sub}/*'" if sub else " ".join(TOKENIZER_FILES) for sub in subs)
        commands.append(f"`hf download {repo} --include {include}`")
    where = ", ".join(f"{s.folder}/ from {s.shown()}" for s in sources)
    return (
        f"it needs the tokenizer files {where} ({', '.join(TOKENIZER_FILES[:1] + TOKENIZER_FILES[3:])} "
        "or tokenizer.json), which are not in the worker's Hugging Face cache (HF_HOME), and model downloads "
        "are disabled. Either run " + " and ".join(commands) + " on the worker (same HF_HOME), or set "
        "LORABAKE_ALLOW_MODEL_DOWNLOADS=true"
    )


def assembly_root(cache_dir: Path | None) -> Path:
    """Where assembled folders live: beside the tokenizer files, in the HF hub cache (writable by workers, as
    downloads land there, and shared by those that mount it)."""
    from huggingface_hub import constants

    return Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE) / ASSEMBLED_DIR_NAME


Tokenizers = Mapping[str, Mapping[str, Path]]  # pipeline folder (tokenizer, tokenizer_2) -> file name -> path


def _digest(variant: SingleFileVariant, config_dir: Path, tokenizers: Tokenizers) -> str:
    """Changes when a shipped config, the prediction type or a tokenizer file changes (a lorabake upgrade or a
    new tokenizer revision gets a new folder; old ones are never reused)."""
    h = hashlib.sha256(variant.prediction_type.encode())
    for path in sorted(p for p in config_dir.rglob("*") if p.is_file()):
        h.update(path.relative_to(config_dir).as_posix().encode() + b"\0" + path.read_bytes())
    for folder in sorted(tokenizers):
        for name in sorted(tokenizers[folder]):
            h.update(f"{folder}/{name}".encode() + b"\0" + tokenizers[folder][name].read_bytes())
    return h.hexdigest()[:16]


def assemble_config_folder(
    variant: SingleFileVariant,
    tokenizers: Tokenizers,
    root: Path,
    base_configs: Path = BASE_CONFIGS,
) -> Path:
    """A diffusers pipeline folder (configs, scheduler, tokenizers; no weights) for ``variant`` under
    ``root``: ``<config>-<prediction>-<digest>/``, built once and reused. ``tokenizers`` maps a pipeline
    folder (tokenizer, tokenizer_2) to its files. The scheduler takes the variant's prediction type.

    Built in a temporary folder and renamed into place, so concurrent workers never see half a folder.
    """
    config_dir = base_configs / variant.config
    if not (config_dir / "model_index.json").is_file():
        raise SingleFileConfigError(
            f"lorabake's shipped config {variant.config!r} is missing (broken install)"
        )
    target = root / f"{variant.config}-{variant.prediction_type}-{_digest(variant, config_dir, tokenizers)}"
    if (target / "model_index.json").is_file():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".assembling-", dir=root))
    except OSError as exc:
        raise SingleFileConfigError(
            f"cannot write the assembled config folder into the Hugging Face cache: {type(exc).__name__}"
        ) from exc
    try:
        shutil.copytree(config_dir, staging, dirs_exist_ok=True)
        scheduler_path = staging / "scheduler" / "scheduler_config.json"
        scheduler = json.loads(scheduler_path.read_text(encoding="utf-8"))
        scheduler["prediction_type"] = variant.prediction_type
        scheduler_path.write_text(json.dumps(scheduler, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for folder, files in tokenizers.items():
            (staging / folder).mkdir()
            for name, path in files.items():
                # Copies, not links: the HF cache may be pruned while the assembled folder is still in use.
                shutil.copyfile(path, staging / folder / name)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "model_index.json").is_file():  # not "another worker was first"
                raise
    except OSError as exc:
        raise SingleFileConfigError(f"cannot assemble the config folder: {type(exc).__name__}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
