"""sd-scripts' own TOML files read into TrainingConfig fields, beside the kohya_ss GUI JSON (kohya_import.py).

- The training TOML (`train_network.py --config_file`): sd-scripts' read_config_from_file ignores section
  names and merges every section's keys into one namespace, so keys are argparse names (a key set again in a
  later section wins). Keys that kohya_ss's JSON shares go through the same table (import_common.DATA_FIELDS).
- The dataset TOML (`--dataset_config`): [general], [[datasets]], [[datasets.subsets]]; a subset's value
  falls back to its dataset, then [general], then the training arguments, then sd-scripts' default (as
  config_util's BlueprintGenerator does). Folders on the user's disk (image_dir) become the dataset zip's
  `img/N_trigger class/` and `reg/N_class/` folder names, told in the notes.

Every key lands in `mapped`, `ignored` (with why) or `unsupported` (with the value and why); a value of the
wrong TOML type, or a file that is not TOML, is a 422 naming the file and the key or line. Where a file
leaves a setting out and sd-scripts' default differs from ours, sd-scripts' default is set (with a note),
so the config trains what sd-scripts would have. Pure: no torch.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from shared.config.flux_import import (
    CHROMA_DIFFERING_DEFAULTS,
    DIFFERING_DEFAULTS,
    FLUX_SCRIPT,
    LORA_FLUX,
    import_flux_keys,
    names_flux_model,
    put_lora_flux_args,
)
from shared.config.import_common import (
    DATA_FIELDS,
    MISSING,
    OPTIMIZERS,
    SCHEDULERS,
    ImportResult,
    Reader,
    always_ignored,
    boolean,
    integer,
    is_default_timestep,
    is_off,
    number,
    put_base_model,
    put_lycoris_algo,
    put_lycoris_option,
    put_optimizer_args,
    put_resolution,
    reasons,
    text,
    validate,
)
from shared.config.sample_prompts import normalize_sampler
from shared.datasets.layout import MAX_REPEATS, split_tokens
from shared.errors import LorabakeError

CONFIG_FILE = "config_toml"
LYCORIS_MODULE = "lycoris.kohya"  # LyCORIS' sd-scripts network module
DATASET_FILE = "dataset_toml"
ERROR_CODE = "invalid_sd_scripts_config"
SCRIPTS = ("train_network", "sdxl_train_network", FLUX_SCRIPT)
DEFAULT_LEARNING_RATE = 2e-6  # sd-scripts' --learning_rate default

PATH_REASON, OUTPUT_PATH_REASON, MACHINE_REASON, TRACKING_REASON = reasons("sd-scripts")
SPEED_REASON = "a speed/memory option of sd-scripts; the lorabake worker decides it"


def _names(words: str) -> list[str]:
    return words.split()


# --- the training TOML's keys: sd-scripts' argparse options (train_network.py, sdxl_train_network.py) -------
# Kinds are checked before anything is mapped: TOML values are typed, and sd-scripts passes them on
# unconverted (argparse does not convert a namespace's values), so a string for a number is a broken file.
_BOOL = frozenset(
    _names(
        """v2 v_parameterization use_8bit_adam use_lion_optimizer fused_backward_pass gradient_checkpointing
    full_fp16 full_bf16 fp8_base fp8_base_unet noise_offset_random_strength
    ip_noise_gamma_random_strength zero_terminal_snr sample_at_first masked_loss shuffle_caption
    enable_wildcard color_aug flip_aug random_crop debug_dataset cache_latents cache_latents_to_disk
    enable_bucket bucket_no_upscale alpha_mask network_train_unet_only
    network_train_text_encoder_only dim_from_weights skip_until_initial_step
    scale_v_pred_loss_like_noise_pred debiased_estimation_loss weighted_captions no_metadata
    use_safetensors cache_text_encoder_outputs cache_text_encoder_outputs_to_disk"""
    )
)
_INT = frozenset(
    _names(
        """train_batch_size max_token_length max_train_steps max_train_epochs seed gradient_accumulation_steps
    clip_skip multires_noise_iterations min_timestep max_timestep sample_every_n_steps
    sample_every_n_epochs save_every_n_epochs save_every_n_steps save_n_epoch_ratio
    save_last_n_epochs save_last_n_steps keep_tokens min_bucket_reso max_bucket_reso
    bucket_reso_steps caption_dropout_every_n_epochs network_dim lr_scheduler_num_cycles
    token_warmup_min initial_epoch initial_step dataset_repeats validation_seed
    validate_every_n_steps validate_every_n_epochs max_validation_steps lr_scheduler_timescale
    vae_batch_size"""
    )
)
_FLOAT = frozenset(
    _names(
        """learning_rate max_grad_norm unet_lr network_alpha network_dropout scale_weight_norms noise_offset
    ip_noise_gamma multires_noise_discount adaptive_noise_scale huber_c huber_scale
    lr_scheduler_power prior_loss_weight caption_dropout_rate caption_tag_dropout_rate min_snr_gamma
    v_pred_like_loss token_warmup_step validation_split lr_scheduler_min_lr_ratio lr_warmup_steps
    lr_decay_steps"""
    )
)
_STR = frozenset(
    _names(
        """pretrained_model_name_or_path optimizer_type lr_scheduler lr_scheduler_type output_name
    save_precision mixed_precision save_model_as caption_extension caption_extention
    keep_tokens_separator caption_prefix caption_suffix caption_separator secondary_separator
    network_module network_weights sample_sampler sample_prompts loss_type huber_schedule vae resume
    train_data_dir reg_data_dir dataset_config in_json face_crop_aug_range resize_interpolation
    dataset_class conditioning_data_dir training_comment"""
    )
)
# flux_train_network.py's own options (flux_train_utils.add_flux_train_arguments, add_dit_training_arguments,
# --split_mode): type-checked always, known only to a FLUX import (flux_import.py reads them).
_FLUX_KINDS = {"clip_l": "str", "t5xxl": "str", "ae": "str", "controlnet_model_name_or_path": "str",
               "model_type": "str", "timestep_sampling": "str", "model_prediction_type": "str",
               "weighting_scheme": "str", "guidance_scale": "float", "sigmoid_scale": "float",
               "discrete_flow_shift": "float", "logit_mean": "float", "logit_std": "float",
               "mode_scale": "float", "t5xxl_max_token_length": "int", "blocks_to_swap": "int",
               "apply_t5_attn_mask": "bool", "split_mode": "bool",
               "cpu_offload_checkpointing": "bool"}  # fmt: skip
# nargs="*" options: a list of "key=value" strings (or one string with spaces)
_ARGS_LIST = frozenset({"optimizer_args", "lr_scheduler_args", "network_args", "base_weights"})

# Options read by neither lorabake nor the trained result's meaning: the machine, launcher, logs, uploads.
_SD_IGNORED: dict[str, str] = {
    **always_ignored("sd-scripts"),
    "config_file": "the training TOML itself",
    "output_config": "sd-scripts' 'write the config and exit' switch",
    "tokenizer_cache_dir": MACHINE_REASON,
    "torch_compile": MACHINE_REASON,
    "ddp_timeout": MACHINE_REASON,
    "ddp_gradient_as_bucket_view": MACHINE_REASON,
    "ddp_static_graph": MACHINE_REASON,
    "cpu_offload_checkpointing": SPEED_REASON,
    "fused_backward_pass": SPEED_REASON,
    "blocks_to_swap": SPEED_REASON,
    "disable_mmap_load_safetensors": SPEED_REASON,
    "cache_info": SPEED_REASON,
    "cache_text_encoder_outputs": SPEED_REASON + " (sd-scripts then needs network_train_unet_only)",
    "cache_text_encoder_outputs_to_disk": SPEED_REASON,
    "text_encoder_batch_size": SPEED_REASON,
    "no_half_vae": "the worker picks the VAE's precision",
    "log_prefix": TRACKING_REASON,
    "console_log_level": TRACKING_REASON,
    "console_log_file": TRACKING_REASON,
    "console_log_simple": TRACKING_REASON,
    "no_metadata": "lorabake always writes its training metadata into the .safetensors",
    "use_safetensors": "lorabake always writes .safetensors",
    "debug_dataset": "sd-scripts' mode that shows the dataset instead of training",
    "deepspeed": MACHINE_REASON,
    "zero_stage": MACHINE_REASON,
    "offload_optimizer_device": MACHINE_REASON,
    "offload_optimizer_nvme_path": MACHINE_REASON,
    "offload_param_device": MACHINE_REASON,
    "offload_param_nvme_path": MACHINE_REASON,
    "zero3_init_flag": MACHINE_REASON,
    "zero3_save_16bit_model": MACHINE_REASON,
    "fp16_master_weights_and_gradients": MACHINE_REASON,
    "cache_latents": "lorabake always caches the VAE latents (cache_latents_to_disk keeps them between runs)",
}
_METADATA_PREFIX = "metadata_"  # sai_model_spec's model-card fields (metadata_title, metadata_author, ...)
# Options lorabake does not have: fine only when off (False, 0, empty, or sd-scripts' default value).
_OFF_ONLY: dict[str, tuple[Any, str]] = {
    "noise_offset_random_strength": (False, "random noise-offset strength"),
    "ip_noise_gamma": (0, "input-perturbation noise"),
    "ip_noise_gamma_random_strength": (False, "input-perturbation noise"),
    "zero_terminal_snr": (False, "zero terminal SNR rescaling of the noise schedule"),
    "debiased_estimation_loss": (False, "debiased-estimation loss weighting"),
    "scale_v_pred_loss_like_noise_pred": (False, "v-prediction loss scaling"),
    "v_pred_like_loss": (0, "v-prediction-like loss"),
    "weighted_captions": (False, "(word:1.2) caption weighting"),
    "color_aug": (False, "color augmentation"),
    "random_crop": (False, "random crops"),
    "face_crop_aug_range": (None, "face-crop augmentation"),
    "enable_wildcard": (False, "caption wildcards"),
    "secondary_separator": (None, "a secondary caption separator"),
    "caption_separator": (",", "a caption separator other than ','"),
    "token_warmup_min": (1, "caption token warmup"),
    "token_warmup_step": (0, "caption token warmup"),
    "resize_interpolation": (None, "a chosen resize interpolation"),
    "network_dropout": (0, "dropout of the LoRA's neurons"),
    "network_weights": (None, "starting from an existing LoRA's weights"),
    "dim_from_weights": (False, "network_dim read from existing weights"),
    "scale_weight_norms": (0, "max-norm regularization of the LoRA weights"),
    "base_weights": (None, "merging other LoRAs into the base model first"),
    "base_weights_multiplier": (None, "merging other LoRAs into the base model first"),
    "lr_decay_steps": (0, "a decay phase (warmup-stable-decay)"),
    "lr_scheduler_type": (None, "custom scheduler classes"),
    "lr_scheduler_args": (None, "scheduler arguments"),
    "lr_scheduler_timescale": (None, "the inverse-sqrt scheduler"),
    "lr_scheduler_min_lr_ratio": (None, "a minimum learning-rate ratio"),
    "save_n_epoch_ratio": (None, "saving by epoch ratio (use save_every_n_epochs)"),
    "full_fp16": (False, "lorabake keeps the trained LoRA weights in fp32 (mixed precision)"),
    "full_bf16": (False, "lorabake keeps the trained LoRA weights in fp32 (mixed precision)"),
    "fp8_base_unet": (False, "fp8 for the denoiser alone: lorabake's fp8_base stores T5-XXL in fp8 too"),
    "vae": (None, "a separate VAE; the base model's VAE is used"),
    "resume": (None, "an sd-scripts state folder; lorabake resumes its own jobs"),
    "initial_epoch": (None, "starting at a later epoch; lorabake resumes its own jobs"),
    "initial_step": (None, "starting at a later step; lorabake resumes its own jobs"),
    "skip_until_initial_step": (False, "starting at a later step; lorabake resumes its own jobs"),
    "in_json": (None, "fine-tuning captions from a metadata JSON; put caption files beside the images"),
    "dataset_class": (None, "a custom dataset class"),
    "conditioning_data_dir": (
        None,
        "a folder of mask/conditioning images; for masked_loss put each mask beside its image as "
        "NAME_mask.png in the zip",
    ),
    "validation_split": (0, "a validation split"),
    "validate_every_n_steps": (None, "validation"),
    "validate_every_n_epochs": (None, "validation"),
    "max_validation_steps": (None, "validation"),
    "validation_seed": (None, "validation"),
    "network_train_text_encoder_only": (
        False,
        "training the text encoder only; lorabake always trains the UNet",
    ),
}
_KNOWN = _BOOL | _INT | _FLOAT | _STR | _ARGS_LIST | {"text_encoder_lr", "resolution"} | set(_SD_IGNORED)
_KNOWN |= set(_OFF_ONLY) | {"base_weights_multiplier", "multires_noise_discount"}

# sd-scripts' defaults that differ from TrainingConfig's, set when neither file gives the setting.
_SD_DEFAULTS: dict[str, Any] = {
    "mixed_precision": "no",  # --mixed_precision default: fp32 training
    "save_precision": "float",  # no --save_precision: the LoRA is saved as trained (fp32)
    "network_dim": 4,  # networks.lora's default rank
    "network_alpha": 1.0,  # --network_alpha default
    "enable_bucket": False,  # bucketing is off unless enable_bucket is given
    "caption_extension": ".caption",  # sd-scripts' caption file extension default
    "v_parameterization": False,  # no --v_parameterization: the noise (epsilon) target
    "save_every_n_epochs": None,  # no --save_every_n_epochs: only the final LoRA
}
_SD_DATASET_DEFAULTS = {k: _SD_DEFAULTS[k] for k in ("enable_bucket", "caption_extension")}

# --- the dataset TOML's schema (library/config_util.py's ConfigSanitizer) -----------------------------------
_SUBSET_KINDS: dict[str, str] = {
    "color_aug": "bool", "face_crop_aug_range": "pair", "flip_aug": "bool", "num_repeats": "int",
    "random_crop": "bool", "shuffle_caption": "bool", "keep_tokens": "int", "keep_tokens_separator": "str",
    "secondary_separator": "str", "caption_separator": "str", "enable_wildcard": "bool",
    "token_warmup_min": "int", "token_warmup_step": "float", "caption_prefix": "str", "caption_suffix": "str",
    "custom_attributes": "table", "resize_interpolation": "str", "caption_dropout_every_n_epochs": "int",
    "caption_dropout_rate": "float", "caption_tag_dropout_rate": "float", "caption_extension": "str",
    "class_tokens": "str", "cache_info": "bool",
}  # fmt: skip
_SUBSET_ONLY_KINDS = {"image_dir": "str", "is_reg": "bool", "alpha_mask": "bool", "metadata_file": "str",
                      "conditioning_data_dir": "str"}  # fmt: skip
_DATASET_KINDS = {"batch_size": "int", "bucket_no_upscale": "bool", "bucket_reso_steps": "int",
                  "enable_bucket": "bool", "max_bucket_reso": "int", "min_bucket_reso": "int",
                  "validation_seed": "int", "validation_split": "float", "resolution": "resolution",
                  "network_multiplier": "float"}  # fmt: skip
# Subset values lorabake applies to every image: (TOML key, field, training-TOML key, sd-scripts default).
_SUBSET_FIELDS: tuple[tuple[str, str, str, Any], ...] = (
    ("shuffle_caption", "shuffle_caption", "shuffle_caption", False),
    ("keep_tokens", "keep_tokens", "keep_tokens", 0),
    ("keep_tokens_separator", "keep_tokens_separator", "keep_tokens_separator", ""),
    ("caption_prefix", "caption_prefix", "caption_prefix", None),
    ("caption_suffix", "caption_suffix", "caption_suffix", None),
    ("caption_extension", "caption_extension", "caption_extension", ".caption"),
    ("flip_aug", "flip_aug", "flip_aug", False),
    ("alpha_mask", "alpha_mask", "alpha_mask", False),
    ("caption_dropout_rate", "caption_dropout_rate", "caption_dropout_rate", 0.0),
    ("caption_dropout_every_n_epochs", "caption_dropout_every_n_epochs", "caption_dropout_every_n_epochs", 0),
    ("caption_tag_dropout_rate", "caption_tag_dropout_rate", "caption_tag_dropout_rate", 0.0),
)
_DATASET_FIELDS: tuple[tuple[str, str, str, Any], ...] = (
    ("batch_size", "batch_size", "train_batch_size", 1),
    ("enable_bucket", "enable_bucket", "enable_bucket", False),
    ("min_bucket_reso", "min_bucket_reso", "min_bucket_reso", 256),
    ("max_bucket_reso", "max_bucket_reso", "max_bucket_reso", 1024),
    ("bucket_reso_steps", "bucket_reso_steps", "bucket_reso_steps", 64),
    ("bucket_no_upscale", "bucket_no_upscale", "bucket_no_upscale", False),
    ("resolution", "resolution", "resolution", None),
)
_LAYOUT_REASON = "lorabake reads it from the dataset zip's folder names instead (see the notes)"


# --- parsing and type checks --------------------------------------------------------------------------------


def _bad(field: str, message: str) -> LorabakeError:
    return LorabakeError(
        f"{field}: {message}",
        code=ERROR_CODE,
        details={"fields": [{"field": field, "message": message}]},
        status_code=422,
    )


def parse_toml(source: str, field: str) -> dict[str, Any]:
    """The TOML document; malformed TOML is a 422 naming `field` and the line."""
    try:
        return tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(exc))
        at = f"line {where.group(1)}, column {where.group(2)}" if where else "the end of the file"
        raise _bad(field, f"not valid TOML at {at}: {reason}") from exc


def _kind_error(value: Any, kind: str) -> str | None:
    """Why `value` is not of `kind`, or None when it is."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": is_number,
        "str": isinstance(value, str),
        "table": isinstance(value, dict),
        "args": isinstance(value, str)
        or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
        "pair": isinstance(value, list)
        and len(value) == 2
        and all(_kind_error(v, "float") is None for v in value),
        "resolution": (isinstance(value, int) and not isinstance(value, bool))
        or (
            isinstance(value, list) and len(value) == 2 and all(_kind_error(v, "int") is None for v in value)
        ),
        "str_or_int": isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)),
        "lrs": is_number or (isinstance(value, list) and all(_kind_error(v, "float") is None for v in value)),
        "floats": isinstance(value, list) and all(_kind_error(v, "float") is None for v in value),
    }[kind]
    if ok:
        return None
    wanted = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "a string",
              "table": "a table", "args": "a list of 'key=value' strings", "pair": "a pair of numbers",
              "resolution": "a number or [width, height]", "str_or_int": "'width,height' or a number",
              "lrs": "a number or a list of numbers", "floats": "a list of numbers"}[kind]  # fmt: skip
    return f"expected {wanted}, got {value!r} ({_toml_type(value)})"


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {int: "integer", float: "float", str: "string", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )


