"""Write a trained LoRA as a Kohya-format safetensors file (A1111, ComfyUI, Kohya and diffusers load it).

Keys: ``lora_unet_<module path, '.' -> '_'>`` and ``lora_te_text_model_<...>`` for SD1.x/2.x
(``lora_te1_``/``lora_te2_`` for SDXL's two encoders; SDXL UNet keys keep diffusers module names), each with
``.lora_down.weight``, ``.lora_up.weight`` and a 0-d ``.alpha`` holding the trained alpha (loaders scale by
alpha / rank, so a wrong alpha silently changes the LoRA's strength). Metadata follows sd-scripts' ``ss_*``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import safetensors.torch
import torch

from shared.config.plan import TrainingPlan
from shared.config.spec import TrainingConfig
from shared.datasets.layout import DatasetLayout, Subset
from worker.training.network import ADAPTER_NAME, lora_layers

SAVE_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "float": torch.float32}
UNET_PREFIX = "lora_unet_"
TE_PREFIX = "lora_te_"  # SD1/2 single text encoder; SDXL files use lora_te1_/lora_te2_
TE1_PREFIX, TE2_PREFIX = "lora_te1_", "lora_te2_"
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
    conv_alpha: float | None = None,
    text_encoder_2: torch.nn.Module | None = None,
) -> dict[str, torch.Tensor]:
    """Kohya-named CPU tensors: weights in save_dtype, each alpha a float32 0-d tensor.

    With a second text encoder (SDXL) the encoders are named ``lora_te1_`` and ``lora_te2_``, as Kohya's
    SDXL trainer and every SDXL loader expect; otherwise (SD1.x/2.x) the one encoder is ``lora_te_``.

    3x3-conv modules (LoCon, conv_dim) carry conv_alpha, every other module network_alpha.

    sd-scripts casts alpha to the save dtype too; float32 keeps the real alpha exact (fp16/bf16 round values
    like 0.3, bf16 even integers above 256) and every loader reads it with .item(), whatever its dtype.
    """
    models: list[tuple[str, torch.nn.Module, bool]] = [(UNET_PREFIX, unet, False)]
    if text_encoder_2 is not None:
        for prefix, encoder in ((TE1_PREFIX, text_encoder), (TE2_PREFIX, text_encoder_2)):
            if encoder is not None:
                models.append((prefix, encoder, True))
    elif text_encoder is not None:
        models.append((TE_PREFIX, text_encoder, True))
    tensors: dict[str, torch.Tensor] = {}
    for prefix, model, is_te in models:
        for name, layer in lora_layers(model):
            trained_alpha = float(layer.lora_alpha[ADAPTER_NAME])
            want_alpha = float(network_alpha)
            if _is_3x3_conv(layer) and conv_alpha is not None:
                want_alpha = float(conv_alpha)
            if trained_alpha != want_alpha:
                raise ValueError(f"{name}: adapter alpha {trained_alpha} != configured alpha {want_alpha}")
            key = kohya_name(prefix, _te_module_path(name) if is_te else name)
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
    family: str = "sd1",
    v_parameterization: bool = False,
) -> dict[str, str]:
    """The run-wide ss_* and modelspec.* metadata, rendered as Kohya does (str() of each value); per file:
    file_metadata. family: the base model's ("sd1", "sd2", "sdxl"); v_parameterization: the trained target."""
    values: dict[str, object] = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": config.network_dim,
        "ss_network_alpha": float(config.network_alpha),
        "ss_base_model_version": base_model_version(family, v_parameterization),
        "ss_v2": family == "sd2",
        "ss_v_parameterization": v_parameterization,
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
        "ss_prior_loss_weight": config.prior_loss_weight,
        **data_metadata(config, plan),
        "ss_tag_frequency": json.dumps(tag_freq),
        "ss_dataset_dirs": json.dumps(dirs),
        "ss_reg_dataset_dirs": json.dumps(reg_dirs),
    }
    rendered = {k: str(v) for k, v in values.items()}
    rendered.update(modelspec_metadata(config, family=family, v_parameterization=v_parameterization))
    return rendered


