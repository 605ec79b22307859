"""A kohya_ss GUI configuration JSON (LoRA tab, "Configuration file > Save") read into TrainingConfig fields.

Every key of the file ends up in exactly one place:
- `config`: fields we train with the same meaning the GUI gives them (bmaltais/kohya_ss lora_gui.py, as it
  turns the GUI values into sd-scripts arguments: 0 often means "not set", lr_warmup is a percent, ...);
- `ignored`: keys with no effect here (paths, UI and machine settings, options that are off), with why;
- `unsupported`: values we cannot train with the same meaning, with the value and why. Nothing is dropped
  silently and no value is bent into something else.
The returned config validates as a TrainingConfig once `base_model` is present (it is filled from
pretrained_model_name_or_path when the file names one). Pure: no torch.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from pydantic import ValidationError

from shared.config.sample_prompts import normalize_sampler, parse_prompt_line
from shared.config.spec import OPTIMIZER_ARGS, TrainingConfig
from shared.errors import LorabakeError

_MISSING = object()
_PLACEHOLDER_MODEL = "kohya-import-placeholder"

PATH_REASON = "the dataset is uploaded instead (a path on the kohya_ss machine)"
OUTPUT_PATH_REASON = "the dataset is uploaded instead, and each job stores its own files and logs"
MACHINE_REASON = "a setting of the kohya_ss machine or launcher; the lorabake worker decides it"
TRACKING_REASON = "logging/upload integration of kohya_ss; lorabake reports progress through its API"

# Kohya / kohya_ss names for what lorabake trains, where they differ only in spelling.
_OPTIMIZERS = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "lion": "Lion", "prodigy": "Prodigy",
               "adafactor": "Adafactor"}  # fmt: skip
_SCHEDULERS = {"constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".bin", ".pth")

# Keys with no effect on what is trained, whatever their value.
_ALWAYS_IGNORED: dict[str, str] = {
    "train_data_dir": PATH_REASON,
    "output_dir": OUTPUT_PATH_REASON,
    "logging_dir": OUTPUT_PATH_REASON,
    "model_list": "the GUI's model quick-pick; pretrained_model_name_or_path names the model",
    "xformers": "lorabake uses PyTorch's scaled-dot-product attention (SDPA); same results, no xformers",
    "mem_eff_attn": "lorabake uses PyTorch's scaled-dot-product attention (SDPA)",
    "sdpa": "lorabake always uses PyTorch's scaled-dot-product attention (SDPA)",
    "cache_latents": "lorabake always caches the VAE latents (cache_latents_to_disk keeps them between runs)",
    "stop_text_encoder_training": "kohya_ss ignores it too ('not yet supported. Ignoring')",
    "stop_text_encoder_training_pct": "kohya_ss ignores it too ('not yet supported. Ignoring')",
    "training_comment": "a free-text comment; it is not used for training",
    "save_state": "lorabake keeps its own resume state for every job",
    "save_state_on_train_end": "lorabake keeps its own resume state for every job",
    "save_last_n_steps_state": "lorabake keeps its own resume state for every job",
    "save_last_n_epochs_state": "lorabake keeps its own resume state for every job",
    "skip_cache_check": "a latent-cache speed option of kohya_ss",
    "vae_batch_size": MACHINE_REASON,
    "num_cpu_threads_per_process": MACHINE_REASON,
    "num_processes": MACHINE_REASON,
    "num_machines": MACHINE_REASON,
    "multi_gpu": MACHINE_REASON,
    "gpu_ids": MACHINE_REASON,
    "main_process_port": MACHINE_REASON,
    "dynamo_backend": MACHINE_REASON,
    "dynamo_mode": MACHINE_REASON,
    "dynamo_use_fullgraph": MACHINE_REASON,
    "dynamo_use_dynamic": MACHINE_REASON,
    "max_data_loader_n_workers": MACHINE_REASON,
    "persistent_data_loader_workers": MACHINE_REASON,
    "lowvram": MACHINE_REASON,
    "highvram": MACHINE_REASON,
    "lowram": MACHINE_REASON,
    "sdxl_no_half_vae": "the worker picks the VAE's precision",
    "sdxl_cache_text_encoder_outputs": "a speed option of kohya_ss",
    "log_with": TRACKING_REASON,
    "use_wandb": TRACKING_REASON,
    "wandb_api_key": TRACKING_REASON,
    "wandb_run_name": TRACKING_REASON,
    "log_tracker_name": TRACKING_REASON,
    "log_tracker_config": TRACKING_REASON,
    "log_config": TRACKING_REASON,
    "huggingface_repo_id": TRACKING_REASON,
    "huggingface_token": TRACKING_REASON,
    "huggingface_repo_type": TRACKING_REASON,
    "huggingface_repo_visibility": TRACKING_REASON,
    "huggingface_path_in_repo": TRACKING_REASON,
    "save_state_to_huggingface": TRACKING_REASON,
    "resume_from_huggingface": TRACKING_REASON,
    "async_upload": TRACKING_REASON,
    "file_path": "where kohya_ss saved this file",
    "save_as_bool": "a GUI flag of the save dialog",
}

# Prefixes of settings for model families lorabake does not train (each has its own checkbox).
_OTHER_FAMILY_PREFIXES = ("flux1_", "sd3_", "hunyuan_image_", "anima_", "lumina_")
_OTHER_FAMILY_KEYS = {"t5xxl", "t5xxl_lr", "clip_l", "clip_g", "ae", "model_type", "discrete_flow_shift",
                      "model_prediction_type", "timestep_sampling", "split_mode", "guidance_scale",
                      "t5xxl_max_token_length", "apply_t5_attn_mask", "mem_eff_save", "blocks_to_swap",
                      "single_blocks_to_swap", "double_blocks_to_swap", "cpu_offload_checkpointing",
                      "fp8_base_unet", "t5xxl_device", "t5xxl_dtype", "clip_l_dropout_rate",
                      "clip_g_dropout_rate", "t5_dropout_rate", "text_encoder_batch_size", "weighting_scheme",
                      "logit_mean", "logit_std", "mode_scale", "enable_scaled_pos_embed", "save_clip",
                      "save_t5xxl", "pos_emb_random_crop_rate", "show_timesteps",
                      "show_timesteps_resolution"}  # fmt: skip
_FAMILY_CHECKBOXES = ("flux1_checkbox", "sd3_checkbox", "hunyuan_image_checkbox", "anima_checkbox",
                      "lumina_checkbox")  # fmt: skip
# Network options that only LyCORIS / other network types read.
_LYCORIS_KEYS = {"LyCORIS_preset", "factor", "bypass_mode", "dora_wd", "use_cp", "use_tucker", "use_scalar",
                 "rank_dropout_scale", "constrain", "rescaled", "train_norm", "decompose_both",
                 "train_on_input", "unit"}  # fmt: skip


@dataclass
class KohyaImport:
    config: dict[str, Any]
    mapped: list[dict[str, Any]] = field(default_factory=list)  # {key, fields}: where each used key went
    ignored: list[dict[str, Any]] = field(default_factory=list)
    unsupported: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "mapped": self.mapped,
            "ignored": self.ignored,
            "unsupported": self.unsupported,
            "notes": self.notes,
        }


# --- value readers: the GUI stores numbers as numbers or strings, and "" for "not set" ----------------------


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(value: Any) -> float | None:
    """A number from 3, 3.0 or "3e-05"; None for "" / None; ValueError for anything else."""
    if _is_blank(value):
        return None
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise ValueError(f"expected a number, got {type(value).__name__}")


def _integer(value: Any) -> int | None:
    number = _number(value)
    if number is None:
        return None
    if not number.is_integer():
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(number)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise ValueError(f"expected true or false, got {value!r}")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return value


def _is_off(value: Any) -> bool:
    """The value a kohya_ss option has when it is not used: unchecked, 0, empty."""
    if _is_blank(value) or value is False:
        return True
    if isinstance(value, list | dict) and not value:
        return True
    try:
        return _number(value) == 0
    except ValueError:
        return False


def parse_optimizer_args(text: Any) -> tuple[dict[str, Any], list[str]]:
    """kohya_ss's "key=value key=value" string as sd-scripts reads it (quotes removed, split on spaces,
    values through ast.literal_eval, "0.9,0.99" a tuple, kept here as a list). Returns (args, problems)."""
    if isinstance(text, list):
        tokens = [str(t) for t in text]
    elif isinstance(text, str):
        tokens = text.replace('"', "").split()
    else:
        return {}, [f"expected a 'key=value key=value' string, got {type(text).__name__}"]
    args: dict[str, Any] = {}
    problems: list[str] = []
    for token in tokens:
        key, sep, raw = token.partition("=")
        if not sep or not key:
            problems.append(f"{token!r} is not key=value")
            continue
        try:
            value = ast.literal_eval(raw) if len(raw) <= 200 else raw
        except (ValueError, SyntaxError):
            value = raw  # sd-scripts would fail on it; kept as text so it is reported below
        args[key] = list(value) if isinstance(value, tuple) else value
    return args, problems


# --- the import ---------------------------------------------------------------------------------------------


class _Reader:
    """The file's keys and where each went; a key is `done` once it is mapped, ignored or unsupported."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.done: set[str] = set()
        self.config: dict[str, Any] = {}
        self.source: dict[str, str] = {}  # config field -> the GUI key it came from
        self.fields: dict[str, list[str]] = {}  # GUI key -> the config fields it decides
        self.result = KohyaImport(config={})

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def used(self, key: str, *fields: str) -> None:
        """The key's meaning is carried by the config (e.g. LoRA_type 'Standard': no conv layers)."""
        if key in self.data:
            self.done.add(key)
            self.fields.setdefault(key, []).extend(f for f in fields if f not in self.fields.get(key, []))

    def ignore(self, key: str, reason: str) -> None:
        if key in self.data and key not in self.done:
            self.done.add(key)
            self.result.ignored.append({"key": key, "reason": reason})

    def unsupported(self, key: str, value: Any, reason: str) -> None:
        self.done.add(key.split(".", 1)[0])
        self.result.unsupported.append({"key": key, "value": value, "reason": reason})

    def note(self, text: str) -> None:
        self.result.notes.append(text)

    def put(self, name: str, value: Any, key: str) -> None:
        self.config[name] = value
        self.source[name] = key
        self.used(key, name)

    def read(self, key: str, reader: Any) -> Any:
        """The key's value through `reader`; _MISSING when absent or unreadable (then it is unsupported)."""
        if key not in self.data:
            return _MISSING
        try:
            return reader(self.data[key])
        except ValueError as exc:
            self.unsupported(key, self.data[key], str(exc))
            return _MISSING

    def direct(self, key: str, name: str, reader: Any) -> None:
        value = self.read(key, reader)
        if value is not _MISSING:
            self.put(name, value, key)

    def optional(self, key: str, name: str, reader: Any = _integer) -> None:
        """kohya_ss passes nothing for 0 / "": the field's "unset" (None)."""
        value = self.read(key, reader)
        if value is not _MISSING:
            self.put(name, value if value else None, key)


