"""Kohya-format LoRA files applied to a loaded pipeline at a multiplier, then removed.

diffusers' `load_lora_weights` reads our files (and sd-scripts', A1111's) into PEFT adapters; `set_adapters`
sets each adapter's scale to multiplier x alpha / rank per component, which is exactly what A1111's
`<lora:NAME:TE:UNET>` multiplies the delta by, so weight 1 computes what the trained adapters computed
during training (the same PEFT layers, the same alpha / rank), weight 0 adds an exact zero, and several
adapters add their deltas. `delete_adapters` removes them again: what is left forwards straight to the base
layers, so the base model's output comes back bit for bit (tests/worker/test_previews.py pins all three).
Each load gets a fresh adapter name: a name reused after a delete reloaded incompletely in diffusers 0.42.
FLUX.1 files are read by worker/previews/flux_loras.py into the same kind of adapters. A file whose
`ss_base_model_version` names another family than the base model's is refused naming both (the API checks
that too; this catches a job whose families it could not know).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from diffusers import ChromaPipeline, FluxPipeline
from safetensors import safe_open
from safetensors.torch import load_file

from shared.errors import LorabakeError
from worker.previews.flux_loras import load_kohya_flux_lora

DENOISERS = ("unet", "transformer")  # the components a U-Net weight applies to; the rest are text encoders
_names = itertools.count()
log = logging.getLogger("lorabake.worker")


@dataclass(frozen=True)
class LoraFile:
    path: Path
    name: str  # as a prompt names it (the file name without extension)
    te_weight: float
    unet_weight: float


def short_hash(path: Path, fallback: str) -> str:
    """A1111's `Lora hashes` value: the first 12 of sshs_model_hash (the tensor payload's sha256)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception:  # an unreadable header is reported by the load that follows
        metadata = {}
    return (metadata.get("sshs_model_hash") or fallback)[:12]


def lora_family(path: Path) -> str | None:
    """The family a LoRA file was trained for, from Kohya's ss_base_model_version (None: not written)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            version = (handle.metadata() or {}).get("ss_base_model_version", "")
    except Exception:  # an unreadable file is reported by the load that follows
        return None
    known = (("sd_v1", "sd1"), ("sd_v2", "sd2"), ("sdxl", "sdxl"), ("flux1", "flux1"), ("chroma", "chroma"))
    for prefix, family in known:
        if version.startswith(prefix):
            return family
    return None


def _check_family(lora: LoraFile, family: str | None) -> None:
    theirs = lora_family(lora.path)
    if family is not None and theirs is not None and theirs != family:
        raise LorabakeError(
            f"LoRA {lora.name!r} was trained for {theirs}, but the base model is {family}",
            code="lora_family_mismatch",
            details={"name": lora.name, "lora_family": theirs, "base_model_family": family},
        )


def _read(pipe: Any, lora: LoraFile, adapter: str) -> None:
    if isinstance(pipe, FluxPipeline | ChromaPipeline):  # sd-scripts FLUX.1 / Chroma names
        load_kohya_flux_lora(pipe, load_file(lora.path), adapter)
    else:
        pipe.load_lora_weights(str(lora.path.parent), weight_name=lora.path.name, adapter_name=adapter)


def _load(pipe: Any, lora: LoraFile, adapter: str, family: str | None) -> None:
    _check_family(lora, family)
    try:
        _read(pipe, lora, adapter)
    except Exception as exc:
        raise LorabakeError(
            f"LoRA {lora.name!r} cannot be applied to this base model ({type(exc).__name__}: {exc})"[:500],
            code="lora_incompatible",
            details={"name": lora.name},
        ) from exc
    if not any(adapter in names for names in pipe.get_list_adapters().values()):
        raise LorabakeError(
            f"LoRA {lora.name!r} names no module of this base model (another model family?)",
            code="lora_incompatible",
            details={"name": lora.name},
        )


def _weights(pipe: Any, adapter: str, lora: LoraFile) -> dict[str, float]:
    """The adapter's multiplier per component it has (a file without text-encoder keys has no TE part)."""
    return {
        component: lora.unet_weight if component in DENOISERS else lora.te_weight
        for component, names in pipe.get_list_adapters().items()
        if adapter in names
    }


class AppliedLoras:
    """LoRAs loaded into a pipeline as adapters; their multipliers can change without a reload."""

    def __init__(self, pipe: Any, family: str | None = None) -> None:
        self.pipe = pipe
        self.family = family  # the base model's; None: not checked here
        self.adapters: list[str] = []
        self.files: list[LoraFile] = []

    def add(self, lora: LoraFile) -> None:
        adapter = f"lorabake_{next(_names)}"
        self.adapters.append(adapter)  # before the load: a half-loaded adapter is removed too
        self.files.append(lora)
        _load(self.pipe, lora, adapter, self.family)

    def reweight(self, weights: Sequence[tuple[float, float]]) -> None:
        """Each LoRA's (text encoder, U-Net) multipliers, in the order they were added."""
        if not self.adapters:
            return
        scaled = [
            replace(f, te_weight=te, unet_weight=unet)
            for f, (te, unet) in zip(self.files, weights, strict=True)
        ]
        self.pipe.set_adapters(
            self.adapters, [_weights(self.pipe, a, f) for a, f in zip(self.adapters, scaled, strict=True)]
        )

    def remove(self) -> None:
        present = {name for names in self.pipe.get_list_adapters().values() for name in names}
        loaded = [a for a in self.adapters if a in present]
        if loaded:
            self.pipe.delete_adapters(loaded)
        self.adapters, self.files = [], []


@contextmanager
def applied_loras(pipe: Any, loras: Sequence[LoraFile], family: str | None = None) -> Iterator[AppliedLoras]:
    """The LoRAs applied at their own multipliers (deltas summed) inside the block, removed after it,
    whatever happens in it."""
    applied = AppliedLoras(pipe, family)
    try:
        for lora in loras:
            applied.add(lora)
        applied.reweight([(lora.te_weight, lora.unet_weight) for lora in loras])
        yield applied
    finally:
        applied.remove()
