"""Write a FLUX.1 pipeline as users download it: BFL's transformer file (``flux1-dev.safetensors``) and the
companion files in ComfyUI's layout (``ae.safetensors``, ``clip_l.safetensors``, ``t5xxl_fp16.safetensors``),
for tests of worker/training/flux_single_file.py. diffusers only reads these layouts. Chroma likewise
(``Chroma1-HD.safetensors`` + ``ae.safetensors`` + ``t5xxl_fp16.safetensors``, no CLIP-L):
:func:`save_comfyui_chroma`.

- transformer: the inverse of diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``
  (worker.training.flux_bfl_keys: q/k/v (and a single block's MLP input) fused by rows, RMSNorm ``scale``,
  the final modulation's halves swapped), bare keys as BFL ships them or under ComfyUI's
  ``model.diffusion_model.``;
- VAE: the original (LDM) VAE keys without a prefix, as BFL's ae.safetensors has them;
- CLIP-L and T5: transformers state dicts as ComfyUI saves them (CLIP with or without ``text_model.``; T5 with
  ``shared.weight`` and no ``encoder.embed_tokens.weight``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ChromaPipeline, FluxPipeline
from safetensors.torch import save_file

from worker.devtools.single_file import vae_to_ldm
from worker.training.flux_bfl_keys import bfl_layout, swap_halves

COMFYUI_PREFIX = "model.diffusion_model."


def transformer_to_bfl(state_dict: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """A FluxTransformer2DModel (or ChromaTransformer2DModel) state dict (of ``config``) in BFL's key layout,
    without a prefix. Works on meta tensors too (for header-only files of the full-size model)."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for entry in bfl_layout(config):
        tensor = torch.cat([state_dict[name] for name in entry.parts], dim=0)
        out[entry.bfl] = swap_halves(tensor) if entry.swap_halves else tensor
        used.update(entry.parts)
    left = sorted(set(state_dict) - used)
    if left:  # refuse to write a file that silently lacks weights
        raise ValueError(f"transformer keys without a BFL name: {left[:5]}")
    return out