def import_kohya_config(data: dict[str, Any]) -> KohyaImport:
    """Reads a kohya_ss GUI LoRA configuration (the JSON its "Save" writes)."""
    r = _Reader(data)
    _model(r)
    _resolution(r)
    _length(r)
    _learning_rates(r)
    _scheduler(r)
    _optimizer(r)
    _network(r)
    _noise(r)
    _precision_and_saving(r)
    _data(r)
    _sampling(r)
    _rest(r)
    _validate(r)
    if any(u["key"] == "optimizer" for u in r.result.unsupported):
        r.note(
            f"optimizer {r.get('optimizer')!r} is not carried over, so the config trains with AdamW (our "
            "default): check unet_lr / text_encoder_lr, which were chosen for the other optimizer"
        )
    return r.result


def _set(value: Any) -> bool:
    """Read, and not 0 / empty."""
    return value is not _MISSING and value is not None and value != 0


def _model(r: _Reader) -> None:
    raw = r.get("pretrained_model_name_or_path")
    if _is_blank(raw) or not isinstance(raw, str):
        r.ignore("pretrained_model_name_or_path", "empty")
        r.note("base_model: the file names no base model; set base_model to a model in the models directory")
    else:
        path = raw.strip()
        windows = "\\" in path or re.match(r"^[A-Za-z]:", path) is not None
        if not windows and _HUB_ID.match(path) and not path.lower().endswith(_MODEL_EXTENSIONS):
            r.put("base_model", path, "pretrained_model_name_or_path")
            r.note(
                f"base_model {path!r} is read as a Hugging Face hub id (as sd-scripts reads it); if it is a "
                "local folder, put it in the models directory and set base_model to its folder name"
            )
        else:
            name = (PureWindowsPath(path) if windows else PurePosixPath(path)).name
            r.put("base_model", name, "pretrained_model_name_or_path")
            r.note(
                f"base_model {name!r} is the file name of {path!r}: that model must exist in the server's "
                "models directory (LORABAKE_MODELS_DIR) under this name"
            )

    for key in _FAMILY_CHECKBOXES:
        if r.has(key) and not _is_off(r.get(key)):
            r.unsupported(key, r.get(key), "lorabake trains SD1.x, SD2.x and SDXL LoRAs only")
        r.ignore(key, "off: this is an SD1.x/SD2.x/SDXL config")
    v2 = r.read("v2", _boolean)
    sdxl = r.read("sdxl", _boolean)
    if sdxl is True:
        r.put("model_family", "sdxl", "sdxl")
        if v2 is True:
            r.unsupported("v2", True, "v2 and sdxl are both checked; sdxl is used")
        r.used("v2", "model_family")
    elif v2 is True:
        r.put("model_family", "sd2", "v2")
        r.used("sdxl", "model_family")
    elif v2 is False or sdxl is False:
        r.put("model_family", "sd1", "v2" if v2 is False else "sdxl")  # kohya_ss: unchecked means SD1.x
        r.used("v2", "model_family")
        r.used("sdxl", "model_family")
    # unchecked: sd-scripts trains on the noise (epsilon) target, which False means here too
    r.direct("v_parameterization", "v_parameterization", _boolean)


