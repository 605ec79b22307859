"""Which family a base model is (SD1.x, SD2.x, SDXL, FLUX.1), read from its configs or key names, without
torch. The FLUX.1 rules are in flux.py.

The worker (loading a model) and the catalogue scan (listing models for the API, which has no torch) use
these same rules, so what GET /v1/models says is what training finds.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

from shared.catalogue.chroma import (
    CHROMA_PIPELINE_CLASS,
    chroma_pipeline_problem,
    describe_chroma_keys,
    is_chroma_keys,
)
from shared.catalogue.flux import (
    FLUX_PIPELINE_CLASS,
    describe_flux_keys,
    flux_pipeline_problem,
    flux_variant_from_keys,
)
from shared.model_families import FAMILIES, TRAITS, ModelFamily  # the one list of families

FAMILY_LABELS: dict[str, str] = {family: TRAITS[family].label for family in FAMILIES}
# The diffusers pipeline class each family loads as (model_index.json's `_class_name`).
FAMILY_PIPELINE_CLASSES: dict[str, str] = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "flux1": FLUX_PIPELINE_CLASS,
    "chroma": CHROMA_PIPELINE_CLASS,
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# The shared config folder per family for single files without a <stem>.config/ (see config_candidates).
# The SD families only: model_loading reads membership here as "loads single files through an SD config".
SHARED_CONFIGS: dict[str, Path] = {
    "sd1": Path("configs") / "sd15",
    "sd2": Path("configs") / "sd2",
    "sdxl": Path("configs") / "sdxl",
}
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

_LDM_UNET = "model.diffusion_model."
_CONV_IN = _LDM_UNET + "input_blocks.0.0.weight"
_NOT_AN_SD_UNET = re.compile(r"(^|\.)(joint_blocks|double_blocks|single_blocks)\.")  # SD3, Flux
LATENT_CHANNELS = 4  # a text-to-image UNet's conv_in reads the 4 VAE latent channels
SD2_CROSS_ATTENTION_DIM = 1024  # OpenCLIP ViT-H; SD1.x has 768 (CLIP ViT-L)
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own limit


class UnsupportedPipeline(ValueError):
    """A diffusers folder holding a pipeline other than SD1.x/SD2.x/SDXL base or FLUX.1 dev/schnell."""


def family_from_pipeline_configs(
    model_index: Mapping, unet_config: Mapping, transformer_config: Mapping | None = None
) -> ModelFamily:
    """Family of a diffusers pipeline folder: model_index.json's ``_class_name`` (StableDiffusionXLPipeline
    -> sdxl, FluxPipeline -> flux1), then the UNet config: SD2.x has cross_attention_dim 1024 and Linear
    proj_in/proj_out (``use_linear_projection``), SD1.x 768 and 1x1 convs. Other pipeline classes raise
    UnsupportedPipeline, the FLUX.1 ones that are not trainable yet (Fill, Depth/Canny, Kontext, Redux)
    by name.

    FLUX.1 is checked in ``transformer_config`` (transformer/config.json, ``{}`` when missing): in_channels
    64 (Fill has 384, Depth/Canny 128); :func:`shared.catalogue.flux.flux_variant_from_config` gives dev or
    schnell. None (the caller did not read it): a FluxPipeline is taken by its class name alone.
    """
    class_name = model_index.get("_class_name")
    if class_name == FAMILY_PIPELINE_CLASSES["sdxl"]:
        return "sdxl"
    chroma_problem = chroma_pipeline_problem(class_name, transformer_config or {})
    if chroma_problem is not None:
        raise UnsupportedPipeline(f"holds a {chroma_problem}")
    if class_name == CHROMA_PIPELINE_CLASS:
        return "chroma"
    if class_name == FLUX_PIPELINE_CLASS and transformer_config is None:
        return "flux1"
    flux_problem = flux_pipeline_problem(class_name, transformer_config or {})
    if flux_problem is not None:
        raise UnsupportedPipeline(f"holds a {flux_problem}")
    if class_name == FLUX_PIPELINE_CLASS:
        return "flux1"
    if class_name != FAMILY_PIPELINE_CLASSES["sd1"]:
        raise UnsupportedPipeline(
            f"holds a {class_name}; supported are StableDiffusionPipeline (SD1.x, SD2.x), "
            "StableDiffusionXLPipeline (SDXL base), FluxPipeline (FLUX.1 dev, schnell) and ChromaPipeline"
        )
    cross_attention = unet_config.get("cross_attention_dim")
    if cross_attention == SD2_CROSS_ATTENTION_DIM or unet_config.get("use_linear_projection"):
        return "sd2"
    return "sd1"


def family_from_keys(shapes: Mapping[str, tuple[int, ...]]) -> ModelFamily | None:
    """Family of an original-layout (A1111/SAI/BFL) single-file checkpoint from its key names and shapes.

    - FLUX.1 dev or schnell: a transformer in BFL's layout (``double_blocks.N...``, ``img_in.weight`` reading
      64 channels), bare or under ComfyUI's ``model.diffusion_model.``
      (:func:`shared.catalogue.flux.flux_variant_from_keys` tells dev from schnell);
    - SDXL base: a second text encoder, ``conditioner.embedders.1.`` (OpenCLIP bigG);
    - SD2.x: the OpenCLIP ViT-H text encoder ``cond_stage_model.model.``, or a UNet whose cross-attention
      reads 1024-wide states, or Linear (2-D) ``proj_in`` weights (SD1.x has 1x1 convs);
    - SD1.x: any other ``model.diffusion_model.`` UNet.

    None when it is none of these (SDXL refiner, SD3, FLUX.1 Fill/Depth/Canny, FLUX.2, an inpainting/depth
    UNet whose conv_in does not read 4 latent channels, a VAE or LoRA file, ...; :func:`describe_checkpoint`
    says which). The prediction type is mostly not in the weights: see :func:`single_file_variant`.
    """
    if flux_variant_from_keys(shapes) is not None:
        return "flux1"
    if is_chroma_keys(shapes):
        return "chroma"
    if _unet_in_channels(shapes) not in (None, LATENT_CHANNELS):
        return None  # inpainting (9), depth (5), x4 upscaler (7): another task than text-to-image
    if any(_NOT_AN_SD_UNET.search(k) for k in shapes):
        return None  # SD3 / Flux saved under model.diffusion_model. too
    if any(k.startswith("conditioner.embedders.1.") for k in shapes):
        return "sdxl"
    if any(k.startswith("conditioner.") for k in shapes) or not any(k.startswith(_LDM_UNET) for k in shapes):
        return None
    if any(k.startswith("cond_stage_model.model.") for k in shapes):
        return "sd2"
    for key, shape in shapes.items():
        if not key.startswith(_LDM_UNET):
            continue
        if key.endswith(".attn2.to_k.weight") and len(shape) == 2 and shape[1] == SD2_CROSS_ATTENTION_DIM:
            return "sd2"
        if key.endswith(".proj_in.weight") and len(shape) == 2:
            return "sd2"
    return "sd1"


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape from a .safetensors file's JSON header, reading no tensor data. ValueError when the
    file is not a safetensors file."""
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise ValueError("too short for a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_SAFETENSORS_HEADER:
            raise ValueError(f"header length {length} is past the format's limit")
        raw = fh.read(length)
    if len(raw) < length:
        raise ValueError("truncated safetensors header")
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return {
        key: tuple(entry.get("shape", ()))
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict)
    }


