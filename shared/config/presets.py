"""Presets: the LoRA training guide's advice as config values, and warnings where a plan departs from it.

A preset (`config.preset`) fills only the fields the client did not send (`model_fields_set`), so anything set
explicitly always wins. The numbers and why they were chosen: docs/presets.md. Pure: no torch.

- rank/alpha: 128 for characters and concepts ("Character LoRAs will need no more than 128 for both Network
  Rank & Network Alpha"), 256 for styles ("For style LoRAs, 256 is a good number to use for both").
- repeats (flat datasets only; Kohya folders and stored datasets keep theirs): the fewest that make one epoch
  at least 200 steps ("tweaking your repeats so that a single epoch ... is 200-400 steps").
- epochs: the count whose total is closest to 2000 steps inside 1500-3000 ("between 1500-3000 steps"; the
  guide's own example is 34 images x 6 repeats x 10 epochs = 2040), never above 3500 where avoidable.
- save every epoch, save precision fp16, 512 px (1024 for an SDXL base), cosine schedule.
- learning rates: 1e-4 per sample of the effective batch (batch x accumulation) for AdamW/AdamW8bit.

On a FLUX.1 base (the config's model_family, else the catalogue's) the values are the FLUX trainers' instead
(shared/config/flux_presets.py); repeats and epochs are chosen the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import ValidationError

from shared.config.flux_presets import CHROMA_VALUES, FLUX_COMPUTED, FLUX_LR, FLUX_VALUES
from shared.config.plan import TrainingPlan, compute_plan
from shared.config.spec import TrainingConfig
from shared.datasets.layout import DatasetLayout
from shared.errors import LorabakeError

PresetName = Literal["character", "style", "concept"]

STEPS_LOW, STEPS_HIGH = 1500, 3000  # "character LoRAs come out best when trained on between 1500-3000 steps"
TARGET_STEPS = 2000  # what the guide's example lands on (2040); the middle-low of the range leaves headroom
MAX_STEPS = 3500  # "I recommend not exceeding 3500 total steps for a LoRA"
EPOCH_LOW, EPOCH_HIGH = 200, 400  # "a single epoch (number of images x number repeats) is 200-400 steps"
SUBJECT_MAX_RANK = 128  # "Character LoRAs will need no more than 128 for both Network Rank & Network Alpha"
LR_PER_SAMPLE = 1e-4  # Kohya's default learning rate, which is for batch size 1
SCALED_LR_OPTIMIZERS = frozenset({"AdamW", "AdamW8bit"})  # Lion/Prodigy/Adafactor have their own lr scales
MAX_REPEATS = 1000  # TrainingConfig.repeats' bound
MAX_EPOCHS = 1000  # TrainingConfig.epochs' bound


@dataclass(frozen=True)
class Preset:
    name: PresetName
    rank: int
    alpha: float
    subject: bool  # the guide's "subjects" (characters, people, objects, poses...) as opposed to styles
    description: str

    def fixed_values(self, family: str | None = None) -> dict[str, Any]:
        """The fields this preset sets to the same value whatever the dataset (unless the client set them),
        for a base of `family` (None: not known, the SD values)."""
        if family in FAMILY_VALUES:
            return dict(FAMILY_VALUES[family])
        return {
            "network_dim": self.rank,
            "network_alpha": self.alpha,
            "save_every_n_epochs": 1,
            "save_precision": "fp16",
            "lr_scheduler": "cosine",
        }


PRESETS: dict[str, Preset] = {
    "character": Preset(
        "character",
        128,
        128.0,
        subject=True,
        description="A character or a real person: rank and alpha 128, the guide's ceiling for subjects.",
    ),
    "style": Preset(
        "style",
        256,
        256.0,
        subject=False,
        description="An art style or aesthetic: rank and alpha 256, the guide's number for styles.",
    ),
    # The guide lists objects, poses, props and environments with characters as "subjects" and gives subjects
    # one ceiling, 128; it has no number of its own for them, so a concept trains like a character.
    "concept": Preset(
        "concept",
        128,
        128.0,
        subject=True,
        description="An object, pose, prop, outfit or environment: trained like a character (rank 128).",
    ),
}

# The fields every preset fills from the dataset and the rest of the config, and how (apply_preset).
COMPUTED_FIELDS: dict[str, str] = {
    "resolution": "512, or 1024 when model_family is sdxl",
    "unet_lr": f"{LR_PER_SAMPLE:g} x batch_size x gradient_accumulation_steps, with AdamW or AdamW8bit",
    "text_encoder_lr": "the same as unet_lr, with AdamW or AdamW8bit",
    "repeats": f"flat datasets only: the fewest that make one epoch at least {EPOCH_LOW} steps",
    "epochs": f"the count whose total is nearest {TARGET_STEPS} steps within {STEPS_LOW}-{STEPS_HIGH}",
}
# Families whose presets set other values than the guide's (resolution among them), and what they compute.
FAMILY_VALUES: dict[str, dict[str, Any]] = {"flux1": FLUX_VALUES, "chroma": CHROMA_VALUES}
_FLOW_COMPUTED = {**{k: v for k, v in COMPUTED_FIELDS.items() if k in ("repeats", "epochs")}, **FLUX_COMPUTED}
FAMILY_COMPUTED: dict[str, dict[str, str]] = {"flux1": _FLOW_COMPUTED, "chroma": _FLOW_COMPUTED}


def computed_fields(family: str | None = None) -> dict[str, str]:
    """The fields a preset fills from the dataset and the config on a base of `family`, and how."""
    return dict(FAMILY_COMPUTED.get(family or "", COMPUTED_FIELDS))


# --- applying a preset -------------------------------------------------------------------------------------


def scaled_learning_rate(batch_size: int, gradient_accumulation_steps: int = 1) -> float:
    """1e-4 per sample of the effective batch: 1e-4 at batch 1, 3e-4 at batch 3 (see docs/presets.md)."""
    return LR_PER_SAMPLE * batch_size * gradient_accumulation_steps


def with_flat_repeats(layout: DatasetLayout, repeats: int) -> DatasetLayout:
    """A flat layout read with other repeats (Kohya folders carry their own and are returned unchanged)."""
    if layout.kind != "flat":
        return layout
    return replace(layout, subsets=tuple(replace(s, repeats=repeats) for s in layout.subsets))


def choose_repeats(
    layout: DatasetLayout, config: TrainingConfig, image_sizes: Mapping[str, tuple[int, int]] | None
) -> int:
    """The fewest repeats whose epoch is at least EPOCH_LOW steps (steps grow with repeats)."""

    def steps(repeats: int) -> int:
        return compute_plan(with_flat_repeats(layout, repeats), config, image_sizes).steps_per_epoch

    low, high = 1, MAX_REPEATS
    if steps(high) < EPOCH_LOW:
        return high
    while low < high:
        mid = (low + high) // 2
        if steps(mid) >= EPOCH_LOW:
            high = mid
        else:
            low = mid + 1
    return low


def choose_epochs(steps_per_epoch: int) -> int:
    """The epoch count whose total is nearest TARGET_STEPS within STEPS_LOW..STEPS_HIGH (one when a single
    epoch is already longer than that)."""
    if steps_per_epoch <= 0:
        return 1
    fewest = max(1, math.ceil(STEPS_LOW / steps_per_epoch))
    most = max(1, STEPS_HIGH // steps_per_epoch)
    if fewest > most:  # one epoch is longer than the whole range
        return 1
    return min(max(round(TARGET_STEPS / steps_per_epoch), fewest), most, MAX_EPOCHS)


def _validated(config: TrainingConfig, values: dict[str, Any]) -> TrainingConfig:
    data = config.model_dump(include=set(config.model_fields_set))
    data.update(values)
    try:
        return TrainingConfig.model_validate(data)
    except ValidationError as exc:
        fields = [
            {
                "field": "config." + ".".join(str(p) for p in err["loc"]) if err["loc"] else "config",
                "message": f"{err['msg']} (with the {config.preset!r} preset's values)",
            }
            for err in exc.errors()
        ]
        raise LorabakeError(
            f"the {config.preset!r} preset does not fit the fields you set: "
            + "; ".join(f"{f['field']}: {f['message']}" for f in fields),
            code="invalid_config",
            details={"fields": fields},
            status_code=422,
        ) from exc


def _preset_values(preset: Preset, config: TrainingConfig, family: str | None) -> dict[str, Any]:
    """Every value the preset would set, before the client's own fields are kept."""
    values = preset.fixed_values(family)
    if family in FAMILY_VALUES:
        if config.optimizer in SCALED_LR_OPTIMIZERS:
            values["unet_lr"] = FLUX_LR  # FLUX.1: one rate, not scaled by the batch (flux_presets.py)
        return values
    # SD: 1024 only for an explicit sdxl, as before the catalogue's family reached presets
    values["resolution"] = 1024 if config.model_family == "sdxl" else 512
    if config.optimizer in SCALED_LR_OPTIMIZERS:
        lr = scaled_learning_rate(config.batch_size, config.gradient_accumulation_steps)
        values["unet_lr"] = lr
        values["text_encoder_lr"] = lr  # the guide: all three learning rates get the same value
    return values


