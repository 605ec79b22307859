"""Training data: images -> cached VAE latents per aspect-ratio bucket, captions, each epoch's batches.

Everything per-sample is precomputed once into tensors indexed by "item" (one unique (subset, image) pair),
so a training step only gathers rows: no decoding per step. Repeats and regularization matching only change
how often an item index appears in an epoch (shared.config.plan.epoch_samples). Images train at their bucket's
size (shared.config.buckets); a batch never mixes buckets. Captions are tokenised once unless Kohya's caption
options make them change per step (worker.training.captions): then each batch carries its own captions.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from shared.config.buckets import Assignment, BucketSelector, BucketSettings, Size, assign_buckets
from shared.config.plan import epoch_samples
from shared.config.spec import TrainingConfig, vae_batch_for
from shared.datasets.images import check_mask_size, upright_size
from shared.datasets.layout import DatasetLayout, ImageEntry, Subset
from shared.datasets.pixels import alpha_channel, to_rgb
from worker.training.captions import CaptionOptions, process_caption

PRIOR_LOSS_WEIGHT = 1.0  # Kohya's --prior_loss_weight default: the loss weight of regularization samples
# Latent samples are drawn for this many images of a bucket at a time, whatever the VAE batch: the random
# stream (and so every run's latents) stays the one lorabake has always drawn.
SAMPLE_CHUNK = 4


@dataclass(frozen=True)
class SampleTable:
    """The unique training items of a layout and the fixed order of one epoch's samples."""

    items: tuple[tuple[Subset, ImageEntry], ...]
    captions: tuple[str, ...]  # per item
    image_paths: tuple[str, ...]  # unique relative paths; an image in two subsets is encoded once
    item_image: tuple[int, ...]  # per item: index into image_paths
    epoch_items: tuple[int, ...]  # one epoch's samples as item indices, before shuffling

    def loss_weights(self, prior_loss_weight: float = PRIOR_LOSS_WEIGHT) -> torch.Tensor:
        """Per item: prior_loss_weight for regularization samples, 1 otherwise (Kohya)."""
        weights = [prior_loss_weight if s.is_reg else 1.0 for s, _ in self.items]
        return torch.tensor(weights, dtype=torch.float32)


def read_caption(dataset_dir: Path, subset: Subset, entry: ImageEntry) -> str:
    """The caption file's first line, stripped (as Kohya reads it); the folder's tokens if missing/empty."""
    if entry.caption_path is not None:
        text = (Path(dataset_dir) / entry.caption_path).read_text(encoding="utf-8")
        first = text.strip().splitlines()[0].strip() if text.strip() else ""
        if first:
            return first
    return subset.default_caption


def build_sample_table(layout: DatasetLayout, dataset_dir: Path) -> SampleTable:
    samples = epoch_samples(layout)
    item_index: dict[tuple[int, str], int] = {}  # (subset position, image path) -> item
    items: list[tuple[Subset, ImageEntry]] = []
    subset_pos = {id(s): i for i, s in enumerate(layout.subsets)}
    epoch_items: list[int] = []
    for subset, entry in samples:
        key = (subset_pos[id(subset)], entry.path)
        if key not in item_index:
            item_index[key] = len(items)
            items.append((subset, entry))
        epoch_items.append(item_index[key])
    image_index: dict[str, int] = {}
    for _, entry in items:
        image_index.setdefault(entry.path, len(image_index))
    return SampleTable(
        items=tuple(items),
        captions=tuple(read_caption(dataset_dir, s, e) for s, e in items),
        image_paths=tuple(image_index),
        item_image=tuple(image_index[e.path] for _, e in items),
        epoch_items=tuple(epoch_items),
    )


# --- images -------------------------------------------------------------------------------------------------


def load_image(path: Path) -> Image.Image:
    """RGB, upright: phone photos store rotation in EXIF (Kohya does not turn them; we do, and bucket by the
    upright size, which is also what the API plans with)."""
    with Image.open(path) as img:
        # not a plain convert("RGB"): that clips 16-bit images to white (shared.datasets.pixels)
        return to_rgb(ImageOps.exif_transpose(img))


def read_image_sizes(dataset_dir: Path, layout: DatasetLayout) -> dict[str, Size]:
    """(width, height) as trained, EXIF orientation applied, of every image of the layout by relative path:
    what shared.config.plan.compute_plan and the latent cache bucket by."""
    paths = sorted({image.path for s in layout.subsets for image in s.images})
    return {p: upright_size(Path(dataset_dir) / p) for p in paths}


