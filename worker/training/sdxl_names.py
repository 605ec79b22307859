"""SDXL U-Net module names as sd-scripts writes them: the original (SAI / LDM) layout, not diffusers'.

sd-scripts' ``sdxl_train_network.py`` trains on its own copy of SAI's U-Net (library/sdxl_original_unet.py),
so its LoRA keys are ``lora_unet_`` + that model's module path, '.' -> '_'
(``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``). A1111, Forge and sd-scripts' own loader
look SDXL keys up in that layout; the diffusers-derived names an older lorabake wrote
(``lora_unet_down_blocks_1_attentions_0_...``) are only guessed back by some of them, and A1111 guesses the
SDXL upsamplers wrong. So SDXL files are written with these names; SD1.x/2.x keep the diffusers-derived names,
which is what sd-scripts writes for them (it trains those on a diffusers U-Net).

The map is derived from the U-Net config (block types, layers per block), the way library/sdxl_model_util.py's
``make_unet_conversion_map`` lays out SDXL's blocks: ``input_blocks.0`` is conv_in; each down level has one
entry per layer (``.0`` resnet, ``.1`` attention) and, except the last level, one downsampler entry
(``.0.op``); the middle block is resnet / attention / resnet; each up level has layers + 1 entries
(``.0`` resnet, ``.1`` attention, then the upsampler after the attention, ``.2``, or after the resnet,
``.1``, on a level without attention). Deriving it from the config makes the tiny test SDXL and the real one
follow the same rule; tests pin the full-size result against a table transcribed from sd-scripts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

# Children of a resnet block: diffusers name -> SAI name (sdxl_model_util.py's resnet table).
RESNET_CHILDREN: dict[str, str] = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
DOWNSAMPLER_CHILDREN: dict[str, str] = {"conv": "op"}  # SAI's Downsample2D calls its conv "op"
NO_RENAMES: dict[str, str] = {}

# Modules outside the block structure (time / label embeddings, conv_in / conv_out).
TOP_LEVEL: dict[str, str] = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def is_sdxl_unet(config: Mapping[str, Any]) -> bool:
    """SDXL's U-Net is the SD family member with "text_time" added conditioning (pooled text + size ids)."""
    return config.get("addition_embed_type") == "text_time"


def _layers_per_level(config: Mapping[str, Any]) -> list[int]:
    layers = config["layers_per_block"]
    levels = len(config["down_block_types"])
    return [int(layers)] * levels if isinstance(layers, int) else [int(n) for n in layers]


@dataclass(frozen=True)
class _Entry:
    sai: str
    children: Mapping[str, str]


def _block_entries(config: Mapping[str, Any]) -> dict[str, _Entry]:
    """diffusers block prefix -> SAI block prefix (+ how that block's children are renamed)."""
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"no SAI layout for mid_block_type {config.get('mid_block_type')!r}")
    down_types, up_types = list(config["down_block_types"]), list(config["up_block_types"])
    layers = _layers_per_level(config)
    entries = {path: _Entry(sai, NO_RENAMES) for path, sai in TOP_LEVEL.items()}
    entries["mid_block.resnets.0"] = _Entry("middle_block.0", RESNET_CHILDREN)
    entries["mid_block.attentions.0"] = _Entry("middle_block.1", NO_RENAMES)
    entries["mid_block.resnets.1"] = _Entry("middle_block.2", RESNET_CHILDREN)
    index = 1  # input_blocks.0 is conv_in
    for level, block_type in enumerate(down_types):
        for j in range(layers[level]):
            entries[f"down_blocks.{level}.resnets.{j}"] = _Entry(f"input_blocks.{index}.0", RESNET_CHILDREN)
            if "CrossAttn" in block_type:
                entries[f"down_blocks.{level}.attentions.{j}"] = _Entry(f"input_blocks.{index}.1", NO_RENAMES)
            index += 1
        if level < len(down_types) - 1:  # every level but the lowest-resolution one halves the size
            entries[f"down_blocks.{level}.downsamplers.0"] = _Entry(
                f"input_blocks.{index}.0", DOWNSAMPLER_CHILDREN
            )
            index += 1
    index = 0
    for level, block_type in enumerate(up_types):
        has_attention = "CrossAttn" in block_type
        n = layers[len(up_types) - 1 - level] + 1  # up levels mirror the down levels, one layer more
        for j in range(n):
            entries[f"up_blocks.{level}.resnets.{j}"] = _Entry(f"output_blocks.{index}.0", RESNET_CHILDREN)
            if has_attention:
                entries[f"up_blocks.{level}.attentions.{j}"] = _Entry(f"output_blocks.{index}.1", NO_RENAMES)
            if j == n - 1 and level < len(up_types) - 1:  # the upsampler follows the level's last layer
                slot = 2 if has_attention else 1
                sampler = f"output_blocks.{index}.{slot}"
                entries[f"up_blocks.{level}.upsamplers.0"] = _Entry(sampler, NO_RENAMES)
            index += 1
    return entries


