"""sd-scripts' ``ss_*`` and Stability AI's ``modelspec.*`` metadata of a LoRA file, as train_network.py
writes it.

Every value is rendered as sd-scripts renders it (``str()`` of the Python value: ``True``, ``None``,
``(512, 512)``, JSON for the nested ones). Options sd-scripts has and lorabake does not (validation, huber
loss, multires noise, ...) are written with sd-scripts' defaults, so readers that expect every key find
it and see that the option was off. The SD1 / SD2 / SDXL decision of A1111 and Forge reads
``ss_base_model_version`` (``sdxl_`` prefix) and then ``ss_v2`` (``"True"``); both are always written.

Not written, as sd-scripts writes neither without the option: ``ss_vae_name`` / ``ss_vae_hash`` /
``ss_new_vae_hash`` (lorabake trains with the base model's own VAE; sd-scripts only writes them for
``--vae``), and ``ss_network_args`` without LoCon (lorabake's other network choices have no sd-scripts
network argument).
"""

from __future__ import annotations

import datetime
import json
import random
from collections.abc import Iterable
from importlib import metadata as package_metadata
from pathlib import Path, PurePosixPath

import safetensors

from shared.config.plan import TrainingPlan
from shared.config.spec import TrainingConfig
from shared.datasets.layout import DatasetLayout, Subset
from worker.training.model_hashes import ModelHashes

# sd-scripts' defaults for options lorabake does not offer (train_util.py / train_network.py argparse).
SD_SCRIPTS_DEFAULTS: dict[str, object] = {
    "ss_num_validation_images": 0,
    "ss_network_dropout": None,
    "ss_full_fp16": False,
    "ss_lowram": False,
    "ss_multires_noise_iterations": None,
    "ss_multires_noise_discount": 0.3,
    "ss_zero_terminal_snr": False,
    "ss_face_crop_aug_range": None,
    "ss_scale_weight_norms": None,
    "ss_ip_noise_gamma": None,
    "ss_debiased_estimation": False,
    "ss_noise_offset_random_strength": False,
    "ss_ip_noise_gamma_random_strength": False,
    "ss_loss_type": "l2",
    "ss_huber_schedule": "snr",
    "ss_huber_scale": 1.0,
    "ss_huber_c": 0.1,
    "ss_fp8_base": False,
    "ss_fp8_base_unet": False,
    "ss_validation_seed": None,
    "ss_validation_split": 0.0,
    "ss_max_validation_steps": None,
    "ss_validate_every_n_epochs": None,
    "ss_validate_every_n_steps": None,
    "ss_resize_interpolation": None,
}


def lorabake_version() -> str:
    """What wrote the file, where sd-scripts puts its commit (ss_sd_scripts_commit_hash,
    modelspec.implementation_version = "sd-scripts/<commit>")."""
    try:
        return "lorabake/" + package_metadata.version("lorabake")
    except package_metadata.PackageNotFoundError:
        return "lorabake/unknown"


def new_session_id() -> int:
    """sd-scripts' ss_session_id: random.randint(0, 2**32), once per training launch (a resumed run is a new
    launch there too), shared by all the files of that launch."""
    return random.SystemRandom().randint(0, 2**32)


def trigger_words(config: TrainingConfig, layout: DatasetLayout | None = None) -> list[str]:
    """The words that call the LoRA up: the triggers of the training folders (`N_trigger class`), else the
    job's trigger_word (flat layouts), in folder order, each once."""
    found = [s.trigger for s in layout.train_subsets if s.trigger] if layout is not None else []
    if not found and config.trigger_word:
        found = [config.trigger_word]
    return list(dict.fromkeys(found))


def training_comment(triggers: list[str]) -> str | None:
    """ss_training_comment (sd-scripts' --training_comment): the trigger words, where A1111's and civitai's
    metadata views and the kohya_ss GUI show the comment; None (written "None") without triggers."""
    return ", ".join(triggers) if triggers else None