def _arg_kind(key: str) -> str | None:
    if key in _BOOL:
        return "bool"
    if key in _INT:
        return "int"
    if key in _FLOAT:
        return "float"
    if key in _STR:
        return "str"
    if key in _ARGS_LIST:
        return "args"
    kinds = {"text_encoder_lr": "lrs", "resolution": "str_or_int", "base_weights_multiplier": "floats"}
    return kinds.get(key) or _FLUX_KINDS.get(key)


def flatten_config(doc: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """read_config_from_file's namespace: top-level keys and every section's keys in one dict (a later one
    wins). Also returns (section.key, section) of each value a later section replaced."""
    flat: dict[str, Any] = {}
    where: dict[str, str] = {}
    replaced: list[tuple[str, str]] = []
    for section, body in doc.items():
        items = body.items() if isinstance(body, dict) else [(section, body)]
        for key, value in items:
            if key in flat:
                replaced.append((f"{where[key]}.{key}" if where[key] else key, section))
            flat[key] = value
            where[key] = section if isinstance(body, dict) else ""
    for key, value in flat.items():
        kind = _arg_kind(key)
        if kind is not None and (problem := _kind_error(value, kind)):
            raise _bad(f"{CONFIG_FILE}.{key}", problem)
    return flat, replaced


def flatten_dataset(doc: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The dataset TOML's values by dotted path ("general.flip_aug", "datasets.0.subsets.1.num_repeats"),
    types checked, and (path, why) of the keys sd-scripts' schema does not have where they are."""
    flat: dict[str, Any] = {}
    misplaced: list[tuple[str, str]] = []
    for key, value in doc.items():
        if key == "general" and isinstance(value, dict):
            _table(flat, misplaced, "general", value, {**_DATASET_KINDS, **_SUBSET_KINDS}, "[general]")
        elif key == "datasets" and isinstance(value, list) and all(isinstance(d, dict) for d in value):
            for di, dataset in enumerate(value):
                kinds = {**_DATASET_KINDS, **_SUBSET_KINDS}
                _table(flat, misplaced, f"datasets.{di}", dataset, kinds, "[[datasets]]", nested="subsets")
                subsets = dataset.get("subsets", [])
                if not isinstance(subsets, list) or not all(isinstance(s, dict) for s in subsets):
                    raise _bad(
                        f"{DATASET_FILE}.datasets.{di}.subsets", "expected [[datasets.subsets]] tables"
                    )
                for si, subset in enumerate(subsets):
                    kinds = {**_SUBSET_KINDS, **_SUBSET_ONLY_KINDS}
                    _table(
                        flat, misplaced, f"datasets.{di}.subsets.{si}", subset, kinds, "[[datasets.subsets]]"
                    )
        elif key in ("general", "datasets"):
            raise _bad(
                f"{DATASET_FILE}.{key}",
                f"expected {'a [general] table' if key == 'general' else '[[datasets]] tables'}",
            )
        else:
            flat[key] = value
            misplaced.append((key, "sd-scripts' dataset config has only [general] and [[datasets]]"))
    return flat, misplaced


def _table(
    flat: dict[str, Any],
    misplaced: list[tuple[str, str]],
    prefix: str,
    table: dict[str, Any],
    kinds: dict[str, str],
    name: str,
    nested: str | None = None,
) -> None:
    for key, value in table.items():
        if key == nested:
            continue
        path = f"{prefix}.{key}"
        flat[path] = value
        if key not in kinds:
            misplaced.append(
                (path, f"sd-scripts' dataset schema has no {key!r} in {name} (it refuses the file)")
            )
        elif problem := _kind_error(value, kinds[key]):
            raise _bad(f"{DATASET_FILE}.{path}", problem)


# --- the import ---------------------------------------------------------------------------------------------


def import_sd_scripts_config(
    config_toml: str | None, dataset_toml: str | None = None, script: str | None = None
) -> ImportResult:
    """Reads sd-scripts' training TOML and/or dataset TOML; `script` (train_network / sdxl_train_network /
    flux_train_network) says which script they were for, which is how sd-scripts tells SDXL apart (no key says
    it). FLUX.1 is also read from network_module networks.lora_flux or a FLUX model file's name."""
    if config_toml is None and dataset_toml is None:
        raise _bad(CONFIG_FILE, "give config_toml, dataset_toml or both")
    script = script.removesuffix(".py") if script is not None else None  # "" is no script: refused
    if script is not None and script not in SCRIPTS:
        raise _bad("script", f"expected one of {', '.join(SCRIPTS)}, got {script!r}")
    args, replaced = (
        flatten_config(parse_toml(config_toml, CONFIG_FILE)) if config_toml is not None else ({}, [])
    )
    dataset_doc = parse_toml(dataset_toml, DATASET_FILE) if dataset_toml is not None else None
    dataset, misplaced = flatten_dataset(dataset_doc) if dataset_doc is not None else ({}, [])
    r = Reader({**args, **dataset}, error_code=ERROR_CODE)
    for path, section in replaced:
        r.result.ignored.append(
            {"key": path, "reason": f"[{section}] sets it again; sd-scripts keeps the last"}
        )
    for path, why in misplaced:
        r.unsupported(path, dataset[path], why)
    if dataset_doc is not None:
        _dataset(r, dataset_doc)
    elif not is_off(r.get("dataset_config")):
        r.unsupported(
            "dataset_config", r.get("dataset_config"), "send the dataset TOML's text as dataset_toml"
        )
    r.ignore("dataset_config", "the dataset TOML is given as dataset_toml")
    flux = config_toml is not None and _is_flux(r, script)
    if config_toml is not None:  # a dataset TOML alone says nothing of the model, rates or length
        if flux:
            import_flux_keys(r, kohya=False)  # sets aside the SD-only keys flux_train_network.py ignores
        _model(r, script, flux)
        _length(r)
        _learning_rates(r, flux)
        _scheduler(r)
        _optimizer(r)
        _network(r, flux)
    _noise_and_loss(r)
    _saving(r)
    _data(r)
    _sampling(r)
    _rest(r, set(args), f"{FLUX_SCRIPT if flux else 'train_network'}.py")
    defaults = _SD_DEFAULTS if config_toml is not None else _SD_DATASET_DEFAULTS
    if flux:  # no v_parameterization for a flow model; FLUX's own defaults where they differ from ours
        chroma = r.config.get("model_family") == "chroma"
        differing = CHROMA_DIFFERING_DEFAULTS if chroma else DIFFERING_DEFAULTS
        defaults = {**{k: v for k, v in defaults.items() if k != "v_parameterization"}, **differing}
    _sd_defaults(r, defaults)
    validate(r)
    return r.result


def _is_flux(r: Reader, script: str | None) -> bool:
    """FLUX.1: the script says so, or (no script) network_module lora_flux or a FLUX model file's name."""
    if script is not None:
        return script == FLUX_SCRIPT
    return r.get("network_module") == LORA_FLUX or names_flux_model(r.get("pretrained_model_name_or_path"))


def _model(r: Reader, script: str | None, flux: bool) -> None:
    if r.has("pretrained_model_name_or_path"):
        put_base_model(r, "pretrained_model_name_or_path")
    else:
        r.note("base_model: the files name no pretrained_model_name_or_path; set base_model")
    if flux:
        source = "script" if script is not None else "network_module"
        if script is None and r.get("network_module") != LORA_FLUX:
            source = "pretrained_model_name_or_path"
            r.note("model_family flux1: the model file's name says FLUX (give script flux_train_network)")
        if r.config.get("model_family") == "chroma":  # flux_import read model_type chroma
            r.used(source, "model_family")
            return
        r.config["model_family"] = "flux1"
        r.source["model_family"] = source
        r.used(source, "model_family")
        return
    v2 = r.get("v2") is True
    if script == "sdxl_train_network":
        family = "sdxl"
        if v2:
            r.unsupported("v2", True, "v2 with sdxl_train_network.py; SDXL is used")
    elif script == "train_network" or v2:
        family = "sd2" if v2 else "sd1"
    else:
        family = None
        r.note(
            "model_family stays 'auto' (read from the base model): sd-scripts tells SDXL apart by the script "
            "(sdxl_train_network.py), which no key names; give script to set it"
        )
    if family is not None:
        r.config["model_family"] = family
        r.source["model_family"] = "v2" if r.has("v2") else "script"
        r.used("v2", "model_family")
    r.ignore("v2", "false: SD1.x")
    r.direct("v_parameterization", "v_parameterization", boolean)


def _length(r: Reader) -> None:
    epochs = r.get("max_train_epochs")
    if epochs is not None:
        r.direct("max_train_epochs", "epochs", integer)
        r.ignore("max_train_steps", "max_train_epochs is set, and it wins over max_train_steps in sd-scripts")
    elif r.has("max_train_steps"):
        r.unsupported(
            "max_train_steps",
            r.get("max_train_steps"),
            "lorabake trains whole epochs (set epochs); it has no step limit that stops inside an epoch",
        )
    else:
        r.note(
            "no max_train_epochs: sd-scripts would train max_train_steps' default of 1600 steps; lorabake "
            "trains whole epochs, so set epochs (a preset can choose it)"
        )


def _learning_rates(r: Reader, flux: bool) -> None:
    base = r.get("learning_rate", DEFAULT_LEARNING_RATE)
    unet = r.get("unet_lr")
    te = r.get("text_encoder_lr")
    if isinstance(te, list):  # one per text encoder (SDXL has two); sd-scripts uses the first for both
        if len(set(te)) > 1 and not flux:  # FLUX: [CLIP-L, T5-XXL], T5's used only with train_t5xxl
            r.unsupported(
                "text_encoder_lr", te, "one rate per text encoder; lorabake has one text_encoder_lr"
            )
            te = MISSING
        else:
            if len(set(te)) > 1:
                r.note(f"text_encoder_lr {te}: the first is CLIP-L's; T5-XXL's is read only with train_t5xxl")
            te = te[0] if te else None
    unet_rate = unet if unet is not None else base
    if unet_rate == 0:
        r.unsupported(
            "unet_lr" if unet is not None else "learning_rate",
            unet_rate,
            "0 trains no UNet; lorabake always trains the UNet",
        )
    else:
        r.put("unet_lr", float(unet_rate), "unet_lr" if unet is not None else "learning_rate")
    if r.get("network_train_unet_only") is True:
        r.put("text_encoder_lr", 0.0, "network_train_unet_only")
        r.ignore("text_encoder_lr", "network_train_unet_only is set: the text encoder is not trained")
    elif te is not MISSING:
        source = "text_encoder_lr" if te is not None else "learning_rate"
        r.put("text_encoder_lr", float(te if te is not None else base), source)
    if flux and r.has("network_train_unet_only"):  # FLUX's field: lorabake's default differs (true)
        r.put("network_train_unet_only", r.get("network_train_unet_only"), "network_train_unet_only")
    r.ignore("network_train_unet_only", "false: the text encoder is trained too")
    if unet is not None and (te is not None or r.get("network_train_unet_only") is True):
        r.ignore("learning_rate", "unet_lr/text_encoder_lr are set, so sd-scripts does not use learning_rate")
    elif not r.has("learning_rate"):
        r.note(
            f"no learning_rate: sd-scripts' default {DEFAULT_LEARNING_RATE:g} is used where no rate is set"
        )


def _scheduler(r: Reader) -> None:
    name = r.get("lr_scheduler", "constant")
    if name in SCHEDULERS:
        r.direct("lr_scheduler", "lr_scheduler", text)
    else:
        r.unsupported("lr_scheduler", name, f"lorabake's schedulers are {', '.join(sorted(SCHEDULERS))}")
    warmup = r.get("lr_warmup_steps", 0)
    if warmup and name == "constant":
        r.unsupported(
            "lr_warmup_steps",
            warmup,
            "sd-scripts refuses warmup with the constant scheduler; use constant_with_warmup",
        )
    else:
        # steps (>= 1) or a ratio (< 1) as sd-scripts' int_or_float; TrainingConfig refuses 1.5 steps
        r.direct("lr_warmup_steps", "lr_warmup_steps", lambda v: v)
    if name == "cosine_with_restarts":
        r.direct("lr_scheduler_num_cycles", "lr_scheduler_num_cycles", integer)
    r.ignore("lr_scheduler_num_cycles", "used only by cosine_with_restarts")
    if name == "polynomial":
        r.direct("lr_scheduler_power", "lr_scheduler_power", number)
    r.ignore("lr_scheduler_power", "used only by the polynomial scheduler")


def _optimizer(r: Reader) -> None:
    raw = r.get("optimizer_type", "")
    key = "optimizer_type"
    if not raw and r.get("use_8bit_adam") is True:  # sd-scripts' older switches, used when no type is named
        raw, key = "AdamW8bit", "use_8bit_adam"
    elif not raw and r.get("use_lion_optimizer") is True:
        raw, key = "Lion", "use_lion_optimizer"
    optimizer = OPTIMIZERS.get(raw.lower()) if raw else "AdamW"
    if optimizer is None:
        r.unsupported(key, raw, f"lorabake's optimizers are {', '.join(OPTIMIZERS.values())}")
        r.note(
            f"optimizer {raw!r} is not carried over, so the config trains with AdamW (our default): check "
            "unet_lr / text_encoder_lr, which were chosen for the other optimizer"
        )
        optimizer = "AdamW"
    elif raw:
        r.put("optimizer", optimizer, key)
    for other in ("use_8bit_adam", "use_lion_optimizer"):
        if r.get(other) is True and other != key:
            r.unsupported(other, True, "another optimizer is named too (sd-scripts refuses both)")
        r.ignore(other, "off")
    r.ignore("optimizer_type", "empty: sd-scripts' default AdamW")
    put_optimizer_args(r, "optimizer_args", optimizer)


def _network(r: Reader, flux: bool) -> None:
    module = r.get("network_module")
    lora_flux = flux and module in (None, LORA_FLUX)
    lora = not flux and module in (None, "networks.lora")
    lycoris = not flux and module == LYCORIS_MODULE
    if module is None:
        r.note(
            f"no network_module: {FLUX_SCRIPT}.py needs one; lorabake trains {LORA_FLUX}'s modules"
            if flux
            else "no network_module: train_network.py needs one; lorabake trains networks.lora (Kohya's LoRA)"
        )
    elif lora or lycoris or lora_flux:
        r.used("network_module")
    else:
        r.unsupported("network_module", module, _network_module_reason(module, flux))
    r.direct("network_dim", "network_dim", integer)
    r.direct("network_alpha", "network_alpha", number)
    raw = r.get("network_args")
    if is_off(raw):
        r.ignore("network_args", "empty")
        args: dict[str, str] = {}
    else:
        args = {}
        for token in raw.split() if isinstance(raw, str) else raw:
            name, sep, value = token.partition("=")
            name, value = name.strip(), value.strip().strip('"')
            if not sep or not name:
                r.unsupported("network_args", token, f"{token!r} is not key=value")
            else:
                args[name] = value
    if lora_flux:
        put_lora_flux_args(r, args, r.get("network_dim", 4))  # lora_flux's default rank is 4 too
        return
    network_type = "lora"
    if lycoris:  # LyCORIS' algo first: the other arguments depend on it
        found = put_lycoris_algo(r, "network_args.algo", args.pop("algo", None))
        if found is None:
            for name, value in args.items():
                r.unsupported(
                    f"network_args.{name}", value, "an argument of a network lorabake does not train"
                )
            return
        network_type = found
    for name, value in args.items():
        if not (lora or lycoris):
            r.unsupported(f"network_args.{name}", value, f"an argument of network_module {module!r}")
        elif name in ("conv_dim", "conv_alpha"):
            _conv_arg(r, name, value)
        elif lycoris:
            put_lycoris_option(r, f"network_args.{name}", name, value, network_type)
        else:
            r.unsupported(f"network_args.{name}", value, "a networks.lora option lorabake does not have")
    if lycoris and args:
        r.used("network_args", "network_type")  # read whole, even where each entry was only a note


def _network_module_reason(module: str, flux: bool) -> str:
    if flux:
        return (
            f"FLUX.1 LoRAs are {LORA_FLUX}'s (what lorabake trains on FLUX.1); networks.lora finds no FLUX "
            "modules, and LyCORIS and OFT are not trained on FLUX.1"
        )
    if module == LORA_FLUX:
        return f"FLUX.1's network: give script {FLUX_SCRIPT}, the script that trains it"
    return (
        "lorabake trains Kohya's LoRA (networks.lora, with conv_dim for LoCon) and LyCORIS' "
        "(lycoris.kohya: loha, lokr, lora/locon, DoRA); DyLoRA, OFT and other networks are not trained"
    )


def _conv_arg(r: Reader, name: str, value: str) -> None:
    try:
        parsed = int(value) if name == "conv_dim" else float(value)
    except ValueError:
        r.unsupported(f"network_args.{name}", value, "expected a number")
        return
    r.put(name, parsed, "network_args")
    if name == "conv_dim":
        r.note(f"network_args conv_dim={value}: a LoCon (networks.lora also trains the 3x3 convolutions)")


def _noise_and_loss(r: Reader) -> None:
    for key, name in (("noise_offset", "noise_offset"), ("min_snr_gamma", "min_snr_gamma")):
        if r.has(key):  # sd-scripts tests them for truth: 0 is off
            r.put(name, r.get(key) or None, key)
    if r.get("adaptive_noise_scale"):
        r.direct("adaptive_noise_scale", "adaptive_noise_scale", number)
    r.ignore("adaptive_noise_scale", "0: off")
    iterations = r.get("multires_noise_iterations")
    if iterations:
        r.unsupported("multires_noise_iterations", iterations, "lorabake has the plain noise offset only")
    r.ignore("multires_noise_iterations", "0: off")
    r.ignore("multires_noise_discount", "used only with multires_noise_iterations")
    loss = r.get("loss_type", "l2")
    if loss != "l2":
        r.unsupported("loss_type", loss, "lorabake trains with the l2 (MSE) loss")
    r.ignore("loss_type", "l2 (MSE) is the loss lorabake trains with")
    for key in ("huber_schedule", "huber_c", "huber_scale"):
        r.ignore(key, "a Huber loss option; loss_type is l2" if loss == "l2" else f"loss_type {loss!r}")
    for key in ("min_timestep", "max_timestep"):
        if r.has(key) and is_default_timestep(key, r.get(key)):
            r.ignore(key, "sd-scripts' default range (all 1000 timesteps), as lorabake trains")
        elif r.has(key):
            r.unsupported(key, r.get(key), "lorabake trains on all 1000 timesteps")


def _saving(r: Reader) -> None:
    r.direct("mixed_precision", "mixed_precision", text)
    r.direct("save_precision", "save_precision", text)
    r.direct("fp8_base", "fp8_base", boolean)  # sd-scripts' name and meaning, FLUX.1's too
    r.optional("vae_batch_size", "vae_batch_size")
    for key in ("save_every_n_epochs", "save_every_n_steps", "save_last_n_epochs", "save_last_n_steps"):
        r.optional(key, key)  # 0 saves nothing extra in sd-scripts too
    fmt = r.get("save_model_as", "safetensors")
    if fmt != "safetensors":
        r.unsupported("save_model_as", fmt, "lorabake writes .safetensors only")
    r.ignore("save_model_as", "lorabake always writes .safetensors")
    r.direct("output_name", "output_name", text)


def _data(r: Reader) -> None:
    for key, name, reader in DATA_FIELDS:
        if key not in r.done:  # a dataset TOML value that wins has already accounted for it
            r.direct(key, name, reader)
    # sd-scripts still reads its old misspelling, and lets it win (prepare_dataset_args)
    if "caption_extension" not in r.done:
        key = "caption_extention" if r.has("caption_extention") else "caption_extension"
        r.direct(key, "caption_extension", text)
    r.ignore("caption_extension", "caption_extention (the old spelling) is set too, and wins in sd-scripts")
    r.ignore("caption_extention", "the dataset TOML's caption_extension wins")
    for key in ("keep_tokens_separator", "caption_prefix", "caption_suffix"):
        if key not in r.done and r.has(key):
            r.put(key, r.get(key) or None, key)
    if "resolution" not in r.done and r.has("resolution"):
        put_resolution(r, "resolution", r.get("resolution"))
    for key in ("clip_skip", "max_token_length", "seed"):  # set means passed, 0 included
        r.direct(key, key, integer)
    if not is_off(r.get("reg_data_dir")):
        r.note(
            "regularization images: put them in the dataset zip as reg/N_class/, beside img/N_trigger class/"
        )
    r.ignore("reg_data_dir", PATH_REASON)
    if not is_off(r.get("train_data_dir")):
        r.note(
            "train_data_dir's `N_trigger class` subfolders are what lorabake reads too: zip them as "
            "img/N_trigger class/ (a flat folder of images works as well)"
        )
    r.ignore("dataset_repeats", "used only with in_json (fine-tuning metadata)")


def _sampling(r: Reader) -> None:
    r.optional("sample_every_n_steps", "sample_every_n_steps")
    r.optional("sample_every_n_epochs", "sample_every_n_epochs")
    r.direct("sample_at_first", "sample_at_first", boolean)
    if r.has("sample_sampler"):
        try:
            r.put("sample_sampler", normalize_sampler(r.get("sample_sampler")), "sample_sampler")
        except ValueError as exc:
            r.unsupported("sample_sampler", r.get("sample_sampler"), str(exc))
    if not is_off(r.get("sample_prompts")):
        r.unsupported(
            "sample_prompts",
            r.get("sample_prompts"),
            "a prompt file on the sd-scripts machine; put its lines in sample_prompts",
        )
    r.ignore("sample_prompts", "empty")


def _rest(r: Reader, args: set[str], script: str) -> None:
    for key, reason in _SD_IGNORED.items():
        r.ignore(key, reason)
    for key, (off, what) in _OFF_ONLY.items():
        if key in r.done:  # FLUX's fp8 switches: flux_import
            continue
        value = r.get(key)
        if r.has(key) and not (is_off(value) or value == off):
            r.unsupported(key, value, f"not supported by lorabake: {what}")
        r.ignore(key, "off (sd-scripts' default)")
    for key in args:
        if key in r.done:
            continue
        value = r.get(key)
        if key.startswith(_METADATA_PREFIX):
            r.ignore(key, "model-card metadata of sd-scripts (modelspec); lorabake writes its own metadata")
        elif key not in _KNOWN:
            r.unsupported(key, value, f"not an option of sd-scripts' {script} (it would go unused)")
        elif is_off(value):
            r.ignore(key, "off or empty: nothing to carry over")
        else:
            r.unsupported(key, value, "lorabake has no equivalent setting")
    for key in r.data:
        if key not in r.done:  # a dataset TOML key no rule above took
            r.unsupported(key, r.get(key), "lorabake has no equivalent setting")


def _sd_defaults(r: Reader, defaults: dict[str, Any]) -> None:
    """Settings neither file gives, where sd-scripts' default differs from ours: sd-scripts' default."""
    applied = []
    for name, value in defaults.items():
        if name not in r.config and not any(u["key"] == r.source.get(name) for u in r.result.unsupported):
            r.config[name] = value
            r.source[name] = "(sd-scripts default)"
            applied.append(f"{name} {value!r}")
    if applied:
        r.note(
            "not in the files, so sd-scripts' defaults (which differ from lorabake's) are set: "
            + ", ".join(applied)
        )


# --- the dataset TOML ---------------------------------------------------------------------------------------


def _lookup(r: Reader, prefixes: list[str], key: str) -> tuple[Any, str] | None:
    """The (value, path) a subset or dataset gets for `key`: its own table first, then its parents'."""
    for prefix in prefixes:
        path = f"{prefix}.{key}"
        if path in r.data:
            return r.data[path], path
    return None


def _merge(
    r: Reader, units: list[list[str]], key: str, field: str, train_key: str, default: Any, level: str
) -> None:
    """One field lorabake has once, from the subsets' (or datasets') values: equal everywhere, or refused."""
    found = [_lookup(r, prefixes, key) for prefixes in units]
    paths = list(dict.fromkeys(f[1] for f in found if f is not None))
    if not paths:
        return  # the training TOML (or sd-scripts' default) decides
    fallback = r.get(train_key, default)
    values = [f[0] if f is not None else fallback for f in found]
    normal = [tuple(v) if isinstance(v, list) else v for v in values]
    if len(set(normal)) > 1:
        for path in paths:
            values_seen = ", ".join(sorted({repr(v) for v in values}))
            r.unsupported(
                path,
                r.data[path],
                f"lorabake has one {field} for every {level}; they differ here ({values_seen})",
            )
        return
    if field == "resolution":
        put_resolution(r, paths[0], values[0])
    else:
        r.put(field, values[0], paths[0])
    for path in paths[1:]:
        r.used(path, field)
    if all(f is not None for f in found):
        r.ignore(train_key, f"the dataset TOML sets {key} ({paths[0]}), which wins in sd-scripts")


def _dataset(r: Reader, doc: dict[str, Any]) -> None:
    datasets = [d for d in doc.get("datasets", []) if isinstance(d, dict)]
    dataset_units = [[f"datasets.{di}", "general"] for di in range(len(datasets))]
    subset_units = [
        [f"datasets.{di}.subsets.{si}", f"datasets.{di}", "general"]
        for di, d in enumerate(datasets)
        for si in range(len(d.get("subsets", [])))
    ]
    if not subset_units:
        r.note("the dataset TOML has no [[datasets.subsets]]: sd-scripts would find no images")
    for key, field, train_key, default in _DATASET_FIELDS:
        _merge(r, dataset_units, key, field, train_key, default, "dataset")
    for key, field, train_key, default in _SUBSET_FIELDS:
        _merge(r, subset_units, key, field, train_key, default, "subset")
    for path in [p for p in r.data if "." in p and p not in r.done]:
        key = path.rsplit(".", 1)[1]
        value = r.data[path]
        if key in ("metadata_file", "conditioning_data_dir"):
            r.unsupported(
                path,
                value,
                "fine-tuning (metadata JSON) and ControlNet subsets are not supported; for masked_loss put "
                "each mask beside its image as NAME_mask.png in the zip",
            )
        elif key in _OFF_ONLY and (value == _OFF_ONLY[key][0] or is_off(value)):
            r.ignore(path, "off")
        elif key in _OFF_ONLY:
            r.unsupported(path, value, f"not supported by lorabake: {_OFF_ONLY[key][1]}")
        elif key == "custom_attributes" and not value:
            r.ignore(path, "empty")
        elif key == "network_multiplier":
            if value != 1:
                r.unsupported(path, value, "lorabake trains with the LoRA at multiplier 1")
            r.ignore(path, "1: the LoRA's full strength, as lorabake trains")
        elif key in ("cache_info", "validation_seed"):
            r.ignore(path, SPEED_REASON if key == "cache_info" else "used only with a validation split")
    _layout(r, subset_units)


def _layout(r: Reader, units: list[list[str]]) -> None:
    """image_dir / num_repeats / class_tokens / is_reg: one training subset maps onto a flat zip's repeats,
    trigger and class; several become the zip's folder names, told in the notes."""
    subsets = [_subset(r, prefixes) for prefixes in units]
    if not subsets:
        return
    if all(s["is_reg"] for s in subsets):
        r.note("every subset is is_reg: there are no training images; add a training subset")
    if len(subsets) == 1 and not subsets[0]["is_reg"]:
        _flat(r, subsets[0])
        return
    r.note(
        "lorabake reads repeats, trigger and class from the dataset zip's folder names (img/N_trigger class/ "
        "for training images, reg/N_class/ for regularization images), not from a dataset TOML:"
    )
    for subset in subsets:
        folder = _folder(r, subset)
        if folder is None:
            continue
        where = f" (image_dir {subset['image_dir']!r})" if subset["image_dir"] else ""
        r.note(f"put {subset['prefix']}'s images{where} in a folder named `{folder}/`")
        for path in subset["paths"].values():
            own = path.startswith(subset["prefix"] + ".")
            r.ignore(path, f"becomes the zip folder `{folder}/`" if own else _LAYOUT_REASON)


def _subset(r: Reader, prefixes: list[str]) -> dict[str, Any]:
    """A subset's layout values (each from its table or a parent's) and the paths they came from."""
    found = {key: _lookup(r, prefixes if key in ("num_repeats", "class_tokens") else prefixes[:1], key)
             for key in ("num_repeats", "class_tokens", "is_reg", "image_dir")}  # fmt: skip
    value = {k: (f[0] if f is not None else None) for k, f in found.items()}
    repeats = value["num_repeats"] if value["num_repeats"] is not None else r.get("dataset_repeats", 1)
    return {
        "prefix": prefixes[0],
        "repeats": repeats,
        "tokens": value["class_tokens"],
        "is_reg": bool(value["is_reg"]),
        "image_dir": value["image_dir"],
        "paths": {k: f[1] for k, f in found.items() if f is not None},
    }


def _flat(r: Reader, subset: dict[str, Any]) -> None:
    paths = subset["paths"]
    trigger, class_word = split_tokens(subset["tokens"], False)
    if "num_repeats" in paths:
        r.put("repeats", subset["repeats"], paths["num_repeats"])
    if "class_tokens" in paths:
        for name, value in (("trigger_word", trigger), ("class_word", class_word)):
            if value is not None:
                r.put(name, value, paths["class_tokens"])
    where = f" ({subset['image_dir']!r})" if subset["image_dir"] else ""
    r.note(
        f"one training subset{where}: upload its images as a flat dataset zip; repeats/trigger_word/"
        "class_word carry its num_repeats and class_tokens (the caption of images without a caption file, as "
        "in sd-scripts); for a stored dataset give them as the upload's options, or name the zip's folder "
        f"`img/{subset['repeats']}_{' '.join((subset['tokens'] or 'trigger class').split())}/`"
    )
    for key, path in paths.items():
        r.ignore(path, PATH_REASON if key == "image_dir" else "false: training images")


def _folder(r: Reader, subset: dict[str, Any]) -> str | None:
    """The zip folder (img/10_ohwx woman, reg/1_woman) of a subset; None (and unsupported) if it has none."""
    repeats, paths = subset["repeats"], subset["paths"]
    if not 1 <= repeats <= MAX_REPEATS:
        key = paths.get("num_repeats", "dataset_repeats")
        r.unsupported(key, repeats, f"repeats must be between 1 and {MAX_REPEATS}")
        return None
    words = " ".join((subset["tokens"] or "").split())
    if not words and subset["image_dir"]:
        # no class_tokens: sd-scripts captions come from files; the folder still needs a name after N_
        name = str(subset["image_dir"]).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
        words = re.sub(r"^\d+_", "", name)
        r.note(f"{subset['prefix']} has no class_tokens: its images need caption files")
    if not words or re.search(r"[/\\\x00-\x1f]", words):
        key = paths.get("class_tokens", subset["prefix"])
        r.unsupported(key, subset["tokens"], "a folder name needs words without slashes")
        return None
    return f"{'reg' if subset['is_reg'] else 'img'}/{repeats}_{words}"
