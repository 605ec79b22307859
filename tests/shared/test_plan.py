"""Bucket-aware plans against Kohya's arithmetic, worked out by hand: per bucket ceil(samples / batch_size),
summed, then ceil(batches / gradient_accumulation_steps) optimizer steps per epoch
(sd-scripts BaseDataset.make_buckets, DreamBoothDataset reg matching, train_network's steps per epoch)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from shared.config.plan import compute_plan
from shared.config.spec import TrainingConfig
from shared.datasets.intake import inspect_dataset_zip
from shared.datasets.layout import detect_layout
from shared.datasets.zipsafe import ZipLimits
from tests.support.datasets import image_bytes, write_zip

PORTRAIT, LANDSCAPE, SQUARE, WIDE, SMALL = (512, 768), (768, 512), (512, 512), (1024, 512), (300, 300)
# Buckets at 512 (tests/shared/test_buckets.py): portrait -> 384x640, landscape -> 640x384 (ar 1.5: 1.667
# beats 1.286), square and small -> 512x512, wide (2.0) -> 704x320.


def plan_of(sizes: dict[str, tuple[int, int]], **config):
    layout = detect_layout(sizes)
    cfg = TrainingConfig(base_model="x", **config)
    return compute_plan(layout, cfg, sizes), compute_plan(layout, cfg)


def table(plan) -> list[tuple[int, int, int, int, int]]:
    return [(b.width, b.height, b.images, b.samples, b.batches) for b in plan.buckets]


def test_single_folder():
    sizes = {"img/5_sks toy/a.png": PORTRAIT, "img/5_sks toy/b.png": LANDSCAPE, "img/5_sks toy/c.png": SQUARE}
    plan, unbucketed = plan_of(sizes, batch_size=2, epochs=2)
    # 5 samples in each of three buckets: 3 + 3 + 3 batches (one bucket would give ceil(15 / 2) = 8).
    assert table(plan) == [(384, 640, 1, 5, 3), (512, 512, 1, 5, 3), (640, 384, 1, 5, 3)]
    assert (plan.samples_per_epoch, plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (
        15,
        9,
        9,
        18,
    )
    assert (unbucketed.batches_per_epoch, unbucketed.buckets) == (8, [])


def test_two_subsets_with_different_repeats():
    sizes = {
        "img/2_a x/1.png": WIDE,
        "img/2_a x/2.png": WIDE,
        "img/3_b y/1.png": WIDE,
        "img/3_b y/2.png": SMALL,
    }
    plan, _ = plan_of(sizes, batch_size=3, gradient_accumulation_steps=2, epochs=3)
    # 704x320: 2 x 2 + 3 = 7 samples -> 3 batches; 512x512: 3 -> 1; 4 batches, ceil(4 / 2) = 2 steps.
    assert table(plan) == [(512, 512, 1, 3, 1), (704, 320, 3, 7, 3)]
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (4, 2, 6)
    assert plan.repeats is None


def test_train_and_reg_with_mixed_aspect_ratios():
    sizes = {
        "img/4_sks woman/p1.png": PORTRAIT,
        "img/4_sks woman/p2.png": PORTRAIT,
        "img/4_sks woman/l1.png": LANDSCAPE,
        "reg/1_woman/r0.png": PORTRAIT,
        "reg/1_woman/r1.png": PORTRAIT,
        "reg/1_woman/r2.png": LANDSCAPE,
        "reg/1_woman/r3.png": SQUARE,
        "reg/1_woman/r4.png": WIDE,
    }
    plan, unbucketed = plan_of(sizes, batch_size=4)
    # 12 train samples. Reg matching (sorted paths r0..r4): pass 1 +1 each (5), pass 2 +1 each (10), pass 3
    # r0, r1 (12): r0 3, r1 3, r2 2, r3 2, r4 2. Buckets: 384x640 8 + 6 = 14 -> 4 batches; 640x384 4 + 2 = 6
    # -> 2; 512x512 2 -> 1; 704x320 2 -> 1. 8 batches (one bucket: ceil(24 / 4) = 6).
    assert [s.samples_per_epoch for s in plan.subsets] == [12, 12]
    assert table(plan) == [
        (384, 640, 4, 14, 4),
        (512, 512, 1, 2, 1),
        (640, 384, 2, 6, 2),
        (704, 320, 1, 2, 1),
    ]
    assert (plan.batches_per_epoch, plan.steps_per_epoch) == (8, 8)
    assert unbucketed.batches_per_epoch == 6


def test_bucketing_off_is_one_bucket_with_the_old_count():
    sizes = {"img/5_sks toy/a.png": PORTRAIT, "img/5_sks toy/b.png": LANDSCAPE, "img/5_sks toy/c.png": SQUARE}
    plan, unbucketed = plan_of(sizes, batch_size=2, enable_bucket=False)
    assert table(plan) == [(512, 512, 3, 15, 8)]
    assert plan.steps_per_epoch == unbucketed.steps_per_epoch == 8


def test_every_image_needs_a_size():
    sizes = {"img/1_a/x.png": SQUARE, "img/1_a/y.png": SQUARE}
    layout = detect_layout(sizes)
    with pytest.raises(ValueError, match="no image size"):
        compute_plan(layout, TrainingConfig(base_model="x"), {"img/1_a/x.png": SQUARE})


def _rotated_jpeg(size: tuple[int, int]) -> bytes:
    img = Image.new("RGB", size, (200, 30, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # shown turned a quarter: the trainer sees it as height x width
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def test_intake_reports_upright_sizes_for_the_plan(tmp_path):
    zip_path = write_zip(
        tmp_path / "d.zip",
        {
            "img/2_sks toy/rot.jpg": _rotated_jpeg((768, 512)),  # stored landscape, trains portrait
            "img/2_sks toy/wide.png": image_bytes((1, 2, 3), size=(1024, 512)),
        },
    )
    config = TrainingConfig(base_model="x", batch_size=2)
    report = inspect_dataset_zip(zip_path, config, ZipLimits())
    assert report.images["img/2_sks toy/rot.jpg"].width == 768
    assert report.image_sizes == {"img/2_sks toy/rot.jpg": (512, 768), "img/2_sks toy/wide.png": (1024, 512)}
    plan = compute_plan(report.layout, config, report.image_sizes)
    assert table(plan) == [(384, 640, 1, 2, 1), (704, 320, 1, 2, 1)]


def test_caption_extension_prefers_the_configured_file():
    files = ["img/1_a/x.png", "img/1_a/x.txt", "img/1_a/x.caption", "img/1_a/y.png", "img/1_a/y.txt"]
    entries = {e.path: e.caption_path for e in detect_layout(files).subsets[0].images}
    assert entries == {"img/1_a/x.png": "img/1_a/x.txt", "img/1_a/y.png": "img/1_a/y.txt"}
    entries = {
        e.path: e.caption_path for e in detect_layout(files, caption_extension=".caption").subsets[0].images
    }
    assert entries == {"img/1_a/x.png": "img/1_a/x.caption", "img/1_a/y.png": "img/1_a/y.txt"}
    tags = detect_layout(["img/1_a/x.png", "img/1_a/x.tags"], caption_extension=".tags").subsets[0].images[0]
    assert tags.caption_path == "img/1_a/x.tags"
