"""Write a trained LoRA as a Kohya-format safetensors file (A1111, ComfyUI, Kohya and diffusers load it).

Keys: ``lora_unet_<module path, '.' -> '_'>`` and ``lora_te_text_model_<...>`` for SD1.x, each with
``.lora_down.weight``, ``.lora_up.weight`` and a 0-d ``.alpha`` holding the trained alpha (loaders scale by
alpha / rank, so a wrong alpha silently changes the LoRA's strength). Metadata follows sd-scripts' ``ss_*``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import safetensors.torch
import torch

from shared.dataset_layout import DatasetLayout, Subset
from shared.plan import TrainingPlan
from shared.spec import TrainingConfig
from worker.training.network import ADAPTER_NAME, lora_layers

SAVE_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}
UNET_PREFIX = "lora_unet_"
TE_PREFIX = "lora_te_"  # SD1/2 single text encoder; SDXL files use lora_te1_/lora_te2_
TE_ROOT = "text_model."  # transformers >= 5 CLIPTextModel has no such level, Kohya/A1111 names do


def kohya_name(prefix: str, module_path: str) -> str:
    return prefix + module_path.replace(".", "_")


def _te_module_path(name: str) -> str:
    return name if name.startswith(TE_ROOT) else TE_ROOT + name


def kohya_state_dict(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module | None,
    *,
    network_alpha: float,
    save_dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Kohya-named CPU tensors: weights in save_dtype, each alpha a float32 0-d tensor.

    sd-scripts casts alpha to the save dtype too; float32 keeps the real alpha exact (fp16/bf16 round values
    like 0.3, bf16 even integers above 256) and every loader reads it with .item(), whatever its dtype.
    """
    models: list[tuple[str, torch.nn.Module, bool]] = [(UNET_PREFIX, unet, False)]
    if text_encoder is not None:
        models.append((TE_PREFIX, text_encoder, True))
    tensors: dict[str, torch.Tensor] = {}
    for prefix, model, is_te in models:
        for name, layer in lora_layers(model):
            trained_alpha = float(layer.lora_alpha[ADAPTER_NAME])
            if trained_alpha != float(network_alpha):
                raise ValueError(f"{name}: adapter alpha {trained_alpha} != network_alpha {network_alpha}")
            key = kohya_name(prefix, _te_module_path(name) if is_te else name)
            down = layer.lora_A[ADAPTER_NAME].weight
            up = layer.lora_B[ADAPTER_NAME].weight
            tensors[f"{key}.lora_down.weight"] = down.detach().to("cpu", save_dtype, copy=True).contiguous()
            tensors[f"{key}.lora_up.weight"] = up.detach().to("cpu", save_dtype, copy=True).contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(float(network_alpha), dtype=torch.float32)
    if not tensors:
        raise ValueError("the models carry no LoRA adapter to export")
    return tensors


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
) -> Path:
    """Save the adapters of unet (+ text_encoder) to path in Kohya's format; returns path."""
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata must be str -> str; offending keys: {bad}")
    path = Path(path)
    tensors = kohya_state_dict(unet, text_encoder, network_alpha=network_alpha, save_dtype=save_dtype)
    full = dict(metadata)
    # Never let the metadata disagree with the tensors: loaders and UIs show these two values.
    full["ss_network_alpha"] = str(float(network_alpha))
    rank = next(t for k, t in tensors.items() if k.endswith(".lora_down.weight")).shape[0]
    full["ss_network_dim"] = str(rank)
    model_hash, legacy_hash = kohya_hashes(tensors, full)
    full["sshs_model_hash"] = model_hash
    full["sshs_legacy_hash"] = legacy_hash
    write_atomically(path, safetensors.torch.save(tensors, full))
    return path


# --- metadata -----------------------------------------------------------------------------------------------


def folder_name(subset: Subset, dataset_dir: Path) -> str:
    """Kohya records a subset by its folder's basename; a flat layout's folder is the dataset root."""
    return PurePosixPath(subset.folder).name or Path(dataset_dir).name


def tag_frequency(folder_captions: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Kohya's ss_tag_frequency: per folder, lower-cased comma-separated caption parts counted per image."""
    freq: dict[str, dict[str, int]] = {}
    for folder, caption in folder_captions:
        counts = freq.setdefault(folder, {})
        for part in caption.split(","):
            tag = part.strip().lower()
            if tag:
                counts[tag] = counts.get(tag, 0) + 1
    return freq


def dataset_dirs(layout: DatasetLayout, dataset_dir: Path, *, reg: bool) -> dict[str, dict[str, int]]:
    """Kohya's ss_dataset_dirs (reg=False) / ss_reg_dataset_dirs (reg=True)."""
    subsets = layout.reg_subsets if reg else layout.train_subsets
    return {
        folder_name(s, dataset_dir): {"n_repeats": s.repeats, "img_count": len(s.images)} for s in subsets
    }


def training_metadata(
    config: TrainingConfig,
    plan: TrainingPlan,
    *,
    seed: int,
    optimizer: str,
    tag_freq: dict[str, dict[str, int]],
    dirs: dict[str, dict[str, int]],
    reg_dirs: dict[str, dict[str, int]],
    started_at: float,
) -> dict[str, str]:
    """The run-wide ss_* metadata, rendered as Kohya does (str() of each value); per file: file_metadata."""
    values: dict[str, object] = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": config.network_dim,
        "ss_network_alpha": float(config.network_alpha),
        "ss_base_model_version": "sd_v1",
        "ss_v2": False,
        "ss_sd_model_name": PurePosixPath(config.base_model.replace("\\", "/")).name,
        "ss_output_name": config.output_name,
        "ss_training_started_at": started_at,
        "ss_num_train_images": plan.images,
        "ss_num_reg_images": plan.reg_images,
        "ss_num_epochs": plan.epochs,
        "ss_num_batches_per_epoch": plan.batches_per_epoch,
        "ss_batch_size_per_device": config.batch_size,
        "ss_total_batch_size": config.batch_size,
        "ss_gradient_accumulation_steps": config.gradient_accumulation_steps,
        "ss_gradient_checkpointing": config.gradient_checkpointing,
        "ss_resolution": (config.resolution, config.resolution),
        "ss_learning_rate": config.unet_lr,
        "ss_unet_lr": config.unet_lr,
        "ss_text_encoder_lr": config.text_encoder_lr,
        "ss_max_train_steps": plan.total_steps,
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": config.lr_warmup_steps,
        "ss_optimizer": optimizer,
        "ss_max_grad_norm": config.max_grad_norm,
        "ss_mixed_precision": config.mixed_precision,
        "ss_seed": seed,
        "ss_cache_latents": True,
        "ss_prior_loss_weight": 1.0,
        "ss_enable_bucket": False,
        "ss_tag_frequency": json.dumps(tag_freq),
        "ss_dataset_dirs": json.dumps(dirs),
        "ss_reg_dataset_dirs": json.dumps(reg_dirs),
    }
    return {k: str(v) for k, v in values.items()}


def file_metadata(run: dict[str, str], *, epoch: int, step: int, finished_at: float) -> dict[str, str]:
    return {**run, "ss_epoch": str(epoch), "ss_steps": str(step), "ss_training_finished_at": str(finished_at)}


def lora_file_name(output_name: str, epoch: int, *, is_final: bool) -> str:
    """Kohya's naming: intermediate epochs get -{epoch:06d}, the last epoch the bare name."""
    return f"{output_name}.safetensors" if is_final else f"{output_name}-{epoch:06d}.safetensors"


def read_metadata(path: Path) -> dict[str, str]:
    with safetensors.safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
