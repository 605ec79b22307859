"""A kohya_ss GUI configuration JSON (LoRA tab, "Configuration file > Save") read into TrainingConfig fields.

Every key of the file ends up in exactly one place:
- `config`: fields we train with the same meaning the GUI gives them (bmaltais/kohya_ss lora_gui.py, as it
  turns the GUI values into sd-scripts arguments: 0 often means "not set", lr_warmup is a percent, ...);
- `ignored`: keys with no effect here (paths, UI and machine settings, options that are off), with why;
- `unsupported`: values we cannot train with the same meaning, with the value and why. Nothing is dropped
  silently and no value is bent into something else.
A FLUX.1 config (flux1_checkbox; kohya_ss then runs flux_train_network.py) has its FLUX keys read by
flux_import.py. The returned config validates as a TrainingConfig once `base_model` is present (it is filled
from pretrained_model_name_or_path when the file names one). Pure: no torch.
"""

from __future__ import annotations

from typing import Any

from shared.config.flux_import import import_flux_keys
from shared.config.import_common import (
    DATA_FIELDS,
    MISSING,
    OPTIMIZERS,
    OTHER_FAMILY_KEYS,
    OTHER_FAMILY_PREFIXES,
    SCHEDULERS,
    ImportResult,
    Reader,
    always_ignored,
    boolean,
    integer,
    is_blank,
    is_default_timestep,
    is_off,
    number,
    parse_optimizer_args,
    put_base_model,
    put_lycoris_algo,
    put_lycoris_option,
    put_optimizer_args,
    put_resolution,
    reasons,
    text,
    validate,
)
from shared.config.sample_prompts import normalize_sampler, parse_prompt_line

__all__ = ["KohyaImport", "import_kohya_config", "parse_optimizer_args"]

KohyaImport = ImportResult  # the name callers know
PATH_REASON, OUTPUT_PATH_REASON, MACHINE_REASON, TRACKING_REASON = reasons("kohya_ss")
_ALWAYS_IGNORED = always_ignored("kohya_ss")

_FAMILY_CHECKBOXES = ("flux1_checkbox", "sd3_checkbox", "hunyuan_image_checkbox", "anima_checkbox",
                      "lumina_checkbox")  # fmt: skip
# Network options that only LyCORIS / other network types read.
_LYCORIS_KEYS = {"LyCORIS_preset", "factor", "bypass_mode", "dora_wd", "use_cp", "use_tucker", "use_scalar",
                 "rank_dropout_scale", "constrain", "rescaled", "train_norm", "decompose_both",
                 "train_on_input", "unit"}  # fmt: skip
# kohya_ss's LyCORIS LoRA types lorabake trains -> LyCORIS' algo (the others are refused by name).
_LYCORIS_TYPES = {"LyCORIS/LoHa": "loha", "LyCORIS/LoKr": "lokr", "LyCORIS/LoCon": "locon"}
_NOT_LYCORIS_ALGO_KEYS = {"train_on_input", "unit"}  # (IA)^3's and DyLoRA's: ignored below for these types
_PRECISION_REASONS = {
    "full_fp16": "lorabake keeps the trained LoRA weights in fp32 (mixed precision)",
    "full_bf16": "lorabake keeps the trained LoRA weights in fp32 (mixed precision)",
}


def import_kohya_config(data: dict[str, Any]) -> KohyaImport:
    """Reads a kohya_ss GUI LoRA configuration (the JSON its "Save" writes)."""
    r = Reader(data)
    flux = _model(r)
    _resolution(r)
    _length(r)
    _learning_rates(r)
    chroma = r.config.get("model_family") == "chroma"  # no CLIP-L: nothing but the transformer trains
    if flux and not chroma and "text_encoder_lr" in r.config:  # kohya_ss: unet only when the TE rate is 0
        r.put("network_train_unet_only", r.config["text_encoder_lr"] == 0, r.source["text_encoder_lr"])
    _scheduler(r)
    _optimizer(r)
    _network(r, flux)
    _noise(r)
    _precision_and_saving(r)
    _data(r)
    _sampling(r)
    _rest(r, flux)
    validate(r)
    if any(u["key"] == "optimizer" for u in r.result.unsupported):
        r.note(
            f"optimizer {r.get('optimizer')!r} is not carried over, so the config trains with AdamW (our "
            "default): check unet_lr / text_encoder_lr, which were chosen for the other optimizer"
        )
    return r.result


