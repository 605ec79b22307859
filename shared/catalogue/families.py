"""Which Stable Diffusion family a base model is, read from its configs or key names, without torch.

The worker (loading a model) and the catalogue scan (listing models for the API, which has no torch) use
these same rules, so what GET /v1/models says is what training finds.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal

ModelFamily = Literal["sd1", "sd2", "sdxl"]
FAMILIES: tuple[ModelFamily, ...] = ("sd1", "sd2", "sdxl")
FAMILY_LABELS: dict[str, str] = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
# The diffusers pipeline class each family loads as (model_index.json's `_class_name`).
FAMILY_PIPELINE_CLASSES: dict[str, str] = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# The shared config folder per family for single files without a <stem>.config/ (see config_candidates).
SHARED_CONFIGS: dict[str, Path] = {
    "sd1": Path("configs") / "sd15",
    "sd2": Path("configs") / "sd2",
    "sdxl": Path("configs") / "sdxl",
}
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

_LDM_UNET = "model.diffusion_model."
SD2_CROSS_ATTENTION_DIM = 1024  # OpenCLIP ViT-H; SD1.x has 768 (CLIP ViT-L)
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # the format's own limit


class UnsupportedPipeline(ValueError):
    """A diffusers folder holding a pipeline other than SD1.x/SD2.x/SDXL base."""


def family_from_pipeline_configs(model_index: Mapping, unet_config: Mapping) -> ModelFamily:
    """Family of a diffusers pipeline folder: model_index.json's ``_class_name`` (StableDiffusionXLPipeline
    -> sdxl), then the UNet config: SD2.x has cross_attention_dim 1024 and Linear proj_in/proj_out
    (``use_linear_projection``), SD1.x 768 and 1x1 convs. Other pipeline classes raise
    UnsupportedPipeline."""
    class_name = model_index.get("_class_name")
    if class_name == FAMILY_PIPELINE_CLASSES["sdxl"]:
        return "sdxl"
    if class_name != FAMILY_PIPELINE_CLASSES["sd1"]:
        raise UnsupportedPipeline(
            f"holds a {class_name}; supported are StableDiffusionPipeline (SD1.x, SD2.x) and "
            "StableDiffusionXLPipeline (SDXL base)"
        )
    cross_attention = unet_config.get("cross_attention_dim")
    if cross_attention == SD2_CROSS_ATTENTION_DIM or unet_config.get("use_linear_projection"):
        return "sd2"
    return "sd1"


def family_from_keys(shapes: Mapping[str, tuple[int, ...]]) -> ModelFamily | None:
    """Family of an original-layout (A1111/SAI) single-file checkpoint from its key names and shapes.

    - SDXL base: a second text encoder, ``conditioner.embedders.1.`` (OpenCLIP bigG);
    - SD2.x: the OpenCLIP ViT-H text encoder ``cond_stage_model.model.``, or a UNet whose cross-attention
      reads 1024-wide states, or Linear (2-D) ``proj_in`` weights (SD1.x has 1x1 convs);
    - SD1.x: any other ``model.diffusion_model.`` UNet.

    None when it is none of these (SDXL refiner, SD3, Flux, a VAE or LoRA file, ...). The prediction type
    is not in the weights: it comes from the config folder's scheduler or the job's v_parameterization.
    """
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
    shared folder under models_dir (``configs/sd15/``, ``configs/sd2/``, ``configs/sdxl/``)."""
    stem_dir = model_file.stem + ".config"
    candidates = [model_file.parent / stem_dir, models_dir / stem_dir, models_dir / SHARED_CONFIGS[family]]
    return list(dict.fromkeys(candidates))  # a file at the top of models_dir: its two first are one


def read_prediction_type(pipeline_folder: Path) -> str | None:
    """The scheduler config's prediction_type (epsilon / v_prediction), None when it cannot be read."""
    try:
        scheduler = json.loads((pipeline_folder / "scheduler" / "scheduler_config.json").read_text("utf-8"))
    except (OSError, ValueError):
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
