import io
import struct
import warnings
import zlib
from pathlib import Path

import pytest
from PIL import Image

from shared.datasets.images import ImageInfo, convert_to_trainable, probe_image
from shared.errors import DatasetError

MAX = 64_000_000


def _image(path: Path, fmt: str, size=(32, 24), mode="RGB", **save) -> Path:
    Image.new(mode, size, (200, 10, 10, 128)[: len(mode)]).save(path, format=fmt, **save)
    return path


def _probe_error(fp, name: str, max_pixels: int = MAX) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        probe_image(fp, name, max_pixels)
    return info.value


@pytest.mark.parametrize(("fmt", "ext"), [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
def test_probe_accepts_png_jpeg_webp(tmp_path: Path, fmt: str, ext: str):
    path = _image(tmp_path / f"a.{ext}", fmt)
    assert probe_image(path, "a", MAX) == ImageInfo(32, 24, fmt)
    with path.open("rb") as fp:  # a stream works too (the API probes members inside the zip)
        assert probe_image(fp, "a", MAX) == ImageInfo(32, 24, fmt)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_probe_rejects_other_types(tmp_path: Path, fmt: str):
    path = _image(tmp_path / "x.png", fmt)  # the extension lies; the bytes decide
    err = _probe_error(path, "img/1_a b/x.png")
    assert err.code == "unsupported_image_type" and err.details["entry"] == "img/1_a b/x.png"
    assert fmt in err.message
    assert "webp" in err.message


def test_probe_rejects_avif_by_signature():
    data = b"\x00\x00\x00\x1cftypavif" + bytes(64)
    err = _probe_error(io.BytesIO(data), "p.avif")
    assert err.code == "unsupported_image_type" and "AVIF" in err.message


def test_probe_garbage_is_corrupt():
    err = _probe_error(io.BytesIO(b"not an image at all" * 20), "x.png")
    assert err.code == "corrupt_image" and err.details["entry"] == "x.png" and err.status_code == 422
    # Pillow's message names its in-memory buffer and its address; the user sees neither
    assert "cannot identify image file" in err.message and "object at 0x" not in err.message


@pytest.mark.parametrize(("fmt", "ext"), [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
def test_probe_truncated_is_corrupt(tmp_path: Path, fmt: str, ext: str):
    path = tmp_path / f"n.{ext}"
    Image.effect_noise((256, 256), 64).convert("RGB").save(path, format=fmt)
    data = path.read_bytes()
    err = _probe_error(io.BytesIO(data[: len(data) // 2]), f"n.{ext}")
    assert err.code == "corrupt_image" and err.details["entry"] == f"n.{ext}"


def test_probe_too_large_is_judged_from_the_header(tmp_path: Path, monkeypatch):
    path = _image(tmp_path / "big.png", "PNG", size=(300, 200))

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(Image.Image, "load", no_decode)
    err = _probe_error(path, "big.png", max_pixels=300 * 200 - 1)
    assert err.code == "image_too_large" and err.status_code == 413 and err.details["entry"] == "big.png"
    assert str(300 * 200 - 1) in err.message


@pytest.mark.parametrize("side", [9_000, 10_000, 100_000])
def test_probe_huge_header_without_touching_pillow_globals(side: int):
    # A PNG claiming side x side pixels with almost no data: refused from the header alone, whether it is
    # under Pillow's warning threshold, between warning and hard ceiling, or past the ceiling.
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not leak out
        err = _probe_error(io.BytesIO(_png_header(side, side)), "huge.png")
    assert err.code == "image_too_large" and err.status_code == 413 and err.details["entry"] == "huge.png"
    assert before == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("size", [(7, 100), (100, 7)])
def test_probe_too_small(tmp_path: Path, size):
    path = _image(tmp_path / "s.png", "PNG", size=size)
    err = _probe_error(path, "s.png")
    assert err.code == "image_too_small" and err.details["entry"] == "s.png"


def test_convert_webp_to_png_keeps_alpha_and_caption(tmp_path: Path):
    src = _image(tmp_path / "001.webp", "WEBP", mode="RGBA", lossless=True)
    caption = tmp_path / "001.txt"
    caption.write_text("sks dog")
    out = convert_to_trainable(src)
    assert out == tmp_path / "001.png" and not src.exists() and caption.exists()
    with Image.open(out) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGBA", (32, 24))
        assert img.getpixel((0, 0)) == (200, 10, 10, 128)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["001.png", "001.txt"]


def test_convert_applies_exif_orientation_for_webp(tmp_path: Path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    src = _image(tmp_path / "r.webp", "WEBP", size=(40, 20), exif=exif.tobytes())
    out = convert_to_trainable(src)
    with Image.open(out) as img:
        assert img.size == (20, 40)


@pytest.mark.parametrize(("fmt", "ext"), [("PNG", "png"), ("JPEG", "jpg"), ("JPEG", "jpeg")])
def test_convert_leaves_png_and_jpeg_untouched(tmp_path: Path, fmt: str, ext: str):
    src = _image(tmp_path / f"a.{ext}", fmt)
    before = src.read_bytes()
    assert convert_to_trainable(src) == src
    assert src.read_bytes() == before


def test_convert_refuses_to_overwrite_existing_png(tmp_path: Path):
    src = _image(tmp_path / "a.webp", "WEBP")
    _image(tmp_path / "a.png", "PNG")
    with pytest.raises(DatasetError) as info:
        convert_to_trainable(src, entry="img/1_x/a.webp")
    assert info.value.code == "duplicate_entry" and info.value.details["entry"] == "img/1_x/a.webp"
    assert src.exists()


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