def _set(value: Any) -> bool:
    """Read, and not 0 / empty."""
    return value is not MISSING and value is not None and value != 0


def _model(r: Reader) -> bool:
    """base_model and model_family; True for FLUX.1 (kohya_ss runs flux_train_network.py for it)."""
    put_base_model(r, "pretrained_model_name_or_path")
    sdxl_checked = r.get("sdxl") in (True, "true", "True")  # kohya_ss picks sdxl_train_network.py first
    flux = r.has("flux1_checkbox") and not is_off(r.get("flux1_checkbox")) and not sdxl_checked
    for key in _FAMILY_CHECKBOXES:
        if flux and key == "flux1_checkbox":
            r.put("model_family", "flux1", key)
        elif r.has(key) and not is_off(r.get(key)):
            why = "lorabake trains SD1.x, SD2.x, SDXL, FLUX.1 and Chroma LoRAs only"
            if key == "flux1_checkbox":
                why = "sdxl is checked too, so kohya_ss runs sdxl_train_network.py"
            r.unsupported(key, r.get(key), why)
        r.ignore(key, "off")
    if flux:
        import_flux_keys(r, kohya=True)  # sets aside v2, v_parameterization and the other SD-only keys
        r.used("sdxl", "model_family")
        return True
    v2 = r.read("v2", boolean)
    sdxl = r.read("sdxl", boolean)
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
    r.direct("v_parameterization", "v_parameterization", boolean)
    return False


def _resolution(r: Reader) -> None:
    if r.has("max_resolution"):
        put_resolution(r, "max_resolution", r.get("max_resolution"))


def _length(r: Reader) -> None:
    epoch = r.read("epoch", integer)
    max_epochs = r.read("max_train_epochs", integer)
    max_steps = r.read("max_train_steps", integer)
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


def _learning_rates(r: Reader) -> None:
    base, unet, te = (r.read(k, number) for k in ("learning_rate", "unet_lr", "text_encoder_lr"))
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


def _scheduler(r: Reader) -> None:
    name = r.get("lr_scheduler", MISSING)
    if name is not MISSING:
        if name in SCHEDULERS:
            r.put("lr_scheduler", name, "lr_scheduler")
        else:
            r.unsupported("lr_scheduler", name, f"lorabake's schedulers are {', '.join(sorted(SCHEDULERS))}")
    for key in ("lr_scheduler_args", "lr_scheduler_type"):
        if r.has(key) and not is_off(r.get(key)):
            r.unsupported(key, r.get(key), "custom scheduler classes and arguments are not supported")

    # Warmup: lr_warmup is a percent of the total steps, lr_warmup_steps (when > 0) wins over it (kohya_ss's
    # resolve_lr_warmup_steps). A percent reaches sd-scripts as a ratio < 1 of the total steps: ours too.
    percent = r.read("lr_warmup", number)
    steps = r.read("lr_warmup_steps", number)
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

    cycles = r.read("lr_scheduler_num_cycles", integer)
    if name == "cosine_with_restarts":
        if _set(cycles):
            r.put("lr_scheduler_num_cycles", cycles, "lr_scheduler_num_cycles")
        else:
            epoch = r.read("epoch", integer)
            epoch = epoch if _set(epoch) else 1
            r.put("lr_scheduler_num_cycles", epoch, "lr_scheduler_num_cycles")
            r.note(f"lr_scheduler_num_cycles is empty: kohya_ss then restarts once per epoch ({epoch})")
    r.ignore("lr_scheduler_num_cycles", "used only by cosine_with_restarts")
    power = r.read("lr_scheduler_power", number)
    if name == "polynomial" and _set(power):
        r.put("lr_scheduler_power", power, "lr_scheduler_power")
    r.ignore(
        "lr_scheduler_power",
        "used only by the polynomial scheduler" if name != "polynomial" else "empty: sd-scripts' default 1.0",
    )


def _optimizer(r: Reader) -> None:
    optimizer = "AdamW"
    if r.has("optimizer"):
        mapped = OPTIMIZERS.get(str(r.get("optimizer")).lower())
        if mapped is None:
            r.unsupported(
                "optimizer",
                r.get("optimizer"),
                f"lorabake's optimizers are {', '.join(OPTIMIZERS.values())}",
            )
        else:
            optimizer = mapped
            r.put("optimizer", mapped, "optimizer")
    put_optimizer_args(r, "optimizer_args", optimizer)


