"""Optimizer and learning-rate schedule from a TrainingConfig, with Kohya's names and defaults."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any

import torch
from diffusers.optimization import get_scheduler
from torch.optim.lr_scheduler import LRScheduler

from shared.config.spec import TrainingConfig
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


# Optional optimizer packages: (pip package, module to import).
OPTIONAL_PACKAGES = {
    "AdamW8bit": ("bitsandbytes", "bitsandbytes"),
    "Lion": ("lion-pytorch", "lion_pytorch"),
    "Prodigy": ("prodigyopt", "prodigyopt"),
}


def _import_optional(optimizer: str):
    package, module = OPTIONAL_PACKAGES[optimizer]
    try:
        return __import__(module)  # lazy: optional dependencies
    except ImportError as exc:
        raise TrainingSetupError(
            f"optimizer {optimizer!r} needs the '{package}' package, which is not installed on this worker; "
            f"install {package} or choose optimizer 'AdamW' or 'Adafactor'",
            details={"field": "optimizer", "missing_package": package},
        ) from exc


def _import_bitsandbytes():
    return _import_optional("AdamW8bit")


def optimizer_class(config: TrainingConfig) -> type[torch.optim.Optimizer]:
    if config.optimizer == "AdamW":
        return torch.optim.AdamW
    if config.optimizer == "AdamW8bit":
        return _import_bitsandbytes().optim.AdamW8bit
    if config.optimizer == "Lion":
        return _import_optional("Lion").Lion
    if config.optimizer == "Prodigy":
        return _import_optional("Prodigy").Prodigy
    if config.optimizer == "Adafactor":
        from transformers.optimization import Adafactor

        return Adafactor
    raise TrainingSetupError(f"unknown optimizer {config.optimizer!r}", details={"field": "optimizer"})


def optimizer_kwargs(config: TrainingConfig) -> dict[str, Any]:
    """The keyword arguments the optimizer is built with besides params/lr: optimizer_args (lists as tuples,
    as Kohya's literal_eval gives them) over our Adafactor defaults, with Kohya's Adafactor rule that
    warmup_init forces relative_step."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.optimizer_args.items()}
    if config.optimizer == "Adafactor":
        kwargs = {**ADAFACTOR_ARGS, **kwargs}
        if kwargs.get("warmup_init"):
            kwargs["relative_step"] = True
    return kwargs


def uses_adafactor_relative_step(config: TrainingConfig) -> bool:
    """Adafactor with relative_step (Kohya's default when no args are given): Adafactor finds its own step
    size; unet_lr / text_encoder_lr and lr_scheduler are replaced by AdafactorSchedule(initial_lr=unet_lr)."""
    return config.optimizer == "Adafactor" and bool(optimizer_kwargs(config).get("relative_step"))


def check_optimizer_available(config: TrainingConfig) -> None:
    """Fail before any model is loaded when the optimizer's package is missing or optimizer_args don't fit
    its signature (the key named) or its checks (values)."""
    cls = optimizer_class(config)
    kwargs = optimizer_kwargs(config)
    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    accepted = sorted(n for n in params if n not in ("self", "params", "lr"))
    for key in config.optimizer_args:
        if key in ("params", "lr") or (key not in params and not takes_any):
            raise TrainingSetupError(
                f"optimizer_args: {config.optimizer} ({cls.__module__}.{cls.__name__}) takes no argument "
                f"{key!r}; it takes {', '.join(accepted)}",
                details={"field": "optimizer_args", "key": key},
            )
    try:  # the optimizer's own value checks (betas ranges, eps >= 0, ...), on a throwaway parameter
        lr = None if uses_adafactor_relative_step(config) else config.unet_lr
        cls([torch.nn.Parameter(torch.zeros(1))], lr=lr, **kwargs)
    except (ValueError, TypeError) as exc:
        raise TrainingSetupError(
            f"optimizer_args rejected by {config.optimizer}: {exc}", details={"field": "optimizer_args"}
        ) from exc


def build_optimizer(
    config: TrainingConfig,
    unet_params: Iterable[torch.nn.Parameter],
    te_params: Iterable[torch.nn.Parameter] = (),
) -> torch.optim.Optimizer:
    groups = param_groups(config, unet_params, te_params)
    cls = optimizer_class(config)
    kwargs = optimizer_kwargs(config)
    if uses_adafactor_relative_step(config):
        # Kohya's get_optimizer: relative_step ignores the lr, the groups' lrs are dropped.
        for group in groups:
            group.pop("lr", None)
        return cls(groups, lr=None, **kwargs)
    return cls(groups, lr=config.unet_lr, **kwargs)


def optimizer_name(optimizer: torch.optim.Optimizer, kwargs: dict[str, Any] | None = None) -> str:
    """Kohya's ss_optimizer: the class path, plus the extra arguments in parentheses when there are any.

    kwargs: what build_optimizer passed (optimizer_kwargs(config)); None means our defaults only.
    """
    cls = type(optimizer)
    name = f"{cls.__module__}.{cls.__name__}"
    if kwargs is None:
        kwargs = ADAFACTOR_ARGS if cls.__name__ == "Adafactor" else {}
    if kwargs:
        name += "(" + ",".join(f"{k}={v}" for k, v in kwargs.items()) + ")"
    return name


def warmup_steps(config: TrainingConfig, total_steps: int) -> int:
    """Kohya's get_scheduler_fix: an int is a step count, a float (< 1) int(ratio * total steps)."""
    value = config.lr_warmup_steps
    return int(value * total_steps) if isinstance(value, float) else value


def build_lr_scheduler(
    config: TrainingConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> LRScheduler:
    """Kohya's get_scheduler_fix: the transformers/diffusers schedules (same formulas: cosine is a half
    wave, polynomial decays to 1e-7, restarts and power from lr_scheduler_num_cycles / _power)."""
    if uses_adafactor_relative_step(config):
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr=config.unet_lr)
    try:
        return get_scheduler(
            config.lr_scheduler,
            optimizer,
            num_warmup_steps=warmup_steps(config, total_steps),
            num_training_steps=total_steps,
            num_cycles=config.lr_scheduler_num_cycles,
            power=config.lr_scheduler_power,
        )
    except ValueError as exc:
        raise TrainingSetupError(f"lr_scheduler: {exc}", details={"field": "lr_scheduler"}) from exc
