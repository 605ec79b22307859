"""vae_batch_size (Kohya's): the VAE encodes that many images of a bucket at once while latents are cached,
and the latents a run trains on do not depend on it beyond the VAE's own last bits (the random draws follow
the bucket's images in a fixed order, whatever the batch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.config.buckets import BucketSettings, assign_buckets
from worker.devtools.tiny_models import build_tiny_vae
from worker.training import data


def _images(root: Path, count: int) -> dict[str, tuple[int, int]]:
    rng = np.random.default_rng(0)
    sizes = {}
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / f"{i}.png")
        sizes[f"{i}.png"] = (64, 64)
    return sizes


def _cache(vae: torch.nn.Module, root: Path, sizes: dict, vae_batch_size: int | None) -> tuple[list, list]:
    seen: list[int] = []
    encode = vae.encode

    def recording(pixels: torch.Tensor, *args, **kwargs):
        seen.append(pixels.shape[0])
        return encode(pixels, *args, **kwargs)

    vae.encode = recording
    try:
        cached = data.cache_latents(
            vae,
            root,
            tuple(sizes),
            assign_buckets(sizes, BucketSettings(64, enable_bucket=False)),
            generator=torch.Generator().manual_seed(5),
            flip_aug=True,
            vae_batch_size=vae_batch_size,
        )
    finally:
        vae.encode = encode
    return seen, [cached.latents[0], cached.flipped[0]]


def test_the_vae_batch_sets_the_encode_size_and_not_the_latents(tmp_path: Path):
    vae = build_tiny_vae(seed=0).eval()
    sizes = _images(tmp_path, 6)
    one, by_one = _cache(vae, tmp_path, sizes, 1)
    auto, by_auto = _cache(vae, tmp_path, sizes, None)  # 64 px images: 4 at once, as lorabake always did
    five, by_five = _cache(vae, tmp_path, sizes, 5)
    assert one == [1] * 12  # 6 images, each also mirrored (flip_aug)
    assert auto == [4, 4, 2, 2]
    assert five == [5, 5, 1, 1]
    for other in (by_auto, by_five):
        for a, b in zip(by_one, other, strict=True):
            assert a.shape == (6, 4, 32, 32)
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)  # same draws; the VAE's last bits aside


def test_unset_vae_batch_follows_the_bucket_size():
    from shared.config.spec import vae_batch_for

    assert [vae_batch_for(None, s * s) for s in (64, 512, 640, 768, 1024)] == [4, 4, 2, 1, 1]
    assert vae_batch_for(8, 1024 * 1024) == 8
