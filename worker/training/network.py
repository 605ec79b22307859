"""The LoRA network: PEFT adapters on the modules Kohya's networks.lora trains, base weights frozen."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer

ADAPTER_NAME = "default"

# network_target "attention": module-name suffixes of the attention projections only (the narrower set).
UNET_TARGET_MODULES: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGET_MODULES: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")

# network_target "all_linear" is Kohya's networks.lora (LoRANetwork.*_TARGET_REPLACE_MODULE): every Linear
# and 1x1 Conv2d inside these module classes. With conv_dim set (LoCon), the 3x3 convs of the conv classes get
# a LoRA of rank conv_dim / alpha conv_alpha, and their Linear / 1x1 children (time_emb_proj, conv_shortcut)
# one of the network rank, exactly as Kohya's create_modules assigns them.
KOHYA_UNET_CLASSES: tuple[str, ...] = ("Transformer2DModel",)
KOHYA_UNET_CONV_CLASSES: tuple[str, ...] = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
KOHYA_TEXT_ENCODER_CLASSES: tuple[str, ...] = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")


def _is_linear_like(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or (
        isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) == (1, 1)
    )


def kohya_targets(
    model: torch.nn.Module, classes: tuple[str, ...], *, with_conv: bool = False
) -> tuple[list[str], list[str]]:
    """(Linear/1x1-conv module paths, 3x3-conv module paths) inside modules of the given class names."""
    linear: list[str] = []
    conv: list[str] = []
    for name, module in model.named_modules():
        if type(module).__name__ not in classes:
            continue
        for child_name, child in module.named_modules():
            path = f"{name}.{child_name}" if name else child_name
            if _is_linear_like(child):
                linear.append(path)
            elif with_conv and isinstance(child, torch.nn.Conv2d):
                conv.append(path)
    return list(dict.fromkeys(linear)), list(dict.fromkeys(conv))


def _suffix_targets(model: torch.nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    return [n for n, _ in model.named_modules() if n.endswith(tuple("." + s for s in suffixes))]


def target_module_paths(
    model: torch.nn.Module, *, is_unet: bool, target: str = "attention", conv: bool = False
) -> tuple[list[str], list[str]]:
    """(network-rank module paths, conv-rank module paths) for network_target / conv_dim."""
    if target == "attention":
        linear = _suffix_targets(model, UNET_TARGET_MODULES if is_unet else TEXT_ENCODER_TARGET_MODULES)
    elif target == "all_linear":
        classes = KOHYA_UNET_CLASSES if is_unet else KOHYA_TEXT_ENCODER_CLASSES
        linear, _ = kohya_targets(model, classes)
    else:
        raise ValueError(f"unknown network target {target!r}")
    convs: list[str] = []
    if conv and is_unet:
        extra_linear, convs = kohya_targets(model, KOHYA_UNET_CONV_CLASSES, with_conv=True)
        linear = list(dict.fromkeys([*linear, *extra_linear]))
    return linear, convs


def lora_config(
    rank: int,
    alpha: float,
    targets: tuple[str, ...] | list[str],
    *,
    conv_targets: Sequence[str] = (),
    conv_rank: int | None = None,
    conv_alpha: float | None = None,
) -> LoraConfig:
    # init_lora_weights=True is Kohya's init: kaiming_uniform(a=sqrt(5)) down, zeros up, so step 0 is the base
    # model. PEFT's scaling alpha / r equals Kohya's alpha / lora_dim (use_rslora stays off).
    # Conv modules get their own rank/alpha through PEFT's patterns (escaped full paths: exact matches).
    rank_pattern = {re.escape(n): conv_rank for n in conv_targets} if conv_rank else {}
    alpha_pattern = {re.escape(n): conv_alpha for n in conv_targets} if conv_rank else {}
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        init_lora_weights=True,
        target_modules=[*targets, *conv_targets],
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )


def add_lora(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module | None,
    *,
    rank: int,
    alpha: float,
    target: str = "attention",
    conv_rank: int | None = None,
    conv_alpha: float | None = None,
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """Freeze the models, add LoRA adapters, return the trainable (UNet, text encoder) parameters.

    target: "attention" (q/k/v/out only) or "all_linear" (Kohya's networks.lora set); conv_rank adds LoCon
    (3x3 convs of resnets and samplers, conv_alpha defaulting to 1.0 as in Kohya).
    Draws the LoRA init from torch's global RNG: seed it first for a reproducible run.
    """
    unet.requires_grad_(False)
    linear, convs = target_module_paths(unet, is_unet=True, target=target, conv=bool(conv_rank))
    unet_config = lora_config(
        rank,
        alpha,
        linear,
        conv_targets=convs,
        conv_rank=conv_rank,
        conv_alpha=1.0 if conv_alpha is None else conv_alpha,
    )
    unet.add_adapter(unet_config, adapter_name=ADAPTER_NAME)
    te_params: list[torch.nn.Parameter] = []
    if text_encoder is not None:
        text_encoder.requires_grad_(False)
        te_linear, _ = target_module_paths(text_encoder, is_unet=False, target=target)
        te_config = lora_config(rank, alpha, te_linear)
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


def add_text_encoder_lora(
    text_encoder: torch.nn.Module, *, rank: int, alpha: float, target: str = "attention"
) -> list[torch.nn.Parameter]:
    """Freeze one more text encoder (SDXL's second) and give it the adapters add_lora gives the first;
    returns its trainable parameters. Draws from torch's global RNG, like add_lora."""
    text_encoder.requires_grad_(False)
    linear, _ = target_module_paths(text_encoder, is_unet=False, target=target)
    text_encoder.add_adapter(lora_config(rank, alpha, linear), adapter_name=ADAPTER_NAME)
    return trainable_parameters(text_encoder)
