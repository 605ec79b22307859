"""Kohya's data options in the worker: caption processing (BaseDataset.process_caption), bucketed batches
(make_buckets / shuffle_buckets), bucket crops (trim_and_resize_if_required), flipped latents
(cache_batch_latents with flip_aug) and the on-disk latent cache."""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.config.buckets import BucketSelector, BucketSettings, assign_buckets
from worker.devtools.tiny_models import build_tiny_vae
from worker.training import data
from worker.training.captions import CaptionOptions, process_caption, with_affixes

CAPTION = "sks toy, red, shiny, outdoors, smiling, day"


def run(options: CaptionOptions, caption: str = CAPTION, *, n: int = 200, epoch: int = 1) -> list[str]:
    rng = random.Random(0)
    return [process_caption(caption, options, epoch=epoch, rng=rng) for _ in range(n)]


# --- captions -----------------------------------------------------------------------------------------------


def test_no_options_leave_the_caption_alone():
    assert run(CaptionOptions(), n=3) == [CAPTION] * 3
    assert not CaptionOptions(prefix="a", suffix="b").varies  # affixes are static: outputs stay cacheable


def test_shuffle_keeps_the_first_tokens_in_place():
    out = run(CaptionOptions(shuffle=True, keep_tokens=2))
    assert all(c.startswith("sks toy, red, ") for c in out)
    assert all(sorted(c.split(", ")) == sorted(CAPTION.split(", ")) for c in out)
    assert len(set(out)) > 10  # really shuffled
    tails = Counter(c.split(", ")[2] for c in out)
    assert set(tails) == {"shiny", "outdoors", "smiling", "day"}


def test_keep_tokens_separator_fixes_both_ends():
    caption = "sks toy, red ||| shiny, outdoors, smiling ||| best quality, day"
    out = run(CaptionOptions(shuffle=True, keep_tokens=5, keep_tokens_separator="|||"), caption)
    assert all(c.startswith("sks toy, red, ") and c.endswith(", best quality, day") for c in out)
    assert {c.split(", ")[2] for c in out} == {"shiny", "outdoors", "smiling"}  # keep_tokens is ignored


def test_caption_dropout_rate_one_empties_every_caption():
    assert run(CaptionOptions(dropout_rate=1.0, prefix="pre"), n=20) == [""] * 20
    some = run(CaptionOptions(dropout_rate=0.5))
    assert 50 < some.count("") < 150 and set(some) == {"", CAPTION}


def test_caption_dropout_every_n_epochs():
    options = CaptionOptions(dropout_every_n_epochs=2)
    assert options.varies
    assert run(options, n=3, epoch=1) == [CAPTION] * 3
    assert run(options, n=3, epoch=2) == [""] * 3  # Kohya: current_epoch % n == 0, epochs counted from 1
    assert run(options, n=3, epoch=3) == [CAPTION] * 3


def test_tag_dropout_drops_tags_but_never_kept_ones():
    everything = run(CaptionOptions(tag_dropout_rate=1.0, keep_tokens=1), n=5)
    assert everything == ["sks toy"] * 5
    some = run(CaptionOptions(tag_dropout_rate=0.5))
    counts = Counter(len(c.split(", ")) if c else 0 for c in some)
    assert len(counts) > 3 and max(counts) <= 6  # lengths vary: tags really dropped
    tags = CAPTION.split(", ")
    assert all(sorted(c.split(", "), key=tags.index) == c.split(", ") for c in some if c)  # order kept


def test_prefix_and_suffix_join_with_a_space():
    options = CaptionOptions(prefix="photo of", suffix="masterpiece")
    assert with_affixes("sks toy", options) == "photo of sks toy masterpiece"
    # Kohya adds them before splitting, so the prefix becomes part of the first (kept) tag.
    out = run(CaptionOptions(prefix="photo of", shuffle=True, keep_tokens=1), "sks toy, red, blue", n=20)
    assert all(c.startswith("photo of sks toy, ") for c in out)


def test_options_from_config():
    from shared.config.spec import TrainingConfig

    config = TrainingConfig(
        base_model="x", shuffle_caption=True, keep_tokens=1, caption_tag_dropout_rate=0.1, caption_prefix="a"
    )
    options = CaptionOptions.from_config(config)
    assert (options.shuffle, options.keep_tokens, options.tag_dropout_rate, options.prefix) == (
        True,
        1,
        0.1,
        "a",
    )
    assert options.varies and not CaptionOptions.from_config(TrainingConfig(base_model="x")).varies