def apply_preset(
    config: TrainingConfig,
    layout: DatasetLayout,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    family: str | None = None,
) -> TrainingConfig:
    """The config with the preset's values in every field the client did not set; unchanged without one.

    `layout` is the dataset as read with `config` (for a flat layout, with `config.repeats`); the steps are
    counted by `compute_plan`, bucketed when `image_sizes` are given. `family`: the base model's family when
    model_family is "auto" (the catalogue's; None when unknown). Re-applying is a no-op.
    """
    if config.preset is None:
        return config
    family = family if config.model_family == "auto" else config.model_family
    explicit = config.model_fields_set
    values = {
        name: value
        for name, value in _preset_values(PRESETS[config.preset], config, family).items()
        if name not in explicit
    }
    shaped = _validated(config, values)  # the bucket settings and batch the steps are counted with

    if layout.kind == "flat" and "repeats" not in explicit:
        values["repeats"] = choose_repeats(layout, shaped, image_sizes)
        shaped = _validated(config, values)
    if "epochs" not in explicit:
        plan = compute_plan(with_flat_repeats(layout, shaped.repeats), shaped, image_sizes)
        values["epochs"] = choose_epochs(plan.steps_per_epoch)
    return _validated(config, values)


# --- warnings ----------------------------------------------------------------------------------------------