def model_hash_metadata(hashes: ModelHashes | None) -> dict[str, str]:
    """ss_sd_model_hash (A1111's old 8-hex model hash) and ss_new_sd_model_hash (sha256, 64 hex): see
    worker/training/model_hashes.py. sd-scripts writes them only for a base model on disk."""
    if hashes is None:
        return {}
    return {"ss_sd_model_hash": hashes.legacy, "ss_new_sd_model_hash": hashes.sha256}


def datasets_metadata(
    config: TrainingConfig,
    plan: TrainingPlan,
    layout: DatasetLayout,
    dataset_dir: Path,
    tag_freq: dict[str, dict[str, int]],
) -> list[dict[str, object]]:
    """sd-scripts' ss_datasets (written by its dataset-config path): one DreamBooth-style dataset, its
    subsets in folder order. Image counts include repeats, as sd-scripts counts num_train_images."""
    bucketed = config.enable_bucket
    subsets = [
        {
            "img_count": len(s.images),
            "num_repeats": s.repeats,
            "color_aug": False,
            "flip_aug": config.flip_aug,
            "random_crop": False,
            "shuffle_caption": config.shuffle_caption,
            "keep_tokens": config.keep_tokens,
            "keep_tokens_separator": config.keep_tokens_separator or "",
            "secondary_separator": None,
            "enable_wildcard": False,
            "caption_prefix": config.caption_prefix,
            "caption_suffix": config.caption_suffix,
            "resize_interpolation": None,
            "image_dir": folder_name(s, dataset_dir),
            "class_tokens": s.default_caption or None,
            "is_reg": s.is_reg,
        }
        for s in (*layout.train_subsets, *layout.reg_subsets)
    ]
    return [
        {
            "is_dreambooth": True,
            "batch_size_per_device": config.batch_size,
            "num_train_images": repeated_images(plan, reg=False),
            "num_reg_images": repeated_images(plan, reg=True),
            "resolution": [config.resolution, config.resolution],
            "enable_bucket": bucketed,
            "min_bucket_reso": config.min_bucket_reso if bucketed else None,
            "max_bucket_reso": config.max_bucket_reso if bucketed else None,
            "tag_frequency": tag_freq,
            "bucket_info": bucket_info(plan) if bucketed else None,
            "resize_interpolation": None,
            "subsets": subsets,
        }
    ]


def repeated_images(plan: TrainingPlan, *, reg: bool) -> int:
    """sd-scripts' num_train_images / num_reg_images: each subset's images times its repeats."""
    return sum(s.images * s.repeats for s in plan.subsets if s.is_reg == reg)


def bucket_info(plan: TrainingPlan) -> dict[str, object]:
    """sd-scripts' bucket_info: per bucket its resolution and sample count (repeats included)."""
    return {
        "buckets": {
            i: {"resolution": (b.width, b.height), "count": b.samples} for i, b in enumerate(plan.buckets)
        }
    }


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
    session_id: int | None = None,
    layout: DatasetLayout | None = None,
    dataset_dir: Path | None = None,
    model_hashes: ModelHashes | None = None,
) -> dict[str, str]:
    """The run-wide ss_* and modelspec.* metadata, rendered as Kohya does (str() of each value); per file:
    file_metadata. family: the base model's ("sd1", "sd2", "sdxl"); v_parameterization: the trained target.
    session_id: one per launch (new_session_id() when None); layout + dataset_dir: for ss_datasets and the
    trigger words; model_hashes: the base model's (model_hashes.base_model_hashes)."""
    triggers = trigger_words(config, layout)
    values: dict[str, object] = {
        "ss_session_id": new_session_id() if session_id is None else session_id,
        # LoHa / LoKr / DoRA: LyCORIS' module; its ss_network_args are written with the file (lycoris_network)
        "ss_network_module": "lycoris.kohya" if config.uses_lycoris else "networks.lora",
        "ss_network_dim": config.network_dim,
        "ss_network_alpha": float(config.network_alpha),
        "ss_base_model_version": base_model_version(family, v_parameterization),
        "ss_v2": family == "sd2",
        "ss_v_parameterization": v_parameterization,
        "ss_sd_model_name": PurePosixPath(config.base_model.replace("\\", "/")).name,
        "ss_output_name": config.output_name,
        "ss_training_started_at": started_at,
        "ss_num_train_images": repeated_images(plan, reg=False),
        "ss_num_reg_images": repeated_images(plan, reg=True),
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
        "ss_training_comment": training_comment(triggers),
        "ss_sd_scripts_commit_hash": lorabake_version(),
        **SD_SCRIPTS_DEFAULTS,
    }
    if layout is not None and dataset_dir is not None:
        values["ss_datasets"] = json.dumps(datasets_metadata(config, plan, layout, dataset_dir, tag_freq))
    rendered = {k: str(v) for k, v in values.items()}
    rendered.update(model_hash_metadata(model_hashes))
    rendered.update(
        modelspec_metadata(config, family=family, v_parameterization=v_parameterization, triggers=triggers)
    )
    return rendered


