"""How many steps a run takes, counted exactly as Kohya's sd-scripts counts them.

Regularization images are matched to the training image count the way Kohya's DreamBooth dataset does it
(register each reg image with its repeats until the train count is reached, then add one repeat at a time),
which is where the guide's "x2 with regularization images" comes from.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from shared.dataset_layout import DatasetLayout, ImageEntry, Subset
from shared.spec import TrainingConfig


class SubsetPlan(BaseModel):
    folder: str
    is_reg: bool
    trigger: str | None
    class_token: str | None
    images: int
    repeats: int  # the folder's N (for reg subsets: as written, before matching)
    samples_per_epoch: int  # images seen per epoch from this subset, repeats and reg matching applied


class TrainingPlan(BaseModel):
    images: int  # training images (without regularization)
    reg_images: int
    repeats: int | None  # the single repeats value when every training subset shares it
    epochs: int
    batch_size: int
    gradient_accumulation_steps: int
    uses_regularization: bool
    samples_per_epoch: int  # training + matched regularization samples
    batches_per_epoch: int
    steps_per_epoch: int  # optimizer steps
    total_steps: int
    saved_epochs: list[int]
    subsets: list[SubsetPlan]


def reg_sample_counts(reg_subsets: tuple[Subset, ...], train_samples: int) -> list[list[int]]:
    """Per reg subset, per image: how many times it is seen in an epoch (Kohya's matching loop)."""
    counts = [[0] * len(s.images) for s in reg_subsets]
    if train_samples == 0 or not any(s.images for s in reg_subsets):
        return counts
    seen = 0
    first_pass = True
    while seen < train_samples:
        for si, subset in enumerate(reg_subsets):
            for ii in range(len(subset.images)):
                step = subset.repeats if first_pass else 1
                counts[si][ii] += step
                seen += step
                if seen >= train_samples:
                    return counts
        first_pass = False
    return counts


def epoch_samples(layout: DatasetLayout) -> list[tuple[Subset, ImageEntry]]:
    """Every (subset, image) sample of one epoch, in a fixed order; the engine shuffles it."""
    samples: list[tuple[Subset, ImageEntry]] = []
    train = layout.train_subsets
    for subset in train:
        for image in subset.images:
            samples.extend([(subset, image)] * subset.repeats)
    reg = layout.reg_subsets
    for subset, per_image in zip(reg, reg_sample_counts(reg, len(samples)), strict=True):
        for image, times in zip(subset.images, per_image, strict=True):
            samples.extend([(subset, image)] * times)
    return samples


def saved_epochs(epochs: int, save_every_n_epochs: int | None) -> list[int]:
    """Epochs after which a LoRA file is written; the last one always is."""
    chosen = (
        set(range(save_every_n_epochs, epochs + 1, save_every_n_epochs)) if save_every_n_epochs else set()
    )
    chosen.add(epochs)
    return sorted(chosen)


def compute_plan(layout: DatasetLayout, config: TrainingConfig) -> TrainingPlan:
    train_samples = sum(len(s.images) * s.repeats for s in layout.train_subsets)
    reg_counts = reg_sample_counts(layout.reg_subsets, train_samples)
    subset_plans = [
        SubsetPlan(
            folder=s.folder,
            is_reg=False,
            trigger=s.trigger,
            class_token=s.class_token,
            images=len(s.images),
            repeats=s.repeats,
            samples_per_epoch=len(s.images) * s.repeats,
        )
        for s in layout.train_subsets
    ] + [
        SubsetPlan(
            folder=s.folder,
            is_reg=True,
            trigger=s.trigger,
            class_token=s.class_token,
            images=len(s.images),
            repeats=s.repeats,
            samples_per_epoch=sum(c),
        )
        for s, c in zip(layout.reg_subsets, reg_counts, strict=True)
    ]
    samples = sum(p.samples_per_epoch for p in subset_plans)
    # One resolution bucket for now: Kohya's batches per epoch is ceil(samples / batch) per bucket.
    batches = math.ceil(samples / config.batch_size)
    steps_per_epoch = math.ceil(batches / config.gradient_accumulation_steps)
    repeats = {s.repeats for s in layout.train_subsets}
    reg_images = sum(len(s.images) for s in layout.reg_subsets)
    return TrainingPlan(
        images=sum(len(s.images) for s in layout.train_subsets),
        reg_images=reg_images,
        repeats=repeats.pop() if len(repeats) == 1 else None,
        epochs=config.epochs,
        batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        uses_regularization=reg_images > 0,
        samples_per_epoch=samples,
        batches_per_epoch=batches,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * config.epochs,
        saved_epochs=saved_epochs(config.epochs, config.save_every_n_epochs),
        subsets=subset_plans,
    )
