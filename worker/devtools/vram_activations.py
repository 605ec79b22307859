"""Counts, on the meta device, what the activation constants in shared/vram/tables.py are fitted from:
the bytes autograd keeps for backward in one LoRA training forward of a full-size denoiser (with and
without gradient checkpointing), and the peak live bytes of a float32 VAE encode. Nothing is allocated, so
it runs anywhere in seconds; the figures are a model of the GPU run, to be calibrated by bench/gpu_train.py.

    .venv/bin/python -m worker.devtools.vram_activations sd15:512 sdxl-base:1024 flux1-dev:1024
    .venv/bin/python -m worker.devtools.vram_activations --vae sdxl-base:1024:4

Attention is counted as flash / memory-efficient SDPA keeps it (q, k, v, out and the log-sum-exp), not the
math kernel's full score matrix: scaled_dot_product_attention is replaced for the count only.
"""

from __future__ import annotations

import argparse
import weakref
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from worker.training import flux_names, network
from worker.training.single_file_configs import BASE_CONFIGS

META = torch.device("meta")


class _FlashLikeAttention(torch.autograd.Function):
    """What flash / memory-efficient SDPA saves for backward: q, k, v, the output and the log-sum-exp."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # noqa: ANN401
        out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> None:  # noqa: ANN401 - never run: a count, not a training
        raise NotImplementedError


def _flash_like_sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:  # noqa: ANN401
    q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")[len(args) :]])[:3]
    return _FlashLikeAttention.apply(q, k, v)


class _SavedBytes:
    """Distinct storages autograd saves, leaving out the model's own parameters and buffers."""

    def __init__(self, skip: set[int]) -> None:
        self.skip = skip
        self.seen: dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in self.skip:
            self.seen.setdefault(storage._cdata, storage.nbytes())
        return tensor

    def total(self) -> int:
        return sum(self.seen.values())


def _denoiser(name: str, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    folder = BASE_CONFIGS / name
    with META:
        if name.startswith("flux"):
            model = FluxTransformer2DModel.from_config(
                FluxTransformer2DModel.load_config(folder / "transformer")
            )
            targets = flux_names.flux_lora_target_paths(model)
        else:
            model = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            targets, _ = network.target_module_paths(model, is_unet=True, target="all_linear")
        model.requires_grad_(False)
        model.to(dtype)
        model.add_adapter(network.lora_config(16, 16, targets), adapter_name="default")
    return model


def _forward(model: torch.nn.Module, name: str, side: int, dtype: torch.dtype) -> None:
    lat = side // 8

    def meta(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device=META, dtype=dtype)

    if name.startswith("flux"):
        tokens = (lat // 2) ** 2
        model(
            hidden_states=meta(1, tokens, 64),
            timestep=meta(1),
            guidance=meta(1),
            pooled_projections=meta(1, 768),
            encoder_hidden_states=meta(1, 512, 4096),
            txt_ids=torch.zeros(512, 3, device=META),
            img_ids=torch.zeros(tokens, 3, device=META),
            return_dict=False,
        )
        return
    width = 2048 if "xl" in name else (1024 if "sd2" in name else 768)
    added = {"text_embeds": meta(1, 1280), "time_ids": meta(1, 6)} if "xl" in name else None
    noisy = meta(1, 4, lat, lat)
    timestep = torch.zeros(1, dtype=torch.long, device=META)
    model(noisy, timestep, meta(1, 77, width), added_cond_kwargs=added, return_dict=False)


def saved_for_backward(
    name: str, side: int, checkpointing: bool, dtype: torch.dtype = torch.bfloat16
) -> int:
    """Bytes autograd keeps for backward in one forward at `side` px, batch 1. With checkpointing: what is
    kept outside the checkpointed blocks, their inputs, and the largest block's own activations (recomputed
    one block at a time in backward)."""
    model = _denoiser(name, dtype)
    skip = {p.untyped_storage()._cdata for p in model.parameters()}
    skip |= {b.untyped_storage()._cdata for b in model.buffers()}
    outside, inputs = _SavedBytes(skip), _SavedBytes(skip)
    largest_block = 0

    def checkpoint(module: Callable[..., Any], *args: Any) -> Any:  # noqa: ANN401
        nonlocal largest_block
        for arg in tree_flatten(args)[0]:
            if isinstance(arg, torch.Tensor):
                inputs.pack(arg)
        inner = _SavedBytes(skip)
        with torch.autograd.graph.saved_tensors_hooks(inner.pack, lambda t: t):
            out = module(*args)
        largest_block = max(largest_block, inner.total())
        return out

    if checkpointing:
        model.enable_gradient_checkpointing(checkpoint)
    model.train()
    # peft casts a LoRA layer's input to the float32 LoRA weights and autocast casts it back: a copy per layer
    from peft.tuners.tuners_utils import BaseTunerLayer

    with (
        mock.patch.object(F, "scaled_dot_product_attention", _flash_like_sdpa),
        mock.patch.object(BaseTunerLayer, "_cast_input_dtype", lambda self, x, dtype: x.clone()),
        torch.autograd.graph.saved_tensors_hooks(outside.pack, lambda t: t),
    ):
        _forward(model, name, side, dtype)
    return outside.total() + (inputs.total() + largest_block if checkpointing else 0)


class _LiveBytes(TorchDispatchMode):
    """The peak of the bytes held by live tensors made under this mode."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, list[int]] = {}  # storage -> [bytes, live tensors]
        self.now = self.peak = 0

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.refs:
            self.refs[key] = [storage.nbytes(), 0]
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
        self.refs[key][1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.refs[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor)
        return out


def vae_encode_peak(name: str, side: int, images: int) -> int:
    """Peak live bytes of a float32 VAE encode of `images` images of `side` px, without gradients."""
    from diffusers import AutoencoderKL

    with META:
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(BASE_CONFIGS / name / "vae"))
    batch = torch.empty(images, 3, side, side, device=META)
    live = _LiveBytes()
    with torch.no_grad(), live:
        vae.encode(batch)
    return live.peak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "cases", nargs="*", help="base config:side, e.g. sd15:512 sdxl-base:1024 flux1-dev:1024"
    )
    parser.add_argument("--vae", nargs="*", default=[], help="base config:side:images, e.g. sdxl-base:1024:4")
    opts = parser.parse_args()
    for case in opts.cases:
        name, side = case.split(":")
        pixels = (int(side) // 8) ** 2
        for checkpointing in (False, True):
            saved = saved_for_backward(name, int(side), checkpointing)
            print(
                f"{name:10s} {side:>5s} px checkpointing={checkpointing!s:5s} saved {saved / 2**30:7.3f} GiB "
                f"= {saved / pixels:,.0f} B per latent pixel (batch 1, bf16)",
                flush=True,
            )
    for case in opts.vae:
        name, side, images = case.split(":")
        peak = vae_encode_peak(name, int(side), int(images))
        print(
            f"VAE {name} {side} px x {images}: peak {peak / 2**30:.2f} GiB, "
            f"{peak / (int(images) * int(side) ** 2):,.0f} B per image pixel"
        )


if __name__ == "__main__":
    main()
