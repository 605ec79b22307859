"""Merge a FLUX.1 LoRA file in sd-scripts' (Kohya's) layout into a diffusers ``FluxTransformer2DModel``.

Each module ``lora_unet_<bfl path>`` adds ``weight * alpha / rank * up @ down`` to BFL's Linear, which
diffusers holds split into several Linears (flux_names.DOUBLE_BLOCK / SINGLE_BLOCK / EMBEDDERS: e.g. a single
block's ``linear1`` is ``to_q``, ``to_k``, ``to_v``, ``proj_mlp`` stacked by rows). The fused delta's rows are
split back in that order, so this works at any width, unlike diffusers' own Kohya FLUX reader, which splits
``linear1`` at FLUX.1's real widths (3072 / 12288) only.

Stricter than the usual loaders on purpose: diffusers and ComfyUI take a missing ``.alpha`` as alpha = rank
and drop (or only warn about) keys they cannot place; here both raise ValueError naming the key, and nothing
is changed until the whole file has been checked.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from diffusers import FluxTransformer2DModel
from peft.tuners.lora import LoraLayer

from worker.training.flux_names import FluxModule, known_flux_modules

_DOWN, _UP, _ALPHA = "lora_down.weight", "lora_up.weight", "alpha"


@dataclass(frozen=True)
class _Planned:
    name: str
    down: torch.Tensor  # (rank, in)
    up: torch.Tensor  # (sum of the parts' out, rank)
    scale: float  # alpha / rank
    linears: tuple[torch.nn.Linear, ...]  # the diffusers parts, in BFL's row order


def _known_modules(transformer: torch.nn.Module) -> dict[str, FluxModule]:
    return {m.kohya_name: m for m in known_flux_modules(transformer)}


def _group(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {"lora_down.weight" | "lora_up.weight" | "alpha": tensor}}, in the file's order."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name, _, suffix = key.partition(".")
        if suffix not in (_DOWN, _UP, _ALPHA):
            raise ValueError(f"{key}: not a plain LoRA key (lora_down.weight, lora_up.weight or alpha)")
        grouped.setdefault(name, {})[suffix] = tensor
    return grouped


def _linear(transformer: torch.nn.Module, path: str, name: str) -> torch.nn.Linear:
    try:
        module = transformer.get_submodule(path)
    except AttributeError:
        raise ValueError(f"{name}: this transformer has no {path}") from None
    if isinstance(module, LoraLayer):
        module = module.get_base_layer()
    if not isinstance(module, torch.nn.Linear):
        raise ValueError(f"{name}: {path} is a {type(module).__name__}, not a Linear")
    return module


def _plan(transformer: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> list[_Planned]:
    known = _known_modules(transformer)
    planned: list[_Planned] = []
    for name, parts in _group(tensors).items():
        module = known.get(name)
        if module is None:
            where = "a text encoder module, not merged here" if name.startswith("lora_te") else "no module"
            raise ValueError(f"{name}: {where} of this FLUX.1 transformer (cannot place it)")
        for suffix in (_DOWN, _UP, _ALPHA):
            if suffix not in parts:
                raise ValueError(f"{name}.{suffix} is missing")
        down, up, alpha = parts[_DOWN], parts[_UP], parts[_ALPHA]
        if alpha.numel() != 1:
            raise ValueError(f"{name}.alpha has shape {tuple(alpha.shape)}, not a scalar")
        linears = tuple(_linear(transformer, path, name) for path in module.parts)
        out_features = sum(lin.out_features for lin in linears)
        in_features = {lin.in_features for lin in linears}
        rank = down.shape[0] if down.dim() == 2 else 0
        if (
            rank < 1
            or up.dim() != 2
            or up.shape[1] != rank
            or in_features != {down.shape[1]}
            or up.shape[0] != out_features
        ):
            raise ValueError(
                f"{name}: down {tuple(down.shape)} / up {tuple(up.shape)} do not fit "
                f"{' + '.join(module.parts)} ({out_features} x {sorted(in_features)})"
            )
        planned.append(_Planned(name, down, up, float(alpha.item()) / rank, linears))
    return planned


@torch.no_grad()
def apply_kohya_flux_lora(
    transformer: FluxTransformer2DModel,
    tensors: Mapping[str, torch.Tensor],
    *,
    weight: float = 1.0,
) -> list[str]:
    """Add ``weight * alpha / rank * up @ down`` of every module of a Kohya FLUX.1 LoRA file to the
    transformer's base Linear weights, in place; returns the module names applied, in the file's order.

    Raises ValueError (before changing anything) for a key it cannot place (unknown or absent module, text
    encoder keys, DoRA / LyCORIS keys, wrong shapes) or a module without its ``.alpha``. A peft-wrapped
    Linear gets the delta in its base layer. The product is computed in float32 (or the weight's wider
    dtype) on the weight's device and rounded once into the weight's dtype.
    """
    planned = _plan(transformer, tensors)
    for module in planned:
        start = 0
        for linear in module.linears:
            base = linear.weight
            dtype = torch.promote_types(base.dtype, torch.float32)
            rows = module.up[start : start + linear.out_features].to(base.device, dtype)
            start += linear.out_features
            down = module.down.to(base.device, dtype)
            if base.dtype == dtype:  # in place: no weight-sized temporary
                base.addmm_(rows, down, alpha=weight * module.scale)
            else:
                base.copy_(torch.addmm(base.to(dtype), rows, down, alpha=weight * module.scale))
    return [module.name for module in planned]


def merged_copy(
    transformer: FluxTransformer2DModel,
    tensors: Mapping[str, torch.Tensor],
    *,
    weight: float = 1.0,
) -> FluxTransformer2DModel:
    """A deep copy of the transformer with the file merged (apply_kohya_flux_lora); the original is kept."""
    model = copy.deepcopy(transformer)
    apply_kohya_flux_lora(model, tensors, weight=weight)
    return model