def _resolution(r: _Reader) -> None:
    if not r.has("max_resolution"):
        return
    raw = r.get("max_resolution")
    parts = [p.strip() for p in str(raw).split(",")] if not isinstance(raw, bool) else []
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1 or (len(sizes) == 2 and sizes[0] == sizes[1]):
        r.put("resolution", sizes[0], "max_resolution")
    elif len(sizes) == 2:
        r.unsupported(
            "max_resolution",
            raw,
            "lorabake trains a square area (resolution N means N x N); a width,height pair that differs "
            "has no equivalent",
        )
        r.note(
            f"max_resolution {raw!r} is not square: set resolution yourself (e.g. {max(sizes)}); "
            "aspect-ratio buckets still keep each image's proportions"
        )
    else:
        r.unsupported("max_resolution", raw, "expected 'width,height' or a single number")


def _length(r: _Reader) -> None:
    epoch = r.read("epoch", _integer)
    max_epochs = r.read("max_train_epochs", _integer)
    max_steps = r.read("max_train_steps", _integer)
    if _set(max_epochs):
        r.put("epochs", max_epochs, "max_train_epochs")
        r.ignore("epoch", "max_train_epochs is set, and it decides the number of epochs in sd-scripts")
    elif _set(epoch):
        r.put("epochs", epoch, "epoch")
        r.note(
            f"epochs {epoch}: kohya_ss turns `epoch` into max_train_steps from its own image count "
            "(x2 with a reg_data_dir); lorabake trains exactly that many epochs, counting steps per "
            "aspect-ratio bucket as sd-scripts does, so the step total can differ a little"
        )
    if _set(max_steps):
        if _set(max_epochs):
            r.ignore(
                "max_train_steps", "max_train_epochs is set, and it wins over max_train_steps in sd-scripts"
            )
        else:
            r.unsupported(
                "max_train_steps",
                r.get("max_train_steps"),
                "lorabake trains whole epochs (set epochs); it has no step limit that stops inside an epoch",
            )
    r.ignore("max_train_steps", "not set: the epochs decide the length")
    r.ignore("max_train_epochs", "not set: `epoch` decides the length")


