"""Chroma base models (lodestones' FLUX.1-schnell derivative), read from key names or configs without torch.

A Chroma transformer is FLUX.1's without CLIP's ``vector_in``, the guidance embedding and the per-block
modulation Linears: its modulations come from one ``distilled_guidance_layer`` (the "approximator"). Its
single file (``Chroma1-HD.safetensors``, ``chroma-unlocked-v50.safetensors``) keeps BFL's key layout, bare or
under ComfyUI's ``model.diffusion_model.``; diffusers lays it out as ``ChromaPipeline`` with a
``ChromaTransformer2DModel``. Chroma Radiance (pixel space, no VAE latents) is another model and is refused.
"""

from __future__ import annotations

from collections.abc import Mapping

CHROMA_PIPELINE_CLASS = "ChromaPipeline"
CHROMA_TRANSFORMER_CLASS = "ChromaTransformer2DModel"
LATENT_CHANNELS = 64  # 16 VAE channels packed 2x2, as FLUX.1's img_in reads them
_PREFIXES = ("", "model.diffusion_model.")
# Present in every Chroma transformer (the approximator and FLUX's block layout); absent from FLUX.1.
_CHROMA_KEYS = (
    "img_in.weight",
    "distilled_guidance_layer.in_proj.bias",  # the key diffusers' single-file loader tells Chroma by
    "double_blocks.0.img_attn.qkv.weight",
    "single_blocks.0.linear1.weight",
)
_TRAINABLE = "lorabake trains Chroma text-to-image models (ChromaPipeline)"
REFUSED_PIPELINES: dict[str, str] = {
    "ChromaImg2ImgPipeline": "a Chroma image-to-image pipeline",
    "ChromaInpaintPipeline": "a Chroma inpainting pipeline",
}


def chroma_prefix(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The prefix of a Chroma transformer's keys ("" or ComfyUI's), None when the file is no Chroma one."""
    for prefix in _PREFIXES:
        if all(prefix + k in shapes for k in _CHROMA_KEYS):
            return prefix
    return None


def is_chroma_keys(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """A Chroma text-to-image transformer in BFL's layout: the approximator, and img_in reading 64 channels
    (Chroma Radiance has no latent img_in)."""
    prefix = chroma_prefix(shapes)
    if prefix is None:
        return False
    shape = shapes[prefix + "img_in.weight"]
    return len(shape) == 2 and shape[1] == LATENT_CHANNELS


def describe_chroma_keys(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """Why a file with Chroma's approximator is not trainable, None when it is (or has no approximator)."""
    if not any(p + "distilled_guidance_layer.in_proj.bias" in shapes for p in _PREFIXES):
        return None
    if is_chroma_keys(shapes):
        return None
    return f"a Chroma-like checkpoint that is no Chroma text-to-image transformer (Radiance?); {_TRAINABLE}"


def chroma_pipeline_problem(class_name: object, transformer_config: Mapping) -> str | None:
    """Why a diffusers folder of a Chroma pipeline class is not trainable (follows "holds a ..."), None when
    it is one (ChromaPipeline with a 64-channel ChromaTransformer2DModel) or is no Chroma pipeline at all."""
    if class_name in REFUSED_PIPELINES:
        return f"{class_name}: {REFUSED_PIPELINES[str(class_name)]} is not trainable; {_TRAINABLE}"
    if class_name != CHROMA_PIPELINE_CLASS:
        return None
    transformer_class = transformer_config.get("_class_name", CHROMA_TRANSFORMER_CLASS)
    if transformer_class != CHROMA_TRANSFORMER_CLASS:
        return f"{class_name} whose transformer is a {transformer_class} (not supported)"
    channels = transformer_config.get("in_channels", LATENT_CHANNELS)
    if channels != LATENT_CHANNELS:
        return f"{class_name} whose transformer reads {channels} input channels, not {LATENT_CHANNELS}"
    return None
