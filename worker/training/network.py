"""The LoRA network: PEFT adapters on the modules Kohya's networks.lora trains, base weights frozen."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

ADAPTER_NAME = "default"

# Module-name suffixes PEFT matches. Kohya's LoRA also covers proj_in/proj_out and ff.net.* inside each
# Transformer2DModel (and CLIPMLP fc1/fc2); extend these tuples to train them, export needs no change.
UNET_TARGET_MODULES: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")


def lora_config(rank: int, alpha: float, targets: tuple[str, ...]) -> LoraConfig:
    # init_lora_weights=True is Kohya's init: kaiming_uniform(a=sqrt(5)) down, zeros up, so step 0 is the base
    # model. PEFT's scaling alpha / r equals Kohya's alpha / lora_dim (use_rslora stays off).
    return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=True, target_modules=list(targets))


def add_lora(
    unet: torch.nn.Module, text_encoder: torch.nn.Module | None, *, rank: int, alpha: float
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """Freeze the models, add LoRA adapters, return the trainable (UNet, text encoder) parameters.

    Draws the LoRA init from torch's global RNG: seed it first for a reproducible run.
    """
    unet.requires_grad_(False)
    unet.add_adapter(lora_config(rank, alpha, UNET_TARGET_MODULES), adapter_name=ADAPTER_NAME)
    te_params: list[torch.nn.Parameter] = []
    if text_encoder is not None:
        text_encoder.requires_grad_(False)
        te_config = lora_config(rank, alpha, TEXT_ENCODER_TARGET_MODULES)
        text_encoder.add_adapter(te_config, adapter_name=ADAPTER_NAME)
        te_params = trainable_parameters(text_encoder)
    return trainable_parameters(unet), te_params


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def lora_layers(model: torch.nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """(module path, layer) for every module carrying our adapter, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
            yield name, module