def _learning_rates(r: _Reader) -> None:
    base, unet, te = (r.read(k, _number) for k in ("learning_rate", "unet_lr", "text_encoder_lr"))
    base, unet, te = (v if isinstance(v, float) else 0.0 for v in (base, unet, te))
    if unet == 0 and te == 0:
        if base == 0:
            if r.has("learning_rate"):
                r.unsupported(
                    "learning_rate",
                    r.get("learning_rate"),
                    "no learning rate is set (kohya_ss refuses to train: 'Please input learning rate "
                    "values')",
                )
            return
        r.put("unet_lr", base, "learning_rate")
        r.put("text_encoder_lr", base, "learning_rate")
        r.used("unet_lr", "unet_lr")
        r.used("text_encoder_lr", "text_encoder_lr")
        r.note(
            f"unet_lr and text_encoder_lr are 0 (unset), so learning_rate {base:g} trains both, as in "
            "sd-scripts"
        )
        return
    if unet == 0:
        r.unsupported(
            "unet_lr",
            r.get("unet_lr"),
            "0 with a text_encoder_lr trains only the text encoder (kohya_ss passes "
            "--network_train_text_encoder_only); lorabake always trains the UNet",
        )
        r.put("text_encoder_lr", te, "text_encoder_lr")
    else:
        r.put("unet_lr", unet, "unet_lr")
        r.put("text_encoder_lr", te, "text_encoder_lr")
        if te == 0:
            r.note("text_encoder_lr 0: only the UNet is trained (kohya_ss's --network_train_unet_only)")
    r.ignore("learning_rate", "unet_lr/text_encoder_lr are set, so sd-scripts does not use learning_rate")


