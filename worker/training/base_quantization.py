"""Frozen base weights in less memory: sd-scripts' `fp8_base` and `base_quantization` (fp8 | int8 | nf4).

The Linear layers of the denoiser (and of T5-XXL, which only encodes captions before training) are stored
quantized and computed in the training dtype; the LoRA layers on top stay float32 (PEFT wraps a quantized
Linear with its own TorchaoLoraLinear / bnb Linear4bit layers, so the adapters and the file are unchanged).
- fp8 and int8: torchao's weight-only configs (Float8WeightOnlyConfig: float8 e4m3fn with a scale per output
  row; Int8WeightOnlyConfig: int8 with a scale per row), which run on the CPU as on CUDA: the weight is
  dequantized to the activation's dtype per layer in forward, as sd-scripts' fp8_base upcasts it.
- nf4: bitsandbytes' Linear4bit (QLoRA's 4-bit NormalFloat), quantized when the layer moves to CUDA: CUDA
  only, refused before any work elsewhere.
Convolutions (the UNet's resnets) and norms stay in the training dtype. Quantize before the LoRA is added.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from shared.config.spec import TrainingConfig
from worker.training.errors import TrainingSetupError

FIELD = "base_quantization"
# PEFT warns per wrapped torchao layer that merge() needs a requantizer: lorabake never merges.
warnings.filterwarnings("ignore", message="TorchaoLoraLinear was instantiated", category=UserWarning)


def mode_of(config: TrainingConfig) -> str:
    """The config's base_precision: none, fp8, int8 or nf4 (fp8_base is sd-scripts' spelling of fp8)."""
    return config.base_precision


def field_of(config: TrainingConfig) -> str:
    """The field a refusal names: the one the config set."""
    return "fp8_base" if config.fp8_base else FIELD


def check_available(config: TrainingConfig, device: torch.device) -> None:
    """Before any model is loaded: the mode's library is installed, and nf4 has a CUDA device."""
    mode = mode_of(config)
    if mode == "none":
        return
    field = field_of(config)
    if mode == "nf4":
        if device.type != "cuda":
            raise TrainingSetupError(
                f"{field} 'nf4' needs a CUDA GPU (bitsandbytes' 4-bit layers); this run is on {device.type}: "
                "use 'int8' or 'fp8'",
                details={"field": field},
            )
        _import("bitsandbytes", field, mode)
    else:
        _import("torchao", field, mode)


def _import(module: str, field: str, mode: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TrainingSetupError(
            f"{field} {mode!r} needs the '{module}' package, which is not installed on this worker",
            details={"field": field},
        ) from exc


def quantize_frozen(model: torch.nn.Module, mode: str, dtype: torch.dtype) -> torch.nn.Module:
    """Cast `model` to the compute dtype and store its Linear weights in `mode`, in place (on the model's
    device). A no-op for "none". The model must be frozen and carry no adapter yet."""
    if mode == "none":
        return model
    if next(model.parameters()).dtype != dtype:
        model.to(dtype=dtype)
    if mode == "nf4":
        _to_linear4bit(model, dtype)
        return model
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    config = Float8WeightOnlyConfig() if mode == "fp8" else Int8WeightOnlyConfig()
    quantize_(model, config)  # every nn.Linear (torchao's default filter)
    for module in model.modules():
        if type(module) is torch.nn.Linear and _is_subclass(module.weight):
            module.__class__ = QuantizedLinear  # same parameters; only forward/backward change
    return model


class _DequantizedLinear(torch.autograd.Function):
    """F.linear with a quantized weight that keeps only the quantized weight for backward: torchao's own
    linear dequantizes the weight and autograd then saves that full-precision copy of every layer until
    backward (measured: a bf16 copy per layer), which would give back all the memory quantization saved."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.weight, ctx.x_dtype = weight, x.dtype
        return F.linear(x, weight.dequantize().to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        weight = ctx.weight.dequantize().to(grad.dtype)  # dequantized again, one layer at a time
        return (grad @ weight).to(ctx.x_dtype), None, None


class QuantizedLinear(torch.nn.Linear):
    """A frozen Linear whose weight is a torchao quantized tensor, computed in the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _DequantizedLinear.apply(x, self.weight, self.bias)


def _to_linear4bit(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Every Linear replaced by a bitsandbytes Linear4bit holding the same weights (NF4 once on CUDA)."""
    import bitsandbytes as bnb

    linears = [(n, m) for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    for name, linear in linears:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=dtype,
            quant_type="nf4",
            device=linear.weight.device,
        )
        layer.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False, quant_type="nf4")
        if linear.bias is not None:
            layer.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
        setattr(parent, child, layer)


def is_quantized(model: torch.nn.Module) -> bool:
    return any(_is_subclass(p) or type(p).__name__ == "Params4bit" for p in model.parameters())


def _is_subclass(t: torch.Tensor) -> bool:
    return type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__")


def place(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """model.to(device) in `dtype`: a quantized model moves as it is (its dtype is what it computes in), a
    plain one is cast only when its dtype differs (diffusers warns on every cast)."""
    if is_quantized(model) or getattr(model, "dtype", dtype) == dtype:
        model.to(device)
    else:
        model.to(device, dtype=dtype)


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds: a quantized tensor's inner tensors (data, scales, zero points) summed."""
    if _is_subclass(t):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    quant_state = getattr(t, "quant_state", None)  # bitsandbytes' Params4bit: packed data + absmax
    extra = quant_state.absmax.numel() * quant_state.absmax.element_size() if quant_state is not None else 0
    return t.numel() * t.element_size() + extra


def frozen_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's frozen parameters and buffers (what quantization shrinks; LoRA left out)."""
    params = sum(tensor_bytes(p) for p in model.parameters() if not p.requires_grad)
    return params + sum(tensor_bytes(b) for b in model.buffers())
