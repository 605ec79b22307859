"""The peak GPU memory a training config needs on one card, predicted before the run, with its parts, and the
cheapest changes of existing config fields that make it fit a 24, 16 or 12 GB card. Pure: no torch.

It follows how the engine holds things (worker/training/families/sd.py, flux.py, data.py): the base weights
in the training dtype (float32 for mixed_precision "no", else 16-bit; "auto" counts as 16-bit, what a GPU
worker picks) or, with fp8_base / base_quantization, their Linear layers quantized (and FLUX's T5 too), the
VAE in float32; latents cached first (the VAE encoding vae_batch_size images at once), then SD keeps its
text encoders on the card for the whole run, while FLUX caches T5 and CLIP-L outputs and drops both encoders
(unless CLIP-L trains or captions change per step) before its transformer comes to the card. LoRA parameters
and their gradients are float32; optimizer states as each optimizer keeps them. The peak is the larger of the
caching phase and the training phase. The numbers behind it: shared/vram/tables.py.

Base-weight precision (`base_precision`, from the config) and swapped blocks (`blocks_to_swap`, 0 until the
engine has it) are one term each in `_denoiser_weights`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from shared.config.buckets import make_bucket_resolutions
from shared.config.spec import vae_batch_for
from shared.model_families import traits
from shared.vram.tables import (
    FAMILY_MEMORY,
    QUANTIZED_LINEARS,
    T5_LINEARS,
    VAE_ENCODE_BYTES_PER_PIXEL,
    VAE_ENCODE_CHUNK,
    FamilyMemory,
)

GIB = 1 << 30
CARD_SIZES_GB = (24, 16, 12)
CONTEXT_BYTES = 1 * GIB  # CUDA context (~0.5 GiB with torch's kernels), cuBLAS workspaces, allocator slack
ACTIVATION_MARGIN = 1.2  # backward's working set (gradients of the activations) on top of what is kept
LORA_BYTES = 4  # LoRA parameters and their gradients are float32 (families' add_network)
# base_precision -> (bytes per quantized Linear weight, bytes per output row) as the worker stores them
# (worker/training/base_quantization.py): torchao's fp8 / int8 with a float32 scale per row (int8 also an int8
# zero point), bitsandbytes' nf4 with a float32 absmax per 64 weights; "none": the training dtype.
BASE_PRECISION_BYTES: dict[str, tuple[float, int] | None] = {
    "none": None,
    "fp8": (1, 4),
    "int8": (1, 5),
    "nf4": (0.5 + 4 / 64, 0),
}


@dataclass(frozen=True)
class Knobs:
    """The fields of a config the estimate reads, and the largest bucket's size."""

    family: str
    weight_bytes: int  # 4 for mixed_precision "no", else 2
    mixed_precision: str
    gradient_checkpointing: bool
    batch_size: int
    optimizer: str
    optimizer_args: tuple[tuple[str, Any], ...]
    network_dim: int
    conv_dim: int | None
    network_target: str
    network_type: str
    trains_text_encoder: bool
    captions_vary: bool
    resolution: int
    largest_pixels: int  # pixels of the largest bucket (width x height)
    largest_bucket_images: int  # images in it (the VAE encodes up to VAE_ENCODE_CHUNK of them at once)
    latent_pixels_cached: int  # latent pixels of every cached latent (images x orientations)
    captions: int  # captions whose encoder outputs are cached
    caption_tokens: int
    double_blocks: int | None = None  # FLUX: blocks that get a LoRA (None: all)
    single_blocks: int | None = None
    base_precision: str = "none"
    blocks_to_swap: int = 0
    vae_batch_size: int | None = None  # the config's (None: by bucket size, vae_batch_for)


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int
    phase: str  # "both", "caching" (before training: latents and text encoded) or "training"


@dataclass(frozen=True)
class Estimate:
    family: str
    parts: tuple[Part, ...]
    lora_params: int

    def phase_bytes(self, phase: str) -> int:
        return sum(p.bytes for p in self.parts if p.phase in ("both", phase))

    @property
    def peak(self) -> int:
        return max(self.phase_bytes("caching"), self.phase_bytes("training"))

    @property
    def peak_phase(self) -> str:
        return "caching" if self.phase_bytes("caching") > self.phase_bytes("training") else "training"


# --- the knobs of a config ---------------------------------------------------------------------------------