def _network(r: Reader, flux: bool) -> None:
    r.direct("network_dim", "network_dim", integer)
    r.direct("network_alpha", "network_alpha", number)
    lora_type = r.get("LoRA_type", "Standard")
    lycoris_algo = None if flux else _LYCORIS_TYPES.get(lora_type)
    if not flux and (lora_type == "Kohya LoCon" or lycoris_algo is not None):
        network_type = "lora"
        if lycoris_algo is not None:  # kohya_ss passes algo=<...> to lycoris.kohya for these types
            network_type = put_lycoris_algo(r, "LoRA_type", lycoris_algo) or "lora"
        conv_dim = r.read("conv_dim", integer)
        r.used("LoRA_type")
        if _set(conv_dim):
            r.put("conv_dim", conv_dim, "conv_dim")
            r.direct("conv_alpha", "conv_alpha", number)
            r.note(f"LoRA_type {lora_type!r}: conv_dim/conv_alpha also train the 3x3 convolutions")
        else:
            r.ignore("conv_dim", f"0: {lora_type!r} with conv_dim 0 trains no convolutions")
            r.ignore("conv_alpha", "conv_dim is 0")
        if lycoris_algo is not None:
            for key in sorted(_LYCORIS_KEYS - _NOT_LYCORIS_ALGO_KEYS):
                if r.has(key):
                    put_lycoris_option(r, key, key, r.get(key), network_type)
    else:
        if lora_type == ("Flux1" if flux else "Standard"):
            r.used("LoRA_type")
        elif flux:
            r.unsupported(
                "LoRA_type",
                lora_type,
                "lorabake trains FLUX.1 as LoRA_type 'Flux1' (networks.lora_flux); kohya_ss itself refuses "
                "FLUX.1 with 'Standard' or LoCon, and OFT and LyCORIS are not trained on FLUX.1",
            )
        else:
            r.unsupported(
                "LoRA_type",
                lora_type,
                "lorabake trains 'Standard', 'Kohya LoCon' and LyCORIS' 'LyCORIS/LoHa', 'LyCORIS/LoKr' and "
                "'LyCORIS/LoCon'; the other network types are different networks with other files",
            )
        for key in ("conv_dim", "conv_alpha"):
            r.ignore(
                key, f"LoRA_type {lora_type!r}: kohya_ss passes conv_dim/conv_alpha only for LoCon types"
            )
    for key in sorted(_LYCORIS_KEYS):
        r.ignore(key, "a LyCORIS/DyLoRA option, not read by Kohya's LoRA")


def _noise(r: Reader) -> None:
    kind = r.get("noise_offset_type", "Original")
    if kind == "Original":
        r.used("noise_offset_type", "noise_offset")
        offset = r.read("noise_offset", number)
        if offset is not MISSING:
            r.put("noise_offset", offset or None, "noise_offset")
        adaptive = r.read("adaptive_noise_scale", number)
        if _set(adaptive):
            r.put("adaptive_noise_scale", adaptive, "adaptive_noise_scale")
        r.ignore("adaptive_noise_scale", "0: off")
        for key in ("multires_noise_iterations", "multires_noise_discount"):
            r.ignore(key, "used only with noise_offset_type 'Multires'")
        return
    r.unsupported("noise_offset_type", kind, "lorabake has the 'Original' noise offset only")
    for key in ("noise_offset", "adaptive_noise_scale"):
        r.ignore(key, f"kohya_ss passes it only with noise_offset_type 'Original', not {kind!r}")
    if not is_off(r.get("multires_noise_iterations")):
        r.unsupported("multires_noise_iterations", r.get("multires_noise_iterations"), "multires noise")
    r.ignore("multires_noise_iterations", "0: off")
    r.ignore("multires_noise_discount", "multires noise is not used")


