"""FLUX.1 transformer weights in BFL's layout (``flux1-dev.safetensors``) and in diffusers' layout.

The same mapping as diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``, which hard-codes FLUX.1's
widths (3072 / 12288) when it splits a single block's ``linear1`` and so fails on any other width; here the
widths come from the transformer config, so the tiny test model goes through the same code as FLUX.1.
tests/worker/test_flux_single_file.py checks both against each other, tensor for tensor.

BFL fuses what diffusers splits: a double block's ``img_attn.qkv`` is ``attn.to_q/to_k/to_v`` stacked by
rows (``txt_attn.qkv`` the ``add_*_proj`` twins), a single block's ``linear1`` is ``to_q/to_k/to_v`` and
``proj_mlp``; its RMSNorm weights are called ``scale``; and ``final_layer.adaLN_modulation.1`` gives
(shift, scale) where diffusers' ``norm_out.linear`` gives (scale, shift).

Chroma (``Chroma1-HD.safetensors``) keeps BFL's layout less ``vector_in`` (CLIP), ``time_in``,
``guidance_in``, the modulation Linears and the final modulation, plus the approximator
``distilled_guidance_layer`` (its ``layers.N.in_layer/out_layer`` are diffusers' ``linear_1/linear_2``, its
RMSNorm ``norms.N.scale`` diffusers' ``weight``). diffusers'
``convert_chroma_transformer_checkpoint_to_diffusers`` (0.42.1) hard-codes the same widths as FLUX.1's
converter (inner_dim 3072, mlp_ratio 4); :func:`bfl_layout` takes them from the config.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass

import torch

from worker.training.flux_names import CHROMA_DOUBLE_BLOCK, CHROMA_SINGLE_BLOCK, DOUBLE_BLOCK, SINGLE_BLOCK

_GLOBAL_LINEARS = (
    ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("txt_in", "context_embedder"),
    ("img_in", "x_embedder"),
    ("final_layer.linear", "proj_out"),
)
_CHROMA_LINEARS = (
    ("txt_in", "context_embedder"),
    ("img_in", "x_embedder"),
    ("final_layer.linear", "proj_out"),
)
BlockEntry = tuple[str, tuple[str, ...]]  # (BFL child path, its diffusers children)
_GUIDANCE_LINEARS = (
    ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
)
# (BFL RMSNorm scale, diffusers RMSNorm weight) within a block
_DOUBLE_NORMS = (
    ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
    ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
    ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
    ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
)
_SINGLE_NORMS = (
    ("norm.query_norm.scale", "attn.norm_q.weight"),
    ("norm.key_norm.scale", "attn.norm_k.weight"),
)
FINAL_MODULATION = "final_layer.adaLN_modulation.1"


@dataclass(frozen=True)
class BflTensor:
    """One tensor of a BFL file: the diffusers tensors it stacks by rows, in this order."""

    bfl: str
    parts: tuple[str, ...]
    swap_halves: bool = False  # (shift, scale) in BFL, (scale, shift) in diffusers


def bfl_tensors(num_layers: int, num_single_layers: int, guidance: bool) -> list[BflTensor]:
    """Every tensor of a FLUX.1 transformer in BFL's layout (without ComfyUI's ``model.diffusion_model.``)."""
    linears = list(_GLOBAL_LINEARS) + (list(_GUIDANCE_LINEARS) if guidance else [])
    out = [BflTensor(f"{b}.{p}", (f"{d}.{p}",)) for b, d in linears for p in ("weight", "bias")]
    out += [BflTensor(f"{FINAL_MODULATION}.{p}", (f"norm_out.linear.{p}",), True) for p in ("weight", "bias")]
    return out + _block_tensors(num_layers, num_single_layers, DOUBLE_BLOCK, SINGLE_BLOCK)


def chroma_bfl_tensors(num_layers: int, num_single_layers: int, approximator_layers: int) -> list[BflTensor]:
    """Every tensor of a Chroma transformer in BFL's layout (``Chroma1-HD.safetensors``, no prefix)."""
    approximator = "distilled_guidance_layer"
    linears = [*_CHROMA_LINEARS, *((f"{approximator}.{p}",) * 2 for p in ("in_proj", "out_proj"))]
    for i in range(approximator_layers):
        layer = f"{approximator}.layers.{i}"
        linears += [(f"{layer}.in_layer", f"{layer}.linear_1"), (f"{layer}.out_layer", f"{layer}.linear_2")]
    out = [BflTensor(f"{b}.{p}", (f"{d}.{p}",)) for b, d in linears for p in ("weight", "bias")]
    out += [
        BflTensor(f"{approximator}.norms.{i}.scale", (f"{approximator}.norms.{i}.weight",))
        for i in range(approximator_layers)
    ]
    return out + _block_tensors(num_layers, num_single_layers, CHROMA_DOUBLE_BLOCK, CHROMA_SINGLE_BLOCK)


def bfl_layout(config: Mapping) -> list[BflTensor]:
    """The BFL tensors of a FluxTransformer2DModel or (with ``approximator_layers``) ChromaTransformer2DModel
    config."""
    if "approximator_layers" in config:
        layers = config["approximator_layers"]
        return chroma_bfl_tensors(config["num_layers"], config["num_single_layers"], layers)
    return bfl_tensors(config["num_layers"], config["num_single_layers"], config["guidance_embeds"])


def _block_tensors(
    num_layers: int, num_single_layers: int, double: Sequence[BlockEntry], single: Sequence[BlockEntry]
) -> list[BflTensor]:
    out: list[BflTensor] = []
    blocks = (
        ("double_blocks", "transformer_blocks", num_layers, double, _DOUBLE_NORMS),
        ("single_blocks", "single_transformer_blocks", num_single_layers, single, _SINGLE_NORMS),
    )
    for bfl_name, diffusers_name, count, modules, norms in blocks:
        for i in range(count):
            b, d = f"{bfl_name}.{i}.", f"{diffusers_name}.{i}."
            for bfl_module, children in modules:
                for p in ("weight", "bias"):
                    out.append(BflTensor(f"{b}{bfl_module}.{p}", tuple(f"{d}{c}.{p}" for c in children)))
            out += [BflTensor(b + bfl_norm, (d + norm,)) for bfl_norm, norm in norms]
    return out


def _split_sizes(rows: int, parts: int, inner_dim: int) -> list[int]:
    # q, k, v are inner_dim rows each; a single block's fourth part (proj_mlp) takes the rest.
    return [rows // 3] * 3 if parts == 3 else [inner_dim] * (parts - 1) + [rows - inner_dim * (parts - 1)]


def swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def bfl_to_diffusers(bfl: MutableMapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """Move the tensors of ``bfl`` (popped from it: what is left was not expected) into diffusers' names for a
    FluxTransformer2DModel (or ChromaTransformer2DModel) of ``config``. Raises KeyError naming the first BFL
    key the file lacks."""
    inner_dim = config["num_attention_heads"] * config["attention_head_dim"]
    out: dict[str, torch.Tensor] = {}
    for entry in bfl_layout(config):
        tensor = bfl.pop(entry.bfl)
        if entry.swap_halves:
            tensor = swap_halves(tensor)
        if len(entry.parts) == 1:
            out[entry.parts[0]] = tensor
            continue
        sizes = _split_sizes(tensor.shape[0], len(entry.parts), inner_dim)
        for name, part in zip(entry.parts, torch.split(tensor, sizes, dim=0), strict=True):
            out[name] = part.clone()  # own storage: safetensors refuses to save tensors that share one
    return out
