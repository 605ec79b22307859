"""Find and load the base model a training job asks for, offline, failing before any training starts.

A job's ``base_model`` reference is one of:

- a path relative to ``models_dir`` (or an absolute path inside it) naming a diffusers folder (with
  ``model_index.json``) or a single-file checkpoint (``.safetensors`` / ``.ckpt``);
- a hub repo id such as ``runwayml/stable-diffusion-v1-5``, used only if it is already in the Hugging Face
  cache (nothing is downloaded).

The model family (SD1.x, SD2.x, SDXL base) is read from the folder's configs or the single file's key names
(:func:`detect_family`) unless the job names it; :func:`load_pipeline` loads the family's pipeline class.
Every failure is raised as :class:`BaseModelError`, whose message names what was asked for and why it failed,
with paths shown relative to the models folder: a job's error reaches API clients, who must never see a
server path. The family rules are shared.catalogue.families, which the catalogue scan uses too.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from diffusers import (
    ChromaPipeline,
    DiffusionPipeline,
    FluxPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from shared.catalogue.families import (
    FAMILY_LABELS,
    HUB_REPO_ID,
    SHARED_CONFIGS,
    SINGLE_FILE_SUFFIXES,
    ModelFamily,
    SingleFileVariant,
    UnsupportedCheckpoint,
    UnsupportedPipeline,
    config_candidates,
    describe_checkpoint,
    family_from_keys,
    family_from_pipeline_configs,
    safetensors_shapes,
    single_file_variant,
)
from shared.errors import LorabakeError
from worker.training import single_file_configs
from worker.training.single_file_configs import BASE_CONFIGS, SingleFileConfigError

FAMILY_PIPELINES: dict[str, type[DiffusionPipeline]] = {
    "sd1": StableDiffusionPipeline,
    "sd2": StableDiffusionPipeline,
    "sdxl": StableDiffusionXLPipeline,
    "flux1": FluxPipeline,  # loaded by worker/training/families/flux.py
    "chroma": ChromaPipeline,  # loaded by worker/training/families/chroma.py
}


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
    # How the HF cache is used for what a single file lacks (tokenizers); not part of the model's identity.
    cache_dir: Path | None = field(default=None, compare=False)
    allow_download: bool = field(default=False, compare=False)

    @property
    def repo_id(self) -> str | None:
        return self.ref if self.source == "hub" else None


def shown(path: Path, models_dir: Path) -> str:
    """`path` as a client may see it: relative to the models folder, or only its name."""
    for root in (models_dir, models_dir.resolve()):
        if _is_within(path, root):
            return Path(os.path.relpath(os.path.normpath(path), os.path.normpath(root))).as_posix()
    return path.name


def _is_within(path: Path, root: Path) -> bool:
    # Lexical check (no symlink resolution): symlinks the operator put in models_dir are allowed on purpose.
    return Path(os.path.normpath(path)).is_relative_to(Path(os.path.normpath(root)))


def _classify_local(
    ref: str, path: Path, models_dir: Path, cache_dir: Path | None, allow_download: bool
) -> ResolvedModel:
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise BaseModelError(
                ref,
                f"{shown(path, models_dir)} is a folder without model_index.json "
                "(not a diffusers model folder)",
            )
        return ResolvedModel(ref, "diffusers", "local", path, models_dir)
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise BaseModelError(
            ref,
            f"{path.name} is not a supported single-file checkpoint "
            f"(expected {', '.join(SINGLE_FILE_SUFFIXES)})",
        )
    return ResolvedModel(ref, "single_file", "local", path, models_dir, cache_dir, allow_download)


# What a diffusers pipeline needs, and not the duplicate .bin / fp16 / non-EMA weights many repos also hold.
HUB_PIPELINE_FILES = [
    "model_index.json",
    "scheduler/*.json",
    "tokenizer*/*",
    "*/config.json",
    "text_encoder*/model.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
]


def _resolve_hub(ref: str, models_dir: Path, cache_dir: Path | None, allow_download: bool) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    where = "the Hugging Face cache"
    try:
        snapshot = Path(snapshot_download(ref, cache_dir=cache_dir, local_files_only=True))
    except Exception as exc:
        if not allow_download:
            raise BaseModelError(
                ref,
                f"looks like a hub repo id but is not in {where} and downloads are disabled "
                "(LORABAKE_ALLOW_MODEL_DOWNLOADS); put the model in the models folder or pre-fill the cache "
                f"({type(exc).__name__})",
            ) from exc
        try:
            # Into the shared cache: workers that mount the same HF_HOME download a model once, under a lock.
            snapshot = Path(snapshot_download(ref, cache_dir=cache_dir, allow_patterns=HUB_PIPELINE_FILES))
        except Exception as download_exc:
            raise BaseModelError(
                ref, f"could not download it into {where}: {type(download_exc).__name__}: {download_exc}"
            ) from download_exc
    if not (snapshot / "model_index.json").is_file():
        raise BaseModelError(ref, "its cached snapshot has no model_index.json (not a diffusers pipeline)")
    return ResolvedModel(ref, "diffusers", "hub", snapshot, models_dir)


def resolve_base_model(
    ref: str, models_dir: Path, cache_dir: Path | None = None, *, allow_download: bool = False
) -> ResolvedModel:
    """Classify ``ref`` and check it exists; raise BaseModelError otherwise.

    Local paths win over hub ids: ``org/name`` is a hub id only if ``models_dir/org/name`` does not exist.
    Paths may not leave ``models_dir`` (no ``..``; absolute paths must lie inside it). ``cache_dir``
    overrides the Hugging Face cache location for hub ids and for the tokenizers of single files without a
    config folder; what is missing from the cache is downloaded only with ``allow_download``.
    """
    models_dir = Path(models_dir)
    if not isinstance(ref, str) or not ref.strip() or "\x00" in ref:
        raise BaseModelError(str(ref), "empty or invalid reference")
    ref = ref.strip()
    raw = Path(ref)
    if ".." in raw.parts:
        raise BaseModelError(ref, "path escapes the models folder ('..' is not allowed)")
    if raw.is_absolute():
        if not (_is_within(raw, models_dir) or _is_within(raw, models_dir.resolve())):
            raise BaseModelError(ref, "absolute path is outside the models folder")
        path = raw
    else:
        path = models_dir / raw
    if path.exists():
        return _classify_local(ref, path, models_dir, cache_dir, allow_download)
    for suffix in SINGLE_FILE_SUFFIXES if raw.suffix.lower() not in SINGLE_FILE_SUFFIXES else ():
        if path.with_name(path.name + suffix).is_file():  # a single file named by its stem ("flux1-dev")
            return _classify_local(
                ref, path.with_name(path.name + suffix), models_dir, cache_dir, allow_download
            )
    if not raw.is_absolute() and HUB_REPO_ID.match(ref) and raw.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        return _resolve_hub(ref, models_dir, cache_dir, allow_download)
    raise BaseModelError(ref, f"not found in the models folder: {shown(path, models_dir)}")


def find_single_file_config(
    resolved: ResolvedModel, config_dir: Path | None = None, family: ModelFamily = "sd1"
) -> Path:
    """The diffusers folder whose configs (and tokenizer/scheduler) go with a single-file checkpoint.

    Single files hold weights only; diffusers needs a config folder and must not fetch one from the hub.
    First match wins:

    1. ``config_dir`` given by the caller;
    2. ``<stem>.config/`` next to the file (``models/foo.safetensors`` -> ``models/foo.config/``);
    3. ``<stem>.config/`` at the top of models_dir;
    4. the family's shared folder under models_dir: ``configs/sd15/`` (SD1.x), ``configs/sd2/`` (SD2.x),
       ``configs/sdxl/`` (SDXL base).

    Each must be a diffusers pipeline folder (model_index.json, unet/vae/text_encoder/tokenizer/scheduler
    configs, plus text_encoder_2/tokenizer_2 for SDXL); weights in it are not needed. Its scheduler config
    also gives the default prediction type (SD2: put a 768-v config in ``configs/sd2/`` and train 512 base
    models with ``v_parameterization: false``, or give such a file its own ``<stem>.config/``).
    """
    found = _config_folder_beside(resolved, config_dir, family)
    if found is not None:
        return found
    raise BaseModelError(
        resolved.ref,
        "single-file checkpoint has no diffusers config folder; looked for model_index.json in "
        + _shown_candidates(resolved, family),
    )


def _config_folder_beside(
    resolved: ResolvedModel, config_dir: Path | None, family: ModelFamily
) -> Path | None:
    """``config_dir`` (which must hold a model_index.json) or the first config_candidates folder with one."""
    if config_dir is not None:
        if not (Path(config_dir) / "model_index.json").is_file():
            raise BaseModelError(
                resolved.ref,
                f"config folder {shown(Path(config_dir), resolved.models_dir)} has no model_index.json",
            )
        return Path(config_dir)
    for candidate in config_candidates(resolved.path, resolved.models_dir, family):
        if (candidate / "model_index.json").is_file():
            return candidate
    return None


def _shown_candidates(resolved: ResolvedModel, family: ModelFamily) -> str:
    return ", ".join(
        shown(c, resolved.models_dir) for c in config_candidates(resolved.path, resolved.models_dir, family)
    )


def single_file_config(
    resolved: ResolvedModel,
    family: ModelFamily,
    config_dir: Path | None = None,
    *,
    base_configs: Path = BASE_CONFIGS,
) -> Path:
    """The diffusers config folder ``from_single_file`` gets for a single file, reading no tensor data.

    A config folder given or placed beside the file wins (:func:`find_single_file_config`). Otherwise the
    shipped architecture config that fits the file's weights (shared.catalogue.families.single_file_variant:
    family, SD2 512 vs 768-v, a ``v_pred`` key; inpainting, refiner, SD3, Flux... are refused) is joined with
    the tokenizer files from the HF cache (``resolved.cache_dir``; downloaded into it first only with
    ``resolved.allow_download``) into a folder assembled once under the cache
    (worker.training.single_file_configs). Every failure is a BaseModelError saying what to put where.
    """
    found = _config_folder_beside(resolved, config_dir, family)
    if found is not None:
        return found
    shapes, global_step = _single_file_header(resolved)
    or_folder = (
        "; or give it a diffusers config folder (model_index.json and the component configs; looked for "
        f"model_index.json in {_shown_candidates(resolved, family)})"
    )
    try:
        variant = single_file_variant(shapes, global_step)
    except UnsupportedCheckpoint as exc:
        raise BaseModelError(resolved.ref, f"{resolved.path.name} is {exc}" + or_folder) from exc
    if variant.family != family:
        raise BaseModelError(
            resolved.ref,
            f"{resolved.path.name} looks like {FAMILY_LABELS[variant.family]} from its weights, but the "
            f"job's model_family is {family} ({FAMILY_LABELS[family]}); leave model_family at auto"
            + or_folder,
        )
    _check_fits_shipped(resolved, variant, shapes, base_configs, or_folder)
    sources = single_file_configs.TOKENIZERS[variant.config]
    tokenizers: dict[str, dict[str, Path]] = {}
    try:
        for source in sources:
            files = single_file_configs.cached_tokenizer_files(source, resolved.cache_dir)
            if files is None and resolved.allow_download:
                files = single_file_configs.download_tokenizer_files(source, resolved.cache_dir)
            if files is None:
                raise SingleFileConfigError(single_file_configs.missing_tokenizers_message(sources))
            tokenizers[source.folder] = files
        return single_file_configs.assemble_config_folder(
            variant, tokenizers, single_file_configs.assembly_root(resolved.cache_dir), base_configs
        )
    except SingleFileConfigError as exc:
        raise BaseModelError(
            resolved.ref,
            f"{resolved.path.name} is {_described(variant)} with no config folder; {exc}" + or_folder,
        ) from exc


def _described(variant: SingleFileVariant) -> str:
    return (
        f"{FAMILY_LABELS[variant.family]} (shipped config {variant.config}, {variant.prediction_type}: "
        f"{variant.prediction_reason})"
    )


def _check_fits_shipped(
    resolved: ResolvedModel,
    variant: SingleFileVariant,
    shapes: dict[str, tuple[int, ...]],
    base_configs: Path,
    or_folder: str,
) -> None:
    """Refuse, before any load, a file whose UNet is not the standard one (a pruned or resized model): the
    first conv's width and the cross-attention width must be the shipped config's."""
    unet = _read_json(resolved, base_configs / variant.config / "unet" / "config.json")
    want = {
        "conv_in width": unet["block_out_channels"][0],
        "cross-attention width": unet["cross_attention_dim"],
    }
    got = {"conv_in width": shapes.get("model.diffusion_model.input_blocks.0.0.weight", (None,))[0]}
    for key, shape in shapes.items():
        if (
            key.startswith("model.diffusion_model.")
            and key.endswith(".attn2.to_k.weight")
            and len(shape) == 2
        ):
            got["cross-attention width"] = shape[1]
            break
    wrong = [
        f"{name} {got.get(name)} (expected {value})" for name, value in want.items() if got.get(name) != value
    ]
    if wrong:
        raise BaseModelError(
            resolved.ref,
            f"{resolved.path.name} is {FAMILY_LABELS[variant.family]}-like but not the standard architecture "
            f"of the shipped {variant.config} config: " + ", ".join(wrong) + or_folder,
        )


def _read_json(resolved: ResolvedModel, path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        shown_path = shown(path, resolved.models_dir)
        raise BaseModelError(resolved.ref, f"unreadable {shown_path}: {type(exc).__name__}") from exc
    if not isinstance(value, dict):
        raise BaseModelError(
            resolved.ref, f"unreadable {shown(path, resolved.models_dir)}: not a JSON object"
        )
    return value


def _check_pipeline_class(resolved: ResolvedModel, folder: Path, family: ModelFamily = "sd1") -> None:
    class_name = _read_json(resolved, folder / "model_index.json").get("_class_name")
    expected = FAMILY_PIPELINES[family].__name__
    if class_name != expected:
        raise BaseModelError(
            resolved.ref,
            f"{shown(folder, resolved.models_dir)} holds a {class_name}, expected a {expected} "
            f"({FAMILY_LABELS[family]})",
        )


# --- model family -------------------------------------------------------------------------------------------


def detect_folder_family(resolved: ResolvedModel, folder: Path) -> ModelFamily:
    """Family of a diffusers pipeline folder (shared.catalogue.families.family_from_pipeline_configs)."""
    model_index = _read_json(resolved, folder / "model_index.json")
    unet_config = folder / "unet" / "config.json"
    unet = _read_json(resolved, unet_config) if unet_config.is_file() else {}
    transformer_config = folder / "transformer" / "config.json"
    transformer = _read_json(resolved, transformer_config) if transformer_config.is_file() else None
    try:
        return family_from_pipeline_configs(model_index, unet, transformer)
    except UnsupportedPipeline as exc:
        raise BaseModelError(resolved.ref, f"{shown(folder, resolved.models_dir)} {exc}") from exc


detect_family_from_keys = family_from_keys


def _single_file_header(resolved: ResolvedModel) -> tuple[dict[str, tuple[int, ...]], int | None]:
    """(key -> shape, global_step) of a single file: the safetensors header (no tensor data; no step), or a
    .ckpt through the weights-only gate (mmap'd, so tensors are not read either)."""
    if resolved.path.suffix.lower() == ".ckpt":
        loaded = _check_ckpt_is_weights_only(resolved)
        state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else {}
        step = loaded.get("global_step") if isinstance(loaded, dict) else None
        shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
        return shapes, step if isinstance(step, int) else None
    try:
        return safetensors_shapes(resolved.path), None
    except (OSError, ValueError) as exc:
        raise BaseModelError(
            resolved.ref, f"failed to read {shown(resolved.path, resolved.models_dir)}: {exc}"
        ) from exc


def _single_file_shapes(resolved: ResolvedModel) -> dict[str, tuple[int, ...]]:
    return _single_file_header(resolved)[0]


def detect_family(resolved: ResolvedModel) -> ModelFamily:
    """The family of a resolved base model (see detect_folder_family / detect_family_from_keys)."""
    if resolved.kind == "diffusers":
        return detect_folder_family(resolved, resolved.path)
    shapes = _single_file_shapes(resolved)
    family = detect_family_from_keys(shapes)
    if family is None:
        raise BaseModelError(
            resolved.ref,
            f"{resolved.path.name} is not an SD1.x, SD2.x or SDXL base checkpoint in the original "
            f"(A1111/SAI) layout: it looks like {describe_checkpoint(shapes)}",
        )
    return family


def resolve_family(resolved: ResolvedModel, requested: str = "auto") -> ModelFamily:
    """The job's model_family, or the detected one for "auto".

    For a single file this also makes sure its config folder can be had (:func:`single_file_config`:
    tokenizers in the cache or downloaded), so a missing tokenizer fails here, before a job does any work.
    """
    if requested == "auto":
        family = detect_family(resolved)
    elif requested not in FAMILY_PIPELINES:
        raise BaseModelError(resolved.ref, f"unknown model family {requested!r}")
    else:
        family = requested  # type: ignore[assignment]
    if resolved.kind == "single_file" and family in SHARED_CONFIGS:  # the SD families' config folders
        single_file_config(resolved, family)
    elif resolved.kind == "single_file" and family in ("flux1", "chroma"):  # companions, configs, tokenizers
        from worker.training.flux_single_file import locate_flux_single_file  # it imports this module

        locate_flux_single_file(resolved, family)
    return family


def _check_ckpt_is_weights_only(resolved: ResolvedModel) -> object:
    """Refuse a .ckpt whose pickle needs more than tensors/containers/numbers (i.e. could run code).

    diffusers itself loads .ckpt with weights_only=True, but swallows the reason into a generic OSError; this
    gate gives a clear message and keeps the guarantee in our code. mmap keeps it cheap on multi-GB files.
    Returns what was loaded.
    """
    try:
        return torch.load(
            resolved.path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(resolved.path)
        )
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BaseModelError(
            resolved.ref,
            f"refusing to load {shown(resolved.path, resolved.models_dir)}: it cannot be read with "
            "torch.load(weights_only=True) "
            f"({type(exc).__name__}: {first_line[:300]}); convert it to .safetensors with a trusted tool",
        ) from exc


def load_pipeline(
    resolved: ResolvedModel,
    family: ModelFamily,
    dtype: torch.dtype = torch.float32,
    config_dir: Path | None = None,
    *,
    base_configs: Path = BASE_CONFIGS,
) -> DiffusionPipeline:
    """Load a base model of the given family offline (``local_files_only``) from a resolved reference:
    a StableDiffusionPipeline for sd1/sd2, a StableDiffusionXLPipeline for sdxl.

    - diffusers folders (and cached hub snapshots): ``from_pretrained``; model_index.json must name the
      family's pipeline class;
    - single files: ``from_single_file(config=...)`` with the config folder chosen by
      :func:`single_file_config` (``config_dir``, then ``<stem>.config/`` next to the file or at the top
      of models_dir, then ``configs/sd15``, ``configs/sd2`` or ``configs/sdxl`` by family, else the shipped
      architecture config with tokenizers from the HF cache, ``base_configs`` in tests). ``.ckpt`` files
      are pickles: they are first checked with ``torch.load(weights_only=True)`` here, and diffusers 0.42
      also reads them that way (``diffusers.models.model_loading_utils.load_state_dict``), so a pickle that
      needs anything but tensors/containers/numbers is refused, never executed; tests pin both.

    The safety checker (SD1/2) and the watermarker (SDXL) are never loaded: training uses neither.
    Any failure is raised as BaseModelError.
    """
    pipeline_class = FAMILY_PIPELINES[family]
    kwargs: dict[str, object] = {"dtype": dtype, "local_files_only": True}
    if pipeline_class is StableDiffusionPipeline:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    else:
        kwargs.update(add_watermarker=False)
    try:
        if resolved.kind == "diffusers":
            _check_pipeline_class(resolved, resolved.path, family)
            pipe = pipeline_class.from_pretrained(resolved.path, **kwargs)
        else:
            config = single_file_config(resolved, family, config_dir, base_configs=base_configs)
            _check_pipeline_class(resolved, config, family)
            if resolved.path.suffix.lower() == ".ckpt":
                _check_ckpt_is_weights_only(resolved)
            pipe = pipeline_class.from_single_file(str(resolved.path), config=str(config), **kwargs)
    except BaseModelError:
        raise
    except Exception as exc:
        raise BaseModelError(
            resolved.ref, f"failed to load {shown(resolved.path, resolved.models_dir)}: {type(exc).__name__}"
        ) from exc
    return pipe


def load_sd15_pipeline(
    resolved: ResolvedModel, dtype: torch.dtype = torch.float32, config_dir: Path | None = None
) -> StableDiffusionPipeline:
    """Load an SD1.x pipeline: ``load_pipeline(resolved, "sd1", dtype, config_dir)``."""
    return load_pipeline(resolved, "sd1", dtype, config_dir)  # type: ignore[return-value]