def data_metadata(config: TrainingConfig, plan: TrainingPlan) -> dict[str, object]:
    """Kohya's bucket and caption ss_* keys (train_network.py); min/max bucket reso and bucket info are None
    without bucketing, as Kohya writes them. Bucket counts include repeats (Kohya's bucket_info)."""
    bucketed = config.enable_bucket
    info = {
        "buckets": {
            i: {"resolution": (b.width, b.height), "count": b.samples} for i, b in enumerate(plan.buckets)
        }
    }
    return {
        "ss_enable_bucket": bucketed,
        "ss_bucket_no_upscale": bucketed and config.bucket_no_upscale,
        "ss_min_bucket_reso": config.min_bucket_reso if bucketed else None,
        "ss_max_bucket_reso": config.max_bucket_reso if bucketed else None,
        "ss_bucket_info": json.dumps(info if bucketed else None),
        "ss_flip_aug": config.flip_aug,
        "ss_color_aug": False,
        "ss_random_crop": False,
        "ss_shuffle_caption": config.shuffle_caption,
        "ss_keep_tokens": config.keep_tokens,
        "ss_caption_dropout_rate": config.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": config.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": config.caption_tag_dropout_rate,
    }


def base_model_version(family: str, v_parameterization: bool) -> str:
    """Kohya's ss_base_model_version: sd_v1 / sd_v2 (+ "_v" when v-parameterized), sdxl_base_v1-0."""
    if family == "sdxl":
        return "sdxl_base_v1-0"
    return ("sd_v2" if family == "sd2" else "sd_v1") + ("_v" if v_parameterization else "")


# Stability AI's ModelSpec keys as sd-scripts (library/sai_model_spec.py) writes them for a LoRA.
MODELSPEC_VERSION = "1.0.1"
_ARCHITECTURES = {"sd1": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-v1-base"}


def modelspec_metadata(config: TrainingConfig, *, family: str, v_parameterization: bool) -> dict[str, str]:
    """modelspec.* for a LoRA (the date is per file: file_metadata). SD2 is "-768-v" when v-parameterized,
    "-512" otherwise; SDXL LoRAs name SAI's implementation, the others "diffusers" (as sd-scripts does)."""
    if family == "sd2":
        arch = "stable-diffusion-v2-768-v" if v_parameterization else "stable-diffusion-v2-512"
    else:
        arch = _ARCHITECTURES[family]
    meta = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": f"{arch}/lora",
        "modelspec.implementation": (
            "https://github.com/Stability-AI/generative-models" if family == "sdxl" else "diffusers"
        ),
        "modelspec.title": config.output_name,
        "modelspec.resolution": f"{config.resolution}x{config.resolution}",
        "modelspec.prediction_type": "v" if v_parameterization else "epsilon",
    }
    if config.trigger_word:
        meta["modelspec.trigger_phrase"] = config.trigger_word
    return meta


def file_metadata(run: dict[str, str], *, epoch: int, step: int, finished_at: float) -> dict[str, str]:
    return {
        **run,
        "ss_epoch": str(epoch),
        "ss_steps": str(step),
        "ss_training_finished_at": str(finished_at),
        # sd-scripts: the save time, whole seconds, local time, ISO 8601 (2024-05-01T12:34:56).
        "modelspec.date": datetime.datetime.fromtimestamp(int(finished_at)).isoformat(),
    }


def lora_file_name(output_name: str, epoch: int, *, is_final: bool) -> str:
    """Kohya's naming: intermediate epochs get -{epoch:06d}, the last epoch the bare name."""
    return f"{output_name}.safetensors" if is_final else f"{output_name}-{epoch:06d}.safetensors"


def read_metadata(path: Path) -> dict[str, str]:
    with safetensors.safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def option_metadata(config: TrainingConfig) -> dict[str, str]:
    """The ss_* keys of Kohya's training options (str() of each value, None when unset, as sd-scripts writes
    them); ss_network_args carries conv_dim / conv_alpha as Kohya's network_args do."""
    max_tokens = None if config.max_token_length in (None, 75) else config.max_token_length
    values: dict[str, object] = {
        "ss_clip_skip": config.clip_skip,
        "ss_max_token_length": max_tokens,
        "ss_noise_offset": config.noise_offset,
        "ss_adaptive_noise_scale": config.adaptive_noise_scale,
        "ss_min_snr_gamma": config.min_snr_gamma,
        "ss_lr_warmup_steps": config.lr_warmup_steps,
    }
    if config.optimizer == "Adafactor" and (
        config.optimizer_args.get("relative_step") or config.optimizer_args.get("warmup_init")
    ):
        values["ss_lr_scheduler"] = f"adafactor:{config.unet_lr}"  # Kohya's get_optimizer renames it so
    out = {k: str(v) for k, v in values.items()}
    if config.conv_dim is not None:
        conv_alpha = config.conv_alpha if config.conv_alpha is not None else 1.0
        out["ss_network_args"] = json.dumps({"conv_dim": str(config.conv_dim), "conv_alpha": str(conv_alpha)})
    return out
