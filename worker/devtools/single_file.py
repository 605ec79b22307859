"""Write an A1111 / original-Stable-Diffusion ("LDM") single-file checkpoint from a diffusers SD1.x pipeline
(SD2.x and SDXL base pipelines too: ``save_sd2_single_file``, ``save_sdxl_single_file``).

diffusers ships only the reading direction (``from_single_file``); tests and demos that exercise
single-file base models need the writing direction. The UNet map is derived from the UNet config (block
types, layers_per_block), so it serves the real SD1.5 as well as the tiny test model.

LDM layout, for reference:
- UNet ``model.diffusion_model.``: ``input_blocks.0.0`` = conv_in; per down level ``layers_per_block``
  entries of ``[resnet, attention?]``, then (except the last level) one ``[downsample .op]`` entry;
  ``middle_block.{0,1,2}`` = resnet, attention, resnet; per up level ``layers_per_block + 1`` entries of
  ``[resnet, attention?, upsample?]``; ``out.0`` / ``out.2`` = norm / conv_out; ``time_embed.0`` / ``.2``.
- VAE ``first_stage_model.``: ``{encoder,decoder}.{down,up}.N.block.M``, ``mid.block_1/attn_1/block_2``;
  decoder levels are numbered in reverse (diffusers ``up_blocks.0`` is LDM ``up.{n-1}``); mid attention
  q/k/v/proj_out are 1x1 convs (4-D weights) where diffusers has Linear layers.
- CLIP ``cond_stage_model.transformer.text_model.`` + the transformers key (which has no ``text_model.``
  prefix in transformers >= 5.6 for CLIPTextModel, so it is added back here).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

_UNET_RESNET_RENAMES = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)
_VAE_ATTN_RENAMES = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)

Renamer = Callable[[str], str]


def _rename_first(renames: tuple[tuple[str, str], ...]) -> Renamer:
    """Rename the module name at the start of a sub-key (``conv1.weight`` -> ``in_layers.2.weight``)."""

    def rename(sub_key: str) -> str:
        for old, new in renames:
            if sub_key.startswith(old + "."):
                return new + sub_key[len(old) :]
        return sub_key

    return rename


def _same(sub_key: str) -> str:
    return sub_key


def _unet_prefix_map(config: Mapping[str, Any]) -> dict[str, tuple[str, Renamer]]:
    """diffusers module prefix -> (LDM module prefix, renamer for what follows it), from the UNet config."""
    text_time = config.get("addition_embed_type") == "text_time"  # SDXL: label_emb in the LDM layout
    if (
        (config.get("addition_embed_type") and not text_time)
        or config.get("class_embed_type")
        or config.get("num_class_embeds")
    ):
        raise ValueError(
            "only SD UNets without class embeddings (SDXL's text_time embedding aside) can be written"
        )
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"unsupported mid_block_type {config.get('mid_block_type')!r}")
    layers = config["layers_per_block"]
    if not isinstance(layers, int):
        # diffusers' single-file reader only understands one layers_per_block for every level.
        if len(set(layers)) != 1:
            raise ValueError(f"per-level layers_per_block {layers!r} has no SD1 single-file layout")
        layers = layers[0]
    resnet = _rename_first(_UNET_RESNET_RENAMES)
    m: dict[str, tuple[str, Renamer]] = {
        "conv_in": ("input_blocks.0.0", _same),
        "time_embedding.linear_1": ("time_embed.0", _same),
        "time_embedding.linear_2": ("time_embed.2", _same),
        "conv_norm_out": ("out.0", _same),
        "conv_out": ("out.2", _same),
        "mid_block.resnets.0": ("middle_block.0", resnet),
        "mid_block.attentions.0": ("middle_block.1", _same),
        "mid_block.resnets.1": ("middle_block.2", resnet),
    }
    if text_time:
        m["add_embedding.linear_1"] = ("label_emb.0.0", _same)
        m["add_embedding.linear_2"] = ("label_emb.0.2", _same)
    down_types, up_types = config["down_block_types"], config["up_block_types"]
    idx = 1  # input_blocks.0 is conv_in
    for level, block_type in enumerate(down_types):
        for j in range(layers):
            m[f"down_blocks.{level}.resnets.{j}"] = (f"input_blocks.{idx}.0", resnet)
            if "CrossAttn" in block_type:
                m[f"down_blocks.{level}.attentions.{j}"] = (f"input_blocks.{idx}.1", _same)
            idx += 1
        if level < len(down_types) - 1:  # every level but the last ends with a downsampler
            m[f"down_blocks.{level}.downsamplers.0.conv"] = (f"input_blocks.{idx}.0.op", _same)
            idx += 1
    idx = 0
    for level, block_type in enumerate(up_types):
        for j in range(layers + 1):
            m[f"up_blocks.{level}.resnets.{j}"] = (f"output_blocks.{idx}.0", resnet)
            slot = 1
            if "CrossAttn" in block_type:
                m[f"up_blocks.{level}.attentions.{j}"] = (f"output_blocks.{idx}.1", _same)
                slot = 2
            if j == layers and level < len(up_types) - 1:  # the upsampler follows the level's last layer
                m[f"up_blocks.{level}.upsamplers.0.conv"] = (f"output_blocks.{idx}.{slot}.conv", _same)
            idx += 1
    return m


def _vae_prefix_map(vae: AutoencoderKL) -> dict[str, tuple[str, Renamer]]:
    resnet = _rename_first((("conv_shortcut", "nin_shortcut"),))
    attn = _rename_first(_VAE_ATTN_RENAMES)
    m: dict[str, tuple[str, Renamer]] = {
        "quant_conv": ("quant_conv", _same),
        "post_quant_conv": ("post_quant_conv", _same),
    }
    for part in ("encoder", "decoder"):
        m[f"{part}.conv_in"] = (f"{part}.conv_in", _same)
        m[f"{part}.conv_out"] = (f"{part}.conv_out", _same)
        m[f"{part}.conv_norm_out"] = (f"{part}.norm_out", _same)
        m[f"{part}.mid_block.resnets.0"] = (f"{part}.mid.block_1", resnet)
        m[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", attn)
        m[f"{part}.mid_block.resnets.1"] = (f"{part}.mid.block_2", resnet)
    for level, block in enumerate(vae.encoder.down_blocks):
        for j in range(len(block.resnets)):
            m[f"encoder.down_blocks.{level}.resnets.{j}"] = (f"encoder.down.{level}.block.{j}", resnet)
        if block.downsamplers:
            m[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = (
                f"encoder.down.{level}.downsample.conv",
                _same,
            )
    n_up = len(vae.decoder.up_blocks)
    for level, block in enumerate(vae.decoder.up_blocks):
        ldm_level = n_up - 1 - level  # LDM numbers decoder levels from the lowest resolution up
        for j in range(len(block.resnets)):
            m[f"decoder.up_blocks.{level}.resnets.{j}"] = (f"decoder.up.{ldm_level}.block.{j}", resnet)
        if block.upsamplers:
            m[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = (
                f"decoder.up.{ldm_level}.upsample.conv",
                _same,
            )
    return m


def _convert(
    state_dict: Mapping[str, torch.Tensor], prefix_map: dict[str, tuple[str, Renamer]], what: str
) -> dict[str, torch.Tensor]:
    # Longest prefix first, so "conv_out" never captures "conv_out_xyz"-style siblings by accident.
    prefixes = sorted(prefix_map, key=len, reverse=True)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        for prefix in prefixes:
            if key.startswith(prefix + "."):
                ldm_prefix, rename = prefix_map[prefix]
                out[f"{ldm_prefix}.{rename(key[len(prefix) + 1 :])}"] = tensor
                break
        else:
            # Refuse to write a checkpoint that silently lacks weights.
            raise ValueError(f"{what} key {key!r} has no single-file mapping")
    return out


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """UNet state dict in LDM naming (without the ``model.diffusion_model.`` prefix)."""
    return _convert(unet.state_dict(), _unet_prefix_map(unet.config), "UNet")


def vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """VAE state dict in LDM naming (without the ``first_stage_model.`` prefix)."""
    out = _convert(vae.state_dict(), _vae_prefix_map(vae), "VAE")
    attn_weight = re.compile(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")
    for key, tensor in out.items():
        if attn_weight.search(key) and tensor.ndim == 2:
            out[key] = tensor[:, :, None, None]  # Linear -> 1x1 conv, as the original VAE stores them
    return out


def text_encoder_to_ldm(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict in LDM naming (without the ``cond_stage_model.transformer.`` prefix)."""
    out = {}
    for key, tensor in text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel; older versions (and the LDM format) keep "text_model.".
        out[key if key.startswith("text_model.") else f"text_model.{key}"] = tensor
    return out


