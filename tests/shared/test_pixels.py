"""The shared 8-bit conversion (shared.datasets.pixels), one test per mode: each image is built here from
known values and its converted pixels compared with a reference computed with numpy (issue 15: a 16-bit
grayscale PNG trained as solid white, since Pillow's convert("RGB") clips instead of scaling)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from shared.datasets.pixels import alpha_channel, to_8bit, to_rgb
from shared.datasets.report import conversions_needed, make_thumbnail
from tests.support.image_files import cmyk_profile_srgb, gradient16, k_only_cmyk_profile, png16

RNG = np.random.default_rng(15)
PALETTE = [255, 0, 0, 0, 255, 0, 0, 0, 255, 40, 80, 120] + [0] * (256 * 3 - 12)


def _rgb(img: Image.Image) -> np.ndarray:
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == img.size
    return np.asarray(out).astype(np.int64)


def _gray_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray.astype(np.int64)[..., None], 3, axis=2)


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.fixture(autouse=True)
def _no_pillow_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Palette images with Transparency ... should be converted"
        yield


# --- high bit depth: the high byte (v >> 8), never clipped to white --------------------------------------


@pytest.mark.parametrize(
    ("mode", "dtype"), [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"), ("I;16N", "=u2")]
)
def test_sixteen_bit_gray_keeps_its_high_byte(mode: str, dtype: str):
    values = gradient16()
    img = Image.frombytes(mode, values.shape[::-1], values.astype(dtype).tobytes())
    assert img.mode == mode
    got = _rgb(img)
    np.testing.assert_array_equal(got, _gray_rgb(values >> 8))
    assert got.max() < 255 and got.min() > 0  # today's convert("RGB") gives 255 everywhere


def test_mode_i_within_sixteen_bits_is_sixteen_bit_data():
    values = gradient16().astype(np.int32)
    img = Image.fromarray(values)
    assert img.mode == "I"
    np.testing.assert_array_equal(_rgb(img), _gray_rgb(values >> 8))


def test_mode_i_beyond_sixteen_bits_is_scaled_by_its_maximum():
    values = np.linspace(-500, 1_000_000, 8 * 40).round().astype(np.int32).reshape(8, 40)
    expected = np.floor(np.clip(values, 0, None) * 255 / values.max() + 0.5)
    np.testing.assert_allclose(_rgb(Image.fromarray(values)), _gray_rgb(expected), atol=1)


@pytest.mark.parametrize(("top", "scale"), [(1.0, 255.0), (200.0, 1.0), (4000.0, 255 / 4000)])
def test_mode_f_is_read_as_0_to_1_then_0_to_255_then_by_its_maximum(top: float, scale: float):
    values = np.linspace(-0.1 * top, top, 8 * 40, dtype=np.float32).reshape(8, 40)
    img = Image.fromarray(values)
    assert img.mode == "F"
    expected = np.clip(np.floor(values.astype(np.float64) * scale + 0.5), 0, 255)
    np.testing.assert_allclose(_rgb(img), _gray_rgb(expected), atol=1)


def test_sixteen_bit_gray_png_file():
    values = gradient16()
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    img = _open(buf.getvalue())
    assert img.mode == "I;16"
    assert conversions_needed(img) == ["16-bit reduced to 8-bit"]
    np.testing.assert_array_equal(_rgb(img), _gray_rgb(values >> 8))


def test_sixteen_bit_gray_png_with_a_transparent_value():
    values = gradient16()
    key = int(values[0, 5])
    img = _open(png16(values, transparent=(key,)))
    assert img.mode == "I;16" and img.info["transparency"] == key
    np.testing.assert_array_equal(_rgb(img), _gray_rgb(values >> 8))
    np.testing.assert_array_equal(np.asarray(alpha_channel(img)), np.where(values == key, 0, 255))


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_sixteen_bit_colour_pngs_reduce_to_their_high_bytes(channels: int):
    """Pillow opens 16-bit LA / RGB / RGBA PNGs as 8-bit RGBA / RGB / RGBA itself (the high byte): the
    report still says so, and the shared conversion keeps those pixels."""
    values = RNG.integers(0, 65536, (6, 9, channels), dtype=np.uint16)
    img = _open(png16(values))
    assert "16-bit reduced to 8-bit" in conversions_needed(img)
    high = values.astype(np.int64) >> 8
    color = np.repeat(high[..., :1], 3, axis=2) if channels == 2 else high[..., :3]
    np.testing.assert_array_equal(_rgb(img), color)
    if channels != 3:
        np.testing.assert_array_equal(np.asarray(alpha_channel(img)), high[..., -1])


def test_sixteen_bit_rgb_png_with_a_transparent_colour():
    values = RNG.integers(0, 65536, (6, 9, 3), dtype=np.uint16)
    key = tuple(int(v) for v in values[2, 3])
    img = _open(png16(values, transparent=key))
    np.testing.assert_array_equal(_rgb(img), values.astype(np.int64) >> 8)
    high = values >> 8
    clear = np.all(high == high[2, 3], axis=2)  # Pillow kept only the high bytes: those are compared
    np.testing.assert_array_equal(np.asarray(alpha_channel(img)), np.where(clear, 0, 255))
    assert alpha_channel(img).getpixel((3, 2)) == 0


def test_eight_bit_png_is_not_reported_as_reduced():
    buf = io.BytesIO()
    Image.fromarray(gradient16().astype(np.uint8)).save(buf, format="PNG")
    assert conversions_needed(_open(buf.getvalue())) == []


# --- alpha: kept as a channel, dropped by to_rgb (the stored colour trains, as in sd-scripts) -----------


def test_rgba_keeps_the_colour_under_transparency():
    values = RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    values[..., 3][0] = 0
    img = Image.fromarray(values, "RGBA")
    np.testing.assert_array_equal(_rgb(img), values[..., :3])
    np.testing.assert_array_equal(np.asarray(alpha_channel(img)), values[..., 3])


def test_la_is_gray_with_its_alpha():
    values = RNG.integers(0, 256, (5, 7, 2), dtype=np.uint8)
    img = Image.fromarray(values, "LA")
    np.testing.assert_array_equal(_rgb(img), _gray_rgb(values[..., 0]))
    np.testing.assert_array_equal(np.asarray(alpha_channel(img)), values[..., 1])


@pytest.mark.parametrize(("mode", "bands"), [("La", 2), ("RGBa", 4)])
def test_premultiplied_alpha_is_undone(mode: str, bands: int):
    straight = RNG.integers(0, 256, (5, 7, bands), dtype=np.uint8)
    straight[..., -1] = RNG.integers(128, 256, (5, 7), dtype=np.uint8)  # enough alpha to undo it within 1
    alpha = straight[..., -1:].astype(np.int64)
    premultiplied = np.concatenate([np.floor(straight[..., :-1] * alpha / 255 + 0.5), alpha], axis=2).astype(
        np.uint8
    )
    img = Image.frombytes(mode, (7, 5), premultiplied.tobytes())
    assert img.mode == mode
    color = straight[..., :-1].astype(np.int64)
    expected = _gray_rgb(color[..., 0]) if bands == 2 else color
    np.testing.assert_allclose(_rgb(img), expected, atol=1)
    np.testing.assert_array_equal(np.asarray(alpha_channel(img)), straight[..., -1])


@pytest.mark.parametrize("transparency", [1, bytes([255, 128, 0, 255])])
def test_palette_with_transparency(transparency: int | bytes):
    indices = RNG.integers(0, 4, (5, 7), dtype=np.uint8)
    img = Image.fromarray(indices, "P")
    img.putpalette(PALETTE)
    img.info["transparency"] = transparency
    palette = np.array(PALETTE, dtype=np.int64).reshape(-1, 3)
    per_index = [0 if i == 1 else 255 for i in range(4)] if transparency == 1 else list(transparency)
    np.testing.assert_array_equal(_rgb(img), palette[indices])
    np.testing.assert_array_equal(np.asarray(alpha_channel(img)), np.array(per_index)[indices])
    assert "transparency flattened" in conversions_needed(img)


def test_palette_with_alpha_band():
    indices = RNG.integers(0, 4, (5, 7), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    img = Image.frombytes("PA", (7, 5), np.dstack([indices, alpha]).tobytes())
    img.putpalette(PALETTE)
    np.testing.assert_array_equal(_rgb(img), np.array(PALETTE).reshape(-1, 3)[indices])
    np.testing.assert_array_equal(np.asarray(alpha_channel(img)), alpha)


# --- 8-bit gray, bilevel, colour -------------------------------------------------------------------------


def test_l_and_l_with_a_transparent_value():
    values = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    img = Image.fromarray(values, "L")
    np.testing.assert_array_equal(_rgb(img), _gray_rgb(values))
    assert np.asarray(alpha_channel(img)).min() == 255
    img.info["transparency"] = int(values[1, 1])
    np.testing.assert_array_equal(np.asarray(alpha_channel(img)), np.where(values == values[1, 1], 0, 255))


def test_bilevel_is_black_and_white():
    bits = RNG.integers(0, 2, (5, 7), dtype=np.uint8).astype(bool)
    img = Image.fromarray(bits)
    assert img.mode == "1"
    np.testing.assert_array_equal(_rgb(img), _gray_rgb(bits * 255))


def test_rgb_is_unchanged():
    values = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    img = Image.fromarray(values, "RGB")
    assert to_8bit(img) is img
    np.testing.assert_array_equal(_rgb(img), values)


# --- CMYK: through its ICC profile when it has one ----------------------------------------------------------


def _cmyk(k: np.ndarray) -> tuple[np.ndarray, Image.Image]:
    cmyk = np.stack([255 - k, k // 2, np.full_like(k, 200), k], axis=-1).reshape(8, -1, 4)
    return cmyk, Image.fromarray(cmyk, "CMYK")


def test_cmyk_without_a_profile_is_pillows_naive_conversion():
    cmyk, img = _cmyk(np.arange(256, dtype=np.uint8))
    values = cmyk.astype(np.int64)
    expected = np.floor((255 - values[..., :3]) * (255 - values[..., 3:]) / 255 + 0.5)  # R = (1-C)(1-K)
    np.testing.assert_array_equal(_rgb(img), expected)
    assert conversions_needed(img) == ["cmyk converted to rgb"]


def test_cmyk_with_an_icc_profile_goes_through_it_to_srgb():
    # K up to 239 (L* >= 6): lcms's 8-bit pipeline runs up to 2 levels off the exact curve nearer black
    k = np.arange(240, dtype=np.uint8)
    _, img = _cmyk(k)
    img.info["icc_profile"] = k_only_cmyk_profile()
    got = _rgb(img)
    expected = _gray_rgb(cmyk_profile_srgb(k).reshape(8, -1))
    np.testing.assert_allclose(got, expected, atol=1)
    assert got[0, 0].tolist() == [255, 255, 255]  # C 255, K 0: white through this profile, cyan without
    assert np.asarray(img.convert("RGB"))[0, 0].tolist() == [0, 255, 55]


def test_cmyk_with_a_damaged_profile_falls_back_to_the_naive_conversion():
    _, img = _cmyk(np.arange(256, dtype=np.uint8))
    img.info["icc_profile"] = b"not a profile" * 20
    np.testing.assert_array_equal(_rgb(img), np.asarray(img.convert("RGB")))


# --- the thumbnail shows the trained pixels -------------------------------------------------------------


def test_sixteen_bit_thumbnail_is_not_white():
    values = gradient16(24, 64)
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    thumb = np.asarray(Image.open(io.BytesIO(make_thumbnail(_open(buf.getvalue())))).convert("L"))
    assert thumb.shape == values.shape
    np.testing.assert_allclose(thumb, values >> 8, atol=3)  # JPEG quality 85 on a smooth ramp
