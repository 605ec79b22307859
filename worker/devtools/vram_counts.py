"""The numbers of shared/vram/tables.py, counted from the shipped full-size configs on the meta device (no
memory, a few seconds): parameters of each component and the widths of the modules that get a LoRA.
`python -m worker.devtools.vram_counts` prints them; tests/worker/test_vram_tables.py asserts the table."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from diffusers import AutoencoderKL, ChromaTransformer2DModel, FluxTransformer2DModel, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from shared.vram.tables import Targets
from worker.training import flux_names, network
from worker.training.single_file_configs import BASE_CONFIGS

# family -> the shipped config folder of its full-size model
TARGETS = ("all_linear", "attention")  # network_target's choices
FOLDERS = {"sd1": "sd15", "sd2": "sd2-512", "sdxl": "sdxl-base", "flux1": "flux1-dev", "chroma": "chroma1-hd"}


def meta_models(family: str) -> SimpleNamespace:
    """denoiser, vae and text_encoders (in the table's order) of `family`, full size, on the meta device."""
    folder = BASE_CONFIGS / FOLDERS[family]
    with torch.device("meta"):
        if family == "flux1":
            config = FluxTransformer2DModel.load_config(folder / "transformer")
            denoiser = FluxTransformer2DModel.from_config(config)
            encoders = [
                CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
                T5EncoderModel(T5Config.from_pretrained(folder / "text_encoder_2")),
            ]
        elif family == "chroma":  # T5-XXL alone, in diffusers' ChromaPipeline layout (text_encoder/)
            config = ChromaTransformer2DModel.load_config(folder / "transformer")
            denoiser = ChromaTransformer2DModel.from_config(config)
            encoders = [T5EncoderModel(T5Config.from_pretrained(folder / "text_encoder"))]
        else:
            denoiser = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))]
            if (folder / "text_encoder_2").is_dir():
                config = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
                encoders.append(CLIPTextModelWithProjection(config))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
    return SimpleNamespace(denoiser=denoiser, vae=vae, text_encoders=encoders)


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def targets(model: torch.nn.Module, paths: list[str]) -> Targets:
    """How many modules, and sum of in (x kernel area) + out features: a rank-r LoRA has r x width."""
    width = 0
    for path in paths:
        module = model.get_submodule(path)
        if isinstance(module, torch.nn.Linear):
            width += module.in_features + module.out_features
        else:  # Conv2d: peft's down is a conv of the same kernel, up a 1x1
            kh, kw = module.kernel_size
            width += module.in_channels * kh * kw + module.out_channels
    return Targets(len(paths), width)


def lora_targets(family: str, models: SimpleNamespace) -> dict[str, object]:
    """The LoRA target widths the table records for `family`."""
    den = models.denoiser
    out: dict[str, object] = {}
    if family in ("flux1", "chroma"):
        out["denoiser_lora"] = {"all_linear": targets(den, flux_names.flux_lora_target_paths(den))}
        blocks = {}
        for kind, (attr, other) in {
            "double": ("transformer_blocks", "single"),
            "single": ("single_transformer_blocks", "double"),
        }.items():
            selection = {f"train_{kind}_block_indices": "0", f"train_{other}_block_indices": "none"}
            first = flux_names.flux_lora_target_paths(den, **selection)
            blocks[kind] = (len(getattr(den, attr)), params(getattr(den, attr)[0]), targets(den, first))
        out["blocks"] = blocks
    else:
        out["denoiser_lora"] = {
            t: targets(den, network.target_module_paths(den, is_unet=True, target=t)[0]) for t in TARGETS
        }
        linear, _ = network.target_module_paths(den, is_unet=True, target="all_linear")
        with_conv, convs = network.target_module_paths(den, is_unet=True, target="all_linear", conv=True)
        out["locon_linear"] = targets(den, [p for p in with_conv if p not in linear])
        out["locon_conv"] = targets(den, convs)
    out["text_encoder_lora"] = [
        {t: targets(te, network.target_module_paths(te, is_unet=False, target=t)[0]) for t in TARGETS}
        if isinstance(te, CLIPTextModel | CLIPTextModelWithProjection)
        else None  # T5 never gets a LoRA
        for te in models.text_encoders
    ]
    return out


def main() -> None:
    for family in FOLDERS:
        models = meta_models(family)
        print(family, "denoiser", params(models.denoiser), "vae", params(models.vae))
        print("  text encoders", [params(te) for te in models.text_encoders])
        for name, value in lora_targets(family, models).items():
            print(f"  {name}: {value}")


if __name__ == "__main__":
    main()
