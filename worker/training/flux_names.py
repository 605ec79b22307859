"""FLUX.1 LoRA targets and file names as sd-scripts' ``flux_train_network.py`` has them.

sd-scripts (``networks/lora_flux.py``, read at kohya-ss/sd-scripts 48d368f, 2026-02) trains on BFL's own
FLUX model (``library/flux_models.py``) and puts one LoRA module on every ``Linear`` inside each
``DoubleStreamBlock`` and ``SingleStreamBlock``, the modulation layers included: lora_flux.py has no default
exclusion (musubi-tuner's FLUX.1 Kontext network is the one that excludes ``img_mod``/``txt_mod``/
``modulation`` by default). Its keys are ``lora_unet_`` + BFL module path, '.' -> '_': per double block
``img_mod_lin``, ``img_attn_qkv``, ``img_attn_proj``, ``img_mlp_0``, ``img_mlp_2`` and the ``txt_`` twins;
per single block ``linear1``, ``linear2``, ``modulation_lin``. CLIP-L is ``lora_te1_text_model_...``.

lorabake trains on diffusers' ``FluxTransformer2DModel``, which splits some of BFL's Linears: a double block's
``img_attn.qkv`` is ``attn.to_q/to_k/to_v``, ``txt_attn.qkv`` is ``attn.add_q_proj/add_k_proj/add_v_proj``, a
single block's ``linear1`` is ``attn.to_q/to_k/to_v`` + ``proj_mlp`` (rows in that order). The map below is
checked against diffusers' ``convert_flux_transformer_checkpoint_to_diffusers`` (BFL -> diffusers weights) and
``_convert_kohya_flux_lora_to_diffusers`` (the Kohya FLUX LoRA reader). None of the modules sd-scripts trains
has a reordered output: diffusers swaps shift/scale only for ``norm_out.linear`` (BFL
``final_layer.adaLN_modulation.1``), which sd-scripts never targets; ``norm1.linear``/``norm.linear`` chunk
(shift, scale, gate) as BFL's ``Modulation`` does.

Fusing a split module exactly: with k parts of rank r, ``down = cat([down_1, ..., down_k])`` (rank k*r) and
``up = block_diag(up_1, ..., up_k)``, so ``up @ down`` stacks each part's own ``up_i @ down_i`` rows. Every
loader (sd-scripts, ComfyUI, Forge, diffusers) scales a module by ``alpha / rank`` with rank = the file's
rank, here k*r; the fused ``.alpha`` is therefore ``k * network_alpha`` so that the strength stays the trained
``network_alpha / r``. (sd-scripts' own ``split_qkv`` saves rank 3r/4r with the unchanged alpha, i.e. 1/3 or
1/4 of the strength on reload; this module does not repeat that.) A part without LoRA (e.g. trained on an
explicit subset of diffusers modules) is written as zero rows/blocks, which is still exact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from peft.tuners.lora import LoraLayer

from worker.training.export import TE1_PREFIX, UNET_PREFIX, _te_module_path, kohya_name
from worker.training.network import ADAPTER_NAME, lora_layers

# (BFL child path, its diffusers children in BFL's output-row order), in sd-scripts' module order (the order
# named_modules() walks BFL's blocks, so files list modules as sd-scripts' own do).
DOUBLE_BLOCK: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("img_mod.lin", ("norm1.linear",)),
    ("img_attn.qkv", ("attn.to_q", "attn.to_k", "attn.to_v")),
    ("img_attn.proj", ("attn.to_out.0",)),
    ("img_mlp.0", ("ff.net.0.proj",)),
    ("img_mlp.2", ("ff.net.2",)),
    ("txt_mod.lin", ("norm1_context.linear",)),
    ("txt_attn.qkv", ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    ("txt_attn.proj", ("attn.to_add_out",)),
    ("txt_mlp.0", ("ff_context.net.0.proj",)),
    ("txt_mlp.2", ("ff_context.net.2",)),
)
SINGLE_BLOCK: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("linear1", ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")),
    ("linear2", ("proj_out",)),
    ("modulation.lin", ("norm.linear",)),
)
# Outside the blocks: what sd-scripts' ``in_dims`` network arg can add (never a default target). Named here so
# that a transformer trained with them still exports; all 1:1, no reordering (diffusers' converter agrees).
EMBEDDERS: tuple[tuple[str, str], ...] = (
    ("img_in", "x_embedder"),
    ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
    ("txt_in", "context_embedder"),
)

# Chroma (sd-scripts' library/chroma_models.py, the same commit; lodestone-rock/flow's model): FLUX.1's blocks
# without the modulation Linears (img_mod, txt_mod, modulation: every block's shift/scale/gate come from the
# one `distilled_guidance_layer`), so lora_flux.py's "every Linear of a DoubleStreamBlock / SingleStreamBlock"
# is the tables above less those. Embedders: Chroma has only img_in and txt_in of in_dims' five.
CHROMA_DOUBLE_BLOCK = tuple(entry for entry in DOUBLE_BLOCK if not entry[0].endswith("_mod.lin"))
CHROMA_SINGLE_BLOCK = tuple(entry for entry in SINGLE_BLOCK if entry[0] != "modulation.lin")
CHROMA_EMBEDDERS = tuple(entry for entry in EMBEDDERS if entry[0] in ("img_in", "txt_in"))


def is_chroma(transformer: torch.nn.Module) -> bool:
    """A Chroma transformer: its modulations come from the approximator, not from per-block Linears."""
    return hasattr(transformer, "distilled_guidance_layer")


@dataclass(frozen=True)
class FluxModule:
    """One Linear of sd-scripts' (BFL's) FLUX model and the diffusers Linears it is made of, in row order."""

    kind: Literal["double", "single", "embedder"]
    index: int  # block index; -1 for embedders
    bfl_path: str  # e.g. "double_blocks.3.img_attn.qkv": what sd-scripts' include/exclude patterns match
    parts: tuple[str, ...]  # diffusers module paths

    @property
    def kohya_name(self) -> str:
        return kohya_name(UNET_PREFIX, self.bfl_path)


BlockKind = Literal["double", "single"]
# kind -> (diffusers ModuleList, BFL ModuleList, children table)
BLOCKS: dict[BlockKind, tuple[str, str, tuple[tuple[str, tuple[str, ...]], ...]]] = {
    "double": ("transformer_blocks", "double_blocks", DOUBLE_BLOCK),
    "single": ("single_transformer_blocks", "single_blocks", SINGLE_BLOCK),
}


def block_count(transformer: torch.nn.Module, kind: BlockKind) -> int:
    return sum(1 for _ in transformer.get_submodule(BLOCKS[kind][0]).children())


def _block_tables(
    transformer: torch.nn.Module,
) -> dict[BlockKind, tuple[str, str, tuple[tuple[str, tuple[str, ...]], ...]]]:
    if not is_chroma(transformer):
        return BLOCKS
    return {
        "double": (*BLOCKS["double"][:2], CHROMA_DOUBLE_BLOCK),
        "single": (*BLOCKS["single"][:2], CHROMA_SINGLE_BLOCK),
    }


def flux_block_modules(transformer: torch.nn.Module) -> list[FluxModule]:
    """sd-scripts' default LoRA modules of this transformer (every Linear of every block), in its order;
    Chroma's blocks have no modulation Linears.

    Block counts come from the model (19 / 38 for FLUX.1 and Chroma), so tiny test models follow the rule.
    """
    modules: list[FluxModule] = []
    for kind, (blocks, bfl_blocks, table) in _block_tables(transformer).items():
        for i in range(block_count(transformer, kind)):
            for bfl_child, parts in table:
                diffusers_parts = tuple(f"{blocks}.{i}.{p}" for p in parts)
                modules.append(FluxModule(kind, i, f"{bfl_blocks}.{i}.{bfl_child}", diffusers_parts))
    return modules


def parse_block_indices(selection: str, total_blocks: int) -> list[bool]:
    """sd-scripts' ``train_double_block_indices`` / ``train_single_block_indices`` syntax: "all", "none" (or
    ""), or comma-separated 0-based indices and inclusive ranges ("0,1,5-10"). One flag per block.

    sd-scripts asserts on a bad value; a ValueError here lets the service answer with the field's name.
    """
    if selection == "all":
        return [True] * total_blocks
    selected = [False] * total_blocks
    if selection in ("none", ""):
        return selected
    for part in selection.split(","):
        try:
            if "-" in part:
                start_s, end_s = part.split("-")
                start, end = int(start_s), int(end_s)
            else:
                start = end = int(part)
        except ValueError:
            raise ValueError(f"block selection {selection!r}: {part!r} is not an index or a range") from None
        if not (0 <= start <= end < total_blocks):
            raise ValueError(
                f"block selection {selection!r}: {part.strip()!r} is outside 0-{total_blocks - 1}"
            )
        for i in range(start, end + 1):
            selected[i] = True
    return selected


def _compile(patterns: str | Sequence[str] | None, what: str) -> list[re.Pattern[str]]:
    if patterns is None:
        return []
    compiled = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as e:  # sd-scripts logs and drops a bad pattern; silently training more is worse
            raise ValueError(f"{what}: invalid regular expression {pattern!r}: {e}") from None
    return compiled


def selected_flux_modules(
    transformer: torch.nn.Module,
    *,
    train_double_block_indices: str | None = None,
    train_single_block_indices: str | None = None,
    include_patterns: str | Sequence[str] | None = None,
    exclude_patterns: str | Sequence[str] | None = None,
) -> list[FluxModule]:
    """The FluxModules flux_lora_target_paths trains (see there)."""
    indices = {"double": train_double_block_indices, "single": train_single_block_indices}
    chosen: dict[str, list[bool]] = {}
    for kind in BLOCKS:
        total = block_count(transformer, kind)
        selection = indices[kind]
        chosen[kind] = [True] * total if selection is None else parse_block_indices(selection, total)
    exclude = _compile(exclude_patterns, "exclude_patterns")
    include = _compile(include_patterns, "include_patterns")
    selected = []
    for module in flux_block_modules(transformer):
        if not chosen[module.kind][module.index]:
            continue
        excluded = any(p.fullmatch(module.bfl_path) for p in exclude)
        if excluded and not any(p.fullmatch(module.bfl_path) for p in include):
            continue
        selected.append(module)
    return selected


def flux_lora_target_paths(
    transformer: torch.nn.Module,
    *,
    train_double_block_indices: str | None = None,
    train_single_block_indices: str | None = None,
    include_patterns: str | Sequence[str] | None = None,
    exclude_patterns: str | Sequence[str] | None = None,
) -> list[str]:
    """Diffusers module paths to put peft LoRA on, for sd-scripts' FLUX.1 LoRA targets.

    Default: every Linear of every double and single block (sd-scripts' lora_flux.py default, modulation
    included). ``train_*_block_indices`` keep only the listed blocks (None = all), parsed against the model's
    own block counts (sd-scripts hard-codes 19 / 38). ``exclude_patterns`` drop modules whose sd-scripts
    module path (BFL's, e.g. ``double_blocks.0.img_mod.lin``) a pattern ``re.fullmatch``-es;
    ``include_patterns`` bring excluded modules back (they override exclusion only, and never a block the
    indices leave out). That is the pattern semantics of sd-scripts' networks/lora_anima.py, the one
    sd-scripts network with these args; lora_flux.py itself has none. Patterns act on whole BFL modules,
    so q, k and v of a fused module are always kept or dropped together.
    """
    paths = [
        part
        for module in selected_flux_modules(
            transformer,
            train_double_block_indices=train_double_block_indices,
            train_single_block_indices=train_single_block_indices,
            include_patterns=include_patterns,
            exclude_patterns=exclude_patterns,
        )
        for part in module.parts
    ]
    for path in paths:  # a diffusers rename must fail here, not train (and export) a different module set
        base = transformer.get_submodule(path)
        base = base.get_base_layer() if isinstance(base, LoraLayer) else base
        if not isinstance(base, torch.nn.Linear):
            raise ValueError(f"{path} is a {type(base).__name__}, not the Linear FLUX's layout has there")
    return paths


def known_flux_modules(transformer: torch.nn.Module) -> list[FluxModule]:
    """Every module an sd-scripts FLUX.1 / Chroma file may name for this transformer: the blocks' Linears and
    the embedders of its in_dims."""
    embedders = CHROMA_EMBEDDERS if is_chroma(transformer) else EMBEDDERS
    return [
        *flux_block_modules(transformer),
        *(FluxModule("embedder", -1, bfl, (diffusers,)) for bfl, diffusers in embedders),
    ]


def _adapted_modules(
    transformer: torch.nn.Module,
) -> list[tuple[FluxModule, list[LoraLayer | None]]]:
    """Every FluxModule with at least one adapted part, with the layer of each part (None: no LoRA)."""
    adapters = dict(lora_layers(transformer))
    known = known_flux_modules(transformer)
    found: list[tuple[FluxModule, list[LoraLayer | None]]] = []
    for module in known:
        layers = [adapters.pop(p, None) for p in module.parts]
        if any(layer is not None for layer in layers):
            found.append((module, layers))
    if adapters:  # e.g. norm_out.linear (shift/scale swapped vs BFL) or proj_out: no sd-scripts module name
        raise ValueError(f"no sd-scripts FLUX name for the LoRA on {sorted(adapters)}")
    return found


def _text_encoder_modules(text_encoder: torch.nn.Module | None) -> list[tuple[str, LoraLayer]]:
    if text_encoder is None:
        return []
    return [
        (kohya_name(TE1_PREFIX, _te_module_path(name)), layer) for name, layer in lora_layers(text_encoder)
    ]


def kohya_flux_module_names(
    transformer: torch.nn.Module, text_encoder: torch.nn.Module | None = None
) -> list[str]:
    """The module names kohya_flux_state_dict writes for these adapters (names only: runs on meta models)."""
    return [m.kohya_name for m, _ in _adapted_modules(transformer)] + [
        name for name, _ in _text_encoder_modules(text_encoder)
    ]


def _checked_rank(name: str, layer: LoraLayer, network_alpha: float) -> int:
    rank = int(layer.r[ADAPTER_NAME])
    alpha = float(layer.lora_alpha[ADAPTER_NAME])
    if alpha != float(network_alpha):
        raise ValueError(f"{name}: adapter alpha {alpha} != configured alpha {float(network_alpha)}")
    # rsLoRA (alpha / sqrt(r)), DoRA and LoRA biases are not what Kohya's up @ down * alpha / rank computes.
    if (
        layer.scaling[ADAPTER_NAME] != alpha / rank
        or layer.use_dora.get(ADAPTER_NAME)
        or layer.lora_bias.get(ADAPTER_NAME)
    ):
        raise ValueError(f"{name}: only plain LoRA (scale alpha / rank) can be written in Kohya's format")
    return rank


def _weights(layer: LoraLayer, save_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    down = layer.lora_A[ADAPTER_NAME].weight.detach().to("cpu", save_dtype, copy=True)
    up = layer.lora_B[ADAPTER_NAME].weight.detach().to("cpu", save_dtype, copy=True)
    return down, up


def kohya_flux_state_dict(
    transformer: torch.nn.Module,
    text_encoder: torch.nn.Module | None = None,
    *,
    network_alpha: float,
    save_dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """sd-scripts-named CPU tensors of the transformer's (and CLIP-L's) LoRA: weights in save_dtype, each
    ``.alpha`` a float32 0-d tensor (exact, as export.kohya_state_dict writes it). Split diffusers modules are
    fused as the module docstring says, with alpha = parts * network_alpha."""
    tensors: dict[str, torch.Tensor] = {}
    for module, layers in _adapted_modules(transformer):
        name = module.kohya_name
        ranks = {_checked_rank(name, layer, network_alpha) for layer in layers if layer is not None}
        if len(ranks) != 1:
            raise ValueError(f"{name}: its parts have different ranks {sorted(ranks)}; cannot fuse them")
        rank = ranks.pop()
        downs: list[torch.Tensor] = []
        ups: list[torch.Tensor] = []
        for path, layer in zip(module.parts, layers, strict=True):
            if layer is None:  # an untrained part: zero rows of down, a zero block of up
                base = transformer.get_submodule(path)
                downs.append(torch.zeros(rank, base.in_features, dtype=save_dtype))
                ups.append(torch.zeros(base.out_features, rank, dtype=save_dtype))
            else:
                down, up = _weights(layer, save_dtype)
                downs.append(down)
                ups.append(up)
        tensors[f"{name}.lora_down.weight"] = torch.cat(downs, dim=0).contiguous()
        tensors[f"{name}.lora_up.weight"] = torch.block_diag(*ups).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(network_alpha) * len(module.parts), dtype=torch.float32)
    for name, layer in _text_encoder_modules(text_encoder):
        _checked_rank(name, layer, network_alpha)
        down, up = _weights(layer, save_dtype)
        tensors[f"{name}.lora_down.weight"] = down.contiguous()
        tensors[f"{name}.lora_up.weight"] = up.contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(network_alpha), dtype=torch.float32)
    if not tensors:
        raise ValueError("the models carry no LoRA adapter to export")
    return tensors