def _precision_and_saving(r: Reader) -> None:
    r.direct("mixed_precision", "mixed_precision", text)
    r.direct("save_precision", "save_precision", text)
    for key in ("full_fp16", "full_bf16"):
        if r.has(key) and not is_off(r.get(key)):
            r.unsupported(key, r.get(key), _PRECISION_REASONS[key])
        r.ignore(key, "off")
    r.direct("fp8_base", "fp8_base", boolean)  # sd-scripts' name and meaning, FLUX.1's too
    r.optional("vae_batch_size", "vae_batch_size")  # kohya_ss passes nothing for 0: lorabake's own choice
    for key in ("save_every_n_epochs", "save_every_n_steps", "save_last_n_epochs", "save_last_n_steps"):
        r.optional(key, key)
    if r.has("save_model_as"):
        if str(r.get("save_model_as")).lower() == "safetensors":
            r.ignore("save_model_as", "lorabake always writes .safetensors")
        else:
            r.unsupported("save_model_as", r.get("save_model_as"), "lorabake writes .safetensors only")
    r.direct("output_name", "output_name", text)


def _data(r: Reader) -> None:
    if r.has("caption_extension"):
        value = r.get("caption_extension")
        if is_blank(value):
            r.put("caption_extension", ".caption", "caption_extension")
            r.note("caption_extension is empty: sd-scripts then reads '.caption' files (its default)")
        else:
            r.direct("caption_extension", "caption_extension", text)
    for key, name, reader in DATA_FIELDS:
        r.direct(key, name, reader)
    for key in ("keep_tokens_separator", "caption_prefix", "caption_suffix"):
        value = r.read(key, text)
        if value is not MISSING:
            r.put(key, value or None, key)
    r.optional("min_snr_gamma", "min_snr_gamma", number)
    r.optional("clip_skip", "clip_skip")  # kohya_ss passes no --clip_skip for 0
    r.optional("max_token_length", "max_token_length")
    seed = r.read("seed", integer)
    if seed is not MISSING:
        r.put("seed", seed if seed else None, "seed")
        if seed == 0:
            r.note(
                "seed 0: kohya_ss passes no seed for 0, so a random one is picked (and recorded on the job)"
            )
    if r.has("reg_data_dir") and not is_blank(r.get("reg_data_dir")):
        r.note(
            "regularization images: put them in the dataset zip as reg/N_class/ (kohya_ss's "
            "reg_data_dir), beside img/N_trigger class/"
        )
    r.ignore("reg_data_dir", PATH_REASON)
    if not is_blank(r.get("dataset_config")):
        r.unsupported(
            "dataset_config",
            r.get("dataset_config"),
            "a dataset TOML; upload the images as Kohya folders (img/N_trigger class/) instead",
        )
    r.ignore("dataset_config", PATH_REASON)


def _sampling(r: Reader) -> None:
    r.optional("sample_every_n_steps", "sample_every_n_steps")
    r.optional("sample_every_n_epochs", "sample_every_n_epochs")
    r.direct("sample_at_first", "sample_at_first", boolean)
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


def _rest(r: Reader, flux: bool) -> None:
    for key, reason in _ALWAYS_IGNORED.items():
        r.ignore(key, reason)
    loss = str(r.get("loss_type", "l2")).lower()
    other_family = (
        "an SD3/other-model option; kohya_ss does not pass it for FLUX.1"
        if flux
        else "a FLUX.1/SD3/other-model option; not used for SD1.x/SD2.x/SDXL"
    )
    for key in list(r.data):
        if key in r.done:
            continue
        value = r.data[key]
        if key.startswith(OTHER_FAMILY_PREFIXES) or key in OTHER_FAMILY_KEYS:
            r.ignore(key, other_family)
        elif key == "additional_parameters" and not is_off(value):
            r.unsupported(key, value, "extra sd-scripts command-line flags cannot be passed through")
        elif key == "resume" and not is_off(value):
            r.unsupported(key, value, "a kohya_ss state folder; lorabake resumes its own jobs")
        elif key == "vae" and not is_off(value):
            r.unsupported(key, value, "a separate VAE is not supported; the base model's VAE is used")
        elif key in ("max_timestep", "min_timestep") and is_default_timestep(key, value):
            r.ignore(key, "sd-scripts' default range (all 1000 timesteps), as lorabake trains")
        elif key == "loss_type" and loss == "l2":
            r.ignore(key, "l2 (MSE) is the loss lorabake trains with")
        elif key in ("huber_schedule", "huber_c", "huber_scale") and loss == "l2":
            r.ignore(key, "a Huber loss option; loss_type is l2")
        elif is_off(value):
            r.ignore(key, "off or empty: nothing to carry over")
        else:
            r.unsupported(key, value, "lorabake has no equivalent setting")