def _count_blocks(selection: str | None, total: int) -> int:
    """Blocks a `train_*_block_indices` value selects (sd-scripts' "all", "none", "0,1,5-10"); a value that
    does not parse counts all (the worker refuses it)."""
    if selection is None or selection == "all":
        return total
    if selection in ("none", ""):
        return 0
    chosen: set[int] = set()
    try:
        for part in selection.split(","):
            start, _, end = part.partition("-")
            chosen.update(range(int(start), int(end or start) + 1))
    except ValueError:
        return total
    return len({i for i in chosen if 0 <= i < total})


def caches_text(family: str) -> bool:
    """The T5 families (FLUX.1, Chroma: worker/training/families/flux.py) cache their text encoders'
    outputs, release the encoders, and only then put the transformer on the card."""
    found = traits(family)
    return found is not None and found.t5xxl


def _largest_bucket(config: Any, buckets: list[Mapping[str, Any]]) -> tuple[int, int]:
    """(pixels, images) of the plan's largest bucket; without image sizes, the largest of Kohya's buckets
    for the resolution (their area never passes resolution^2)."""
    if buckets:
        largest = max(buckets, key=lambda b: int(b["width"]) * int(b["height"]))
        return int(largest["width"]) * int(largest["height"]), int(largest.get("images") or 1)
    if config.enable_bucket and not config.bucket_no_upscale:
        sizes = make_bucket_resolutions(
            config.resolution, config.min_bucket_reso, config.max_bucket_reso, config.bucket_reso_steps
        )
        return max(w * h for w, h in sizes), VAE_ENCODE_CHUNK
    return config.resolution * config.resolution, VAE_ENCODE_CHUNK


