"""Training data: images -> cached VAE latents, captions, and each epoch's shuffled batches.

Everything per-sample is precomputed once into tensors indexed by "item" (one unique (subset, image) pair),
so a training step only gathers rows: no decoding, tokenising or Python lists per step. Repeats and
regularization matching only change how often an item index appears in an epoch (shared.plan.epoch_samples).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from shared.dataset_layout import DatasetLayout, ImageEntry, Subset
from shared.plan import epoch_samples

PRIOR_LOSS_WEIGHT = 1.0  # Kohya's --prior_loss_weight default: the loss weight of regularization samples


@dataclass(frozen=True)
class SampleTable:
    """The unique training items of a layout and the fixed order of one epoch's samples."""

    items: tuple[tuple[Subset, ImageEntry], ...]
    captions: tuple[str, ...]  # per item
    image_paths: tuple[str, ...]  # unique relative paths; an image in two subsets is encoded once
    item_image: tuple[int, ...]  # per item: index into image_paths
    epoch_items: tuple[int, ...]  # one epoch's samples as item indices, before shuffling

    @property
    def loss_weights(self) -> torch.Tensor:
        weights = [PRIOR_LOSS_WEIGHT if s.is_reg else 1.0 for s, _ in self.items]
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
    """RGB, upright: phone photos store rotation in EXIF, and Kohya's loaders apply it too."""
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def target_size(image: Image.Image, resolution: int) -> tuple[int, int]:
    """(width, height) to train this image at. A square now; aspect-ratio bucketing replaces this function."""
    del image
    return resolution, resolution


def resize_and_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale so the image covers size, then center-crop the rest (Kohya's trim_and_resize, no random crop)."""
    width, height = size
    scale = max(width / image.width, height / image.height)
    resized = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    if resized != image.size:
        # Area averaging when shrinking, Lanczos when enlarging: Kohya's cv2 INTER_AREA / LANCZOS4 defaults.
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.LANCZOS
        image = image.resize(resized, resample)
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """HWC uint8 -> CHW float32 in [-1, 1]."""
    array = np.array(image, dtype=np.uint8)  # a writable copy: torch refuses read-only buffers
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def load_training_image(path: Path, resolution: int) -> torch.Tensor:
    image = load_image(path)
    return image_to_tensor(resize_and_crop(image, target_size(image, resolution)))


@torch.no_grad()
def cache_latents(
    vae: torch.nn.Module,
    paths: list[Path],
    resolution: int,
    *,
    generator: torch.Generator,
    batch_size: int = 4,
) -> torch.Tensor:
    """Encode each image once; returns [N, C, h, w] on the VAE's device, already times scaling_factor.

    Like Kohya's cache_latents this stores one latent_dist.sample() per image, reused every epoch and repeat.
    generator is a CPU generator, so the cached latents do not depend on the device.
    """
    device, dtype = vae.device, vae.dtype
    chunks: list[torch.Tensor] = []
    for start in range(0, len(paths), batch_size):
        pixels = torch.stack([load_training_image(p, resolution) for p in paths[start : start + batch_size]])
        dist = vae.encode(pixels.to(device, dtype)).latent_dist
        latents = dist.sample(generator=generator)
        if torch.isnan(latents).any():
            raise ValueError(
                f"NaN in the VAE latents of {[str(p) for p in paths[start : start + batch_size]]}"
            )
        chunks.append(latents)
    return torch.cat(chunks).mul_(vae.config.scaling_factor)


# --- batches ------------------------------------------------------------------------------------------------


def epoch_batches(
    epoch_items: torch.Tensor, *, seed: int, epoch: int, batch_size: int
) -> tuple[torch.Tensor, ...]:
    """One epoch's item indices, shuffled reproducibly (seed + epoch), in batches; the last may be short.

    epoch_items may live on the training device; the permutation is drawn on the CPU, so it is the same on
    every device.
    """
    gen = torch.Generator().manual_seed(seed + epoch)
    order = torch.randperm(len(epoch_items), generator=gen).to(epoch_items.device)
    return torch.split(epoch_items[order], batch_size)
