"""`network_weights`: does a LoRA file fit a run? Read from its safetensors header alone (JSON: key, dtype,
shape, and the `ss_*` / `modelspec.*` metadata), so the API checks it at submission without torch.

What the header tells: the family (metadata, else telling key names), the network type (LoRA/LoCon keys
`lora_down`/`lora_up`, LoHa `hada_*`, LoKr `lokr_*`, DoRA `dora_scale`), the ranks (the shapes), the alpha
(`ss_network_alpha`), whether the text encoder and 3x3 convs have modules. Which exact modules the run's
network has depends on the base model's layers, so the worker compares the module names and shapes again,
exactly, once it built the network (worker/training/network_weights.py).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config.spec import TrainingConfig
from shared.errors import LorabakeError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit
FIELD = "config.network_weights"
TE_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_")
# ss_base_model_version (sd-scripts) and modelspec.architecture prefixes -> lorabake's family names
_RANK_KEYS = {"loha": (".hada_w1_b", ".hada_w2_b"), "lokr": (".lokr_w2_b",)}  # shape[0]: the rank
_VERSIONS = (("sdxl", "sdxl"), ("sd_v1", "sd1"), ("sd_v2", "sd2"), ("flux", "flux1"))
_ARCHITECTURES = (
    ("stable-diffusion-xl", "sdxl"),
    ("stable-diffusion-v1", "sd1"),
    ("stable-diffusion-v2", "sd2"),
    ("flux", "flux1"),
)


def network_weights_key(job_id: str) -> str:
    """Where a job's network_weights file is stored (a copy: the job does not depend on its source's
    retention, nor on an upload's)."""
    return f"jobs/{job_id}/network_weights.safetensors"


class NetworkWeightsMismatch(LorabakeError):
    """The file cannot start this run: `details.fields` names each config field it disagrees with."""

    status_code = 422
    code = "network_weights_mismatch"


@dataclass(frozen=True)
class LoraHeader:
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]


def read_header(path: Path) -> LoraHeader:
    """The file's tensor shapes and metadata; a 422 naming config.network_weights if it is no safetensors."""
    try:
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise ValueError("too short for a safetensors header")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise ValueError(f"header length {length} is past the format's limit")
            raw = fh.read(length)
        if len(raw) < length:
            raise ValueError("truncated header")
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        shapes = {k: tuple(int(n) for n in v["shape"]) for k, v in header.items()}
    except (ValueError, KeyError, TypeError) as exc:
        raise LorabakeError(
            f"network_weights is not a .safetensors file: {exc}",
            code="invalid_network_weights",
            details={"field": FIELD},
            status_code=422,
        ) from exc
    if not isinstance(metadata, dict):
        metadata = {}
    return LoraHeader(shapes, {str(k): str(v) for k, v in metadata.items()})


def network_kind(keys: Any) -> str | None:
    """lora (LoRA / LoCon), loha or lokr, from the key names; None when none of them appears."""
    keys = list(keys)
    if any(".hada_" in k for k in keys):
        return "loha"
    if any(".lokr_" in k for k in keys):
        return "lokr"
    if any(k.endswith((".lora_down.weight", ".lora_up.weight")) for k in keys):
        return "lora"
    return None


def uses_dora(keys: Any) -> bool:
    return any(k.endswith(".dora_scale") for k in keys)