def _warning(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        out["field"] = field
    out.update(extra)
    return out


def webp_images(layout: DatasetLayout, report: Any = None) -> list[str]:
    """Paths of WEBP images: from a stored dataset's report (its conversions), an intake report (the probed
    format), or else by file extension."""
    if isinstance(report, Mapping) and "files" in report:
        return [
            f["path"]
            for f in report["files"]
            if f.get("status") != "rejected" and any("webp" in c for c in f.get("conversions") or ())
        ]
    images = getattr(report, "images", None)
    if isinstance(images, Mapping):
        return sorted(p for p, info in images.items() if getattr(info, "format", "") == "WEBP")
    return [i.path for s in layout.subsets for i in s.images if i.path.lower().endswith(".webp")]


def masked_images(layout: DatasetLayout, report: Any = None) -> int:
    """Training images with a usable NAME_mask.png: from a stored dataset's report (its `mask` files), an
    intake report (its probed masks), or else the layout's entries."""
    if isinstance(report, Mapping) and "files" in report:
        return sum(1 for f in report["files"] if f.get("status") == "mask" and not f.get("reason"))
    masks = getattr(report, "masks", None)
    if isinstance(masks, Mapping):
        return len(masks)
    return sum(1 for s in layout.train_subsets for i in s.images if i.mask_path)


def _epoch_advice(plan: TrainingPlan, layout: DatasetLayout) -> str:
    per_repeat = plan.steps_per_epoch / max(1, plan.repeats or 1)
    if layout.kind == "flat" and plan.repeats:
        wanted = max(1, math.ceil(EPOCH_LOW / per_repeat)) if per_repeat else 1
        return (
            f"use about {wanted} repeats (config.repeats with a zip, or a preset, which picks them; a stored "
            "dataset takes the options.repeats it was uploaded with)"
        )
    return "change the N in the `N_trigger class` folder names (the repeats)"


def plan_warnings(
    config: TrainingConfig, plan: TrainingPlan, layout: DatasetLayout, report: Any = None
) -> list[dict[str, Any]]:
    """What the guide would question about this run: [{code, message, field?}], in a fixed order.

    `report`: a stored dataset's report (dict with `files`) or the API's intake report, for the WEBP check.
    """
    warnings: list[dict[str, Any]] = []
    if plan.total_steps > MAX_STEPS:
        fits = max(1, MAX_STEPS // plan.steps_per_epoch) if plan.steps_per_epoch else 1
        warnings.append(
            _warning(
                "too_many_steps",
                f"{plan.total_steps} total steps: the guide recommends not exceeding {MAX_STEPS} "
                f"(1500-3000 for characters); {fits} epochs of {plan.steps_per_epoch} steps stay under it",
                "config.epochs",
            )
        )
    if not EPOCH_LOW <= plan.steps_per_epoch <= EPOCH_HIGH:
        warnings.append(
            _warning(
                "epoch_length",
                f"one epoch is {plan.steps_per_epoch} steps; the guide tunes repeats so that an epoch is "
                f"{EPOCH_LOW}-{EPOCH_HIGH} steps (a saved LoRA every few hundred steps to compare): "
                + _epoch_advice(plan, layout),
                "config.repeats" if layout.kind == "flat" else None,
                steps_per_epoch=plan.steps_per_epoch,
            )
        )
    preset = PRESETS.get(config.preset or "")
    if preset is not None and preset.subject:
        high = [name for name in ("network_dim", "network_alpha") if getattr(config, name) > SUBJECT_MAX_RANK]
        if high:
            warnings.append(
                _warning(
                    "rank_above_character",
                    f"network_dim {config.network_dim} / network_alpha {config.network_alpha:g} with the "
                    f"{preset.name} preset: the guide says character LoRAs need no more than "
                    f"{SUBJECT_MAX_RANK} for both (a larger rank makes a larger file and overfits sooner)",
                    f"config.{high[0]}",
                )
            )
    if plan.buckets:
        smallest = min(plan.buckets, key=lambda b: (b.samples, b.width, b.height))
        if config.batch_size > smallest.samples:
            warnings.append(
                _warning(
                    "batch_exceeds_bucket",
                    f"batch size {config.batch_size} is larger than the smallest aspect-ratio bucket "
                    f"({smallest.width}x{smallest.height}: {smallest.samples} samples per epoch); Kohya "
                    "batches each bucket on its own, so that bucket only ever trains short batches",
                    "config.batch_size",
                    bucket={"width": smallest.width, "height": smallest.height, "samples": smallest.samples},
                )
            )
    if config.mixed_precision == "bf16":
        warnings.append(
            _warning(
                "bf16_gpu",
                "mixed_precision bf16 needs an NVIDIA RTX 30xx/40xx (Ampere) or newer GPU (the guide: 'bf16 "
                "trains faster than fp16, but only works on 30XX and 40XX GPUs'); the API cannot see the "
                "worker's GPU, so check it, or use fp16",
                "config.mixed_precision",
            )
        )
    if config.optimizer == "AdamW8bit":
        warnings.append(
            _warning(
                "adamw8bit_gpu",
                "AdamW8bit (bitsandbytes) needs a CUDA GPU newer than the GTX 10xx series (the guide: 'On "
                "10XX GPUs, you won't be able to use AdamW8bit. Instead, change this to AdamW'); the API "
                "cannot see the worker's GPU",
                "config.optimizer",
            )
        )
    if config.save_precision != "fp16":
        warnings.append(
            _warning(
                "save_precision",
                f"save_precision is {config.save_precision}; the guide: 'Always keep Save Precision as "
                "fp16' (the usual format for sharing and loading in AUTOMATIC1111)",
                "config.save_precision",
            )
        )
    if config.masked_loss and not masked_images(layout, report):
        # sd-scripts trains unmasked when --masked_loss finds no mask (apply_masked_loss returns the loss)
        warnings.append(
            _warning(
                "no_masks",
                "masked_loss is on but no training image has a mask (NAME_mask.png beside NAME.png): it "
                "trains unmasked, as sd-scripts does"
                + (" (alpha_mask still masks by transparency)" if config.alpha_mask else ""),
                "config.masked_loss",
            )
        )
    webp = webp_images(layout, report)
    if webp:
        warnings.append(
            _warning(
                "webp_images",
                f"{len(webp)} WEBP images are converted to PNG for training; the guide says 'Only use JPGs "
                "and PNGs. Convert any WEBP images to JPG/PNG before starting.'",
                count=len(webp),
                examples=webp[:5],
            )
        )
    return warnings


# --- the whole step, as submission and the dry run use it ---------------------------------------------------


@dataclass(frozen=True)
class PlannedRun:
    config: TrainingConfig  # after the preset
    layout: DatasetLayout  # a flat layout with the config's repeats
    plan: TrainingPlan
    warnings: list[dict[str, Any]]

    def plan_json(self) -> dict[str, Any]:
        """The job's stored plan: TrainingPlan's fields plus `warnings`."""
        return {**self.plan.model_dump(mode="json"), "warnings": self.warnings}


def plan_run(
    config: TrainingConfig,
    layout: DatasetLayout,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    report: Any = None,
    family: str | None = None,
) -> PlannedRun:
    """Preset applied (for `family`, as apply_preset takes it), `captioning.method: auto` replaced by the
    family's captioner, layout re-read with its repeats, plan computed, warnings listed."""
    config = apply_preset(config, layout, image_sizes, family)
    if config.captioning is not None and config.captioning.method == "auto":
        trained = family if config.model_family == "auto" else config.model_family
        captioning = config.captioning.for_family(trained, field="config.captioning.method")
        config = config.model_copy(update={"captioning": captioning})
    layout = with_flat_repeats(layout, config.repeats)
    plan = compute_plan(layout, config, image_sizes)
    return PlannedRun(config, layout, plan, plan_warnings(config, plan, layout, report))


# --- which files a run writes -------------------------------------------------------------------------------


def _epoch_file(output_name: str, epoch: int, is_final: bool) -> str:
    # Kohya's names (worker/training/export.lora_file_name): the last epoch gets the bare name.
    return f"{output_name}.safetensors" if is_final else f"{output_name}-{epoch:06d}.safetensors"


def _step_file(output_name: str, step: int) -> str:
    return f"{output_name}-step{step:08d}.safetensors"  # sd-scripts' STEP_FILE_NAME


def checkpoint_schedule(config: TrainingConfig, plan: TrainingPlan) -> Iterator[dict[str, Any]]:
    """Every LoRA file the run saves, in step order: {file, kind, epoch, step, kept}.

    Epoch files at plan.saved_epochs (the last as the bare name), step files every save_every_n_steps; `kept`
    is False for files that save_last_n_epochs / save_last_n_steps delete later (sd-scripts' rules, as
    worker/training/checkpoints.py applies them). A step file's epoch is the epochs completed before it.
    """
    spe = plan.steps_per_epoch
    last = plan.epochs
    epoch_floor = 0  # epoch files up to this are removed
    saved = [e for e in plan.saved_epochs if e != last]
    if config.save_last_n_epochs is not None and config.save_every_n_epochs is not None and saved:
        epoch_floor = max(0, saved[-1] - config.save_every_n_epochs * config.save_last_n_epochs)
    every = config.save_every_n_steps
    step_floor = 0
    if every and config.save_last_n_steps is not None and plan.total_steps >= every:
        last_step = plan.total_steps - plan.total_steps % every
        remove = last_step - config.save_last_n_steps - 1
        step_floor = max(0, remove - remove % every)

    epoch_saves = iter(plan.saved_epochs)
    next_epoch = next(epoch_saves, None)
    step = every if every else None
    while next_epoch is not None or (step is not None and step <= plan.total_steps):
        epoch_step = next_epoch * spe if next_epoch is not None else None
        # At equal steps the step file comes first (checked after the optimizer step, before the epoch save).
        if step is not None and step <= plan.total_steps and (epoch_step is None or step <= epoch_step):
            yield {
                "file": _step_file(config.output_name, step),
                "kind": "step",
                "epoch": (step - 1) // spe if spe else 0,
                "step": step,
                "kept": step > step_floor,
            }
            step += every  # type: ignore[operator]
            continue
        assert next_epoch is not None and epoch_step is not None
        is_final = next_epoch == last
        yield {
            "file": _epoch_file(config.output_name, next_epoch, is_final),
            "kind": "final" if is_final else "epoch",
            "epoch": next_epoch,
            "step": epoch_step,
            "kept": is_final or next_epoch > epoch_floor,
        }
        next_epoch = next(epoch_saves, None)
