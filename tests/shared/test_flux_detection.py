"""FLUX.1 detection without torch: BFL single files (bare or ComfyUI-prefixed keys) and diffusers folders are
family flux1, dev or schnell; Fill, Depth/Canny, Kontext, Redux, Chroma and FLUX.2 are refused by name; the
catalogue scan lists FLUX.1 models and nothing else of the FLUX family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from shared.catalogue.families import (
    UnsupportedCheckpoint,
    UnsupportedPipeline,
    describe_checkpoint,
    family_from_keys,
    family_from_pipeline_configs,
    single_file_variant,
)
from shared.catalogue.flux import flux_variant_from_config, flux_variant_from_keys
from shared.catalogue.scan import ModelScanner

COMFY = "model.diffusion_model."


def flux_keys(*, dev: bool = True, in_channels: int = 64, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """The keys (real FLUX.1 shapes) that tell a BFL transformer file apart; the real one has 19 double
    and 38 single blocks."""
    keys = {
        "img_in.weight": (3072, in_channels),
        "txt_in.weight": (3072, 4096),
        "time_in.in_layer.weight": (3072, 256),
        "vector_in.in_layer.weight": (3072, 768),
        "double_blocks.0.img_attn.qkv.weight": (9216, 3072),
        "double_blocks.0.img_mod.lin.weight": (18432, 3072),
        "single_blocks.0.linear1.weight": (21504, 3072),
        "single_blocks.0.modulation.lin.weight": (9216, 3072),
        "final_layer.linear.weight": (64, 3072),
    }
    if dev:
        keys["guidance_in.in_layer.weight"] = (3072, 256)
    return {prefix + k: v for k, v in keys.items()}


CHROMA = {k: v for k, v in flux_keys(dev=False).items() if not k.startswith("vector_in")} | {
    "distilled_guidance_layer.in_proj.bias": (5120,)
}
FLUX2 = {k: v for k, v in flux_keys(in_channels=128).items() if not k.startswith("vector_in")} | {
    "single_stream_modulation.lin.weight": (18432, 6144)
}


@pytest.mark.parametrize(
    ("keys", "variant"),
    [
        (flux_keys(dev=True), "dev"),
        (flux_keys(dev=False), "schnell"),
        (flux_keys(dev=True, prefix=COMFY), "dev"),
        (flux_keys(dev=False, prefix=COMFY), "schnell"),
        # ComfyUI's all-in-one files add the text encoders and the VAE beside the transformer.
        (flux_keys(prefix=COMFY) | {"vae.decoder.conv_in.weight": (512, 16, 3, 3)}, "dev"),
    ],
    ids=["dev", "schnell", "comfy-dev", "comfy-schnell", "comfy-all-in-one"],
)
def test_a_bfl_transformer_is_flux1_dev_or_schnell(keys, variant):
    assert family_from_keys(keys) == "flux1"
    assert flux_variant_from_keys(keys) == variant
    assert describe_checkpoint(keys) == f"a FLUX.1 {variant} checkpoint"
    # No shipped FLUX.1 config yet: a single file is named, not loaded as something else.
    with pytest.raises(UnsupportedCheckpoint, match=f"FLUX.1 {variant} checkpoint, not trainable"):
        single_file_variant(keys)


@pytest.mark.parametrize(
    ("keys", "described"),
    [
        (flux_keys(in_channels=384), "a FLUX.1 Fill checkpoint (img_in reads 384 channels"),
        (flux_keys(in_channels=384, prefix=COMFY), "a FLUX.1 Fill checkpoint"),
        (flux_keys(in_channels=128), "a FLUX.1 Depth or Canny checkpoint (img_in reads 128 channels"),
        (FLUX2, "a FLUX.2 checkpoint"),
        ({"redux_up.weight": (12288, 4096), "redux_down.weight": (4096, 12288)}, "a FLUX.1 Redux"),
        ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (16, 3072)}, "a LoRA"),
        ({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": (16, 3072)}, "a LoRA"),
        ({"encoder.block.0.layer.0.SelfAttention.q.weight": (4096, 4096)}, "a T5 text encoder"),
    ],
    ids=["fill", "comfy-fill", "depth-canny", "flux2", "redux", "kohya-lora", "peft-lora", "t5xxl"],
)
def test_other_flux_family_files_are_refused_by_name(keys, described):
    assert family_from_keys(keys) is None
    assert flux_variant_from_keys(keys) is None
    assert describe_checkpoint(keys).startswith(described)
    with pytest.raises(UnsupportedCheckpoint, match=described.split(" (")[0]):
        single_file_variant(keys)


@pytest.mark.parametrize("prefix", ["", COMFY], ids=["bare", "comfyui"])
def test_a_chroma_transformer_is_the_chroma_family_not_flux1(prefix):
    keys = {prefix + k: v for k, v in CHROMA.items()}
    assert family_from_keys(keys) == "chroma" and flux_variant_from_keys(keys) is None
    assert describe_checkpoint(keys) == "a Chroma checkpoint"
    radiance = {k: (3072, 12) if k.endswith("img_in.weight") else v for k, v in keys.items()}
    assert family_from_keys(radiance) is None  # pixel-space Chroma Radiance: no 64-channel latent img_in
    assert describe_checkpoint(radiance).startswith("a Chroma-like checkpoint")
    chroma = {"_class_name": "ChromaPipeline"}
    assert family_from_pipeline_configs(chroma, {}, {"_class_name": "ChromaTransformer2DModel"}) == "chroma"
    with pytest.raises(UnsupportedPipeline, match="Chroma inpainting pipeline"):
        family_from_pipeline_configs({"_class_name": "ChromaInpaintPipeline"}, {}, {})


def test_sd_keys_are_read_as_before():
    sd1 = {"model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1)}
    assert family_from_keys(sd1) == "sd1" and flux_variant_from_keys(sd1) is None
    sd3 = {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (4608, 1536)}
    assert family_from_keys(sd3) is None and describe_checkpoint(sd3).startswith("a Stable Diffusion 3")


DEV_CONFIG = {"_class_name": "FluxTransformer2DModel", "in_channels": 64, "guidance_embeds": True}
SCHNELL_CONFIG = {**DEV_CONFIG, "guidance_embeds": False}


def test_the_variant_from_a_transformer_config():
    assert flux_variant_from_config(DEV_CONFIG) == "dev"
    assert flux_variant_from_config(SCHNELL_CONFIG) == "schnell"
    assert flux_variant_from_config({**DEV_CONFIG, "in_channels": 384}) is None  # Fill
    assert flux_variant_from_config({**DEV_CONFIG, "_class_name": "Flux2Transformer2DModel"}) is None
    assert flux_variant_from_config({}) is None


@pytest.mark.parametrize(
    ("class_name", "transformer", "refusal"),
    [
        ("FluxFillPipeline", {**DEV_CONFIG, "in_channels": 384}, "FLUX.1 Fill is not trainable yet"),
        ("FluxControlPipeline", {**DEV_CONFIG, "in_channels": 128}, "FLUX.1 Depth/Canny"),
        ("FluxKontextPipeline", DEV_CONFIG, "FLUX.1 Kontext is not trainable yet"),
        ("FluxPriorReduxPipeline", {}, "FLUX.1 Redux is not trainable yet"),
        ("FluxPipeline", {**DEV_CONFIG, "in_channels": 384}, r"384 input channels \(FLUX.1 Fill"),
        ("FluxPipeline", {}, "without a readable transformer/config.json"),
        ("Flux2Pipeline", {}, "supported are .* FluxPipeline"),
    ],
)
def test_other_flux_pipelines_are_refused_by_name(class_name, transformer, refusal):
    with pytest.raises(UnsupportedPipeline, match=refusal):
        family_from_pipeline_configs({"_class_name": class_name}, {}, transformer)


def test_pipeline_configs_give_flux1_and_sd_as_before():
    flux = {"_class_name": "FluxPipeline"}
    assert family_from_pipeline_configs(flux, {}, DEV_CONFIG) == "flux1"
    assert family_from_pipeline_configs(flux, {}, SCHNELL_CONFIG) == "flux1"
    assert family_from_pipeline_configs(flux, {}) == "flux1"  # transformer config not read: the class decides
    fill = {"_class_name": "FluxFillPipeline"}
    with pytest.raises(UnsupportedPipeline, match="FLUX.1 Fill is not trainable yet"):
        family_from_pipeline_configs(fill, {})
    sd = {"_class_name": "StableDiffusionPipeline"}
    assert family_from_pipeline_configs(sd, {"cross_attention_dim": 768}) == "sd1"
    assert family_from_pipeline_configs(sd, {"cross_attention_dim": 1024}, {}) == "sd2"
    assert family_from_pipeline_configs({"_class_name": "StableDiffusionXLPipeline"}, {}) == "sdxl"


def flux_folder(path: Path, class_name: str, transformer: dict | None) -> Path:
    """A diffusers folder's configs as FLUX.1-dev's repo has them (weights are not read by the scan)."""
    configs = {
        "model_index.json": {"_class_name": class_name, "vae": ["diffusers", "AutoencoderKL"]},
        "scheduler/scheduler_config.json": {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0},
    }
    if transformer is not None:
        configs["transformer/config.json"] = transformer
    for name, config in configs.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(json.dumps(config))
    return path


def bfl_file(path: Path, keys: dict[str, tuple[int, ...]]) -> Path:
    # Real key names, tiny shapes: only img_in's input width is read.
    small = {k: (4, v[1]) if k.endswith("img_in.weight") else (1,) for k, v in keys.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(s, dtype=np.float16) for k, s in small.items()}, str(path))
    return path


def test_the_scan_lists_flux1_folders_and_single_files(tmp_path: Path):
    models = tmp_path / "models"
    flux_folder(models / "FLUX.1-dev", "FluxPipeline", DEV_CONFIG)
    flux_folder(models / "flux" / "FLUX.1-schnell", "FluxPipeline", SCHNELL_CONFIG)
    flux_folder(models / "FLUX.1-Fill-dev", "FluxFillPipeline", {**DEV_CONFIG, "in_channels": 384})
    flux_folder(models / "FLUX.1-Kontext-dev", "FluxKontextPipeline", DEV_CONFIG)
    flux_folder(models / "fill-as-flux", "FluxPipeline", {**DEV_CONFIG, "in_channels": 384})
    flux_folder(models / "no-transformer-config", "FluxPipeline", None)
    bfl_file(models / "flux1-dev.safetensors", flux_keys(dev=True))
    bfl_file(models / "unet" / "flux1-schnell-fp8.safetensors", flux_keys(dev=False, prefix=COMFY))
    bfl_file(models / "flux1-fill-dev.safetensors", flux_keys(in_channels=384))
    bfl_file(models / "ae.safetensors", {"decoder.conv_in.weight": (512, 16)})

    found = {e.name: e for e in ModelScanner(models, hub_cache=tmp_path / "no-hub-cache").scan()}
    assert set(found) == {
        "FLUX.1-dev",
        "flux/FLUX.1-schnell",
        "flux1-dev.safetensors",
        "unet/flux1-schnell-fp8.safetensors",
    }
    assert {e.family for e in found.values()} == {"flux1"}
    assert [found["FLUX.1-dev"].kind, found["flux1-dev.safetensors"].kind] == ["diffusers", "single_file"]
    # Flow matching has no epsilon / v_prediction.
    assert {e.prediction_type for e in found.values()} == {None}