# --- batches ------------------------------------------------------------------------------------------------


def test_batches_never_mix_buckets_and_count_as_kohya():
    # items 0..2 in bucket 0, 3..4 in bucket 1, 5 in bucket 2; 3 repeats each -> 9, 6, 3 samples.
    order = data.SampleOrder(
        epoch_items=tuple(i for i in range(6) for _ in range(3)),
        item_bucket=(0, 0, 0, 1, 1, 2),
        flip_aug=True,
        captions=tuple(f"tag{i}, a, b, c" for i in range(6)),
        caption_options=CaptionOptions(shuffle=True, keep_tokens=1),
    )
    batches = data.epoch_batches(order, seed=5, epoch=1, batch_size=4)
    assert len(batches) == 3 + 2 + 1  # ceil(9/4) + ceil(6/4) + ceil(3/4)
    for batch in batches:
        assert {order.item_bucket[i] for i in batch.items.tolist()} == {batch.bucket}
        assert batch.flipped is not None and batch.flipped.shape == batch.items.shape
        assert [c.split(", ")[0] for c in batch.captions] == [f"tag{i}" for i in batch.items.tolist()]
    assert Counter(torch.cat([b.items for b in batches]).tolist()) == {i: 3 for i in range(6)}
    flips = torch.cat([b.flipped for b in batches])
    assert 0 < int(flips.sum()) < len(flips)
    again = data.epoch_batches(order, seed=5, epoch=1, batch_size=4)
    assert [(b.bucket, b.items.tolist(), b.flipped.tolist(), b.captions) for b in batches] == [
        (b.bucket, b.items.tolist(), b.flipped.tolist(), b.captions) for b in again
    ]
    other = data.epoch_batches(order, seed=5, epoch=2, batch_size=4)
    assert [b.captions for b in batches] != [b.captions for b in other]


# --- images and latents -------------------------------------------------------------------------------------


