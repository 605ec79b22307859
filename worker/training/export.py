"""Write a trained LoRA as a Kohya-format safetensors file (A1111, ComfyUI, Kohya and diffusers load it).

Keys: ``lora_unet_<module path, '.' -> '_'>`` and ``lora_te_text_model_<...>`` for SD1.x/2.x
(``lora_te1_``/``lora_te2_`` for SDXL's two encoders), each with ``.lora_down.weight``, ``.lora_up.weight``
and a 0-d ``.alpha`` holding the trained alpha (loaders scale by alpha / rank, so a wrong alpha silently
changes the LoRA's strength). The module path is the diffusers one for SD1.x/2.x and, for SDXL, the SAI
(original U-Net) path sd-scripts' SDXL trainer writes (worker/training/sdxl_names.py). The ``ss_*`` /
``modelspec.*`` metadata is built in worker/training/metadata.py; this module only writes files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import safetensors.torch
import torch
from peft.tuners.lora import LoraLayer

# The metadata helpers live in worker/training/metadata.py; these names stay importable from here.
from worker.training.metadata import (  # noqa: F401
    MODELSPEC_VERSION,
    base_model_version,
    data_metadata,
    dataset_dirs,
    file_metadata,
    folder_name,
    modelspec_metadata,
    option_metadata,
    read_metadata,
    tag_frequency,
    training_metadata,
)
from worker.training.network import ADAPTER_NAME, lora_layers
from worker.training.sdxl_names import SaiNames, is_sdxl_unet

SAVE_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}
UNET_PREFIX = "lora_unet_"
TE_PREFIX = "lora_te_"  # SD1/2 single text encoder; SDXL files use lora_te1_/lora_te2_
TE1_PREFIX, TE2_PREFIX = "lora_te1_", "lora_te2_"
TE_ROOT = "text_model."  # transformers >= 5 CLIPTextModel has no such level, Kohya/A1111 names do


def kohya_name(prefix: str, module_path: str) -> str:
    return prefix + module_path.replace(".", "_")


def _same(name: str) -> str:
    return name


def _te_module_path(name: str) -> str:
    return name if name.startswith(TE_ROOT) else TE_ROOT + name


def named_models(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module | None,
    *,
    text_encoder_2: torch.nn.Module | None = None,
) -> list[tuple[str, torch.nn.Module, Callable[[str], str]]]:
    """(key prefix, model, module path -> the path Kohya names) for the U-Net and the given text encoders:
    the naming rules of kohya_modules, shared with LyCORIS networks (worker/training/lycoris_network.py)."""
    config = getattr(unet, "config", {})
    sai = SaiNames(config) if is_sdxl_unet(config) else None
    models: list[tuple[str, torch.nn.Module, Callable[[str], str]]] = [
        (UNET_PREFIX, unet, sai.to_sai if sai is not None else _same)
    ]
    if text_encoder_2 is not None:
        for prefix, encoder in ((TE1_PREFIX, text_encoder), (TE2_PREFIX, text_encoder_2)):
            if encoder is not None:
                models.append((prefix, encoder, _te_module_path))
    elif text_encoder is not None:
        models.append((TE_PREFIX, text_encoder, _te_module_path))
    return models


def kohya_modules(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module | None,
    *,
    text_encoder_2: torch.nn.Module | None = None,
) -> list[tuple[str, LoraLayer]]:
    """(Kohya module name, LoRA layer) for every adapter the models carry, in module order; names only, so
    it also runs on models built on the meta device.

    With a second text encoder (SDXL) the encoders are named ``lora_te1_`` and ``lora_te2_``, as Kohya's
    SDXL trainer and every SDXL loader expect; otherwise (SD1.x/2.x) the one encoder is ``lora_te_``. An SDXL
    U-Net (text_time conditioning) is named in the SAI layout, as sd-scripts' SDXL trainer names it
    (A1111 and Forge look SDXL keys up in that layout); SD1.x/2.x U-Nets keep their diffusers paths.
    """
    named: list[tuple[str, LoraLayer]] = []
    seen: set[str] = set()
    for prefix, model, module_path in named_models(unet, text_encoder, text_encoder_2=text_encoder_2):
        for name, layer in lora_layers(model):
            key = kohya_name(prefix, module_path(name))
            if key in seen:  # two modules under one name would load as one: never write that
                raise ValueError(f"{name}: Kohya name {key} is already taken")
            seen.add(key)
            named.append((key, layer))
    return named


def kohya_state_dict(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module | None,
    *,
    network_alpha: float,
    save_dtype: torch.dtype,
    conv_alpha: float | None = None,
    text_encoder_2: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Kohya-named CPU tensors (names: kohya_modules): weights in save_dtype, each alpha a float32 0-d tensor.

    3x3-conv modules (LoCon, conv_dim) carry conv_alpha, every other module network_alpha.

    sd-scripts casts alpha to the save dtype too; float32 keeps the real alpha exact (fp16/bf16 round values
    like 0.3, bf16 even integers above 256) and every loader reads it with .item(), whatever its dtype.
    """
    tensors: dict[str, torch.Tensor] = {}
    for key, layer in kohya_modules(unet, text_encoder, text_encoder_2=text_encoder_2):
        trained_alpha = float(layer.lora_alpha[ADAPTER_NAME])
        want_alpha = float(network_alpha)
        if _is_3x3_conv(layer) and conv_alpha is not None:
            want_alpha = float(conv_alpha)
        if trained_alpha != want_alpha:
            raise ValueError(f"{key}: adapter alpha {trained_alpha} != configured alpha {want_alpha}")
        down = layer.lora_A[ADAPTER_NAME].weight
        up = layer.lora_B[ADAPTER_NAME].weight
        tensors[f"{key}.lora_down.weight"] = down.detach().to("cpu", save_dtype, copy=True).contiguous()
        tensors[f"{key}.lora_up.weight"] = up.detach().to("cpu", save_dtype, copy=True).contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(want_alpha, dtype=torch.float32)
    if not tensors:
        raise ValueError("the models carry no LoRA adapter to export")
    return tensors