def _scheduler(r: _Reader) -> None:
    name = r.get("lr_scheduler", _MISSING)
    if name is not _MISSING:
        if name in _SCHEDULERS:
            r.put("lr_scheduler", name, "lr_scheduler")
        else:
            r.unsupported("lr_scheduler", name, f"lorabake's schedulers are {', '.join(sorted(_SCHEDULERS))}")
    for key in ("lr_scheduler_args", "lr_scheduler_type"):
        if r.has(key) and not _is_off(r.get(key)):
            r.unsupported(key, r.get(key), "custom scheduler classes and arguments are not supported")

    # Warmup: lr_warmup is a percent of the total steps, lr_warmup_steps (when > 0) wins over it (kohya_ss's
    # resolve_lr_warmup_steps). A percent reaches sd-scripts as a ratio < 1 of the total steps: ours too.
    percent = r.read("lr_warmup", _number)
    steps = r.read("lr_warmup_steps", _number)
    warmup: int | float = 0
    key = "lr_warmup"
    if _set(steps) and steps > 0:
        warmup, key = int(steps), "lr_warmup_steps"
        r.ignore("lr_warmup", "lr_warmup_steps is set and wins over the percent, as in kohya_ss")
    elif _set(percent):
        if 0 < percent < 100:
            warmup = round(percent / 100, 6)
        else:
            r.unsupported("lr_warmup", r.get("lr_warmup"), "a warmup percent must be between 0 and 100")
    if warmup and name == "constant":
        r.unsupported(
            key,
            r.get(key),
            "sd-scripts refuses warmup with the constant scheduler ('constant "
            "does not require num_warmup_steps'); choose constant_with_warmup",
        )
    elif warmup:
        r.put("lr_warmup_steps", warmup, key)
        if key == "lr_warmup":
            r.note(
                f"lr_warmup {percent:g}% becomes lr_warmup_steps {warmup} (a ratio of the total steps, as "
                "kohya_ss passes it to sd-scripts)"
            )
    elif r.has("lr_warmup") and "lr_warmup" not in r.done:
        r.put("lr_warmup_steps", 0, "lr_warmup")
    r.ignore("lr_warmup_steps", "0: the percent (lr_warmup) decides")

    cycles = r.read("lr_scheduler_num_cycles", _integer)
    if name == "cosine_with_restarts":
        if _set(cycles):
            r.put("lr_scheduler_num_cycles", cycles, "lr_scheduler_num_cycles")
        else:
            epoch = r.read("epoch", _integer)
            epoch = epoch if _set(epoch) else 1
            r.put("lr_scheduler_num_cycles", epoch, "lr_scheduler_num_cycles")
            r.note(f"lr_scheduler_num_cycles is empty: kohya_ss then restarts once per epoch ({epoch})")
    r.ignore("lr_scheduler_num_cycles", "used only by cosine_with_restarts")
    power = r.read("lr_scheduler_power", _number)
    if name == "polynomial" and _set(power):
        r.put("lr_scheduler_power", power, "lr_scheduler_power")
    r.ignore(
        "lr_scheduler_power",
        "used only by the polynomial scheduler" if name != "polynomial" else "empty: sd-scripts' default 1.0",
    )


