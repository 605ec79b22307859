"""How many steps a run takes, counted exactly as Kohya's sd-scripts counts them.

Regularization images are matched to the training image count the way Kohya's DreamBooth dataset does it
(register each reg image with its repeats until the train count is reached, then add one repeat at a time),
which is where the guide's "x2 with regularization images" comes from.

With image sizes, samples are placed in aspect-ratio buckets (shared.config.buckets, reg images by their
own sizes) and an epoch has sum over buckets of ceil(samples_in_bucket / batch_size) batches, as Kohya's
make_buckets counts them; without sizes everything is one bucket.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel

from shared.config.buckets import BucketSettings, assign_buckets, bucket_table
from shared.config.spec import TrainingConfig
from shared.datasets.layout import DatasetLayout, ImageEntry, Subset


class SubsetPlan(BaseModel):
    folder: str
    is_reg: bool
    trigger: str | None
    class_token: str | None
    images: int
    repeats: int  # the folder's N (for reg subsets: as written, before matching)
    samples_per_epoch: int  # images seen per epoch from this subset, repeats and reg matching applied


class BucketPlan(BaseModel):
    width: int
    height: int
    images: int  # distinct images (training and regularization) trained at this size
    samples: int  # per epoch, repeats and reg matching applied
    batches: int  # ceil(samples / batch_size)


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
    # Per aspect-ratio bucket, sorted by (width, height); [] when the plan was made without image sizes.
    buckets: list[BucketPlan] = []


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


def sample_times(layout: DatasetLayout) -> list[tuple[str, int]]:
    """(image path, times seen per epoch) for each image of each subset; repeats, reg matching applied."""
    times = [(image.path, s.repeats) for s in layout.train_subsets for image in s.images]
    train_samples = sum(t for _, t in times)
    reg = layout.reg_subsets
    for subset, per_image in zip(reg, reg_sample_counts(reg, train_samples), strict=True):
        times.extend((image.path, n) for image, n in zip(subset.images, per_image, strict=True))
    return times


def plan_buckets(
    layout: DatasetLayout, config: TrainingConfig, image_sizes: Mapping[str, tuple[int, int]]
) -> list[BucketPlan]:
    """Kohya's bucket table for this layout: every image placed by its (upright) size."""
    paths = [image.path for s in layout.subsets for image in s.images]
    missing = [p for p in paths if p not in image_sizes]
    if missing:
        raise ValueError(f"no image size for {missing[0]!r} ({len(missing)} missing)")
    assignments = assign_buckets({p: image_sizes[p] for p in paths}, BucketSettings.from_config(config))
    rows = bucket_table(assignments, sample_times(layout), config.batch_size)
    return [
        BucketPlan(width=r.width, height=r.height, images=r.images, samples=r.samples, batches=r.batches)
        for r in rows
    ]


def compute_plan(
    layout: DatasetLayout,
    config: TrainingConfig,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> TrainingPlan:
    """The run's plan. image_sizes: relative image path -> (width, height) as trained (EXIF orientation
    applied), for every image of the layout; None counts all samples as one bucket (no bucket table)."""
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
    # Kohya's batches per epoch: ceil(samples / batch) per bucket, summed.
    buckets = plan_buckets(layout, config, image_sizes) if image_sizes is not None else []
    batches = sum(b.batches for b in buckets) if buckets else math.ceil(samples / config.batch_size)
    assert not buckets or sum(b.samples for b in buckets) == samples
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
        buckets=buckets,
    )
