"""What the config importers share (the kohya_ss GUI JSON, sd-scripts' TOML files): the result, its reader
that accounts for every key (mapped, ignored with a reason, or unsupported), value readers and the final
validation as a TrainingConfig. Pure: no torch.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from pydantic import ValidationError

from shared.config.spec import OPTIMIZER_ARGS, TrainingConfig
from shared.errors import LorabakeError

MISSING = object()
PLACEHOLDER_MODEL = "kohya-import-placeholder"

# Kohya / kohya_ss names for what lorabake trains, where they differ only in spelling.
OPTIMIZERS = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "lion": "Lion", "prodigy": "Prodigy",
              "adafactor": "Adafactor"}  # fmt: skip
SCHEDULERS = {"constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".bin", ".pth")


def reasons(tool: str) -> tuple[str, str, str, str]:
    """(path, output path, machine, tracking) reasons, naming the tool the file comes from."""
    return (
        f"the dataset is uploaded instead (a path on the {tool} machine)",
        "the dataset is uploaded instead, and each job stores its own files and logs",
        f"a setting of the {tool} machine or launcher; the lorabake worker decides it",
        f"logging/upload integration of {tool}; lorabake reports progress through its API",
    )


def always_ignored(tool: str) -> dict[str, str]:
    """Keys (the same in kohya_ss's JSON and sd-scripts' arguments) with no effect on what is trained."""
    PATH_REASON, OUTPUT_PATH_REASON, MACHINE_REASON, TRACKING_REASON = reasons(tool)  # noqa: N806
    return {
        "train_data_dir": PATH_REASON,
        "output_dir": OUTPUT_PATH_REASON,
        "logging_dir": OUTPUT_PATH_REASON,
        "model_list": "the GUI's model quick-pick; pretrained_model_name_or_path names the model",
        "xformers": "lorabake uses PyTorch's scaled-dot-product attention (SDPA); same results, no xformers",
        "mem_eff_attn": "lorabake uses PyTorch's scaled-dot-product attention (SDPA)",
        "sdpa": "lorabake always uses PyTorch's scaled-dot-product attention (SDPA)",
        "cache_latents": (
            "lorabake always caches the VAE latents (cache_latents_to_disk keeps them between runs)"
        ),
        "stop_text_encoder_training": "kohya_ss ignores it too ('not yet supported. Ignoring')",
        "stop_text_encoder_training_pct": "kohya_ss ignores it too ('not yet supported. Ignoring')",
        "training_comment": "a free-text comment; it is not used for training",
        "save_state": "lorabake keeps its own resume state for every job",
        "save_state_on_train_end": "lorabake keeps its own resume state for every job",
        "save_last_n_steps_state": "lorabake keeps its own resume state for every job",
        "save_last_n_epochs_state": "lorabake keeps its own resume state for every job",
        "skip_cache_check": f"a latent-cache speed option of {tool}",
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
OTHER_FAMILY_PREFIXES = ("flux1_", "sd3_", "hunyuan_image_", "anima_", "lumina_")
OTHER_FAMILY_KEYS = {"t5xxl", "t5xxl_lr", "clip_l", "clip_g", "ae", "model_type", "discrete_flow_shift",
                     "model_prediction_type", "timestep_sampling", "split_mode", "guidance_scale",
                     "t5xxl_max_token_length", "apply_t5_attn_mask", "mem_eff_save", "blocks_to_swap",
                     "single_blocks_to_swap", "double_blocks_to_swap", "cpu_offload_checkpointing",
                     "fp8_base_unet", "t5xxl_device", "t5xxl_dtype", "clip_l_dropout_rate",
                     "clip_g_dropout_rate", "t5_dropout_rate", "text_encoder_batch_size", "weighting_scheme",
                     "logit_mean", "logit_std", "mode_scale", "enable_scaled_pos_embed", "save_clip",
                     "save_t5xxl", "pos_emb_random_crop_rate", "show_timesteps",
                     "show_timesteps_resolution"}  # fmt: skip


@dataclass
class ImportResult:
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


def is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def number(value: Any) -> float | None:
    """A number from 3, 3.0 or "3e-05"; None for "" / None; ValueError for anything else."""
    if is_blank(value):
        return None
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return float(value.strip())
    raise ValueError(f"expected a number, got {type(value).__name__}")


def integer(value: Any) -> int | None:
    found = number(value)
    if found is None:
        return None
    if not found.is_integer():
        raise ValueError(f"expected a whole number, got {value!r}")
    return int(found)


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise ValueError(f"expected true or false, got {value!r}")


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return value


def is_off(value: Any) -> bool:
    """The value a kohya_ss option has when it is not used: unchecked, 0, empty."""
    if is_blank(value) or value is False:
        return True
    if isinstance(value, list | dict) and not value:
        return True
    try:
        return number(value) == 0
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


# Keys with the same name and meaning in kohya_ss's JSON and sd-scripts' arguments: (key, field, reader).
DATA_FIELDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("train_batch_size", "batch_size", integer),
    ("gradient_accumulation_steps", "gradient_accumulation_steps", integer),
    ("max_grad_norm", "max_grad_norm", number),
    ("gradient_checkpointing", "gradient_checkpointing", boolean),
    ("cache_latents_to_disk", "cache_latents_to_disk", boolean),
    ("enable_bucket", "enable_bucket", boolean),
    ("min_bucket_reso", "min_bucket_reso", integer),
    ("max_bucket_reso", "max_bucket_reso", integer),
    ("bucket_reso_steps", "bucket_reso_steps", integer),
    ("bucket_no_upscale", "bucket_no_upscale", boolean),
    ("shuffle_caption", "shuffle_caption", boolean),
    ("keep_tokens", "keep_tokens", integer),
    ("caption_dropout_rate", "caption_dropout_rate", number),
    ("caption_dropout_every_n_epochs", "caption_dropout_every_n_epochs", integer),
    ("caption_tag_dropout_rate", "caption_tag_dropout_rate", number),
    ("flip_aug", "flip_aug", boolean),
    ("prior_loss_weight", "prior_loss_weight", number),
    ("masked_loss", "masked_loss", boolean),  # masks are NAME_mask.png beside the images (docs/datasets.md)
    ("alpha_mask", "alpha_mask", boolean),
)


# --- the import ---------------------------------------------------------------------------------------------


class Reader:
    """The file's keys and where each went; a key is `done` once it is mapped, ignored or unsupported."""

    def __init__(self, data: dict[str, Any], error_code: str = "invalid_kohya_config") -> None:
        self.data = dict(data)  # a copy: set_aside removes keys from it
        self.error_code = error_code
        self.done: set[str] = set()
        self.config: dict[str, Any] = {}
        self.source: dict[str, str] = {}  # config field -> the file's key it came from
        self.fields: dict[str, list[str]] = {}  # the file's key -> the config fields it decides
        self.result = ImportResult(config={})

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

    def set_aside(self, key: str, reason: str) -> None:
        """Ignore the key and hide it from the rules that run after (another family's rules would read it)."""
        if key in self.data and key not in self.done:
            self.ignore(key, reason)
            del self.data[key]

    def unsupported(self, key: str, value: Any, reason: str) -> None:
        # "optimizer_args.d_coef" accounts for optimizer_args; a dotted key of the file (a dataset TOML's
        # "datasets.0.batch_size") for itself
        self.done.add(key if key in self.data else key.split(".", 1)[0])
        self.result.unsupported.append({"key": key, "value": value, "reason": reason})

    def note(self, text: str) -> None:
        self.result.notes.append(text)

    def put(self, name: str, value: Any, key: str) -> None:
        self.config[name] = value
        self.source[name] = key
        self.used(key, name)

    def read(self, key: str, reader: Any) -> Any:
        """The key's value through `reader`; MISSING when absent or unreadable (then it is unsupported)."""
        if key not in self.data:
            return MISSING
        try:
            return reader(self.data[key])
        except ValueError as exc:
            self.unsupported(key, self.data[key], str(exc))
            return MISSING

    def direct(self, key: str, name: str, reader: Any) -> None:
        value = self.read(key, reader)
        if value is not MISSING:
            self.put(name, value, key)

    def optional(self, key: str, name: str, reader: Any = integer) -> None:
        """kohya_ss passes nothing for 0 / "": the field's "unset" (None)."""
        value = self.read(key, reader)
        if value is not MISSING:
            self.put(name, value if value else None, key)


