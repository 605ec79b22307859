"""A 16-bit grayscale PNG through the worker's image paths (issue 15: it trained as solid white): the training
loader, the thumbnail, loss masks and the captioners all read the shared conversion's pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from shared.config.buckets import BucketSelector, BucketSettings
from shared.datasets.report import make_thumbnail
from tests.support.image_files import gradient16, png16
from worker.captioning.wd14 import flatten_on_white
from worker.training import data


def _gray16(path: Path, height: int = 64, width: int = 96) -> np.ndarray:
    values = gradient16(height, width)
    Image.fromarray(values).save(path, format="PNG")
    with Image.open(path) as img:
        assert img.mode == "I;16"
    return values


def test_training_loader_and_thumbnail_agree_on_a_sixteen_bit_png(tmp_path: Path):
    path = tmp_path / "photo.png"
    values = _gray16(path)
    trained = np.asarray(data.load_image(path)).astype(np.int64)
    np.testing.assert_array_equal(trained, np.repeat((values >> 8)[..., None], 3, axis=2))
    assert trained.max() < 255  # today: 255 everywhere
    with Image.open(path) as img:
        thumb = np.asarray(Image.open(io.BytesIO(make_thumbnail(img))).convert("RGB")).astype(np.int64)
    assert thumb.shape == trained.shape  # under the thumbnail side: not resized
    np.testing.assert_allclose(thumb, trained, atol=3)  # the thumbnail is a JPEG (quality 85)


def test_bucket_tensor_of_a_sixteen_bit_png_is_not_white(tmp_path: Path):
    path = tmp_path / "photo.png"
    values = _gray16(path)
    assignment = BucketSelector(BucketSettings(resolution=64, enable_bucket=False)).select((96, 64))
    tensor = data.load_bucket_image(path, assignment, (96, 64))
    assert float(tensor.max()) < 1.0 and float(tensor.min()) > -1.0
    expected = data.image_to_tensor(
        data.fit_to_bucket(Image.fromarray((values >> 8).astype(np.uint8)).convert("RGB"), assignment)
    )
    assert tensor.shape == expected.shape and float((tensor - expected).abs().max()) == 0.0


def test_sixteen_bit_mask_file_and_sixteen_bit_transparency(tmp_path: Path):
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 8), (10, 20, 30)).save(image)
    mask_path = tmp_path / "a_mask.png"
    mask_values = gradient16(8, 40)
    Image.fromarray(mask_values).save(mask_path)
    mask = data.load_mask(mask_path, image, alpha=False)
    np.testing.assert_array_equal(np.asarray(mask), mask_values >> 8)  # weights, not all 1

    keyed = tmp_path / "keyed.png"
    key = int(mask_values[0, 0])
    keyed.write_bytes(png16(mask_values, transparent=(key,)))
    alpha = np.asarray(data.load_mask(None, keyed, alpha=True))
    np.testing.assert_array_equal(alpha, np.where(mask_values == key, 0, 255))


def test_captioners_see_the_sixteen_bit_image_as_it_trains(tmp_path: Path):
    path = tmp_path / "photo.png"
    values = _gray16(path, 8, 40)
    with Image.open(path) as img:
        seen = np.asarray(flatten_on_white(img)).astype(np.int64)
    np.testing.assert_array_equal(seen, np.repeat((values >> 8)[..., None], 3, axis=2))
