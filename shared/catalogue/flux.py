"""FLUX.1 base models, read from key names or configs without torch: dev or schnell, and the FLUX-family
models that are not trainable yet (Fill, Depth/Canny, Kontext, Redux, Chroma, FLUX.2), refused by name.

families.py calls these for the "flux1" family; kept apart so that module stays about Stable Diffusion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

FluxVariant = Literal["dev", "schnell"]
FLUX_PIPELINE_CLASS = "FluxPipeline"
# img_in reads 16 latent channels packed in 2x2 patches; Fill adds image + mask (384), Depth/Canny a control
# latent (128).
TEXT_TO_IMAGE_CHANNELS = 64
_OTHER_TASKS = {384: "FLUX.1 Fill", 128: "FLUX.1 Depth or Canny"}
# A BFL file's keys carry no prefix; ComfyUI saves the same keys under its model's own prefix.
_PREFIXES = ("", "model.diffusion_model.")
# Present in every FLUX.1 transformer: vector_in reads CLIP's pooled output, which FLUX.2 and Chroma lack.
_FLUX1_KEYS = (
    "img_in.weight",
    "time_in.in_layer.weight",
    "vector_in.in_layer.weight",
    "double_blocks.0.img_attn.qkv.weight",
    "single_blocks.0.linear1.weight",
)
_GUIDANCE_KEY = "guidance_in.in_layer.weight"  # dev's distilled guidance embedding; schnell has none
# Keys that mark FLUX-derived architectures (as diffusers' single-file loader tells them apart).
_OTHER_ARCHITECTURES = {
    "distilled_guidance_layer.in_proj.bias": "a Chroma checkpoint (the chroma family, not flux1)",
    "single_stream_modulation.lin.weight": "a FLUX.2 checkpoint (not supported)",
    "early_stream_modulations.image.lin.weight": "a FLUX checkpoint newer than FLUX.1 (not supported)",
}
_TRAINABLE = "lorabake trains FLUX.1 dev and schnell text-to-image models (FluxPipeline)"
# Other FLUX pipelines a diffusers folder may hold (model_index.json's _class_name), and what they are.
REFUSED_PIPELINES: dict[str, str] = {
    "FluxFillPipeline": "FLUX.1 Fill",
    "FluxControlPipeline": "FLUX.1 Depth/Canny (FluxControlPipeline)",
    "FluxControlImg2ImgPipeline": "FLUX.1 Depth/Canny (FluxControlImg2ImgPipeline)",
    "FluxControlInpaintPipeline": "FLUX.1 Depth/Canny (FluxControlInpaintPipeline)",
    "FluxKontextPipeline": "FLUX.1 Kontext",
    "FluxKontextInpaintPipeline": "FLUX.1 Kontext",
    "FluxPriorReduxPipeline": "FLUX.1 Redux",
    "FluxControlNetPipeline": "a FLUX.1 ControlNet pipeline",
    "FluxControlNetImg2ImgPipeline": "a FLUX.1 ControlNet pipeline",
    "FluxControlNetInpaintPipeline": "a FLUX.1 ControlNet pipeline",
    "FluxImg2ImgPipeline": "a FLUX.1 image-to-image pipeline",
    "FluxInpaintPipeline": "a FLUX.1 inpainting pipeline",
}


def _prefix(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    return next((p for p in _PREFIXES if p + "img_in.weight" in shapes), None)


def _img_in_channels(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> int | None:
    shape = shapes[prefix + "img_in.weight"]
    return shape[1] if len(shape) == 2 else None


def flux_variant_from_keys(shapes: Mapping[str, tuple[int, ...]]) -> FluxVariant | None:
    """dev or schnell for a FLUX.1 text-to-image transformer in BFL's layout (``flux1-dev.safetensors``,
    keys ``double_blocks.N...``, ``single_blocks.N...``, ``img_in.weight``; bare or under ComfyUI's
    ``model.diffusion_model.``), None for anything else (Fill, Depth/Canny, Chroma, FLUX.2, a LoRA, ...).

    dev carries ``guidance_in`` (the distilled guidance embedding), schnell does not. Kontext has exactly
    dev's keys and shapes, so a Kontext single file reads as dev; only a diffusers folder's pipeline class
    tells them apart.
    """
    prefix = _prefix(shapes)
    if prefix is None or any(prefix + k not in shapes for k in _FLUX1_KEYS):
        return None
    if any(prefix + k in shapes for k in _OTHER_ARCHITECTURES):
        return None
    if _img_in_channels(shapes, prefix) != TEXT_TO_IMAGE_CHANNELS:
        return None
    return "dev" if prefix + _GUIDANCE_KEY in shapes else "schnell"


def describe_flux_keys(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """What a FLUX-like file that is no FLUX.1 text-to-image transformer is, for an error message; None when
    its keys are not FLUX-like at all."""
    if "redux_up.weight" in shapes and "redux_down.weight" in shapes:
        return "a FLUX.1 Redux image encoder, not a base model"
    prefix = _prefix(shapes)
    if prefix is None:
        return None
    for key, what in _OTHER_ARCHITECTURES.items():
        if prefix + key in shapes:
            return what
    channels = _img_in_channels(shapes, prefix)
    if channels in _OTHER_TASKS:
        return (
            f"a {_OTHER_TASKS[channels]} checkpoint (img_in reads {channels} channels, FLUX.1 text-to-image "
            f"{TEXT_TO_IMAGE_CHANNELS}): not trainable yet; {_TRAINABLE}"
        )
    if flux_variant_from_keys(shapes) is not None:
        return None  # a trainable FLUX.1 file: nothing to explain
    return "a FLUX-like checkpoint that is not a FLUX.1 dev or schnell transformer (not supported)"


def flux_variant_from_config(transformer_config: Mapping) -> FluxVariant | None:
    """dev or schnell from a diffusers folder's transformer/config.json (``guidance_embeds``), None when
    it is no FLUX.1 text-to-image transformer (in_channels other than 64, or the config is missing)."""
    if transformer_config.get("_class_name", "FluxTransformer2DModel") != "FluxTransformer2DModel":
        return None
    if transformer_config.get("in_channels") != TEXT_TO_IMAGE_CHANNELS:
        return None
    return "dev" if transformer_config.get("guidance_embeds") else "schnell"


def flux_pipeline_problem(class_name: object, transformer_config: Mapping) -> str | None:
    """Why a diffusers folder of a FLUX pipeline class is not a trainable FLUX.1 model (a message that
    follows "holds a ..."), None when it is one (FluxPipeline with a 64-channel transformer) or when the
    class is no FLUX.1 pipeline."""
    if not isinstance(class_name, str):
        return None
    if class_name in REFUSED_PIPELINES:
        return f"{class_name}: {REFUSED_PIPELINES[class_name]} is not trainable yet; {_TRAINABLE}"
    if class_name != FLUX_PIPELINE_CLASS:
        return None
    if flux_variant_from_config(transformer_config) is not None:
        return None
    transformer_class = transformer_config.get("_class_name", "FluxTransformer2DModel")
    channels = transformer_config.get("in_channels")
    if channels is None:
        return f"{class_name} without a readable transformer/config.json (it tells FLUX.1 dev from schnell)"
    if transformer_class != "FluxTransformer2DModel":
        return f"{class_name} whose transformer is a {transformer_class} (not supported)"
    what = _OTHER_TASKS.get(channels, "not text-to-image") if isinstance(channels, int) else "unreadable"
    return (
        f"{class_name} whose transformer reads {channels} input channels ({what}; FLUX.1 text-to-image reads "
        f"{TEXT_TO_IMAGE_CHANNELS}): not trainable yet; {_TRAINABLE}"
    )