def put_base_model(r: Reader, key: str) -> None:
    """base_model from a path or hub id (`key`: pretrained_model_name_or_path), as sd-scripts reads it."""
    raw = r.get(key)
    if is_blank(raw) or not isinstance(raw, str):
        r.ignore(key, "empty")
        r.note("base_model: the file names no base model; set base_model to a model in the models directory")
        return
    path = raw.strip()
    windows = "\\" in path or re.match(r"^[A-Za-z]:", path) is not None
    if not windows and HUB_ID.match(path) and not path.lower().endswith(MODEL_EXTENSIONS):
        r.put("base_model", path, key)
        r.note(
            f"base_model {path!r} is read as a Hugging Face hub id (as sd-scripts reads it); if it is a "
            "local folder, put it in the models directory and set base_model to its folder name"
        )
    else:
        name = (PureWindowsPath(path) if windows else PurePosixPath(path)).name
        r.put("base_model", name, key)
        r.note(
            f"base_model {name!r} is the file name of {path!r}: that model must exist in the server's "
            "models directory (LORABAKE_MODELS_DIR) under this name"
        )


def put_resolution(r: Reader, key: str, raw: Any) -> None:
    """Kohya's "512,512" / "512" / 512 / [512, 512] as our square `resolution`; other pairs are refused."""
    if isinstance(raw, list):
        parts = [str(p) for p in raw]
    else:
        parts = [p.strip() for p in str(raw).split(",")] if not isinstance(raw, bool) else []
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1 or (len(sizes) == 2 and sizes[0] == sizes[1]):
        r.put("resolution", sizes[0], key)
    elif len(sizes) == 2:
        r.unsupported(
            key,
            raw,
            "lorabake trains a square area (resolution N means N x N); a width,height pair that differs "
            "has no equivalent",
        )
        r.note(
            f"{key} {raw!r} is not square: set resolution yourself (e.g. {max(sizes)}); "
            "aspect-ratio buckets still keep each image's proportions"
        )
    else:
        r.unsupported(key, raw, "expected 'width,height' or a single number")