def sd15_single_file_state_dict(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    sd.update({UNET_PREFIX + k: v for k, v in unet_to_ldm(pipe.unet).items()})
    sd.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(pipe.vae).items()})
    sd.update(
        {"cond_stage_model.transformer." + k: v for k, v in text_encoder_to_ldm(pipe.text_encoder).items()}
    )
    return sd


def save_sd15_single_file(
    pipe: StableDiffusionPipeline, path: Path, dtype: torch.dtype | None = None
) -> Path:
    """Write ``pipe`` (UNet, VAE, CLIP text encoder) as one A1111-style .safetensors file and return its path.

    ``dtype`` (e.g. torch.float16) casts floating tensors; None keeps the pipeline's dtype.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"single-file checkpoints are written as .safetensors, got {path.name!r}")
    tensors = {}
    for key, tensor in sd15_single_file_state_dict(pipe).items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


# --- SD2.x and SDXL -----------------------------------------------------------------------------------------

SD2_CLIP_PREFIX = "cond_stage_model.model."  # OpenCLIP ViT-H
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."  # CLIP ViT-L, transformers layout
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."  # OpenCLIP bigG

_OPEN_CLIP_LAYER_RENAMES = (
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
    ("self_attn.out_proj.", "attn.out_proj."),
)


def text_encoder_to_open_clip(text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A transformers CLIP text encoder in OpenCLIP's layout (without the ``...model.`` prefix).

    q/k/v are fused into ``attn.in_proj_weight``/``in_proj_bias``; a projection (CLIPTextModelWithProjection)
    becomes ``text_projection``, stored transposed ([width, embed]) as OpenCLIP multiplies ``x @ proj``.
    """
    sd = {
        (k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}"): v
        for k, v in text_encoder.state_dict().items()
    }
    out: dict[str, torch.Tensor] = {}
    layer = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in sd.items():
        if key == "text_model.embeddings.token_embedding.weight":
            out["token_embedding.weight"] = tensor
        elif key == "text_model.embeddings.position_embedding.weight":
            out["positional_embedding"] = tensor
        elif key.startswith("text_model.final_layer_norm."):
            out["ln_final." + key.rsplit(".", 1)[1]] = tensor
        elif key == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
        elif key.endswith("position_ids"):
            continue
        elif match := layer.match(key):
            index, rest = match.groups()
            qkv = re.match(r"^self_attn\.(q|k|v)_proj\.(weight|bias)$", rest)
            if qkv:
                fused.setdefault((index, qkv.group(2)), {})[qkv.group(1)] = tensor
                continue
            for old, new in _OPEN_CLIP_LAYER_RENAMES:
                if rest.startswith(old):
                    out[f"transformer.resblocks.{index}.{new}{rest[len(old) :]}"] = tensor
                    break
            else:
                raise ValueError(f"text encoder key {key!r} has no OpenCLIP mapping")
        else:
            raise ValueError(f"text encoder key {key!r} has no OpenCLIP mapping")
    for (index, kind), parts in fused.items():
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"transformer.resblocks.{index}.attn.{name}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def sd2_single_file_state_dict(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """An SD2.x checkpoint's keys: LDM UNet (Linear proj_in/proj_out), VAE, OpenCLIP text encoder."""
    sd: dict[str, torch.Tensor] = {}
    sd.update({UNET_PREFIX + k: v for k, v in unet_to_ldm(pipe.unet).items()})
    sd.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(pipe.vae).items()})
    sd.update({SD2_CLIP_PREFIX + k: v for k, v in text_encoder_to_open_clip(pipe.text_encoder).items()})
    return sd