def _is_3x3_conv(layer: torch.nn.Module) -> bool:
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    return isinstance(base, torch.nn.Conv2d) and tuple(base.kernel_size) != (1, 1)


def kohya_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, str]:
    """sd-scripts' sshs_model_hash / sshs_legacy_hash (sd-webui-additional-networks' index hashes).

    Computed, as Kohya does, on the file serialised with only the ss_* metadata: the model hash is the sha256
    of the tensor payload after the header, the legacy hash the first 8 hex digits of sha256(64 KiB at 1 MiB).
    """
    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    blob = safetensors.torch.save(tensors, ss_only or None)
    header_len = int.from_bytes(blob[:8], "little")
    model_hash = hashlib.sha256(memoryview(blob)[8 + header_len :]).hexdigest()
    legacy_hash = hashlib.sha256(memoryview(blob)[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash


def write_atomically(path: Path, data: bytes) -> None:
    """Readers (upload, download, a watcher) see either no file or the whole file, never a partial one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the file is meant to be served
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def save_kohya_lora(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module | None,
    path: Path,
    *,
    network_alpha: float,
    save_dtype: torch.dtype,
    metadata: dict[str, str],
    conv_alpha: float | None = None,
    text_encoder_2: torch.nn.Module | None = None,
) -> Path:
    """Save the adapters of unet (+ text_encoder, + SDXL's text_encoder_2) to path in Kohya's format."""
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata must be str -> str; offending keys: {bad}")
    path = Path(path)
    tensors = kohya_state_dict(
        unet,
        text_encoder,
        network_alpha=network_alpha,
        save_dtype=save_dtype,
        conv_alpha=conv_alpha,
        text_encoder_2=text_encoder_2,
    )
    full = dict(metadata)
    # Never let the metadata disagree with the tensors: loaders and UIs show these two values.
    full["ss_network_alpha"] = str(float(network_alpha))
    # The network rank: from a Linear / 1x1 module (a LoCon file's 3x3 convs carry conv_dim instead).
    rank = next(
        t for k, t in tensors.items() if k.endswith(".lora_down.weight") and t.shape[2:] in ((), (1, 1))
    ).shape[0]
    full["ss_network_dim"] = str(rank)
    model_hash, legacy_hash = kohya_hashes(tensors, full)
    full["sshs_model_hash"] = model_hash
    full["sshs_legacy_hash"] = legacy_hash
    write_atomically(path, safetensors.torch.save(tensors, full))
    return path


def lora_file_name(output_name: str, epoch: int, *, is_final: bool) -> str:
    """Kohya's naming: intermediate epochs get -{epoch:06d}, the last epoch the bare name."""
    return f"{output_name}.safetensors" if is_final else f"{output_name}-{epoch:06d}.safetensors"