def put_optimizer_args(r: Reader, key: str, optimizer: str) -> None:
    """Kohya's optimizer_args ("k=v k=v" or a list of "k=v") as a dict; what `optimizer` does not take is
    unsupported argument by argument (`optimizer_args.NAME`)."""
    raw = r.get(key)
    if is_off(raw):
        r.ignore(key, "empty")
        return
    args, problems = parse_optimizer_args(raw)
    for problem in problems:
        r.unsupported(key, raw, problem)
    allowed = OPTIMIZER_ARGS[optimizer]
    kept: dict[str, Any] = {}
    for name, value in args.items():
        numbers = isinstance(value, list) and all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in value
        )
        if name not in allowed:
            r.unsupported(
                f"{key}.{name}",
                value,
                f"{optimizer} takes no argument {name!r} here (it takes: {', '.join(sorted(allowed))})",
            )
        elif not (value is None or isinstance(value, bool | int | float) or numbers):
            r.unsupported(f"{key}.{name}", value, "only numbers, booleans and lists of numbers")
        else:
            kept[name] = value
    if kept:
        r.put("optimizer_args", kept, key)


def is_default_timestep(key: str, value: Any) -> bool:
    try:
        value = number(value)
    except ValueError:
        return False
    return value in (None, 0) or (key == "max_timestep" and value == 1000)


def validate(r: Reader) -> None:
    """Validate as TrainingConfig; a field it refuses moves to `unsupported` with the reason."""
    placeholder = {} if "base_model" in r.config else {"base_model": PLACEHOLDER_MODEL}
    for _ in range(len(r.config) + 1):
        try:
            validated = TrainingConfig.model_validate({**r.config, **placeholder})
        except ValidationError as exc:
            blamed = culprit(exc, r.config, placeholder)
            if blamed is None:
                raise invalid(f"the imported config does not validate: {exc}", r.error_code) from exc
            name, message = blamed
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
    raise invalid("the imported config does not validate", r.error_code)


def invalid(message: str, code: str = "invalid_kohya_config") -> LorabakeError:
    return LorabakeError(message, code=code, status_code=422)