def sdxl_single_file_state_dict(pipe: StableDiffusionXLPipeline) -> dict[str, torch.Tensor]:
    """An SDXL base checkpoint's keys (SAI layout): UNet with ``label_emb``, VAE, CLIP-L under
    ``conditioner.embedders.0.transformer.text_model.``, OpenCLIP bigG under
    ``conditioner.embedders.1.model.``."""
    sd: dict[str, torch.Tensor] = {}
    sd.update({UNET_PREFIX + k: v for k, v in unet_to_ldm(pipe.unet).items()})
    sd.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(pipe.vae).items()})
    sd.update({SDXL_CLIP_PREFIX + k: v for k, v in text_encoder_to_ldm(pipe.text_encoder).items()})
    sd.update(
        {SDXL_OPEN_CLIP_PREFIX + k: v for k, v in text_encoder_to_open_clip(pipe.text_encoder_2).items()}
    )
    return sd


def _write(state_dict: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"single-file checkpoints are written as .safetensors, got {path.name!r}")
    tensors = {}
    for key, tensor in state_dict.items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def save_sd2_single_file(pipe: StableDiffusionPipeline, path: Path, dtype: torch.dtype | None = None) -> Path:
    """Write an SD2.x-shaped pipeline as one original-layout .safetensors file and return its path."""
    return _write(sd2_single_file_state_dict(pipe), path, dtype)


def save_sdxl_single_file(
    pipe: StableDiffusionXLPipeline, path: Path, dtype: torch.dtype | None = None
) -> Path:
    """Write an SDXL-shaped pipeline as one SAI-layout .safetensors file and return its path."""
    return _write(sdxl_single_file_state_dict(pipe), path, dtype)
