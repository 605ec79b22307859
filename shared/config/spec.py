"""The training config a client submits, in Kohya's vocabulary.

Validated once at the API (unknown fields and impossible values are 422s naming the field) and read
unchanged by the worker and by ``lorabake train``. Pure pydantic: no torch.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from shared.config.captioning import CaptionConfig
from shared.config.sample_prompts import DEFAULT_SAMPLER, normalize_sampler, parse_prompt_line
from shared.model_families import ModelFamily as KnownFamily

Optimizer = Literal["AdamW", "AdamW8bit", "Lion", "Prodigy", "Adafactor"]
LrScheduler = Literal[
    "constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial"
]
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
SavePrecision = Literal["fp16", "bf16", "float"]
ModelFamily = Literal["auto"] | KnownFamily  # the families: shared/model_families.py
TimestepSampling = Literal["sigma", "uniform", "sigmoid", "shift", "flux_shift"]
WeightingScheme = Literal["none", "logit_normal", "mode"]
# lora also covers LoCon (conv_dim); loha / lokr are LyCORIS algorithms (network_args algo=...).
NetworkType = Literal["lora", "loha", "lokr"]
BaseQuantization = Literal["none", "fp8", "int8", "nf4"]
# vae_batch_size unset: images encoded at once while caching, up to this many pixels and images (a float32
# encode of 4 images at 1024 px holds about 10 GiB; 4 at 512 px is what lorabake always did)
AUTO_VAE_PIXELS, AUTO_VAE_BATCH = 4 * 512 * 512, 4


def vae_batch_for(vae_batch_size: int | None, pixels: int) -> int:
    """Images the VAE encodes at once for a bucket of `pixels` (width x height): vae_batch_size, else as
    many as make about one megapixel, from 1 to 4 (a float32 encode holds ~2.5 kB per pixel)."""
    if vae_batch_size is not None:
        return vae_batch_size
    return max(1, min(AUTO_VAE_BATCH, AUTO_VAE_PIXELS // max(1, pixels)))


# A1111 uses the file name as the LoRA's prompt name (<lora:NAME:1>): keep it a plain, portable file stem.
_OUTPUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Kohya folder tokens are words separated by spaces; no path separators may sneak in through them.
_TOKEN = re.compile(r"^[^/\\\x00-\x1f]{1,200}$")
_CAPTION_EXTENSION = re.compile(r"^\.[A-Za-z0-9_-]{1,16}$")


def _sample_prompt_line(line: str) -> str:
    parse_prompt_line(line)  # a bad flag or value is a 422 naming config.sample_prompts.N
    return line


# One Kohya prompt line: `prompt --n negative --w 512 --h 512 --d 1 --l 7.5 --s 20 --ss euler_a`.
SamplePromptLine = Annotated[str, AfterValidator(_sample_prompt_line)]

# optimizer_args: the keyword arguments each optimizer's constructor takes besides params and lr (its
# package's signature; the worker checks again against the installed version). Kohya passes them unchecked.
OPTIMIZER_ARGS: dict[str, frozenset[str]] = {
    "AdamW": frozenset({"betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "fused"}),
    "AdamW8bit": frozenset(
        {
            "betas",
            "eps",
            "weight_decay",
            "amsgrad",
            "min_8bit_size",
            "percentile_clipping",
            "block_wise",
            "is_paged",
        }
    ),
    "Lion": frozenset({"betas", "weight_decay", "use_triton", "decoupled_weight_decay"}),
    "Prodigy": frozenset(
        {
            "betas",
            "beta3",
            "eps",
            "weight_decay",
            "decouple",
            "use_bias_correction",
            "safeguard_warmup",
            "d0",
            "d_coef",
            "growth_rate",
            "fsdp_in_use",
            "slice_p",
        }
    ),
    "Adafactor": frozenset(
        {
            "eps",
            "clip_threshold",
            "decay_rate",
            "beta1",
            "weight_decay",
            "scale_parameter",
            "relative_step",
            "warmup_init",
        }
    ),
}


class NetworkWeights(BaseModel):
    """sd-scripts' --network_weights: the LoRA file a run starts from instead of a random init. Either an
    epoch of one of the caller's jobs (`job`, `epoch`), or a `.safetensors` sent as the multipart part
    `network_weights` of POST /v1/jobs (the API then records `file` and `sha256` here)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: str | None = Field(None, max_length=32, description="One of your jobs: start from its `epoch` file.")
    epoch: int | None = Field(None, ge=1, le=1000, description="That job's epoch (the last: its final file).")
    file: str | None = Field(None, max_length=500, description="Set by the API: the uploaded file's name.")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="Set by the API: its sha256 (the worker checks it)."
    )

    @model_validator(mode="after")
    def _job_and_epoch(self) -> NetworkWeights:
        if (self.job is None) != (self.epoch is None):
            raise ValueError("network_weights needs both `job` and `epoch` (or neither: an uploaded file)")
        if self.job is not None and self.file is not None:
            raise ValueError("network_weights is either a job's epoch or an uploaded file, not both")
        return self