def culprit(
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


# --- LyCORIS (sd-scripts' network_module lycoris.kohya; kohya_ss's "LyCORIS/..." LoRA types) ---------------

# LyCORIS algo -> the network_type lorabake trains; LyCORIS' lora/locon write Kohya's lora_down/lora_up keys,
# which lorabake's LoRA / LoCon (conv_dim) write too. Every other algo (ia3, glora, full, dylora, boft,
# diag-oft, ...) is refused by name.
LYCORIS_ALGOS: dict[str, str] = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr"}
# LyCORIS options lorabake trains only switched off: off is ignored, any other value refused by name.
LYCORIS_OFF_OPTIONS = frozenset(
    {"use_tucker", "use_cp", "use_conv_cp", "use_scalar", "bypass_mode", "rank_dropout", "module_dropout",
     "dropout", "rank_dropout_scale", "constrain", "constraint", "rescaled", "train_norm", "decompose_both",
     "full_matrix", "unbalanced_factorization", "rs_lora", "train_on_input", "block_size"}
)  # fmt: skip


def _switched_off(value: Any) -> bool:
    return is_off(value) or (isinstance(value, str) and value.strip().lower() in ("false", "none"))


def drop(r: Reader, key: str, value: Any, reason: str) -> None:
    """Ignore a file key, or note a network_args entry (it has no key of its own in the file)."""
    if r.has(key):
        r.ignore(key, reason)
    else:
        r.note(f"{key}={value}: {reason}")


def put_lycoris_algo(r: Reader, key: str, algo: Any) -> str | None:
    """network_type from a LyCORIS algo (None/blank: LyCORIS' default 'lora'); None when it is refused."""
    name = "lora" if is_blank(algo) else str(algo).strip().lower()
    network_type = LYCORIS_ALGOS.get(name)
    if network_type is None:
        r.unsupported(
            key, algo, f"LyCORIS algo {name!r}: lorabake trains loha, lokr and lora/locon (optionally DoRA)"
        )
        return None
    r.put("network_type", network_type, key)
    r.note(
        f"LyCORIS algo {name!r}: trained with LyCORIS' own {name} modules on Kohya's LoRA module set "
        "(network_target), files with LyCORIS' keys"
        if network_type != "lora"
        else f"LyCORIS algo {name!r}: Kohya's LoRA (LoCon with conv_dim), the same lora_down/lora_up keys"
    )
    return network_type


def put_lycoris_option(r: Reader, key: str, name: str, value: Any, network_type: str) -> None:
    """One LyCORIS option (factor, dora_wd, wd_on_output, preset, the switched-off ones); key names it in
    the result (a kohya_ss key, or sd-scripts' network_args.NAME)."""
    if name == "factor":
        try:
            factor = integer(value)
        except ValueError as exc:
            r.unsupported(key, value, str(exc))
            return
        if network_type != "lokr":
            drop(r, key, value, "factor is read by LoKr only")
        elif factor is None or factor == -1:
            drop(r, key, value, "-1: LyCORIS' balanced split, lorabake's default (lokr_factor unset)")
        else:
            r.put("lokr_factor", factor, key if r.has(key) else key.split(".", 1)[0])
    elif name == "dora_wd":
        try:
            r.put("dora_wd", boolean(value), key if r.has(key) else key.split(".", 1)[0])
        except ValueError as exc:
            r.unsupported(key, value, str(exc))
    elif name == "wd_on_output":
        drop(
            r, key, value, "lorabake's DoRA normalises per input channel (wd_on_output=False), the layout "
            "A1111 and ComfyUI both load as trained",
        )  # fmt: skip
    elif name == "preset" or name == "LyCORIS_preset":
        if str(value).strip().lower() == "full" or is_blank(value):
            drop(r, key, value, "lorabake trains Kohya's module set (network_target), not LyCORIS presets")
        else:
            r.unsupported(key, value, "LyCORIS presets other than 'full' choose other modules to train")
    elif name in LYCORIS_OFF_OPTIONS:
        if _switched_off(value):
            drop(r, key, value, "off, as lorabake trains LyCORIS networks")
        else:
            r.unsupported(key, value, f"the LyCORIS option {name} is not one lorabake has")
    else:
        r.unsupported(key, value, f"{name!r} is not a LyCORIS option lorabake has")