def data_metadata(config: TrainingConfig, plan: TrainingPlan) -> dict[str, object]:
    """Kohya's bucket and caption ss_* keys (train_network.py); min/max bucket reso and bucket info are None
    without bucketing, as Kohya writes them. Bucket counts include repeats (Kohya's bucket_info)."""
    bucketed = config.enable_bucket
    info = bucket_info(plan)
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
    if family not in ("sd1", "sd2"):
        return family  # flux1, as sd-scripts' flux trainer writes it
    return ("sd_v2" if family == "sd2" else "sd_v1") + ("_v" if v_parameterization else "")


# Stability AI's ModelSpec keys as sd-scripts (library/sai_model_spec.py) writes them for a LoRA.
MODELSPEC_VERSION = "1.0.1"
_ARCHITECTURES = {"sd1": "stable-diffusion-v1", "sdxl": "stable-diffusion-xl-v1-base"}


def modelspec_metadata(
    config: TrainingConfig, *, family: str, v_parameterization: bool, triggers: list[str] | None = None
) -> dict[str, str]:
    """modelspec.* for a LoRA (the date is per file: file_metadata). SD2 is "-768-v" when v-parameterized,
    "-512" otherwise; SDXL LoRAs name SAI's implementation, the others "diffusers" (as sd-scripts does).
    encoder_layer is the clip skip when set (sd-scripts); trigger_phrase the trigger words (triggers, else
    the job's trigger_word), where ModelSpec readers look for them."""
    if family == "sd2":
        arch = "stable-diffusion-v2-768-v" if v_parameterization else "stable-diffusion-v2-512"
    else:
        arch = _ARCHITECTURES.get(family, family)  # other families lay their own over it (families/)
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
    meta["modelspec.implementation_version"] = lorabake_version()
    if config.clip_skip is not None:
        meta["modelspec.encoder_layer"] = str(config.clip_skip)
    phrase = triggers if triggers else ([config.trigger_word] if config.trigger_word else [])
    if phrase:
        meta["modelspec.trigger_phrase"] = ", ".join(phrase)
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
        "ss_fp8_base": config.base_precision == "fp8",  # sd-scripts' --fp8_base (int8 / nf4: it has none)
    }
    if config.optimizer == "Adafactor" and (
        config.optimizer_args.get("relative_step") or config.optimizer_args.get("warmup_init")
    ):
        values["ss_lr_scheduler"] = f"adafactor:{config.unet_lr}"  # Kohya's get_optimizer renames it so
    out = {k: str(v) for k, v in values.items()}
    if config.conv_dim is not None and not config.uses_lycoris:
        conv_alpha = config.conv_alpha if config.conv_alpha is not None else 1.0
        out["ss_network_args"] = json.dumps({"conv_dim": str(config.conv_dim), "conv_alpha": str(conv_alpha)})
    return out