class TrainingConfig(BaseModel):
    """One LoRA training run. Field names follow Kohya's sd-scripts where one exists."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: Literal["character", "style", "concept"] | None = Field(
        None,
        description="Fill unset fields from the guide's advice (shared/config/presets.py, docs/presets.md).",
    )
    output_name: str = Field("lora", description="File stem: `{output_name}-{epoch:06d}.safetensors`.")
    base_model: str = Field(
        ...,
        min_length=1,
        description="A diffusers folder or single .safetensors/.ckpt in the models directory, or a hub id.",
    )
    model_family: ModelFamily = Field(
        "auto",
        description="SD1.x, SD2.x, SDXL or FLUX.1 base; 'auto' detects it from the base model's config/keys.",
    )
    v_parameterization: bool | None = Field(
        None,
        description="Train on v targets (SD2.x 768-v); None: as the base model's scheduler config says.",
    )
    resolution: int = Field(512, ge=64, le=2048, multiple_of=8, description="Training side length in pixels.")
    repeats: int = Field(
        1, ge=1, le=1000, description="Repeats for images not in a `N_trigger class` folder (flat layout)."
    )
    trigger_word: str | None = Field(None, description="Caption for uncaptioned images in a flat layout.")
    class_word: str | None = Field(None, description="Class appended to the trigger for uncaptioned images.")
    epochs: int = Field(10, ge=1, le=1000, description="Kohya's max_train_epochs.")
    batch_size: int = Field(1, ge=1, le=64, description="Kohya's train_batch_size.")
    gradient_accumulation_steps: int = Field(1, ge=1, le=128)
    unet_lr: float = Field(1e-4, gt=0, le=1.0)
    text_encoder_lr: float = Field(
        5e-5, ge=0, le=1.0, description="0 trains the UNet only (the text encoder is not given a LoRA)."
    )
    network_dim: int = Field(32, ge=1, le=1024, description="LoRA rank.")
    network_alpha: float = Field(16.0, gt=0, le=1024, description="Scale is alpha / rank, as in Kohya.")
    optimizer: Optimizer = "AdamW"
    lr_scheduler: LrScheduler = "constant"
    lr_warmup_steps: int | float = Field(
        0, ge=0, le=100_000, description="Warmup steps, or a float < 1: that ratio of the total steps."
    )
    lr_scheduler_num_cycles: int = Field(1, ge=1, le=1000, description="Restarts of cosine_with_restarts.")
    lr_scheduler_power: float = Field(1.0, gt=0, le=100, description="Power of the polynomial scheduler.")
    optimizer_args: dict[str, Any] = Field(
        default_factory=dict,
        description='Extra optimizer keyword arguments, e.g. {"weight_decay": 0.1, "betas": [0.9, 0.99]}.',
    )
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables gradient clipping.")
    mixed_precision: MixedPrecision = Field(
        "auto",
        description="auto: what the worker that runs the job does best (bf16 on Ampere or newer GPUs, fp16 "
        "on older ones, no on a CPU), recorded in the files; or Kohya's no / fp16 / bf16.",
    )
    save_precision: SavePrecision = "fp16"
    fp8_base: bool = Field(
        False,
        description="sd-scripts' --fp8_base: the frozen base weights (the denoiser's Linear layers, and "
        "T5-XXL) stored as float8 e4m3fn, computed in the training dtype; base_quantization 'fp8' spelled as "
        "sd-scripts does.",
    )
    base_quantization: BaseQuantization = Field(
        "none",
        description="Store the frozen denoiser's Linear weights (and T5-XXL's) in less memory, computed in "
        "the training dtype; the LoRA stays float32 and its file is unchanged: fp8 (float8 e4m3fn) or int8 "
        "(weight-only, about half of bf16), nf4 (4-bit, CUDA workers with bitsandbytes only).",
    )
    save_every_n_epochs: int | None = Field(
        1, ge=1, le=1000, description="Save a LoRA every N epochs; the last epoch is always saved."
    )
    save_every_n_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="Also save `{output_name}-step{step:08d}` every N steps."
    )
    save_last_n_epochs: int | None = Field(
        None, ge=1, le=1000, description="Keep only the last N epoch files (older ones are deleted)."
    )
    save_last_n_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="Keep step files of the last N steps (older ones are deleted)."
    )
    # --- text encoding, noise and loss (Kohya's names and meanings) ---
    clip_skip: int | None = Field(
        None, ge=1, le=12, description="1 (or unset) = last CLIP layer, 2 = penultimate (+ final layer norm)."
    )
    max_token_length: Literal[75, 150, 225] | None = Field(
        None, description="Caption tokens: 150/225 encode 2/3 windows of 75 and join them (unset = 75)."
    )
    noise_offset: float | None = Field(None, ge=0, le=1, description="Offset noise strength (~0.05-0.1).")
    adaptive_noise_scale: float | None = Field(
        None, ge=-1, le=1, description="Adds this x |latent channel mean| to noise_offset (needs it)."
    )
    min_snr_gamma: float | None = Field(None, gt=0, le=100, description="Min-SNR loss weighting (5 typical).")
    # --- flow-matching families (FLUX.1): sd-scripts' flux_train_network.py names, defaults as it advises
    guidance_scale: float | None = Field(
        None, ge=0, le=100, description="FLUX.1 dev's guidance embedding during training (default 1.0)."
    )
    timestep_sampling: TimestepSampling | None = Field(
        None, description="How sigmas are drawn (default shift, as sd-scripts advises for FLUX.1)."
    )
    sigmoid_scale: float | None = Field(None, gt=0, le=100, description="Scale of sigmoid/shift draws (1).")
    discrete_flow_shift: float | None = Field(
        None, gt=0, le=100, description="Shift of 'shift' / 'sigma' sampling (default 3.1582)."
    )
    weighting_scheme: WeightingScheme | None = Field(
        None, description="Density of 'sigma' sampling: none (uniform), logit_normal or mode (SD3's)."
    )
    logit_mean: float | None = Field(None, ge=-10, le=10, description="logit_normal mean (default 0).")
    logit_std: float | None = Field(None, gt=0, le=10, description="logit_normal std (default 1).")
    mode_scale: float | None = Field(None, ge=0, le=10, description="'mode' weighting scale (default 1.29).")
    model_prediction_type: Literal["raw"] | None = Field(
        None, description="What the model's output is trained as: raw (the velocity), sd-scripts' advice."
    )
    t5xxl_max_token_length: int | None = Field(
        None, ge=8, le=512, description="T5 tokens per caption (default 512 for dev, 256 for schnell)."
    )
    apply_t5_attn_mask: bool | None = Field(
        None, description="Mask T5's padding tokens in the encoder output and the joint attention (def. off)."
    )
    network_train_unet_only: bool | None = Field(
        None,
        description="Train the denoiser only; FLUX.1 defaults to true (CLIP-L LoRA only when false), SD to "
        "text_encoder_lr > 0 deciding.",
    )
    train_double_block_indices: str | None = Field(
        None, max_length=200, description="FLUX double blocks that get LoRA: all, none or '0,1,5-10'."
    )
    train_single_block_indices: str | None = Field(
        None, max_length=400, description="FLUX single blocks that get LoRA: all, none or '0-5,20'."
    )
    include_patterns: list[str] | None = Field(
        None,
        max_length=32,
        description="Regexes full-matched on BFL module paths (double_blocks.0.img_mod.lin): brought back.",
    )
    exclude_patterns: list[str] | None = Field(
        None,
        max_length=32,
        description="Regexes full-matched on BFL module paths (single_blocks.3.linear2): left out.",
    )
    # --- network ---
    network_target: Literal["all_linear", "attention"] = Field(
        "all_linear",
        description="all_linear: every Linear/1x1 conv in the UNet's transformer blocks and in CLIP's "
        "attention + MLP (Kohya's networks.lora); attention: q/k/v/out projections only.",
    )
    conv_dim: int | None = Field(
        None, ge=1, le=1024, description="LoCon: also train 3x3 convs (resnets, up/downsamplers), this rank."
    )
    conv_alpha: float | None = Field(None, gt=0, le=1024, description="Alpha of the conv modules (def. 1).")
    # LyCORIS (sd-scripts: network_module=lycoris.kohya, network_args algo=loha|lokr, factor, dora_wd).
    network_type: NetworkType = Field(
        "lora",
        description="lora: Kohya's networks.lora (LoCon with conv_dim); loha / lokr: LyCORIS' LoHa / LoKr on "
        "the same modules (conv_dim / conv_alpha give their 3x3-conv rank / alpha).",
    )
    lokr_factor: int | None = Field(
        None, ge=1, le=1024, description="LoKr: LyCORIS' factor (Kronecker split size); unset: -1, balanced."
    )
    dora_wd: bool = Field(
        False,
        description="DoRA (LyCORIS' dora_wd weight decomposition, norm per input channel, `dora_scale` "
        "keys); needs network_alpha = network_dim (and conv_alpha = conv_dim): A1111 and ComfyUI agree then.",
    )
    network_weights: NetworkWeights | None = Field(
        None,
        description="Start from a LoRA file (sd-scripts' --network_weights): {job, epoch} of one of your "
        "jobs, or the multipart part `network_weights`; its family, network type, ranks, alphas and modules "
        "must be this run's.",
    )
    gradient_checkpointing: bool = False
    seed: int | None = Field(None, ge=0, le=2**32 - 1, description="None picks one; the job records it.")
    retention_days: int | None = Field(
        None,
        ge=0,
        le=36_500,
        description="Days the job's files, samples, dataset copy and resume state are kept after it finishes "
        "(0: forever), within the key's max_retention_days; None: the deployment's default (not lorabake's).",
    )

    # --- data: aspect-ratio buckets and captions (Kohya's names and defaults; shared/config/buckets.py) ---
    enable_bucket: bool = Field(True, description="Aspect-ratio bucketing (on by default, as in kohya_ss).")
    min_bucket_reso: int = Field(
        256, ge=8, le=8192, description="Smallest bucket side; multiple of bucket_reso_steps, <= resolution."
    )
    max_bucket_reso: int = Field(
        1024, ge=8, le=8192, description="Largest bucket side; multiple of bucket_reso_steps, >= resolution."
    )
    bucket_reso_steps: int = Field(64, ge=8, le=1024, multiple_of=8, description="Bucket sides step by this.")
    bucket_no_upscale: bool = Field(
        False, description="Buckets from each image's own size (never enlarged); min/max are then unused."
    )
    captioning: CaptionConfig | None = Field(
        None, description="Caption the images with BLIP or WD14 as the job's first stage (see /v1/datasets)."
    )
    caption_extension: str = Field(
        ".txt", description="Caption files beside the images; the other of .txt/.caption is read if missing."
    )
    shuffle_caption: bool = Field(False, description="Shuffle the comma-separated tags each step.")
    keep_tokens: int = Field(
        0, ge=0, le=255, description="The first N tags stay in place (under shuffle and tag dropout)."
    )
    keep_tokens_separator: str | None = Field(
        None, max_length=32, description="Tags before it (and after a second one) stay put; over keep_tokens."
    )
    caption_dropout_rate: float = Field(0.0, ge=0, le=1, description="Chance a sample has an empty caption.")
    caption_dropout_every_n_epochs: int = Field(
        0, ge=0, le=1000, description="Every Nth epoch trains on empty captions; 0 never."
    )
    caption_tag_dropout_rate: float = Field(
        0.0, ge=0, le=1, description="Chance each tag that is not kept is dropped."
    )
    caption_prefix: str | None = Field(
        None, max_length=1000, description="Put before every caption, then a space."
    )
    caption_suffix: str | None = Field(
        None, max_length=1000, description="Put after every caption, after a space."
    )
    flip_aug: bool = Field(False, description="Train each sample mirrored with probability 1/2.")
    cache_latents_to_disk: bool = Field(
        False, description="Keep VAE latents on disk between runs (keyed by image, mtime, bucket and VAE)."
    )
    vae_batch_size: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Kohya's vae_batch_size: images the VAE encodes at once while caching latents (float32). "
        "Unset: as many as make about one megapixel, at most 4 (1 at 1024 px, 4 at 512 px).",
    )
    prior_loss_weight: float = Field(1.0, ge=0, le=100, description="Loss weight of regularization samples.")
    masked_loss: bool = Field(
        False,
        description="Weight the loss by each training image's mask, `NAME_mask.png` beside it (R channel, "
        "white = train, black = ignore), at latent size; images without one train unmasked.",
    )
    alpha_mask: bool = Field(
        False,
        description="Weight the loss by each image's alpha channel (transparent = ignore), as sd-scripts' "
        "--alpha_mask; also on its own. An image's NAME_mask.png wins over its alpha with masked_loss.",
    )

    # --- sample images (Kohya's names; lines parsed by shared/config/sample_prompts.py) ---
    sample_prompts: list[SamplePromptLine] = Field(
        default_factory=list,
        max_length=64,
        description="Kohya prompt lines: `prompt --n negative --w 512 --h 512 --d seed --l cfg --s steps "
        "--ss sampler`; blank lines and lines starting with # are skipped.",
    )
    sample_every_n_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="Sample every N steps (unused if sample_every_n_epochs is set)."
    )
    sample_every_n_epochs: int | None = Field(
        None, ge=1, le=1000, description="Sample after every Nth epoch (after that epoch's save)."
    )
    sample_at_first: bool = Field(False, description="Also sample before the first step (step 0).")
    sample_sampler: str = Field(
        DEFAULT_SAMPLER, description="Sampler of lines without --ss: ddim, euler, euler_a, dpmsolver++, ..."
    )

    @field_validator("sample_every_n_steps", "sample_every_n_epochs", mode="before")
    @classmethod
    def _zero_disables_sampling(cls, value: Any) -> Any:
        return None if value == 0 else value  # Kohya (and kohya_ss's 0 default): <= 0 disables it

    @field_validator("sample_sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        return normalize_sampler(value)

    @field_validator("output_name")
    @classmethod
    def _portable_name(cls, value: str) -> str:
        if not _OUTPUT_NAME.match(value):
            raise ValueError(
                "use letters, digits, '.', '_' or '-' (max 100), starting with a letter or digit"
            )
        return value

    @field_validator("trigger_word", "class_word")
    @classmethod
    def _plain_token(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip()
        if not value:
            return None
        if not _TOKEN.match(value):
            raise ValueError("must be plain text without slashes or control characters")
        return value

    @field_validator("caption_extension")
    @classmethod
    def _caption_extension(cls, value: str) -> str:
        if not _CAPTION_EXTENSION.match(value) or value.lower() in (".png", ".jpg", ".jpeg", ".webp"):
            raise ValueError("use a file extension such as '.txt' or '.caption' (a dot, letters/digits)")
        return value

    @field_validator("keep_tokens_separator", "caption_prefix", "caption_suffix")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value or None  # Kohya's default "" means unset

    @model_validator(mode="after")
    def _bucket_bounds(self) -> TrainingConfig:
        # Kohya (BaseDataset.adjust_min_max_bucket_reso_by_steps) asserts min <= resolution <= max when
        # bucketing; it rounds min/max to the steps with a warning, we ask for multiples instead.
        if not self.enable_bucket:
            return self
        steps = self.bucket_reso_steps
        for name in ("min_bucket_reso", "max_bucket_reso"):
            if getattr(self, name) % steps:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must be a multiple of bucket_reso_steps ({steps})"
                )
        if self.min_bucket_reso > self.resolution:
            raise ValueError(
                f"min_bucket_reso ({self.min_bucket_reso}) must be <= resolution ({self.resolution}); "
                "lower it or set enable_bucket false"
            )
        if self.max_bucket_reso < self.resolution:
            raise ValueError(
                f"max_bucket_reso ({self.max_bucket_reso}) must be >= resolution ({self.resolution})"
            )
        return self

    @model_validator(mode="after")
    def _warmup_needs_scheduler(self) -> TrainingConfig:
        if self.lr_warmup_steps and self.lr_scheduler == "constant":
            raise ValueError("lr_warmup_steps needs an lr_scheduler other than 'constant'")
        return self

    @field_validator("lr_warmup_steps", mode="before")
    @classmethod
    def _warmup_steps_or_ratio(cls, value: Any) -> Any:
        # Kohya's int_or_float: a value >= 1 is a step count, a float below 1 a ratio of the total steps.
        if isinstance(value, float) and value >= 1:
            if not value.is_integer():
                raise ValueError("use a whole number of steps, or a ratio below 1 (e.g. 0.05)")
            return int(value)
        return value

    @field_validator("optimizer_args")
    @classmethod
    def _optimizer_arg_values(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, arg in value.items():
            numbers = isinstance(arg, list) and all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in arg
            )
            if not (arg is None or isinstance(arg, bool | int | float) or numbers):
                raise ValueError(f"optimizer_args[{key!r}]: use a number, boolean, null or list of numbers")
        return value

    @model_validator(mode="after")
    def _option_dependencies(self) -> TrainingConfig:
        allowed = OPTIMIZER_ARGS[self.optimizer]
        for key in self.optimizer_args:
            if key in ("lr", "params"):
                raise ValueError(f"optimizer_args[{key!r}]: set unet_lr / text_encoder_lr instead")
            if key not in allowed:
                raise ValueError(
                    f"optimizer_args: {self.optimizer} takes no argument {key!r} "
                    f"(it takes: {', '.join(sorted(allowed))})"
                )
        if self.optimizer == "Prodigy" and self.text_encoder_lr not in (0, self.unet_lr):
            # prodigyopt refuses groups with different lrs (other than 0): one adaptive step size for all
            raise ValueError("optimizer Prodigy needs text_encoder_lr equal to unet_lr (typically 1.0) or 0")
        if self.adaptive_noise_scale is not None and self.noise_offset is None:
            raise ValueError("adaptive_noise_scale needs noise_offset (as in Kohya)")
        if self.conv_alpha is not None and self.conv_dim is None:
            raise ValueError("conv_alpha needs conv_dim")
        self._check_network_type()
        if self.save_last_n_epochs is not None and self.save_every_n_epochs is None:
            raise ValueError("save_last_n_epochs needs save_every_n_epochs")
        if self.save_last_n_steps is not None and self.save_every_n_steps is None:
            raise ValueError("save_last_n_steps needs save_every_n_steps")
        return self

    def _check_network_type(self) -> None:
        if self.lokr_factor is not None and self.network_type != "lokr":
            raise ValueError(f"lokr_factor needs network_type 'lokr' (network_type is {self.network_type!r})")
        if self.dora_wd:
            # A1111 rescales a DoRA module's whole delta by alpha / dim after the weight decomposition,
            # ComfyUI and LyCORIS scale the low-rank part by it before: the two agree only at alpha = dim.
            if self.network_alpha != self.network_dim:
                raise ValueError(
                    f"dora_wd needs network_alpha equal to network_dim ({self.network_alpha} != "
                    f"{self.network_dim}): A1111 and ComfyUI apply a DoRA file's alpha differently otherwise"
                )
            if self.conv_dim is not None and (self.conv_alpha or 1.0) != self.conv_dim:
                conv_alpha = self.conv_alpha or 1.0
                raise ValueError(
                    f"dora_wd needs conv_alpha equal to conv_dim ({conv_alpha} != {self.conv_dim})"
                )

    @model_validator(mode="after")
    def _family_fields(self) -> TrainingConfig:
        # An explicit family is checked here; "auto" is checked where the family is known (the API's
        # catalogue, the worker's detection) with the same rules (shared/config/family_options.py).
        from shared.config.family_options import family_conflicts

        if self.model_family != "auto":
            conflicts = family_conflicts(self, self.model_family)
            if conflicts:  # one error per field, at that field (a 422 names config.<field>)
                raise ValidationError.from_exception_data(
                    type(self).__name__,
                    [
                        InitErrorDetails(
                            type=PydanticCustomError("family_field", "{why}", {"why": why}),
                            loc=(field,),
                            input=getattr(self, field),
                        )
                        for field, why in conflicts
                    ],
                )
        return self

    @model_validator(mode="after")
    def _base_weights(self) -> TrainingConfig:
        errors = []
        if self.fp8_base and self.base_quantization not in ("none", "fp8"):
            why = f"{self.base_quantization!r} conflicts with fp8_base (fp8 weights): set one of them"
            errors.append(("base_quantization", why))
        if self.base_precision != "none" and self.uses_lycoris:
            # LyCORIS adds its delta to the layer's weight in forward, which a quantized weight cannot take
            field = "fp8_base" if self.fp8_base else "base_quantization"
            errors.append((field, "quantized base weights train LoRA / LoCon only (not LoHa, LoKr or DoRA)"))
        if errors:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError("base_weights", "{why}", {"why": why}),
                        loc=(field,),
                        input=getattr(self, field),
                    )
                    for field, why in errors
                ],
            )
        return self

    @property
    def base_precision(self) -> str:
        """How the frozen base weights are stored: "none" (the training dtype), "fp8", "int8" or "nf4"."""
        return "fp8" if self.fp8_base else self.base_quantization

    def vae_batch_for(self, pixels: int) -> int:
        return vae_batch_for(self.vae_batch_size, pixels)

    @property
    def uses_lycoris(self) -> bool:
        """Trained with LyCORIS (LoHa, LoKr, or DoRA on LoRA/LoCon) rather than PEFT's LoRA."""
        return self.network_type != "lora" or self.dora_wd

    @property
    def trains_text_encoder(self) -> bool:
        return self.text_encoder_lr > 0 and self.network_train_unet_only is not True

    @property
    def uses_loss_masks(self) -> bool:
        """Masked training (sd-scripts: --masked_loss, or alpha masks, which apply on their own)."""
        return self.masked_loss or self.alpha_mask