def _rename_child(rest: str, children: Mapping[str, str]) -> str:
    for old, new in children.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def _longest_prefix(path: str, prefixes: Iterable[str]) -> str | None:
    best = None
    for prefix in prefixes:
        if (path == prefix or path.startswith(prefix + ".")) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best


class SaiNames:
    """Module paths of a diffusers SDXL-shaped U-Net <-> the SAI module paths sd-scripts names LoRAs by.

    Inside attention blocks (Transformer2DModel: proj_in, transformer_blocks.N.attn1.to_q, ff.net.0.proj, ...)
    both layouts use the same names, so only the block prefix changes; resnet and downsampler children are
    renamed too (conv1 -> in_layers.2, downsamplers.0.conv -> .0.op).
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._entries = _block_entries(config)
        self._by_sai = {entry.sai: (path, entry) for path, entry in self._entries.items()}

    def to_sai(self, path: str) -> str:
        """The SAI module path of a diffusers module path; KeyError for a module the SAI layout lacks."""
        prefix = _longest_prefix(path, self._entries)
        if prefix is None:
            raise KeyError(f"U-Net module {path!r} has no SAI (sd-scripts SDXL) name")
        entry = self._entries[prefix]
        rest = path[len(prefix) + 1 :]
        return entry.sai + ("." + _rename_child(rest, entry.children) if rest else "")

    def to_diffusers(self, sai_path: str) -> str:
        """The inverse of to_sai."""
        prefix = _longest_prefix(sai_path, self._by_sai)
        if prefix is None:
            raise KeyError(f"{sai_path!r} is not an SAI U-Net module path")
        path, entry = self._by_sai[prefix]
        rest = sai_path[len(prefix) + 1 :]
        back = {new: old for old, new in entry.children.items()}
        return path + ("." + _rename_child(rest, back) if rest else "")


def kohya_module_names(prefix: str, unet: torch.nn.Module) -> dict[str, str]:
    """Kohya module name (``lora_unet_...``, no ``.lora_down.weight``) -> diffusers module path, for reading
    files back: every module under its diffusers-derived name (SD1/2 files, and SDXL files written by
    lorabake before SAI naming) and, for an SDXL U-Net, under its SAI name too (files written now, and by
    sd-scripts). Built from the model itself, so '_' in names never has to be guessed back into '.'."""
    names: dict[str, str] = {}
    sai = SaiNames(unet.config) if is_sdxl_unet(getattr(unet, "config", {})) else None
    for path, _ in unet.named_modules():
        if not path:
            continue
        names[prefix + path.replace(".", "_")] = path
        if sai is not None:
            try:
                names[prefix + sai.to_sai(path).replace(".", "_")] = path
            except KeyError:  # parameterless helpers (time_proj, conv_act, ...) have no SAI entry
                continue
    return names