def _optimizer(r: _Reader) -> None:
    optimizer = "AdamW"
    if r.has("optimizer"):
        mapped = _OPTIMIZERS.get(str(r.get("optimizer")).lower())
        if mapped is None:
            r.unsupported(
                "optimizer",
                r.get("optimizer"),
                f"lorabake's optimizers are {', '.join(_OPTIMIZERS.values())}",
            )
        else:
            optimizer = mapped
            r.put("optimizer", mapped, "optimizer")
    raw = r.get("optimizer_args")
    if _is_off(raw):
        r.ignore("optimizer_args", "empty")
        return
    args, problems = parse_optimizer_args(raw)
    for problem in problems:
        r.unsupported("optimizer_args", raw, problem)
    allowed = OPTIMIZER_ARGS[optimizer]
    kept: dict[str, Any] = {}
    for key, value in args.items():
        numbers = isinstance(value, list) and all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in value
        )
        if key not in allowed:
            r.unsupported(
                f"optimizer_args.{key}",
                value,
                f"{optimizer} takes no argument {key!r} here (it takes: {', '.join(sorted(allowed))})",
            )
        elif not (value is None or isinstance(value, bool | int | float) or numbers):
            r.unsupported(f"optimizer_args.{key}", value, "only numbers, booleans and lists of numbers")
        else:
            kept[key] = value
    if kept:
        r.put("optimizer_args", kept, "optimizer_args")


def _network(r: _Reader) -> None:
    r.direct("network_dim", "network_dim", _integer)
    r.direct("network_alpha", "network_alpha", _number)
    lora_type = r.get("LoRA_type", "Standard")
    if lora_type == "Kohya LoCon":
        conv_dim = r.read("conv_dim", _integer)
        r.used("LoRA_type")
        if _set(conv_dim):
            r.put("conv_dim", conv_dim, "conv_dim")
            r.direct("conv_alpha", "conv_alpha", _number)
            r.note(
                "LoRA_type 'Kohya LoCon' (sd-scripts' networks.lora with conv_dim): conv_dim/conv_alpha "
                "also train the 3x3 convolutions"
            )
        else:
            r.ignore("conv_dim", "0: 'Kohya LoCon' with conv_dim 0 trains no convolutions (a standard LoRA)")
            r.ignore("conv_alpha", "conv_dim is 0")
    else:
        if lora_type == "Standard":
            r.used("LoRA_type")
        else:
            r.unsupported(
                "LoRA_type",
                lora_type,
                "lorabake trains Kohya's LoRA (networks.lora): 'Standard', or 'Kohya LoCon' for conv layers "
                "too; LyCORIS and the other network types are different networks with other files",
            )
        for key in ("conv_dim", "conv_alpha"):
            r.ignore(
                key, f"LoRA_type {lora_type!r}: kohya_ss passes conv_dim/conv_alpha only for LoCon types"
            )
    for key in sorted(_LYCORIS_KEYS):
        r.ignore(key, "a LyCORIS/DyLoRA option, not read by Kohya's LoRA")


def _noise(r: _Reader) -> None:
    kind = r.get("noise_offset_type", "Original")
    if kind == "Original":
        r.used("noise_offset_type", "noise_offset")
        offset = r.read("noise_offset", _number)
        if offset is not _MISSING:
            r.put("noise_offset", offset or None, "noise_offset")
        adaptive = r.read("adaptive_noise_scale", _number)
        if _set(adaptive):
            r.put("adaptive_noise_scale", adaptive, "adaptive_noise_scale")
        r.ignore("adaptive_noise_scale", "0: off")
        for key in ("multires_noise_iterations", "multires_noise_discount"):
            r.ignore(key, "used only with noise_offset_type 'Multires'")
        return
    r.unsupported("noise_offset_type", kind, "lorabake has the 'Original' noise offset only")
    for key in ("noise_offset", "adaptive_noise_scale"):
        r.ignore(key, f"kohya_ss passes it only with noise_offset_type 'Original', not {kind!r}")
    if not _is_off(r.get("multires_noise_iterations")):
        r.unsupported("multires_noise_iterations", r.get("multires_noise_iterations"), "multires noise")
    r.ignore("multires_noise_iterations", "0: off")
    r.ignore("multires_noise_discount", "multires noise is not used")