def _save(tensors: Mapping[str, torch.Tensor], path: Path, dtype: torch.dtype | None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[key] = tensor.contiguous()
    save_file(out, str(path), metadata={"format": "pt"})
    return path


def save_flux_transformer_file(
    transformer: torch.nn.Module, path: Path, *, dtype: torch.dtype | None = None, prefix: str = ""
) -> Path:
    """BFL's ``flux1-dev.safetensors`` layout (Chroma's for a ChromaTransformer2DModel); ``dtype``
    torch.bfloat16 as BFL ships it, torch.float8_e4m3fn as ComfyUI's fp8 files; ``prefix`` COMFYUI_PREFIX
    as ComfyUI saves a model."""
    bfl = transformer_to_bfl(transformer.state_dict(), transformer.config)
    return _save({prefix + k: v for k, v in bfl.items()}, path, dtype)


def save_flux_vae_file(vae: AutoencoderKL, path: Path, *, dtype: torch.dtype | None = None) -> Path:
    """BFL's ``ae.safetensors``: the original VAE keys (``encoder.down.0.block.0...``), no prefix."""
    return _save(vae_to_ldm(vae), path, dtype)


def save_clip_l_file(
    text_encoder: torch.nn.Module,
    path: Path,
    *,
    text_model_prefix: bool = True,
    dtype: torch.dtype | None = None,
) -> Path:
    """ComfyUI's ``clip_l.safetensors``: a CLIPTextModel state dict, keys under ``text_model.`` (as older
    transformers and ComfyUI save them) or bare (transformers >= 5.6), with the unused ``text_projection``."""
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    if text_model_prefix:
        sd = {f"text_model.{k}": v for k, v in sd.items()}
    hidden = text_encoder.config.hidden_size
    sd["text_projection.weight"] = torch.eye(hidden)  # ComfyUI's CLIP-L keeps one; FLUX never uses it
    return _save(sd, path, dtype)


def save_t5xxl_file(text_encoder_2: torch.nn.Module, path: Path, *, dtype: torch.dtype | None = None) -> Path:
    """ComfyUI's ``t5xxl_fp16.safetensors`` (dtype torch.float16) / ``t5xxl_fp8_e4m3fn.safetensors``: the
    T5EncoderModel state dict with the embedding once, as ``shared.weight``."""
    sd = dict(text_encoder_2.state_dict())
    sd.pop("encoder.embed_tokens.weight", None)
    return _save(sd, path, dtype)


def save_flux_config_folder(pipe: FluxPipeline, folder: Path, *, scheduler: bool = False) -> Path:
    """The pipeline's configs and tokenizers, no weights: what ``configs/flux1/`` in a models folder holds
    (the scheduler only with ``scheduler``: a shared folder's scheduler would serve dev and schnell alike)."""
    folder = Path(folder)
    pipe.transformer.save_config(folder / "transformer")
    pipe.vae.save_config(folder / "vae")
    pipe.text_encoder.config.save_pretrained(folder / "text_encoder")
    pipe.text_encoder_2.config.save_pretrained(folder / "text_encoder_2")
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    pipe.tokenizer_2.save_pretrained(folder / "tokenizer_2")
    if scheduler:
        pipe.scheduler.save_config(folder / "scheduler")
    return folder


def save_comfyui_flux(
    pipe: FluxPipeline,
    models_dir: Path,
    *,
    name: str | None = None,
    beside: bool = False,
    transformer_dtype: torch.dtype | None = None,
    t5_dtype: torch.dtype | None = None,
    prefix: str = "",
    clip_text_model_prefix: bool = True,
) -> Path:
    """Lay ``pipe`` out as a ComfyUI user has FLUX.1 and return the transformer file: ``models/flux1-dev
    .safetensors`` (``flux1-schnell`` without guidance) + ``vae/ae.safetensors`` + ``clip/clip_l.safetensors``
    + ``clip/t5xxl_fp16.safetensors`` (``t5xxl_fp8_e4m3fn`` for an fp8 ``t5_dtype``); with ``beside``
    everything in one folder, ``models/flux/``. Configs and tokenizers are not written
    (:func:`save_flux_config_folder`)."""
    models_dir = Path(models_dir)
    variant = "dev" if pipe.transformer.config.guidance_embeds else "schnell"
    name = name or f"flux1-{variant}.safetensors"
    top = models_dir / "flux" if beside else models_dir
    vae_dir, clip_dir = (top, top) if beside else (models_dir / "vae", models_dir / "clip")
    fp8 = t5_dtype is not None and t5_dtype.itemsize == 1
    t5_name = "t5xxl_fp8_e4m3fn.safetensors" if fp8 else "t5xxl_fp16.safetensors"
    save_flux_vae_file(pipe.vae, vae_dir / "ae.safetensors")
    save_clip_l_file(
        pipe.text_encoder, clip_dir / "clip_l.safetensors", text_model_prefix=clip_text_model_prefix
    )
    save_t5xxl_file(pipe.text_encoder_2, clip_dir / t5_name, dtype=t5_dtype)
    return save_flux_transformer_file(pipe.transformer, top / name, dtype=transformer_dtype, prefix=prefix)


def save_chroma_config_folder(pipe: ChromaPipeline, folder: Path, *, scheduler: bool = False) -> Path:
    """A Chroma pipeline's configs and tokenizer, no weights: what ``configs/chroma/`` in a models folder
    holds (diffusers' ChromaPipeline layout: ``text_encoder/`` and ``tokenizer/`` are T5's)."""
    folder = Path(folder)
    pipe.transformer.save_config(folder / "transformer")
    pipe.vae.save_config(folder / "vae")
    pipe.text_encoder.config.save_pretrained(folder / "text_encoder")
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    if scheduler:
        pipe.scheduler.save_config(folder / "scheduler")
    return folder


def save_comfyui_chroma(
    pipe: ChromaPipeline,
    models_dir: Path,
    *,
    name: str = "Chroma1-HD.safetensors",
    beside: bool = False,
    transformer_dtype: torch.dtype | None = None,
    prefix: str = "",
) -> Path:
    """Lay ``pipe`` out as a ComfyUI user has Chroma and return the transformer file: ``models/<name>`` +
    ``vae/ae.safetensors`` + ``text_encoders/t5xxl_fp16.safetensors``; with ``beside`` everything in
    ``models/chroma/``. Configs and tokenizers are not written (:func:`save_chroma_config_folder`)."""
    models_dir = Path(models_dir)
    top = models_dir / "chroma" if beside else models_dir
    vae_dir, t5_dir = (top, top) if beside else (models_dir / "vae", models_dir / "text_encoders")
    save_flux_vae_file(pipe.vae, vae_dir / "ae.safetensors")
    save_t5xxl_file(pipe.text_encoder, t5_dir / "t5xxl_fp16.safetensors")
    return save_flux_transformer_file(pipe.transformer, top / name, dtype=transformer_dtype, prefix=prefix)
