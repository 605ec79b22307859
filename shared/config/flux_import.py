"""The FLUX.1 keys of the config importers (kohya_import.py, sd_scripts_import.py), with sd-scripts' meanings.

Read at kohya-ss/sd-scripts 48d368f (flux_train_network.py; library/flux_train_utils.py
add_flux_train_arguments, get_noisy_model_input_and_timesteps, apply_model_prediction_type; train_util's
add_dit_training_arguments; networks/lora_flux.py create_network; docs/flux_train_network.md) and
bmaltais/kohya_ss 45088f0 (kohya_gui/class_flux1.py; lora_gui.py, which turns the GUI's FLUX.1 values into
flux_train_network.py's arguments). Each FLUX key is mapped, ignored with a reason, or unsupported, as for the
other keys. Pure: no torch.

Chroma is the same script with ``model_type = "chroma"`` (sd-scripts' flux_train_network.py: no CLIP-L, an
assert on apply_t5_attn_mask; library/chroma_models.py feeds guidance_scale into the approximator, whose
distilled guidance lorabake's Chroma holds at 0 as sd-scripts' docs advise) and, in kohya_ss 45088f0, the
Flux.1 section's "Base Model Type" (`model_type`: lora_gui.py passes model_type chroma, no clip_l, forces
apply_t5_attn_mask true and re-emits guidance_scale even at 0). Such a config gets model_family chroma.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from shared.config.import_common import Reader, boolean, drop, integer, is_blank, is_off, number, text

FLUX_SCRIPT = "flux_train_network"
LORA_FLUX = "networks.lora_flux"
NUM_DOUBLE_BLOCKS, NUM_SINGLE_BLOCKS = 19, 38  # FLUX.1's blocks, as lora_flux.py counts them

# sd-scripts' argparse defaults of the FLUX options: what a TOML that leaves one out trains with.
SD_SCRIPTS_DEFAULTS: dict[str, Any] = {
    "guidance_scale": 3.5, "timestep_sampling": "sigma", "sigmoid_scale": 1.0,
    "model_prediction_type": "sigma_scaled", "discrete_flow_shift": 3.0, "weighting_scheme": "uniform",
    "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29, "t5xxl_max_token_length": None,
    "apply_t5_attn_mask": False,
}  # fmt: skip
# The ones that differ from lorabake's FLUX defaults (network_train_unet_only: sd-scripts trains CLIP-L too).
DIFFERING_DEFAULTS: dict[str, Any] = {
    "guidance_scale": 3.5, "timestep_sampling": "sigma", "discrete_flow_shift": 3.0,
    "network_train_unet_only": False,
}  # fmt: skip
# Chroma's: no CLIP-L to train, and a missing guidance_scale is refused (_chroma_guidance), never defaulted.
CHROMA_DIFFERING_DEFAULTS: dict[str, Any] = {
    k: v for k, v in DIFFERING_DEFAULTS.items() if k not in ("guidance_scale", "network_train_unet_only")
}
MODEL_TYPES = {"flux": "flux1", "chroma": "chroma"}  # flux_train_network.py's --model_type -> model_family
_NO_CLIP_L = "Chroma has no CLIP-L: sd-scripts loads and trains none for model_type chroma"
_CHROMA_GUIDANCE = (
    "Chroma's approximator reads the distilled guidance, which lorabake holds at 0 as sd-scripts' docs "
    "advise for Chroma (--guidance_scale 0.0)"
)
# The flow options each tool passes: kohya_ss passes weighting_scheme/logit_*/mode_scale for SD3 only and no
# sigmoid_scale for FLUX.1 (lora_gui.py), so sd-scripts' defaults stand for those.
SD_SCRIPTS_FLOW_KEYS = tuple(SD_SCRIPTS_DEFAULTS)
KOHYA_FLOW_KEYS = ("guidance_scale", "timestep_sampling", "model_prediction_type", "discrete_flow_shift",
                   "t5xxl_max_token_length", "apply_t5_attn_mask")  # fmt: skip
_TIMESTEP_SAMPLINGS = ("sigma", "uniform", "sigmoid", "shift", "flux_shift")
_RAW = "lorabake trains the raw velocity (model_prediction_type raw, sd-scripts' recommendation)"
_PREDICTIONS_REFUSED = {
    "sigma_scaled": "SD3's preconditioning: the output times -sigma plus x_t is compared with the target, "
    f"and the loss weighted by weighting_scheme; {_RAW}",
    "additive": f"the noisy input is added to the output before the loss; {_RAW}",
}
_WEIGHTINGS = {"none": "none", "uniform": "none", "logit_normal": "logit_normal", "mode": "mode"}
_LOSS_WEIGHTINGS = ("sigma_sqrt", "cosmap")  # loss weights sd-scripts applies with sigma_scaled only

_PLAIN_NOISE = "FLUX's trainer draws plain Gaussian noise"
_UNWEIGHTED = "FLUX's trainer returns the loss without SD's loss weightings"
_SIGMAS = "sigmas are drawn by timestep_sampling (it bounds only sd-scripts' validation timesteps)"
# Options flux_train_network.py does not read (its FluxNetworkTrainer overrides what would read them): set
# aside before the SD rules run, so sd-scripts' FLUX result is what the config trains.
NOT_READ: dict[str, str] = {
    "v2": "FLUX.1 is no SD2 model",
    "v_parameterization": "a flow model is trained on the velocity (model_prediction_type)",
    "clip_skip": "FLUX uses CLIP-L's pooled output only",
    "max_token_length": "FLUX captions are T5 tokens (t5xxl_max_token_length)",
    "noise_offset": _PLAIN_NOISE,
    "noise_offset_type": _PLAIN_NOISE,
    "adaptive_noise_scale": _PLAIN_NOISE,
    "noise_offset_random_strength": _PLAIN_NOISE,
    "multires_noise_iterations": _PLAIN_NOISE,
    "multires_noise_discount": _PLAIN_NOISE,
    "min_snr_gamma": _UNWEIGHTED,
    "scale_v_pred_loss_like_noise_pred": _UNWEIGHTED,
    "v_pred_like_loss": _UNWEIGHTED,
    "debiased_estimation_loss": _UNWEIGHTED,
    "zero_terminal_snr": "FLUX's flow-matching schedule has no DDPM betas to rescale",
    "min_timestep": _SIGMAS,
    "max_timestep": _SIGMAS,
    "sample_sampler": "FLUX samples are drawn with the flow-matching Euler sampler, in lorabake too",
}

_COMPANION = ("clip_l", "t5xxl", "ae")
_COMPANION_REASON = (
    "a companion file of the FLUX.1 model: lorabake finds CLIP-L, T5-XXL and the AE beside the model in the "
    "models folder"
)
_CACHE = (
    "lorabake always caches the text encoders' outputs when the captions are fixed (no shuffle or dropout), "
    "then frees T5-XXL; sd-scripts' switch decides nothing else"
)
_FP8_UNET = "fp8 for the transformer alone: lorabake's fp8_base stores T5-XXL in fp8 too (set fp8_base)"
_SWAP = (
    "swapping blocks to the CPU is not supported yet; ignoring it would need the memory it saved (the whole "
    "transformer on the GPU)"
)
# key -> (refused when on, reason): memory and speed switches; refused where they change memory or numerics.
_SWITCHES: dict[str, tuple[bool, str]] = {
    "fp8_base_unet": (True, _FP8_UNET),
    "blocks_to_swap": (True, _SWAP),
    "split_mode": (True, f"deprecated: sd-scripts turns it into blocks_to_swap 18, and {_SWAP}"),
    "controlnet_model_name_or_path": (True, "training with a FLUX ControlNet is not supported"),
    "show_timesteps": (True, "a timestep display: sd-scripts shows the distribution and exits, untrained"),
    "cpu_offload_checkpointing": (
        False,
        "not supported yet: it moves checkpointed activations to the CPU (about 1 GB, ~15% slower); the "
        "trained result is the same",
    ),
    "mem_eff_save": (False, "a flux_train.py option (saving a full model); flux_train_network.py ignores it"),
    "single_blocks_to_swap": (False, "deprecated: flux_train_network.py no longer reads it"),
    "double_blocks_to_swap": (False, "deprecated: flux_train_network.py no longer reads it"),
    "cache_text_encoder_outputs": (False, _CACHE),
    "cache_text_encoder_outputs_to_disk": (False, _CACHE),
    "flux1_cache_text_encoder_outputs": (False, _CACHE),
    "flux1_cache_text_encoder_outputs_to_disk": (False, _CACHE),
}
_KOHYA_IGNORED = {
    "train_blocks": "kohya_ss passes train_blocks only with split_mode (then as 'single')",
    "enable_all_linear": "read by LoRA_type 'Flux1 OFT' only",
    "t5xxl_lr": "T5-XXL's learning rate, used only with train_t5xxl",
    "show_timesteps_resolution": "used only by show_timesteps",
}

# lora_flux's type_dims: a rank of their own for these modules of every block (0 trains none of them), as
# module paths in BFL's FLUX model, which exclude_patterns matches (worker/training/flux_names.py).
TYPE_DIM_MODULES: dict[str, str] = {
    "img_attn_dim": r"double_blocks\.\d+\.img_attn\..+",
    "txt_attn_dim": r"double_blocks\.\d+\.txt_attn\..+",
    "img_mlp_dim": r"double_blocks\.\d+\.img_mlp\..+",
    "txt_mlp_dim": r"double_blocks\.\d+\.txt_mlp\..+",
    "img_mod_dim": r"double_blocks\.\d+\.img_mod\..+",
    "txt_mod_dim": r"double_blocks\.\d+\.txt_mod\..+",
    "single_dim": r"single_blocks\.\d+\.linear[12]",
    "single_mod_dim": r"single_blocks\.\d+\.modulation\..+",
}
_BLOCKS = {"train_double_block_indices": NUM_DOUBLE_BLOCKS, "train_single_block_indices": NUM_SINGLE_BLOCKS}
# lorabake trains diffusers' split q/k/v (and a single block's MLP input) and fuses them on export.
_SPLIT = (
    "lorabake trains q, k and v (and linear1's MLP part) as separate LoRAs of network_dim, as split_qkv=True "
    "does, and always writes them fused exactly into sd-scripts' qkv/linear1 modules (rank 3x/4x)"
)
_REFUSED_ARGS = {
    "in_dims": "LoRA on FLUX's input and conditioning layers (img_in, time_in, ...) is not supported",
    "ggpo_beta": "LoRA-GGPO is not supported",
    "ggpo_sigma": "LoRA-GGPO is not supported",
    "network_reg_dims": "ranks chosen by module regex are not supported",
    "network_reg_lrs": "learning rates chosen by module regex are not supported",
    "loraplus_lr_ratio": "LoRA+ learning-rate ratios are not supported",
    "loraplus_unet_lr_ratio": "LoRA+ learning-rate ratios are not supported",
    "loraplus_text_encoder_lr_ratio": "LoRA+ learning-rate ratios are not supported",
}
_KOHYA_ARGS = ("train_double_block_indices", "train_single_block_indices", "in_dims", *TYPE_DIM_MODULES)


def names_flux_model(path: Any) -> bool:
    """Whether a model path or hub id names FLUX (flux1-dev.safetensors, black-forest-labs/FLUX.1-dev)."""
    if not isinstance(path, str) or is_blank(path):
        return False
    name = (PureWindowsPath(path) if "\\" in path else PurePosixPath(path.strip())).name
    return re.search(r"flux", name, re.IGNORECASE) is not None


def import_flux_keys(r: Reader, *, kohya: bool) -> str:
    """The FLUX.1 (or Chroma) keys of either file. Runs before the SD rules, which then see none of the keys
    set aside. Returns the model family: "chroma" for model_type chroma (then also put as model_family), else
    "flux1"."""
    for key, why in NOT_READ.items():
        r.set_aside(key, f"flux_train_network.py does not read it: {why}")
    for key, (refuse, why) in _SWITCHES.items():
        if r.has(key) and refuse and not is_off(r.get(key)):
            r.unsupported(key, r.get(key), why)
        r.ignore(key, "off" if refuse else why)
    family = _model_type(r)
    _companions(r, family)
    flow_keys = KOHYA_FLOW_KEYS if kohya else SD_SCRIPTS_FLOW_KEYS
    if family == "chroma":
        for key in ("network_train_unet_only", "text_encoder_lr"):
            r.set_aside(key, _NO_CLIP_L)
        _chroma_guidance(r)
        _chroma_mask(r, kohya)
        flow_keys = tuple(k for k in flow_keys if k not in ("guidance_scale", "apply_t5_attn_mask"))
    _flow_options(r, flow_keys, kohya)
    if kohya:
        _kohya_network(r)
    r.note(
        "FLUX's fused qkv and linear1 modules: lorabake trains their parts as separate LoRAs of network_dim "
        "(sd-scripts' split_qkv=True) and writes them fused exactly; sd-scripts' default (split_qkv off) "
        "trains one LoRA of network_dim on each fused module"
    )


def _model_type(r: Reader) -> str:
    value = r.get("model_type")
    if is_blank(value) or value == "flux":
        r.ignore("model_type", "flux: FLUX.1, as lorabake trains")
        return "flux1"
    if value == "chroma":
        r.put("model_family", "chroma", "model_type")
        return "chroma"
    r.unsupported(
        "model_type", value, "lorabake trains FLUX.1 (flux) and Chroma (chroma) text-to-image LoRAs, not this"
    )
    return "flux1"


def _chroma_guidance(r: Reader) -> None:
    """guidance_scale must be 0 (what lorabake feeds Chroma's approximator); sd-scripts' default is 3.5.
    kohya_ss's 0 is a real 0 here: lora_gui.py re-emits guidance_scale for Chroma even at 0."""
    key = "guidance_scale"
    if not r.has(key):
        why = f"not in the file, so sd-scripts trains with its default; {_CHROMA_GUIDANCE}"
        r.unsupported(key, SD_SCRIPTS_DEFAULTS[key], why)
        return
    try:
        value = number(r.get(key))
    except ValueError as exc:
        r.unsupported(key, r.get(key), str(exc))
        return
    if value == 0:
        r.put(key, 0.0, key)
    else:
        r.unsupported(key, r.get(key), _CHROMA_GUIDANCE)


def _chroma_mask(r: Reader, kohya: bool) -> None:
    """sd-scripts asserts apply_t5_attn_mask for Chroma; kohya_ss always passes it true for Chroma."""
    key = "apply_t5_attn_mask"
    if kohya:
        r.put(key, True, key if r.has(key) else "model_type")
        if r.has(key) and r.get(key) is not True:
            r.note("apply_t5_attn_mask: kohya_ss passes true for Chroma whatever the field says")
    elif r.has(key) and boolean(r.get(key)) is True:
        r.put(key, True, key)
    else:
        r.unsupported(key, r.get(key, False), "sd-scripts stops on a Chroma config without it (an assert)")


def _companions(r: Reader, family: str = "flux1") -> None:
    files = []
    for key in _COMPANION:
        value = r.get(key)
        if family == "chroma" and key == "clip_l":
            r.ignore(key, _NO_CLIP_L)
            continue
        if isinstance(value, str) and value.lower().endswith((".safetensors", ".sft")):
            files.append((PureWindowsPath(value) if "\\" in value else PurePosixPath(value)).name)
        r.ignore(key, _COMPANION_REASON)
    if files:
        label = "Chroma" if family == "chroma" else "FLUX.1"
        r.note(f"{label}'s companion files: put {', '.join(files)} beside the model in the models folder")


def _flow_options(r: Reader, keys: tuple[str, ...], kohya: bool) -> None:
    """sd-scripts' flow options; kohya_ss passes no "", 0 or false: its off values are sd-scripts' default."""
    values: dict[str, Any] = {}
    for key in keys:
        if not r.has(key):
            continue
        raw = r.get(key)
        values[key] = SD_SCRIPTS_DEFAULTS[key] if kohya and is_off(raw) else raw
        if values[key] not in (None, False) and values[key] != raw:
            r.note(f"{key} {raw!r}: kohya_ss passes nothing, so sd-scripts trains with {values[key]!r}")
    prediction = values.get("model_prediction_type", SD_SCRIPTS_DEFAULTS["model_prediction_type"])
    if "model_prediction_type" not in values and not kohya:
        r.unsupported(
            "model_prediction_type",
            prediction,
            f"not in the file, so sd-scripts trains its default: {_PREDICTIONS_REFUSED[prediction]}",
        )
    for key, value in values.items():
        try:
            _flow_option(r, key, value, prediction)
        except ValueError as exc:
            r.unsupported(key, r.get(key), str(exc))


def _flow_option(r: Reader, key: str, value: Any, prediction: Any) -> None:
    if key == "model_prediction_type":
        if value == "raw":
            r.put(key, "raw", key)
        else:
            why = _PREDICTIONS_REFUSED.get(value, "sd-scripts' choices are raw, additive, sigma_scaled")
            r.unsupported(key, value, why)
    elif key == "timestep_sampling":
        if value not in _TIMESTEP_SAMPLINGS:
            raise ValueError(f"sd-scripts' choices are {', '.join(_TIMESTEP_SAMPLINGS)}")
        r.put(key, value, key)
    elif key == "weighting_scheme":
        _weighting(r, text(value), prediction)
    elif key == "t5xxl_max_token_length":
        r.put(key, integer(value), key)
    elif key == "apply_t5_attn_mask":
        r.put(key, boolean(value), key)
    else:
        r.put(key, number(value), key)


def _weighting(r: Reader, name: str, prediction: Any) -> None:
    key = "weighting_scheme"
    if name in _WEIGHTINGS:
        r.put(key, _WEIGHTINGS[name], key)  # sd-scripts: "uniform and none are the same behavior"
    elif name in _LOSS_WEIGHTINGS and prediction == "raw":
        r.put(key, "none", key)
        r.note(
            f"weighting_scheme {name!r} with model_prediction_type raw: sd-scripts then draws sigmas "
            "uniformly and weights no loss, which is 'none'"
        )
    elif name in _LOSS_WEIGHTINGS:
        r.unsupported(key, name, "a loss weighting sd-scripts applies with sigma_scaled predictions only")
    else:
        r.unsupported(key, name, f"sd-scripts' choices are {', '.join([*_WEIGHTINGS, *_LOSS_WEIGHTINGS])}")


# --- networks.lora_flux's network_args (sd-scripts) and the kohya_ss fields passed as them ------------------


def put_lora_flux_args(r: Reader, args: dict[str, str], network_dim: Any) -> None:
    """sd-scripts' network_args for networks.lora_flux, each accounted for as `network_args.NAME`."""
    left_out = None
    if "train_blocks" in args:
        left_out = _train_blocks(r, args.pop("train_blocks"))
    for name, value in args.items():
        key = f"network_args.{name}"
        if name in _BLOCKS and left_out == name:
            drop(r, key, value, f"train_blocks leaves out all {name.split('_')[1]} blocks, whatever it lists")
        else:
            put_lora_flux_arg(r, key, name, value, network_dim)
    if "network_args" not in r.done:
        r.ignore("network_args", "no entry changes what lorabake trains (see the notes)")


def _train_blocks(r: Reader, value: str) -> str | None:
    """lora_flux's train_blocks as block indices; the indices argument it makes moot, if any."""
    if value == "all":
        drop(r, "network_args.train_blocks", value, "every block, lorabake's default")
        return None
    if value not in ("single", "double"):
        r.unsupported("network_args.train_blocks", value, "sd-scripts takes all, single or double")
        return None
    other = "double" if value == "single" else "single"
    r.put(f"train_{other}_block_indices", "none", "network_args")
    return f"train_{other}_block_indices"


def put_lora_flux_arg(r: Reader, key: str, name: str, value: Any, network_dim: Any) -> None:
    """One lora_flux argument; `key` names it in the result (network_args.NAME, or the kohya_ss key)."""
    source = key if r.has(key) else key.split(".", 1)[0]
    if name in _BLOCKS:
        try:
            r.put(name, block_selection(str(value).strip(), _BLOCKS[name]), source)
        except ValueError as exc:
            r.unsupported(key, value, str(exc))
    elif name in TYPE_DIM_MODULES:
        _type_dim(r, key, source, name, value, network_dim)
    elif name == "split_qkv":
        drop(r, key, value, _SPLIT)
    elif name == "train_t5xxl":
        if value is True or str(value) == "True":  # lora_flux compares with the string "True"
            r.unsupported(key, value, "T5-XXL LoRA is not supported: T5 stays frozen (CLIP-L may get one)")
        else:
            drop(r, key, value, "off: T5-XXL stays frozen, as lorabake trains")
    elif name in ("rank_dropout", "module_dropout"):
        if is_off(value):
            drop(r, key, value, "0: no dropout")
        else:
            r.unsupported(key, value, f"{name.replace('_', ' ')} is not supported")
    elif name in ("conv_dim", "conv_alpha"):
        drop(r, key, value, "FLUX's blocks have no 3x3 convolutions: networks.lora_flux trains none with it")
    elif name in ("include_patterns", "exclude_patterns"):
        drop(
            r, key, value, "networks.lora_flux does not read it, so sd-scripts trains without it (lorabake's "
            "config has include_patterns / exclude_patterns to set directly)",
        )  # fmt: skip
    elif name == "verbose":
        drop(r, key, value, "a logging switch of networks.lora_flux")
    elif name in _REFUSED_ARGS:
        r.unsupported(key, value, _REFUSED_ARGS[name])
    else:
        r.unsupported(key, value, f"{name!r} is not an argument of networks.lora_flux that lorabake has")


def block_selection(value: str, total: int) -> str:
    """sd-scripts' block selection ("all", "none" or "" for none, "0,1,4-5"), checked as its
    parse_block_selection asserts; "" becomes "none"."""
    if value in ("all", "none", ""):
        return value or "none"
    for part in value.split(","):
        try:
            bounds = [int(b) for b in part.split("-")]  # int() strips spaces, as in sd-scripts
        except ValueError:
            raise ValueError(f"{part.strip()!r} is no block index or range (sd-scripts stops)") from None
        if len(bounds) > 2 or not 0 <= bounds[0] <= bounds[-1] < total:
            raise ValueError(f"{part.strip()!r} is not within blocks 0-{total - 1} (sd-scripts stops)")
    return value


def _type_dim(r: Reader, key: str, source: str, name: str, value: Any, network_dim: Any) -> None:
    try:
        dim = integer(value)
    except ValueError as exc:
        r.unsupported(key, value, str(exc))
        return
    if dim is None:
        drop(r, key, value, "empty")
    elif dim == 0:  # lora_flux skips these modules: the same modules left out by an exclude pattern
        patterns = [*r.config.get("exclude_patterns", []), TYPE_DIM_MODULES[name]]
        r.put("exclude_patterns", patterns, source)
        r.note(f"{name}=0: those modules get no LoRA (exclude_patterns {TYPE_DIM_MODULES[name]!r})")
    elif dim == network_dim:
        drop(r, key, value, "the rank every module has (network_dim)")
    else:
        r.unsupported(key, value, "a rank of its own for these modules: lorabake trains all at network_dim")


def _kohya_network(r: Reader) -> None:
    """kohya_ss's FLUX.1 network fields, which lora_gui.py passes as lora_flux's network_args when set."""
    try:
        network_dim = integer(r.get("network_dim"))
    except ValueError:
        network_dim = None
    for key in _KOHYA_ARGS:
        if r.has(key) and not r.get(key):  # lora_gui.py passes only values that are set
            r.ignore(key, "empty: kohya_ss does not pass it")
        elif r.has(key):
            put_lora_flux_arg(r, key, key, r.get(key), network_dim)
    for key in ("split_qkv", "train_t5xxl"):
        if r.has(key):
            put_lora_flux_arg(r, key, key, r.get(key), network_dim)
    if r.has("train_lora_ggpo") and not is_off(r.get("train_lora_ggpo")):
        r.unsupported("train_lora_ggpo", r.get("train_lora_ggpo"), _REFUSED_ARGS["ggpo_beta"])
    r.ignore("train_lora_ggpo", "off")
    for key in ("ggpo_beta", "ggpo_sigma"):
        r.ignore(key, "passed only with train_lora_ggpo")
    for key, why in _KOHYA_IGNORED.items():
        r.ignore(key, why)