def file_family(header: LoraHeader) -> str | None:
    """sd1 / sd2 / sdxl / flux1 as the metadata says, else from key names that only one family has."""
    version = header.metadata.get("ss_base_model_version", "")
    for prefix, family in _VERSIONS:
        if version.startswith(prefix):
            return family
    architecture = header.metadata.get("modelspec.architecture", "")
    for prefix, family in _ARCHITECTURES:
        if architecture.startswith(prefix):
            return family
    keys = header.shapes.keys()
    if any(k.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_")) for k in keys):
        return "flux1"
    if any(k.startswith(("lora_te1_", "lora_te2_")) or k.startswith("lora_unet_input_blocks_") for k in keys):
        return "sdxl"
    return None


def _ranks(header: LoraHeader, kind: str) -> tuple[set[int], set[int]]:
    """(ranks of the linear / 1x1 modules, ranks of the 3x3-conv modules); LyCORIS' own layouts are read
    as one set (their shapes do not tell a conv from a linear module), returned as the first."""
    linear: set[int] = set()
    conv: set[int] = set()
    for key, shape in header.shapes.items():
        if kind == "lora" and key.endswith(".lora_down.weight") and shape:
            is_3x3 = len(shape) == 4 and tuple(shape[2:]) != (1, 1)
            (conv if is_3x3 else linear).add(shape[0])
        elif kind != "lora" and key.endswith(_RANK_KEYS[kind]) and shape:
            linear.add(shape[0])
    return linear, conv


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def differences(header: LoraHeader, config: TrainingConfig, family: str | None) -> list[dict[str, Any]]:
    """Each way the file disagrees with the run: {field, message}, the field being the config's."""
    found: list[dict[str, Any]] = []

    def differ(field: str, message: str) -> None:
        found.append({"field": f"config.{field}", "message": message})

    keys = header.shapes.keys()
    kind = network_kind(keys)
    if kind is None:
        differ("network_weights", "the file holds no LoRA, LoCon, LoHa or LoKr modules")
        return found
    theirs = file_family(header)
    if family is not None and theirs is not None and theirs != family:
        differ("base_model", f"the file is a {theirs} LoRA; this run trains {family}")
    if family == "flux1" or config.model_family == "flux1":
        differ("network_weights", "starting from a LoRA file is not supported for FLUX.1 runs yet")
    if kind != config.network_type:
        differ("network_type", f"the file is a {kind} network; this run trains {config.network_type}")
        return found  # ranks and modules of another layout say nothing more
    if uses_dora(keys) != config.dora_wd:
        differ("dora_wd", f"the file {'has' if uses_dora(keys) else 'has no'} DoRA scales (dora_scale)")
    linear, conv = _ranks(header, kind)
    if kind == "lora":
        if linear and linear != {config.network_dim}:
            differ("network_dim", f"the file's rank is {sorted(linear)}; network_dim is {config.network_dim}")
        if conv and config.conv_dim is None:
            differ("conv_dim", f"the file has 3x3-conv modules (rank {sorted(conv)}); conv_dim is unset")
        elif config.conv_dim is not None and conv != {config.conv_dim}:
            theirs_conv = sorted(conv) or "none"
            differ("conv_dim", f"the file's conv rank is {theirs_conv}; conv_dim is {config.conv_dim}")
    elif linear - {config.network_dim, config.conv_dim}:
        differ("network_dim", f"the file's rank is {sorted(linear)}; network_dim is {config.network_dim}")
    alpha = _float(header.metadata.get("ss_network_alpha"))
    if alpha is not None and alpha != float(config.network_alpha):
        differ("network_alpha", f"the file's alpha is {alpha:g}; network_alpha is {config.network_alpha:g}")
    has_te = any(k.startswith(TE_PREFIXES) for k in keys)
    if has_te != config.trains_text_encoder:
        differ(
            "network_train_unet_only",
            "the file has text-encoder modules; this run trains the U-Net only"
            if has_te
            else "the file has no text-encoder modules; this run trains the text encoder too",
        )
    return found


def check_header(header: LoraHeader, config: TrainingConfig, family: str | None) -> None:
    """A 422 naming every field the file disagrees with (details.fields), the first as details.field."""
    found = differences(header, config, family)
    if found:
        raise NetworkWeightsMismatch(
            "network_weights does not fit this run: "
            + "; ".join(f"{d['field']}: {d['message']}" for d in found),
            details={"field": found[0]["field"], "fields": found},
        )