def _halves(size: tuple[int, int]) -> Image.Image:
    """Left half red, right half blue, with a green band across the top quarter."""
    w, h = size
    img = Image.new("RGB", size, (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, w // 2, h))
    img.paste((0, 255, 0), (0, 0, w, h // 4))
    return img


def test_fit_to_bucket_resizes_to_cover_and_crops_the_center():
    selector = BucketSelector(BucketSettings(64, min_reso=32, max_reso=128, steps=32))
    # ar 2.67 -> (96, 32) (ratio 3 beats 4); narrower than 3, so widths match: scale 0.75, resized (96, 36),
    # 4 rows trimmed, 2 from the top.
    assignment = selector.select((128, 48))
    assert (assignment.bucket, assignment.resized, assignment.crop_box) == (
        (96, 32),
        (96, 36),
        (0, 2, 96, 34),
    )
    out = data.fit_to_bucket(_halves((128, 48)), assignment)
    assert out.size == (96, 32)
    pixels = np.asarray(out).astype(int)
    assert pixels[1, 48, 1] > 200  # the green band (9 resized rows) survives the 2-row trim
    assert pixels[20, 5, 0] > 200 and pixels[20, 90, 2] > 200  # red left, blue right: nothing cut sideways


def test_load_bucket_image_checks_the_planned_size(tmp_path):
    _halves((128, 48)).save(tmp_path / "w.png")
    assignment = BucketSelector(BucketSettings(64, min_reso=32, max_reso=128, steps=32)).select((128, 48))
    assert data.load_bucket_image(tmp_path / "w.png", assignment, (128, 48)).shape == (3, 32, 96)
    with pytest.raises(ValueError, match="planned as 48x128"):
        data.load_bucket_image(tmp_path / "w.png", assignment, (48, 128))


@pytest.fixture(scope="module")
def vae():
    return build_tiny_vae(seed=0).eval()


def _dataset(root: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    sizes = {"a.png": (64, 64), "b.png": (128, 48), "c.png": (48, 128), "d.png": (64, 64)}
    for name, size in sizes.items():
        _halves(size).save(root / name)
    return root, sizes


def test_cache_latents_per_bucket_with_flipped_copies(vae, tmp_path):
    root, sizes = _dataset(tmp_path)
    paths = tuple(sizes)
    assignments = assign_buckets(sizes, BucketSettings(64, min_reso=32, max_reso=128, steps=32))
    cached = data.cache_latents(
        vae, root, paths, assignments, generator=torch.Generator().manual_seed(0), flip_aug=True
    )
    assert cached.sizes == [(32, 96), (64, 64), (96, 32)]
    # The tiny VAE halves each side: latents are [n, 4, h/2, w/2] per bucket.
    assert [tuple(t.shape) for t in cached.latents] == [(1, 4, 48, 16), (2, 4, 32, 32), (1, 4, 16, 48)]
    assert cached.image_bucket == [1, 2, 0, 1] and cached.image_row == [0, 0, 0, 1]
    assert cached.flipped is not None
    normal, mirrored = cached.latents[2][0], cached.flipped[2][0]
    assert (normal - mirrored).abs().mean() > 1e-3  # flip changes the latents trained on
    # The mirrored latents are those of the mirrored image (encoded, not the latents flipped).
    pixels = data.load_bucket_image(root / "b.png", assignments["b.png"])
    with torch.no_grad():
        mean = vae.encode(torch.flip(pixels, dims=[2])[None]).latent_dist.mean[0] * vae.config.scaling_factor
    assert (mirrored - mean).abs().mean() < (normal - mean).abs().mean()
    rows = torch.tensor([0, 1])
    picked = cached.rows(1, rows, torch.tensor([False, True]))
    assert torch.equal(picked[0], cached.latents[1][0]) and torch.equal(picked[1], cached.flipped[1][1])
    assert torch.equal(cached.rows(1, rows), cached.latents[1])


def test_disk_cache_gives_the_same_latents_without_encoding(vae, tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    root, sizes = _dataset(tmp_path / "d")
    paths = tuple(sizes)
    assignments = assign_buckets(sizes, BucketSettings(64, min_reso=32, max_reso=128, steps=32))
    cache = data.LatentDiskCache(tmp_path / "cache", root, data.vae_fingerprint(vae))

    def latents(disk_cache):
        return data.cache_latents(
            vae,
            root,
            paths,
            assignments,
            generator=torch.Generator().manual_seed(3),
            flip_aug=True,
            disk_cache=disk_cache,
        )

    first = latents(cache)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 8  # 4 images x 2 orientations
    monkeypatch.setattr(data, "load_bucket_image", lambda *a, **k: pytest.fail("should come from the cache"))
    second = latents(cache)
    assert all(torch.equal(a, b) for a, b in zip(first.latents, second.latents, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first.flipped, second.flipped, strict=True))
    monkeypatch.undo()
    # A changed image (new mtime) or another VAE misses the cache.
    os.utime(root / "a.png", ns=(1, 1))
    calls = []
    real = data.load_bucket_image
    monkeypatch.setattr(data, "load_bucket_image", lambda *a, **k: calls.append(a[0].name) or real(*a, **k))
    latents(cache)
    assert calls == ["a.png"]
    other = data.LatentDiskCache(tmp_path / "cache", root, "another-vae")
    calls.clear()
    latents(other)
    assert sorted(calls) == ["a.png", "b.png", "c.png", "d.png"]


def test_worker_sizes_are_upright_like_the_api(tmp_path):
    from shared.datasets.layout import scan_dataset_dir

    folder = tmp_path / "img" / "1_a"
    folder.mkdir(parents=True)
    img = _halves((128, 48))
    exif = img.getexif()
    exif[0x0112] = 6  # displayed turned a quarter: trains as 48x128
    img.save(folder / "rot.jpg", exif=exif, quality=95)
    _halves((64, 64)).save(folder / "sq.png")
    sizes = data.read_image_sizes(tmp_path, scan_dataset_dir(tmp_path))
    assert sizes == {"img/1_a/rot.jpg": (48, 128), "img/1_a/sq.png": (64, 64)}
    assignment = BucketSelector(BucketSettings(64, min_reso=32, max_reso=128, steps=32)).select(
        sizes["img/1_a/rot.jpg"]
    )
    assert data.load_bucket_image(folder / "rot.jpg", assignment, (48, 128)).shape == (3, 96, 32)
