"""LyCORIS networks (LoHa, LoKr, DoRA) on the modules lorabake trains, written as LyCORIS' kohya files.

The modules are LyCORIS' own (lycoris-lora, the reference implementation A1111's and ComfyUI's loaders
follow), built one per target module of worker/training/network.py (Kohya's module set, the same for every
network type) and named with export.named_models' Kohya names (``lora_unet_...``, SAI paths for SDXL,
``lora_te_`` / ``lora_te1_`` / ``lora_te2_``). The network's state dict is then exactly a LyCORIS file:
``<name>.hada_w1_a`` ... (LoHa), ``<name>.lokr_w1`` / ``lokr_w2_a`` ... (LoKr), ``lora_down`` / ``lora_up``
(LoRA with DoRA), each module's ``alpha`` and, with DoRA, ``dora_scale``.

DoRA uses LyCORIS' ``wd_on_output=False``: the norm per input channel, dora_scale shaped ``[1, in, ...]``,
which is the one layout A1111 (per-input norm only) and ComfyUI both decompose as LyCORIS trains it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from lycoris.modules import LoConModule, LohaModule, LokrModule
from lycoris.modules.base import LycorisBaseModule

from shared.config.spec import TrainingConfig
from worker.training import export
from worker.training.network import target_module_paths

ALGOS: dict[str, type[LycorisBaseModule]] = {"lora": LoConModule, "loha": LohaModule, "lokr": LokrModule}
NETWORK_MODULE = "lycoris.kohya"  # sd-scripts' --network_module for LyCORIS


@dataclass(frozen=True)
class LycorisSettings:
    algo: str  # "lora" (DoRA on LoRA/LoCon), "loha", "lokr"
    rank: int
    alpha: float
    conv_rank: int | None = None  # 3x3 convs of resnets / samplers get modules only with it
    conv_alpha: float = 1.0  # Kohya's conv_alpha default (LyCORIS' own would be alpha)
    factor: int = -1  # LoKr: LyCORIS' factor, -1 = the most balanced split
    dora_wd: bool = False

    @classmethod
    def from_config(cls, config: TrainingConfig) -> LycorisSettings:
        return cls(
            algo=config.network_type,
            rank=config.network_dim,
            alpha=float(config.network_alpha),
            conv_rank=config.conv_dim,
            conv_alpha=float(config.conv_alpha) if config.conv_alpha is not None else 1.0,
            factor=config.lokr_factor if config.lokr_factor is not None else -1,
            dora_wd=config.dora_wd,
        )

    def network_args(self) -> dict[str, str]:
        """sd-scripts' network_args as LyCORIS reads them (ss_network_args: every value a string)."""
        args = {"algo": self.algo}
        if self.conv_rank is not None:
            args["conv_dim"] = str(self.conv_rank)
            args["conv_alpha"] = str(self.conv_alpha)
        if self.algo == "lokr":
            args["factor"] = str(self.factor)
        if self.dora_wd:
            args["dora_wd"] = "True"
            args["wd_on_output"] = "False"
        return args


class LycorisNetwork(torch.nn.Module):
    """The LyCORIS modules by Kohya name; their forwards are hooked into the models (apply_to)."""

    def __init__(self, modules: dict[str, LycorisBaseModule]):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)

    def lycoris_modules(self) -> list[tuple[str, LycorisBaseModule]]:
        return [(n, m) for n, m in self.named_children() if isinstance(m, LycorisBaseModule)]


def _build(name: str, module: torch.nn.Module, settings: LycorisSettings, *, conv: bool) -> LycorisBaseModule:
    rank = settings.conv_rank if conv else settings.rank
    alpha = settings.conv_alpha if conv else settings.alpha
    assert rank is not None
    return ALGOS[settings.algo](
        name,
        module,
        multiplier=1.0,
        lora_dim=rank,
        alpha=alpha,
        use_tucker=False,  # no lokr_t2 / hada_t1: the plain layout every loader reads
        factor=settings.factor,
        decompose_both=False,
        weight_decompose=settings.dora_wd,
        wd_on_out=False,
    )


def add_lycoris(
    unet: torch.nn.Module,
    text_encoders: list[torch.nn.Module],
    settings: LycorisSettings,
    *,
    target: str = "all_linear",
) -> LycorisNetwork:
    """Freeze the models and hook a LyCORIS module into each target module (network.target_module_paths:
    the same set as LoRA / LoCon); text_encoders: [] (U-Net only), [te] (SD1/2) or [te1, te2] (SDXL).
    Draws the init from torch's global RNG: seed it first for a reproducible run."""
    unet.requires_grad_(False)
    for te in text_encoders:
        te.requires_grad_(False)
    te1 = text_encoders[0] if text_encoders else None
    te2 = text_encoders[1] if len(text_encoders) > 1 else None
    modules: dict[str, LycorisBaseModule] = {}
    for prefix, model, kohya_path in export.named_models(unet, te1, text_encoder_2=te2):
        is_unet = model is unet
        linear, convs = target_module_paths(
            model, is_unet=is_unet, target=target, conv=is_unet and settings.conv_rank is not None
        )
        for paths, conv in ((linear, False), (convs, True)):
            for path in paths:
                name = export.kohya_name(prefix, kohya_path(path))
                if name in modules:  # two modules under one name would load as one: never write that
                    raise ValueError(f"{path}: Kohya name {name} is already taken")
                modules[name] = _build(name, model.get_submodule(path), settings, conv=conv)
    if not modules:
        raise ValueError("no module to give a LyCORIS network")
    network = LycorisNetwork(modules)
    for _, module in network.lycoris_modules():
        module.apply_to()
    network.requires_grad_(True)
    return network


def state_dict(network: LycorisNetwork, save_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The file's tensors: LyCORIS' own keys per module in save_dtype, each alpha a float32 0-d tensor
    (as export.kohya_state_dict writes it: exact whatever the save precision)."""
    tensors: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key, value in network.state_dict().items():
            if key.endswith(".alpha"):
                tensors[key] = value.detach().to("cpu", torch.float32, copy=True).reshape(())
            else:
                tensors[key] = value.detach().to("cpu", save_dtype, copy=True).contiguous()
    return tensors


def save_lycoris(
    network: LycorisNetwork,
    path: Path,
    *,
    settings: LycorisSettings,
    save_dtype: torch.dtype,
    metadata: dict[str, str],
) -> Path:
    """Write the network as sd-scripts + LyCORIS do (ss_network_module lycoris.kohya, network_args)."""
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata must be str -> str; offending keys: {bad}")
    tensors = state_dict(network, save_dtype)
    full = dict(metadata)
    # Never let the metadata disagree with the network: loaders and UIs show these values.
    full["ss_network_module"] = NETWORK_MODULE
    full["ss_network_dim"] = str(settings.rank)
    full["ss_network_alpha"] = str(settings.alpha)
    full["ss_network_args"] = json.dumps(settings.network_args())
    model_hash, legacy_hash = export.kohya_hashes(tensors, full)
    full["sshs_model_hash"] = model_hash
    full["sshs_legacy_hash"] = legacy_hash
    path = Path(path)
    export.write_atomically(path, safetensors.torch.save(tensors, full))
    return path