def fit_to_bucket(image: Image.Image, assignment: Assignment, *, name: str = "image") -> Image.Image:
    """Kohya's trim_and_resize_if_required without random_crop: resize to assignment.resized (which covers
    the bucket), then trim the excess equally from both sides (`excess // 2` left/top)."""
    width, height = assignment.resized
    if image.size != (width, height):
        if width < assignment.bucket[0] or height < assignment.bucket[1]:
            raise ValueError(
                f"{name!r}: resized size {assignment.resized} does not cover {assignment.bucket}"
            )
        # Kohya's resize_image defaults: area averaging when no side grows, Lanczos otherwise.
        shrinking = image.width >= width and image.height >= height
        image = image.resize((width, height), Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS)
    return image.crop(assignment.crop_box)


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """HWC uint8 -> CHW float32 in [-1, 1]."""
    array = np.array(image, dtype=np.uint8)  # a writable copy: torch refuses read-only buffers
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def load_bucket_image(path: Path, assignment: Assignment, size: Size | None = None) -> torch.Tensor:
    """[3, bucket h, bucket w] in [-1, 1]. size: the (upright) size the bucket was chosen for, checked."""
    image = load_image(path)
    if size is not None and image.size != tuple(size):
        raise ValueError(f"{path.name!r} is {image.size[0]}x{image.size[1]}, planned as {size[0]}x{size[1]}")
    return image_to_tensor(fit_to_bucket(image, assignment, name=path.name))


def load_training_image(path: Path, resolution: int) -> torch.Tensor:
    """One image at resolution x resolution (resized to cover, center-cropped): bucketing off."""
    image = load_image(path)
    assignment = BucketSelector(BucketSettings(resolution=resolution, enable_bucket=False)).select(image.size)
    return image_to_tensor(fit_to_bucket(image, assignment, name=path.name))


# --- loss masks (masked_loss / alpha_mask) ------------------------------------------------------------------
# As sd-scripts: a mask file's R channel, or the image's alpha, over 255 is the loss weight (white/opaque 1,
# black/transparent 0, grey in between); it goes through the image's resize, crop and flip, is reduced to
# latent size by area averaging, and multiplies the per-element loss before its mean.


def load_mask(mask_path: Path | None, image_path: Path, *, alpha: bool) -> Image.Image | None:
    """The loss-weight image ("L", upright, the image's size) of one image: its mask file if given, else its
    alpha channel when `alpha` (opaque where it has none), else None (the image trains unmasked)."""
    if mask_path is not None:
        with Image.open(mask_path) as img:
            mask = to_rgb(ImageOps.exif_transpose(img)).getchannel("R")  # sd-scripts: the R channel
        with Image.open(image_path) as img:
            size = ImageOps.exif_transpose(img).size
        if mask.size != size:
            check_mask_size(mask_path.name, mask.size, size)  # same aspect ratio, else a DatasetError
            # like an image's own resize: area averaging when shrinking, Lanczos when growing
            shrinking = mask.width >= size[0] and mask.height >= size[1]
            mask = mask.resize(size, Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS)
        return mask
    if alpha:
        with Image.open(image_path) as img:
            # palette and colour-key (tRNS) transparency count as alpha; 255 for images without one
            return alpha_channel(ImageOps.exif_transpose(img))
    return None


def mask_to_latent(
    mask: Image.Image, assignment: Assignment, latent_size: tuple[int, int], *, name: str = "mask"
) -> torch.Tensor:
    """[1, h, w] float32 weights in [0, 1] at latent_size (h, w): the mask fitted to the bucket as its image
    is (fit_to_bucket: same resize and crop), then averaged over the pixels of each latent pixel (8x8 for
    SD's VAE; sd-scripts: interpolate(mode="area") to the loss's size)."""
    fitted = fit_to_bucket(mask, assignment, name=name)
    pixels = torch.from_numpy(np.array(fitted, dtype=np.float32)).div_(255.0)[None, None]
    return F.interpolate(pixels, size=tuple(latent_size), mode="area")[0]


def cache_loss_masks(
    dataset_dir: Path,
    latents: BucketLatents,
    image_paths: Sequence[str],
    assignments: Mapping[str, Assignment],
    mask_paths: Mapping[str, str | None],
    *,
    alpha: bool,
) -> list[torch.Tensor] | None:
    """Per bucket [n, 1, h, w] weights in the rows of `latents` (ones for an image without a mask), on the
    latents' device; None when no image has a mask, so training is exactly unmasked. Flipped samples use
    the mask mirrored (BucketLatents.mask_rows), as sd-scripts flips it with the image."""
    dataset_dir = Path(dataset_dir)
    masks = [torch.ones((t.shape[0], 1, *t.shape[2:]), dtype=torch.float32) for t in latents.latents]
    found = False
    for index, rel in enumerate(image_paths):
        mask_rel = mask_paths.get(rel)
        mask = load_mask(dataset_dir / mask_rel if mask_rel else None, dataset_dir / rel, alpha=alpha)
        if mask is None:
            continue
        found = True
        bucket, row = latents.image_bucket[index], latents.image_row[index]
        masks[bucket][row] = mask_to_latent(
            mask, assignments[rel], masks[bucket].shape[2:], name=mask_rel or rel
        )
    if not found:
        return None
    device = latents.latents[0].device
    return [m.to(device) for m in masks]