def knobs_of(config: Any, plan: Mapping[str, Any], family: str) -> Knobs:
    """The estimate's inputs from a TrainingConfig and its plan (TrainingPlan's JSON: buckets, images)."""
    buckets = list(plan.get("buckets") or [])
    pixels, bucket_images = _largest_bucket(config, buckets)
    orientations = 2 if config.flip_aug else 1
    images = int(plan.get("images") or 0) + int(plan.get("reg_images") or 0)
    if buckets:
        cached = sum(int(b["width"]) * int(b["height"]) * int(b["images"]) for b in buckets) // 64
    else:
        cached = images * pixels // 64
    memory = FAMILY_MEMORY[family]  # type: ignore[index]
    blocks = memory.blocks or {}
    varies = bool(
        config.shuffle_caption
        or config.caption_dropout_rate > 0
        or config.caption_dropout_every_n_epochs > 0
        or config.caption_tag_dropout_rate > 0
    )
    if caches_text(family):  # CLIP-L (FLUX.1's; Chroma has none) gets a LoRA only when asked (trains_clip)
        has_clip = any(encoder.lora is not None for encoder in memory.text_encoders)
        trains_te = has_clip and config.network_train_unet_only is False and config.text_encoder_lr > 0
    else:
        trains_te = config.trains_text_encoder
    tokens = memory.caption_tokens
    if caches_text(family) and config.t5xxl_max_token_length:
        tokens = config.t5xxl_max_token_length
    elif config.max_token_length:  # 150 / 225: 2 / 3 windows of 75 (+2)
        tokens = 77 * (config.max_token_length // 75)
    return Knobs(
        family=family,
        weight_bytes=4 if config.mixed_precision == "no" else 2,
        mixed_precision=config.mixed_precision,
        gradient_checkpointing=config.gradient_checkpointing,
        batch_size=config.batch_size,
        optimizer=config.optimizer,
        optimizer_args=tuple(sorted(config.optimizer_args.items())),
        network_dim=config.network_dim,
        conv_dim=config.conv_dim,
        network_target=config.network_target,
        network_type="dora" if config.dora_wd and config.network_type == "lora" else config.network_type,
        trains_text_encoder=trains_te,
        captions_vary=varies,
        resolution=config.resolution,
        largest_pixels=pixels,
        largest_bucket_images=max(1, bucket_images),
        vae_batch_size=config.vae_batch_size,
        base_precision=config.base_precision,
        latent_pixels_cached=cached * orientations,
        captions=images,
        caption_tokens=tokens,
        double_blocks=_count_blocks(config.train_double_block_indices, blocks["double"][0])
        if "double" in blocks
        else None,
        single_blocks=_count_blocks(config.train_single_block_indices, blocks["single"][0])
        if "single" in blocks
        else None,
    )


# --- the parts ---------------------------------------------------------------------------------------------


def _lora_params(k: Knobs, memory: FamilyMemory) -> tuple[int, int]:
    """(denoiser, text encoder) trainable parameters. LoRA and DoRA: rank x width (DoRA's magnitude vectors
    are left out: one value per input channel); LoHa: two low-rank pairs per module; LoKr: counted as LoRA,
    an upper bound (its Kronecker factors are smaller)."""
    if memory.blocks is not None:  # FLUX: per selected block (include/exclude patterns not counted)
        counts = {"double": k.double_blocks, "single": k.single_blocks}
        width = sum(t.width * (counts[kind] or 0) for kind, (_, _, t) in memory.blocks.items())
        denoiser = k.network_dim * width
    else:
        target = memory.denoiser_lora.get(k.network_target, memory.denoiser_lora["all_linear"])
        denoiser = k.network_dim * target.width
        if k.conv_dim:
            denoiser += k.network_dim * memory.locon_linear.width + k.conv_dim * memory.locon_conv.width
    text = 0
    if k.trains_text_encoder:
        for encoder in memory.text_encoders:
            if encoder.lora is not None:
                target = encoder.lora.get(k.network_target, encoder.lora["all_linear"])
                text += k.network_dim * target.width
    factor = 2 if k.network_type == "loha" else 1
    return denoiser * factor, text * factor


def _optimizer_bytes(k: Knobs, params: int, modules_width: int) -> int:
    args = dict(k.optimizer_args)
    if k.optimizer == "AdamW":
        return 8 * params  # exp_avg and exp_avg_sq, float32
    if k.optimizer == "AdamW8bit":
        return 2 * params  # bitsandbytes: both states in 8 bits (block-wise statistics are negligible)
    if k.optimizer == "Lion":
        return 4 * params  # exp_avg only
    if k.optimizer == "Prodigy":
        # prodigyopt: exp_avg, exp_avg_sq, and s and p0 over every slice_p-th value
        slice_p = max(1, int(args.get("slice_p") or 1))
        return 8 * params + 8 * math.ceil(params / slice_p)
    # Adafactor: a factored second moment (a row and a column per matrix), a first moment only with beta1
    return 4 * modules_width + (4 * params if args.get("beta1") else 0)


def _frozen_bytes(k: Knobs, params: int, linears: tuple[int, int] | None) -> float:
    """A frozen model's bytes: its Linear weights at `base_precision` (with their scales), the rest in the
    training dtype."""
    precision = BASE_PRECISION_BYTES[k.base_precision]
    if precision is None or linears is None:
        return params * k.weight_bytes
    (per_weight, per_row), (weights, rows) = precision, linears
    return (params - weights) * k.weight_bytes + weights * per_weight + rows * per_row


def _denoiser_weights(k: Knobs, memory: FamilyMemory) -> list[Part]:
    """The frozen denoiser on the card: at `base_precision`, less the blocks swapped to the CPU. FLUX's joins
    the card after the captions are encoded (families/flux.py), so it is not there while caching."""
    params = memory.denoiser
    total = _frozen_bytes(k, params, QUANTIZED_LINEARS.get(k.family))
    per_weight = total / params
    phase = "training" if caches_text(k.family) else "both"
    parts = []
    if k.blocks_to_swap:
        if memory.blocks is None:
            raise ValueError(f"{k.family} has no blocks to swap")
        # the last blocks (single first, as sd-scripts swaps) leave the card; one stays in flight
        swapped, left = 0, k.blocks_to_swap
        for kind in ("single", "double"):
            count, block_params, _ = memory.blocks[kind]
            n = min(left, count)
            swapped += n * block_params
            left -= n
        parts.append(Part("swapped blocks (CPU)", -round(swapped * per_weight), phase))
    return [Part("denoiser weights", round(total), phase), *parts]


def estimate(k: Knobs) -> Estimate:
    memory = FAMILY_MEMORY[k.family]  # type: ignore[index]
    flux = caches_text(k.family)
    parts = _denoiser_weights(k, memory)
    # FLUX.1, Chroma: the encoders leave once every caption is encoded, unless they encode each step
    encoders_stay = not flux or k.trains_text_encoder or k.captions_vary
    for encoder in memory.text_encoders:
        phase = "both" if encoders_stay else "caching"
        linears = T5_LINEARS if encoder.lora is None else None  # frozen T5 is stored as the denoiser is
        weights = round(_frozen_bytes(k, encoder.params, linears))
        parts.append(Part(f"{encoder.name} weights", weights, phase))
    parts.append(Part("VAE weights (float32)", memory.vae * 4, "both"))
    denoiser_lora, text_lora = _lora_params(k, memory)
    lora = denoiser_lora + text_lora
    parts.append(Part("LoRA parameters (float32)", lora * LORA_BYTES, "both"))
    parts.append(Part("LoRA gradients (float32)", lora * LORA_BYTES, "training"))
    width = lora // max(1, k.network_dim)  # sum of in + out over the modules (Adafactor's row + column)
    parts.append(Part(f"optimizer state ({k.optimizer})", _optimizer_bytes(k, lora, width), "training"))
    a = memory.activations
    per_pixel, per_sample = (a.per_pixel, a.per_sample)
    if k.gradient_checkpointing:
        per_pixel, per_sample = (a.checkpointed_per_pixel, a.checkpointed_per_sample)
    latent_pixels = k.largest_pixels // 64
    activations = k.batch_size * (per_pixel * latent_pixels + per_sample) * (k.weight_bytes / 2)
    parts.append(Part("activations", round(activations * ACTIVATION_MARGIN), "training"))
    cached = k.latent_pixels_cached * memory.latent_channels * 4  # float32 latents
    if not k.captions_vary and not k.trains_text_encoder:  # encoder outputs cached once per caption
        width = sum(e.output_width for e in memory.text_encoders) if not flux else 4096
        cached += k.captions * (k.caption_tokens * width + memory.pooled_width) * 2
    parts.append(Part("cached latents and text", cached, "both"))
    chunk = min(vae_batch_for(k.vae_batch_size, k.largest_pixels), k.largest_bucket_images)
    encoding = chunk * k.largest_pixels * VAE_ENCODE_BYTES_PER_PIXEL
    parts.append(Part("VAE encoding (float32)", encoding, "caching"))
    parts.append(Part("CUDA context and allocator", CONTEXT_BYTES, "both"))
    return Estimate(k.family, tuple(parts), lora)


# --- what makes it fit -------------------------------------------------------------------------------------

# The levers, cheapest first, each with a cost per step: what a change costs the run (speed, then the
# training's own choices). A suggestion is the cheapest combination that fits.
_LEVER_COST = {
    "gradient_checkpointing": 1,  # ~20-30 % slower, same result
    "mixed_precision": 2,  # float32 -> bf16: the usual choice
    "optimizer": 3,  # AdamW -> AdamW8bit: same learning rate, 8-bit states
    "fp8_base": 3,  # frozen weights in float8 (sd-scripts' --fp8_base): slower steps, slightly other numbers
    "network_train_unet_only": 4,  # no text-encoder LoRA
    "batch_size": 8,  # per halving: changes the schedule (and the presets' learning rate)
    "network_dim": 16,  # per halving: a smaller LoRA
    "resolution": 32,  # per step down: trains on smaller images
}


def _options(k: Knobs) -> Iterator[list[tuple[str, Any, int]]]:
    """Per lever, its choices as (field, value, cost), the current one first (cost 0)."""
    yield [("gradient_checkpointing", k.gradient_checkpointing, 0)] + (
        [] if k.gradient_checkpointing else [("gradient_checkpointing", True, 1)]
    )
    yield [("mixed_precision", k.mixed_precision, 0)] + (
        [("mixed_precision", "bf16", 2)] if k.mixed_precision == "no" else []
    )
    eight_bit = [("optimizer", "AdamW8bit", 3)] if k.optimizer == "AdamW" else []
    yield [("optimizer", k.optimizer, 0), *eight_bit]
    fp8 = k.base_precision == "none" and k.network_type == "lora"  # LyCORIS cannot wrap quantized layers
    yield [("fp8_base", False, 0)] + ([("fp8_base", True, 3)] if fp8 else [])
    yield [("network_train_unet_only", None, 0)] + (
        [("network_train_unet_only", True, 4)] if k.trains_text_encoder else []
    )
    batches = sorted({k.batch_size, *(b for b in (1, 2, 4, 8, 16, 32) if b < k.batch_size)}, reverse=True)
    yield [("batch_size", b, 8 * i) for i, b in enumerate(batches)]
    ranks = [k.network_dim] + [r for r in (64, 32, 16, 8) if r < k.network_dim]
    yield [("network_dim", r, 16 * i) for i, r in enumerate(ranks)]
    sides = [k.resolution] + [s for s in (1024, 768, 512) if s < k.resolution]
    yield [("resolution", s, 32 * i) for i, s in enumerate(sides)]


def _apply(k: Knobs, choice: Iterable[tuple[str, Any, int]]) -> Knobs:
    for field, value, cost in choice:
        if not cost:
            continue
        if field == "mixed_precision":
            k = replace(k, mixed_precision=value, weight_bytes=2)
        elif field == "network_train_unet_only":
            k = replace(k, trains_text_encoder=False)
        elif field == "fp8_base":
            k = replace(k, base_precision="fp8")
        elif field == "resolution":  # the largest bucket scales with the area
            scale = (value / k.resolution) ** 2
            k = replace(
                k,
                resolution=value,
                largest_pixels=int(k.largest_pixels * scale),
                latent_pixels_cached=int(k.latent_pixels_cached * scale),
            )
        else:
            k = replace(k, **{field: value})
    return k


@dataclass(frozen=True)
class Fit:
    card_gb: int
    fits: bool  # as configured
    changes: tuple[tuple[str, Any], ...] | None  # the cheapest that make it fit; None: none found
    peak_after: int | None  # the peak with those changes; with none found, the least any change reaches
    phase_after: str = "training"

    @property
    def message(self) -> str:
        if self.fits:
            return f"fits {self.card_gb} GB"
        if self.changes is None:
            least = f"{self.peak_after / GIB:.1f} GiB" if self.peak_after else "more"
            return (
                f"does not fit {self.card_gb} GB with any change of the fields lorabake has today: the least "
                f"it needs is {least}, while {self.phase_after}"
            )
        said = " and ".join(f"{f} {_shown(v)}" for f, v in self.changes)
        return f"fits {self.card_gb} GB with {said}"


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def card_bytes(card_gb: int) -> int:
    return card_gb * GIB


def fit_card(k: Knobs, card_gb: int) -> Fit:
    """Whether it fits a card of `card_gb` GB, else the cheapest changes (by _LEVER_COST) that make it fit."""
    limit = card_bytes(card_gb)
    if estimate(k).peak <= limit:
        return Fit(card_gb, True, (), None)
    # cheapest first; at equal cost fewer fields changed, then the larger peak (the smaller change)
    choices = sorted(
        itertools.product(*_options(k)), key=lambda c: (sum(x[2] for x in c), sum(1 for x in c if x[2]))
    )
    best: tuple[tuple[int, int, int], tuple[tuple[str, Any], ...], int] | None = None
    for choice in choices:
        cost, changed = sum(x[2] for x in choice), sum(1 for x in choice if x[2])
        if best is not None and (cost, changed) > best[0][:2]:
            break
        peak = estimate(_apply(k, choice)).peak
        if peak <= limit and (best is None or -peak < best[0][2]):
            best = ((cost, changed, -peak), tuple((f, v) for f, v, c in choice if c), peak)
    if best is None:  # every lever at its cheapest in memory
        least = estimate(_apply(k, [options[-1] for options in _options(k)]))
        return Fit(card_gb, False, None, least.peak, least.peak_phase)
    return Fit(card_gb, False, best[1], best[2])


# --- the plan's `vram` part --------------------------------------------------------------------------------


def vram_plan(config: Any, plan: Mapping[str, Any], family: str | None) -> dict[str, Any] | None:
    """The plan's `vram`: predicted peak bytes, its parts, and per card size whether it fits and the cheapest
    changes that make it; None for a family without a table (not known before the run)."""
    if family not in FAMILY_MEMORY:
        return None
    k = knobs_of(config, plan, family)
    result = estimate(k)
    cards = []
    for gb in CARD_SIZES_GB:
        fit = fit_card(k, gb)
        changes = fit.changes or ()
        cards.append(
            {
                "gb": gb,
                "fits": fit.fits,
                "changes": None if fit.changes is None else [{"field": f, "value": v} for f, v in changes],
                "peak_bytes_after": fit.peak_after,
                "message": fit.message,
            }
        )
    return {
        "peak_bytes": result.peak,
        "peak_phase": result.peak_phase,
        "family": family,
        "weights": "float32" if k.weight_bytes == 4 else "16-bit",
        "lora_params": result.lora_params,
        "parts": [{"name": p.name, "bytes": p.bytes, "phase": p.phase} for p in result.parts],
        "cards": cards,
        "basis": "rough: base weights and LoRA sizes exact for the family's full-size models, activations "
        "first figures to be calibrated on a GPU (docs/operations.md)",
    }
