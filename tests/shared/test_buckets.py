"""Aspect-ratio buckets against values worked out by hand from Kohya's sd-scripts algorithm
(model_util.make_bucket_resolutions, BucketManager.select_bucket / round_to_steps,
trim_and_resize_if_required, BucketManager.get_crop_ltrb)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.config.buckets import (
    Assignment,
    BucketSelector,
    BucketSettings,
    assign_buckets,
    bucket_table,
    make_bucket_resolutions,
    sdxl_crop_ltrb,
    sdxl_size_conditioning,
)
from shared.config.spec import TrainingConfig
from shared.errors import DatasetError

SD15 = BucketSettings(resolution=512, min_reso=256, max_reso=1024, steps=64)

# Area 512*512 = 262144. Square: 512. For width w = 256..1024 step 64,
# height = min(1024, (262144 // w) // 64 * 64):
# 256->1024, 320->768, 384->640, 448->576, 512->512, 576->448, 640->384, 704->320, 768->320, 832->256,
# 896->256, 960->256, 1024->256; each pair in both orientations, duplicates merged, sorted.
SD15_BUCKETS = [
    (256, 832), (256, 896), (256, 960), (256, 1024),
    (320, 704), (320, 768), (384, 640), (448, 576), (512, 512), (576, 448), (640, 384),
    (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256),
]  # fmt: skip


def test_bucket_list_for_512():
    assert make_bucket_resolutions(512, 256, 1024, 64) == SD15_BUCKETS
    assert BucketSelector(SD15).predefined == SD15_BUCKETS


def test_tiny_bucket_list():
    # Area 4096, steps 32, 32..128: 32->128, 64->64, 96->42//32*32=32, 128->32.
    assert make_bucket_resolutions(64, 32, 128, 32) == [(32, 96), (32, 128), (64, 64), (96, 32), (128, 32)]
    # One bucket when min reaches the resolution: 64x64 only (128 -> 32 < min).
    assert make_bucket_resolutions(64, 64, 1024, 64) == [(64, 64)]


def test_portrait_512x768():
    # ar 0.667: nearest ratios 384/640 = 0.6 (error 0.067) and 448/576 = 0.778 (0.111) -> (384, 640).
    # The image is wider than 0.6, so heights match: scale 640/768, width int(426.67 + 0.5) = 427.
    got = BucketSelector(SD15).select((512, 768))
    assert (got.bucket, got.resized) == ((384, 640), (427, 640))
    assert got.crop_box == (21, 0, 405, 640)  # trim 43 px: 43 // 2 = 21 from the left
    assert got.ar_error == pytest.approx(0.6 - 512 / 768)


def test_landscape_1024x512():
    # ar 2.0: 704/320 = 2.2 (error 0.2) beats 640/384 = 1.667 (0.333). Narrower than 2.2: widths match,
    # scale 704/1024, height 352; 32 px trimmed, 16 from the top.
    got = BucketSelector(SD15).select((1024, 512))
    assert (got.bucket, got.resized, got.crop_box) == ((704, 320), (704, 352), (0, 16, 704, 336))


def test_small_square_upscaled_or_not():
    got = BucketSelector(SD15).select((300, 300))
    assert (got.bucket, got.resized) == ((512, 512), (512, 512))  # enlarged to the square bucket
    no_up = BucketSelector(BucketSettings(512, no_upscale=True)).select((300, 300))
    # No resize (300*300 < 512*512); bucket = size rounded down to 64: 256; 44 px trimmed, 22 each side.
    assert (no_up.bucket, no_up.resized, no_up.crop_box) == ((256, 256), (300, 300), (22, 22, 278, 278))


def test_no_upscale_shrinks_large_images_to_the_area():
    # 2000x1000, ar 2: w = sqrt(262144 * 2) = 724.08 -> round_to_steps 704, h for it 352 -> 320 (ar 2.2);
    # h = 362.04 -> 320, w for it 640 -> 640 (ar 2.0, closer) -> resized (640, 320), bucket (640, 320).
    got = BucketSelector(BucketSettings(512, no_upscale=True)).select((2000, 1000))
    assert (got.bucket, got.resized) == ((640, 320), (640, 320))


def test_exact_bucket_size_is_kept():
    got = BucketSelector(SD15).select((448, 576))
    assert (got.bucket, got.resized, got.crop_box) == ((448, 576), (448, 576), (0, 0, 448, 576))


def test_bucketing_off_is_one_square():
    got = BucketSelector(BucketSettings(512, enable_bucket=False)).select((1024, 512))
    assert (got.bucket, got.resized, got.crop_box) == ((512, 512), (1024, 512), (256, 0, 768, 512))


def test_no_upscale_refuses_images_smaller_than_a_step():
    with pytest.raises(DatasetError, match="bucket_reso_steps") as info:
        assign_buckets({"img/1_a/tiny.png": (40, 300)}, BucketSettings(512, no_upscale=True))
    assert info.value.code == "image_too_small" and info.value.details["entry"] == "img/1_a/tiny.png"


def test_bucket_table_counts_repeats_and_batches():
    assignments = assign_buckets({"p1": (512, 768), "p2": (512, 768), "l": (1024, 512)}, SD15)
    rows = bucket_table(assignments, [("p1", 3), ("p2", 3), ("l", 3), ("l", 0)], batch_size=4)
    assert [(r.width, r.height, r.images, r.samples, r.batches) for r in rows] == [
        (384, 640, 2, 6, 2),
        (704, 320, 1, 3, 1),
    ]


def test_sdxl_crop_conditioning_as_kohya():
    # get_crop_ltrb: bucket (384, 640) ar 0.6 < image ar 0.667 -> fit width 384, height 576, top (640-576)//2.
    assert sdxl_crop_ltrb((384, 640), (512, 768)) == (0, 32, 384, 608)
    assert sdxl_size_conditioning((512, 768), (384, 640)) == ((768, 512), (32, 0), (640, 384))
    # Bucket wider than the image: (704, 320) vs 2.0 -> width 640, left (704-640)//2 = 32; mirrored left 32.
    assert sdxl_crop_ltrb((704, 320), (1024, 512)) == (32, 0, 672, 320)
    assert sdxl_size_conditioning((1024, 512), (704, 320), flipped=True) == ((512, 1024), (0, 32), (320, 704))


def test_assignment_crop_box_is_centered():
    assert Assignment(bucket=(64, 64), resized=(96, 64), ar_error=0).crop_box == (16, 0, 80, 64)


def test_config_validates_bucket_bounds():
    base = {"base_model": "x"}
    assert TrainingConfig(**base).enable_bucket is True  # kohya_ss GUI default
    with pytest.raises(ValidationError, match="min_bucket_reso"):
        TrainingConfig(**base, resolution=128)  # default min 256 > resolution
    with pytest.raises(ValidationError, match="max_bucket_reso"):
        TrainingConfig(**base, resolution=1536)
    with pytest.raises(ValidationError, match="multiple of bucket_reso_steps"):
        TrainingConfig(**base, min_bucket_reso=200)
    tiny = TrainingConfig(
        **base, resolution=64, min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=32
    )
    assert BucketSettings.from_config(tiny) == BucketSettings(64, True, 32, 128, 32, False)
    assert TrainingConfig(**base, resolution=64, enable_bucket=False).min_bucket_reso == 256  # unused then
    with pytest.raises(ValidationError, match="caption_extension"):
        TrainingConfig(**base, caption_extension="txt")
    assert TrainingConfig(**base, keep_tokens_separator="", caption_prefix="").caption_prefix is None