def mask_rows(
    masks: list[torch.Tensor], bucket: int, rows: torch.Tensor, flipped: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, 1, h, w] loss weights of rows of one bucket, mirrored where `flipped` (the latents are too)."""
    weights = masks[bucket][rows]
    if flipped is None:
        return weights
    return torch.where(flipped.view(-1, 1, 1, 1), torch.flip(weights, dims=[3]), weights)


# --- latents ------------------------------------------------------------------------------------------------


@dataclass
class BucketLatents:
    """Cached latents, one tensor per bucket (all rows of a bucket share a shape), already scaled."""

    sizes: list[Size]  # bucket (width, height), sorted
    latents: list[torch.Tensor]  # per bucket [n, C, h, w], float32, on the VAE's device
    flipped: list[torch.Tensor] | None  # the same of the horizontally mirrored images (flip_aug)
    image_bucket: list[int]  # per image: index into sizes
    image_row: list[int]  # per image: row in its bucket's tensor

    def rows(self, bucket: int, rows: torch.Tensor, flipped: torch.Tensor | None = None) -> torch.Tensor:
        """[B, C, h, w] for rows of one bucket; flipped (bool per row) picks the mirrored latents."""
        latents = self.latents[bucket][rows]
        if flipped is None or self.flipped is None:
            return latents
        mirrored = self.flipped[bucket][rows]
        return torch.where(flipped.view(-1, 1, 1, 1), mirrored, latents)


def vae_fingerprint(vae: torch.nn.Module) -> str:
    """A short hash of the VAE encoder's first and last layers: disk-cached latents never cross VAEs."""
    digest = hashlib.sha256()
    state = vae.state_dict()
    for name in sorted(
        k for k in state if k.startswith(("encoder.conv_in.", "encoder.conv_out.", "quant_conv."))
    ):
        digest.update(name.encode())
        digest.update(state[name].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class LatentDiskCache:
    """VAE distribution parameters (mean and log-variance, before sampling and scaling) as .npz files in a
    cache folder, one per (image path, mtime, size, bucket, resized size, mirrored, VAE). Storing the
    distribution rather than a sample keeps a run identical whether its latents come from disk or not."""

    def __init__(self, folder: Path, dataset_dir: Path, vae_key: str):
        self.folder, self.dataset_dir, self.vae_key = Path(folder), Path(dataset_dir), vae_key
        self.folder.mkdir(parents=True, exist_ok=True)

    def _file(self, rel_path: str, assignment: Assignment, flipped: bool) -> Path:
        stat = (self.dataset_dir / rel_path).stat()
        key = json.dumps(
            [
                rel_path,
                stat.st_mtime_ns,
                stat.st_size,
                assignment.bucket,
                assignment.resized,
                flipped,
                self.vae_key,
            ]
        )
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.npz"

    def load(self, rel_path: str, assignment: Assignment, flipped: bool) -> torch.Tensor | None:
        path = self._file(rel_path, assignment, flipped)
        try:
            with np.load(path, allow_pickle=False) as npz:
                return torch.from_numpy(np.array(npz["params"], dtype=np.float32))
        except (OSError, KeyError, ValueError):
            return None

    def save(self, rel_path: str, assignment: Assignment, flipped: bool, params: torch.Tensor) -> None:
        path = self._file(rel_path, assignment, flipped)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        try:
            np.savez(tmp, params=params.detach().float().cpu().numpy())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@torch.no_grad()
def cache_latents(
    vae: torch.nn.Module,
    dataset_dir: Path,
    image_paths: Sequence[str],
    assignments: Mapping[str, Assignment],
    *,
    generator: torch.Generator,
    flip_aug: bool = False,
    image_sizes: Mapping[str, Size] | None = None,
    disk_cache: LatentDiskCache | None = None,
    vae_batch_size: int | None = None,
) -> BucketLatents:
    """Encode each image once at its bucket (and once mirrored with flip_aug, as Kohya's cache_batch_latents
    does); latents end on the VAE's device, minus shift_factor (VAEs that have one) times scaling_factor.
    The VAE encodes vae_batch_size images at once (shared.config.spec.vae_batch_for: unset, by bucket size).

    Like Kohya this keeps one latent_dist sample per image (and orientation), reused every epoch and repeat.
    The samples are drawn from `generator` (CPU) in a fixed order (bucket, chunks of SAMPLE_CHUNK images,
    orientation), so they do not depend on the device, the VAE batch, nor on which images came from the disk
    cache.
    """
    dataset_dir = Path(dataset_dir)
    sizes = sorted({assignments[p].bucket for p in image_paths})
    bucket_of = {size: i for i, size in enumerate(sizes)}
    members: list[list[int]] = [[] for _ in sizes]
    image_bucket, image_row = [], []
    for index, path in enumerate(image_paths):
        bucket = bucket_of[assignments[path].bucket]
        image_bucket.append(bucket)
        image_row.append(len(members[bucket]))
        members[bucket].append(index)
    orientations = (False, True) if flip_aug else (False,)
    shift = getattr(vae.config, "shift_factor", None)
    per_orientation: dict[bool, list[torch.Tensor]] = {o: [] for o in orientations}
    for bucket_size, indices in zip(sizes, members, strict=True):
        chunks: dict[bool, list[torch.Tensor]] = {o: [] for o in orientations}
        batch = vae_batch_for(vae_batch_size, bucket_size[0] * bucket_size[1])
        pending: dict[bool, list[torch.Tensor]] = {o: [] for o in orientations}  # encoded, not yet drawn
        paths: list[str] = []
        for start in range(0, len(indices), batch):
            chunk = [image_paths[i] for i in indices[start : start + batch]]
            params = _chunk_params(
                vae, dataset_dir, chunk, assignments, orientations, image_sizes, disk_cache
            )
            paths.extend(chunk)
            for flipped in orientations:
                pending[flipped].extend(params[flipped])
            last = start + batch >= len(indices)
            while len(paths) >= SAMPLE_CHUNK or (last and paths):
                drawn, paths = paths[:SAMPLE_CHUNK], paths[SAMPLE_CHUNK:]
                for flipped in orientations:
                    rows, pending[flipped] = pending[flipped][: len(drawn)], pending[flipped][len(drawn) :]
                    chunks[flipped].append(_sample(torch.stack(rows), generator, drawn))
        for flipped in orientations:
            latents = torch.cat(chunks[flipped])
            if shift is not None:  # FLUX-style VAEs: (z - shift_factor) * scaling_factor
                latents = latents.sub_(shift)
            per_orientation[flipped].append(latents.mul_(vae.config.scaling_factor).to(vae.device))
    return BucketLatents(
        sizes=sizes,
        latents=per_orientation[False],
        flipped=per_orientation[True] if flip_aug else None,
        image_bucket=image_bucket,
        image_row=image_row,
    )


@dataclass(frozen=True)
class CachedImages:
    """What every family caches from the images before training: their buckets, latents and loss masks."""

    assignments: Mapping[str, Assignment]
    latents: BucketLatents
    masks: list[torch.Tensor] | None  # masked_loss / alpha_mask: per bucket [n, 1, h, w] loss weights


def cache_images(
    vae: torch.nn.Module,
    table: SampleTable,
    dataset_dir: Path,
    config: TrainingConfig,
    seed: int,
    image_sizes: Mapping[str, Size],
    cache_dir: Path,
) -> CachedImages:
    """Buckets as compute_plan counted them, latents (float32: noise, noisy latents and targets are formed in
    fp32, only the denoiser's input is cast), and the loss masks, computed from the files each run (the
    latent cache does not depend on them)."""
    assignments = assign_buckets(
        {p: image_sizes[p] for p in table.image_paths}, BucketSettings.from_config(config)
    )
    disk_cache = None
    if config.cache_latents_to_disk:
        disk_cache = LatentDiskCache(cache_dir, dataset_dir, vae_fingerprint(vae))
    latents = cache_latents(
        vae,
        dataset_dir,
        table.image_paths,
        assignments,
        generator=torch.Generator().manual_seed(seed),
        flip_aug=config.flip_aug,
        image_sizes=image_sizes,
        disk_cache=disk_cache,
        vae_batch_size=config.vae_batch_size,
    )
    masks = None
    if config.uses_loss_masks:
        mask_paths = {e.path: e.mask_path for s, e in table.items if config.masked_loss and not s.is_reg}
        masks = cache_loss_masks(
            dataset_dir, latents, table.image_paths, assignments, mask_paths, alpha=config.alpha_mask
        )
    return CachedImages(assignments=assignments, latents=latents, masks=masks)


def _chunk_params(
    vae: torch.nn.Module,
    dataset_dir: Path,
    chunk: list[str],
    assignments: Mapping[str, Assignment],
    orientations: tuple[bool, ...],
    image_sizes: Mapping[str, Size] | None,
    disk_cache: LatentDiskCache | None,
) -> dict[bool, torch.Tensor]:
    """Latent distribution parameters [n, 2C, h, w] (CPU float32) of a chunk of one bucket's images."""
    cached = {
        o: [disk_cache.load(p, assignments[p], o) if disk_cache else None for p in chunk]
        for o in orientations
    }
    missing = [i for i, p in enumerate(chunk) if any(cached[o][i] is None for o in orientations)]
    if missing:
        pixels = torch.stack(
            [
                load_bucket_image(
                    dataset_dir / chunk[i],
                    assignments[chunk[i]],
                    image_sizes.get(chunk[i]) if image_sizes else None,
                )
                for i in missing
            ]
        ).to(vae.device, vae.dtype)
        for flipped in orientations:
            batch = torch.flip(pixels, dims=[3]) if flipped else pixels
            params = vae.encode(batch).latent_dist.parameters.float().cpu()
            if torch.isnan(params).any():
                raise ValueError(f"NaN in the VAE latents of {[chunk[i] for i in missing]}")
            for row, i in enumerate(missing):
                cached[flipped][i] = params[row]
                if disk_cache is not None:
                    disk_cache.save(chunk[i], assignments[chunk[i]], flipped, params[row])
    return {o: torch.stack(cached[o]) for o in orientations}  # type: ignore[arg-type]


def _sample(params: torch.Tensor, generator: torch.Generator, chunk: list[str]) -> torch.Tensor:
    """One draw from diffusers' DiagonalGaussianDistribution(params) with a CPU generator."""
    mean, logvar = torch.chunk(params, 2, dim=1)
    std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
    latents = mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    if torch.isnan(latents).any():
        raise ValueError(f"NaN in the VAE latents of {chunk}")
    return latents


# --- batches ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleOrder:
    """What an epoch is made of: the item of every sample, each item's bucket, and the per-step options."""

    epoch_items: tuple[int, ...]  # one epoch's samples as item indices (repeats and reg matching applied)
    item_bucket: tuple[int, ...]  # per item: index of its latents bucket
    flip_aug: bool = False
    captions: tuple[str, ...] | None = None  # per item raw captions, when they change per step
    caption_options: CaptionOptions | None = None

    def __len__(self) -> int:
        return len(self.epoch_items)


@dataclass(frozen=True)
class Batch:
    """One micro-batch: items of a single bucket, plus this step's mirroring and captions when they vary."""

    bucket: int
    items: torch.Tensor  # item indices, int64, on the CPU
    flipped: torch.Tensor | None = None  # bool per sample (flip_aug)
    captions: tuple[str, ...] | None = None  # processed per sample (shuffle/dropout options)

    def __len__(self) -> int:
        return len(self.items)


def epoch_batches(order: SampleOrder, *, seed: int, epoch: int, batch_size: int) -> list[Batch]:
    """One epoch's batches, reproducible from (seed, epoch), as Kohya's make_buckets/shuffle_buckets make
    them: each bucket's samples shuffled and cut into batches (the last of a bucket may be short), then the
    batches of all buckets shuffled together. Mirroring (probability 1/2 per sample) and the captions of
    this epoch are drawn here too, on the CPU, so they are the same on every device."""
    gen = torch.Generator().manual_seed(seed + epoch)
    by_bucket: dict[int, list[int]] = {}
    for item in order.epoch_items:
        by_bucket.setdefault(order.item_bucket[item], []).append(item)
    pieces: list[tuple[int, torch.Tensor]] = []
    for bucket in sorted(by_bucket):
        items = torch.tensor(by_bucket[bucket], dtype=torch.int64)
        items = items[torch.randperm(len(items), generator=gen)]
        pieces.extend((bucket, chunk) for chunk in torch.split(items, batch_size))
    rng = random.Random(f"captions:{seed}:{epoch}")
    batches: list[Batch] = []
    for index in torch.randperm(len(pieces), generator=gen).tolist():
        bucket, items = pieces[index]
        flipped = torch.rand(len(items), generator=gen) < 0.5 if order.flip_aug else None
        captions = None
        if order.captions is not None:
            options = order.caption_options or CaptionOptions()
            captions = tuple(
                process_caption(order.captions[i], options, epoch=epoch, rng=rng) for i in items.tolist()
            )
        batches.append(Batch(bucket=bucket, items=items, flipped=flipped, captions=captions))
    return batches