def config_candidates(model_file: Path, models_dir: Path, family: ModelFamily) -> list[Path]:
    """Where a single-file checkpoint's diffusers config folder may be, first match wins:
    ``<stem>.config/`` next to the file, ``<stem>.config/`` at the top of models_dir, then the family's
    shared folder under models_dir (``configs/sd15/``, ``configs/sd2/``, ``configs/sdxl/``; FLUX.1 has
    none)."""
    stem_dir = model_file.stem + ".config"
    candidates = [model_file.parent / stem_dir, models_dir / stem_dir]
    if family in SHARED_CONFIGS:
        candidates.append(models_dir / SHARED_CONFIGS[family])
    return list(dict.fromkeys(candidates))  # a file at the top of models_dir: its two first are one


def read_prediction_type(pipeline_folder: Path) -> str | None:
    """The scheduler config's prediction_type (epsilon / v_prediction), None when it cannot be read or the
    scheduler is a flow-matching one (FLUX), which has no prediction type."""
    try:
        scheduler = json.loads((pipeline_folder / "scheduler" / "scheduler_config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(scheduler, dict) and str(scheduler.get("_class_name", "")).startswith("FlowMatch"):
        return None
    value = scheduler.get("prediction_type", "epsilon") if isinstance(scheduler, dict) else None
    return value if isinstance(value, str) else None


def path_problem(name: str) -> str | None:
    """Why `name` cannot be a base model reference as a path, or None. Names are relative to the models
    folder (or hub ids), so absolute paths and `..` are refused before anything looks at a disk."""
    if "\x00" in name:
        return "contains a NUL character"
    if name.startswith(("/", "\\", "~")) or PureWindowsPath(name).drive:
        return "is an absolute path; name a model as GET /v1/models lists it"
    parts = set(PurePosixPath(name).parts) | set(PureWindowsPath(name).parts)
    if ".." in parts:
        return "contains '..'; name a model as GET /v1/models lists it"
    return None


# --- single files without a config folder: which shipped architecture config fits -------------------------

# The shipped architecture configs (worker/training/base_configs/<name>/), by family and prediction default.
SHIPPED_CONFIGS: dict[str, str] = {"sd1": "sd15", "sd2": "sd2-768-v", "sdxl": "sdxl-base"}
SD2_512_CONFIG = "sd2-512"
# The SD2.0 512-base release's training step: diffusers' single-file loader takes an SD2 checkpoint with this
# global_step as epsilon (512 base) and any other SD2 checkpoint as v-prediction (768-v).
SD2_BASE_GLOBAL_STEP = 875000
# Marker keys some v-prediction checkpoints carry (NoobAI-XL v-pred and others; ComfyUI reads the same key).
V_PRED_KEY = "v_pred"

_TEXT_ENCODERS: dict[str, tuple[str, ...]] = {
    "sd1": ("cond_stage_model.transformer.",),
    "sd2": ("cond_stage_model.model.",),
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}
_VAE = "first_stage_model."


class UnsupportedCheckpoint(ValueError):
    """A single file that is no SD1.x / SD2.x / SDXL base text-to-image checkpoint for single_file_variant
    (FLUX.1 files load through worker/training/flux_single_file.py instead); the message says what it looks
    like."""


@dataclass(frozen=True)
class SingleFileVariant:
    """What a single file is, read from its header: family, the shipped config that fits it, and the
    prediction type with the reason it was chosen (shown in errors and logs)."""

    family: ModelFamily
    config: str  # a name in SHIPPED_CONFIGS' values or SD2_512_CONFIG
    prediction_type: Literal["epsilon", "v_prediction"]
    prediction_reason: str


def _unet_in_channels(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    shape = shapes.get(_CONV_IN)
    return shape[1] if shape is not None and len(shape) == 4 else None


def describe_checkpoint(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """What a file that is not an SD1.x/SD2.x/SDXL base checkpoint looks like, from its key names, for an
    error message ("an SDXL refiner", "an inpainting UNet (9 input channels)", "a FLUX.1 Fill checkpoint",
    ...)."""
    keys = list(shapes)
    flux_variant = flux_variant_from_keys(shapes)
    if flux_variant is not None:
        return f"a FLUX.1 {flux_variant} checkpoint"
    if is_chroma_keys(shapes):
        return "a Chroma checkpoint"
    chroma = describe_chroma_keys(shapes)
    if chroma is not None:
        return chroma
    in_channels = _unet_in_channels(shapes)
    if in_channels not in (None, LATENT_CHANNELS):
        kind = {9: "an inpainting", 5: "a depth-conditioned", 7: "an upscaler"}.get(in_channels, "a")
        return (
            f"{kind} UNet ({in_channels} input channels, a text-to-image UNet has {LATENT_CHANNELS}); "
            "lorabake trains text-to-image base models only"
        )
    if any(k.startswith("lora_") or ".lora_" in k or "lora_down" in k for k in keys):
        return "a LoRA (or LyCORIS) file, not a base model"
    if any(re.search(r"(^|\.)joint_blocks\.", k) for k in keys):
        return "a Stable Diffusion 3 checkpoint (not supported)"
    flux = describe_flux_keys(shapes)
    if flux is not None:
        return flux
    if any(_NOT_AN_SD_UNET.search(k) for k in keys):
        return "a Flux checkpoint (not supported)"
    if any(k.startswith("edm_") for k in keys):
        return "an EDM checkpoint (Playground v2.5 / CosXL style; not supported)"
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys) and not any(
        k.startswith("conditioner.embedders.1.") for k in keys
    ):
        return "an SDXL refiner (only SDXL base checkpoints are supported)"
    if not any(k.startswith(_LDM_UNET) for k in keys):
        if any(k.startswith("encoder.block.") for k in keys):
            return "a T5 text encoder (FLUX.1's t5xxl), not a base model"
        if any(k.startswith(("encoder.", "decoder.", _VAE)) for k in keys):
            return "a VAE, not a full checkpoint"
        return "no Stable Diffusion UNet (model.diffusion_model.*)"
    return "an unknown Stable Diffusion variant"


def single_file_variant(
    shapes: Mapping[str, tuple[int, ...]], global_step: int | None = None
) -> SingleFileVariant:
    """The shipped config and prediction type for an original-layout single file, from key names and shapes
    (``global_step`` only for .ckpt files, which may carry it). UnsupportedCheckpoint when none fits.

    Prediction type, first rule that applies:
    1. a ``v_pred`` key in the file -> v_prediction (any family);
    2. SD1.x and SDXL -> epsilon (their base models' type);
    3. SD2.x: ``global_step`` 875000 (the 512-base release) -> epsilon with the 512 config, else
       v_prediction with the 768-v config. SD2 512 and 768-v have the same weights' shapes, so this is
       diffusers' own default (its single-file loader reads an SD2 file as stable-diffusion-2-1 unless the
       step says base); a job's ``v_parameterization`` overrides it.
    """
    family = family_from_keys(shapes)
    if family is None:
        raise UnsupportedCheckpoint(describe_checkpoint(shapes))
    if family in ("flux1", "chroma"):  # no shipped SD config: an SD-style single-file load must not be tried
        raise UnsupportedCheckpoint(f"{describe_checkpoint(shapes)}, not trainable from a single file yet")
    missing = [p for p in (*_TEXT_ENCODERS[family], _VAE) if not any(k.startswith(p) for k in shapes)]
    if missing:
        raise UnsupportedCheckpoint(
            f"an {FAMILY_LABELS[family]} file without the weights under {', '.join(missing)}, which the "
            "shipped configs cannot make up for"
        )
    config = SHIPPED_CONFIGS[family]
    if V_PRED_KEY in shapes:
        return SingleFileVariant(family, config, "v_prediction", f"the file has a {V_PRED_KEY!r} key")
    if family != "sd2":
        reason = f"{FAMILY_LABELS[family]} base models are epsilon"
        return SingleFileVariant(family, config, "epsilon", reason)
    if global_step == SD2_BASE_GLOBAL_STEP:
        reason = f"global_step {SD2_BASE_GLOBAL_STEP} is the SD2 512-base release"
        return SingleFileVariant(family, SD2_512_CONFIG, "epsilon", reason)
    return SingleFileVariant(
        family,
        config,
        "v_prediction",
        "SD2.x files are read as 768-v unless they say otherwise (diffusers' default); "
        "set v_parameterization: false for a 512 epsilon model",
    )
