"""Optimizer and learning-rate schedule from a TrainingConfig, with Kohya's names and defaults."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from diffusers.optimization import get_scheduler
from torch.optim.lr_scheduler import LRScheduler

from shared.spec import TrainingConfig
from worker.training.errors import TrainingSetupError

# Adafactor with a fixed lr, as Kohya's docs recommend for LoRA: relative_step would ignore the configured lr
# and scale_parameter would scale it by each tensor's RMS (zero for the freshly initialised lora_up weights).
ADAFACTOR_ARGS = {"scale_parameter": False, "relative_step": False, "warmup_init": False}


def param_groups(
    config: TrainingConfig, unet_params: Iterable[torch.nn.Parameter], te_params: Iterable[torch.nn.Parameter]
) -> list[dict]:
    """One group per model: UNet and text encoder keep their own lr (Kohya's unet_lr / text_encoder_lr)."""
    groups = [{"params": list(unet_params), "lr": config.unet_lr}]
    te = list(te_params)
    if te:
        groups.append({"params": te, "lr": config.text_encoder_lr})
    return groups


def _import_bitsandbytes():
    try:
        import bitsandbytes  # lazy: an optional, CUDA-oriented dependency
    except ImportError as exc:
        raise TrainingSetupError(
            "optimizer 'AdamW8bit' needs the 'bitsandbytes' package, which is not installed on this "
            "worker; install bitsandbytes or choose optimizer 'AdamW' or 'Adafactor'",
            details={"field": "optimizer", "missing_package": "bitsandbytes"},
        ) from exc
    return bitsandbytes


def check_optimizer_available(config: TrainingConfig) -> None:
    """Fail before any model is loaded when the optimizer's package is missing."""
    if config.optimizer == "AdamW8bit":
        _import_bitsandbytes()


def build_optimizer(
    config: TrainingConfig,
    unet_params: Iterable[torch.nn.Parameter],
    te_params: Iterable[torch.nn.Parameter] = (),
) -> torch.optim.Optimizer:
    groups = param_groups(config, unet_params, te_params)
    if config.optimizer == "AdamW":
        return torch.optim.AdamW(groups, lr=config.unet_lr)
    if config.optimizer == "AdamW8bit":
        return _import_bitsandbytes().optim.AdamW8bit(groups, lr=config.unet_lr)
    if config.optimizer == "Adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=config.unet_lr, **ADAFACTOR_ARGS)
    raise TrainingSetupError(f"unknown optimizer {config.optimizer!r}", details={"field": "optimizer"})


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """Kohya's ss_optimizer: the class path, plus the extra arguments in parentheses when there are any."""
    cls = type(optimizer)
    name = f"{cls.__module__}.{cls.__name__}"
    if cls.__name__ == "Adafactor":
        name += "(" + ",".join(f"{k}={v}" for k, v in ADAFACTOR_ARGS.items()) + ")"
    return name


def build_lr_scheduler(
    config: TrainingConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> LRScheduler:
    # diffusers' defaults (num_cycles=1, power=1.0) are Kohya's lr_scheduler_num_cycles / _power defaults.
    return get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=total_steps,
    )