def _precision_and_saving(r: _Reader) -> None:
    r.direct("mixed_precision", "mixed_precision", _text)
    r.direct("save_precision", "save_precision", _text)
    for key in ("full_fp16", "full_bf16", "fp8_base"):
        if r.has(key) and not _is_off(r.get(key)):
            r.unsupported(
                key, r.get(key), "lorabake keeps the trained LoRA weights in fp32 (mixed precision)"
            )
        r.ignore(key, "off")
    for key in ("save_every_n_epochs", "save_every_n_steps", "save_last_n_epochs", "save_last_n_steps"):
        r.optional(key, key)
    if r.has("save_model_as"):
        if str(r.get("save_model_as")).lower() == "safetensors":
            r.ignore("save_model_as", "lorabake always writes .safetensors")
        else:
            r.unsupported("save_model_as", r.get("save_model_as"), "lorabake writes .safetensors only")
    r.direct("output_name", "output_name", _text)


def _data(r: _Reader) -> None:
    if r.has("caption_extension"):
        value = r.get("caption_extension")
        if _is_blank(value):
            r.put("caption_extension", ".caption", "caption_extension")
            r.note("caption_extension is empty: sd-scripts then reads '.caption' files (its default)")
        else:
            r.direct("caption_extension", "caption_extension", _text)
    for key, name, reader in (
        ("train_batch_size", "batch_size", _integer),
        ("gradient_accumulation_steps", "gradient_accumulation_steps", _integer),
        ("max_grad_norm", "max_grad_norm", _number),
        ("gradient_checkpointing", "gradient_checkpointing", _boolean),
        ("cache_latents_to_disk", "cache_latents_to_disk", _boolean),
        ("enable_bucket", "enable_bucket", _boolean),
        ("min_bucket_reso", "min_bucket_reso", _integer),
        ("max_bucket_reso", "max_bucket_reso", _integer),
        ("bucket_reso_steps", "bucket_reso_steps", _integer),
        ("bucket_no_upscale", "bucket_no_upscale", _boolean),
        ("shuffle_caption", "shuffle_caption", _boolean),
        ("keep_tokens", "keep_tokens", _integer),
        ("caption_dropout_rate", "caption_dropout_rate", _number),
        ("caption_dropout_every_n_epochs", "caption_dropout_every_n_epochs", _integer),
        ("caption_tag_dropout_rate", "caption_tag_dropout_rate", _number),
        ("flip_aug", "flip_aug", _boolean),
        ("prior_loss_weight", "prior_loss_weight", _number),
    ):
        r.direct(key, name, reader)
    for key in ("keep_tokens_separator", "caption_prefix", "caption_suffix"):
        value = r.read(key, _text)
        if value is not _MISSING:
            r.put(key, value or None, key)
    r.optional("min_snr_gamma", "min_snr_gamma", _number)
    r.optional("clip_skip", "clip_skip")  # kohya_ss passes no --clip_skip for 0
    r.optional("max_token_length", "max_token_length")
    seed = r.read("seed", _integer)
    if seed is not _MISSING:
        r.put("seed", seed if seed else None, "seed")
        if seed == 0:
            r.note(
                "seed 0: kohya_ss passes no seed for 0, so a random one is picked (and recorded on the job)"
            )
    if r.has("reg_data_dir") and not _is_blank(r.get("reg_data_dir")):
        r.note(
            "regularization images: put them in the dataset zip as reg/N_class/ (kohya_ss's "
            "reg_data_dir), beside img/N_trigger class/"
        )
    r.ignore("reg_data_dir", PATH_REASON)
    if not _is_blank(r.get("dataset_config")):
        r.unsupported(
            "dataset_config",
            r.get("dataset_config"),
            "a dataset TOML; upload the images as Kohya folders (img/N_trigger class/) instead",
        )
    r.ignore("dataset_config", PATH_REASON)


def _sampling(r: _Reader) -> None:
    r.optional("sample_every_n_steps", "sample_every_n_steps")
    r.optional("sample_every_n_epochs", "sample_every_n_epochs")
    r.direct("sample_at_first", "sample_at_first", _boolean)
    if r.has("sample_sampler"):
        try:
            r.put("sample_sampler", normalize_sampler(str(r.get("sample_sampler"))), "sample_sampler")
        except ValueError as exc:
            r.unsupported("sample_sampler", r.get("sample_sampler"), str(exc))
    if not r.has("sample_prompts"):
        return
    raw = r.get("sample_prompts")
    lines = [str(x) for x in raw] if isinstance(raw, list) else str(raw or "").splitlines()
    kept = []
    for line in lines:
        try:
            if parse_prompt_line(line) is not None:
                kept.append(line.strip())
        except ValueError as exc:
            r.unsupported("sample_prompts", line, str(exc))
    if kept:
        r.put("sample_prompts", kept, "sample_prompts")
    r.ignore("sample_prompts", "empty")


def _rest(r: _Reader) -> None:
    for key, reason in _ALWAYS_IGNORED.items():
        r.ignore(key, reason)
    loss = str(r.get("loss_type", "l2")).lower()
    for key in list(r.data):
        if key in r.done:
            continue
        value = r.data[key]
        if key.startswith(_OTHER_FAMILY_PREFIXES) or key in _OTHER_FAMILY_KEYS:
            r.ignore(key, "a FLUX.1/SD3/other-model option; not used for SD1.x/SD2.x/SDXL")
        elif key == "additional_parameters" and not _is_off(value):
            r.unsupported(key, value, "extra sd-scripts command-line flags cannot be passed through")
        elif key == "resume" and not _is_off(value):
            r.unsupported(key, value, "a kohya_ss state folder; lorabake resumes its own jobs")
        elif key == "vae" and not _is_off(value):
            r.unsupported(key, value, "a separate VAE is not supported; the base model's VAE is used")
        elif key in ("max_timestep", "min_timestep") and _is_default_timestep(key, value):
            r.ignore(key, "sd-scripts' default range (all 1000 timesteps), as lorabake trains")
        elif key == "loss_type" and loss == "l2":
            r.ignore(key, "l2 (MSE) is the loss lorabake trains with")
        elif key in ("huber_schedule", "huber_c", "huber_scale") and loss == "l2":
            r.ignore(key, "a Huber loss option; loss_type is l2")
        elif _is_off(value):
            r.ignore(key, "off or empty: nothing to carry over")
        else:
            r.unsupported(key, value, "lorabake has no equivalent setting")


def _is_default_timestep(key: str, value: Any) -> bool:
    try:
        number = _number(value)
    except ValueError:
        return False
    return number in (None, 0) or (key == "max_timestep" and number == 1000)


def _validate(r: _Reader) -> None:
    """Validate as TrainingConfig; a field it refuses moves to `unsupported` with the reason."""
    placeholder = {} if "base_model" in r.config else {"base_model": _PLACEHOLDER_MODEL}
    for _ in range(len(r.config) + 1):
        try:
            validated = TrainingConfig.model_validate({**r.config, **placeholder})
        except ValidationError as exc:
            culprit = _culprit(exc, r.config, placeholder)
            if culprit is None:
                raise _invalid(f"the imported config does not validate: {exc}") from exc
            name, message = culprit
            key = r.source.pop(name, name)
            r.config.pop(name)
            r.result.unsupported.append({"key": key, "value": r.data.get(key), "reason": message})
            for gui_key, fields in list(r.fields.items()):
                if name in fields:
                    fields.remove(name)
                    if not fields:
                        del r.fields[gui_key]
            continue
        r.result.config = validated.model_dump(mode="json", include=set(r.config))
        r.result.mapped = [{"key": k, "fields": f} for k, f in r.fields.items()]
        return
    raise _invalid("the imported config does not validate")


def _invalid(message: str) -> LorabakeError:
    return LorabakeError(message, code="invalid_kohya_config", status_code=422)


def _culprit(
    exc: ValidationError, config: dict[str, Any], placeholder: dict[str, Any]
) -> tuple[str, str] | None:
    """The field a validation error is about: its location; for a rule between fields (no location), the
    field its message names first whose removal (falling back to our default) satisfies the rule."""
    for err in exc.errors():
        loc = err.get("loc") or ()
        message = str(err.get("msg", "")).removeprefix("Value error, ")
        if loc and loc[0] in config:
            return str(loc[0]), message
        found = [(m.start(), name) for name in config if (m := re.search(rf"\b{re.escape(name)}\b", message))]
        named = [name for _, name in sorted(found)]
        for name in named:
            rest = {k: v for k, v in config.items() if k != name}
            try:
                TrainingConfig.model_validate({**rest, **placeholder})
            except ValidationError as again:
                if any(
                    str(e.get("msg", "")).removeprefix("Value error, ") == message for e in again.errors()
                ):
                    continue
            return name, message
        if named:
            return named[0], message
    return None
