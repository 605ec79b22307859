"""Real dataset zips for tests: Kohya layouts, flat layouts, and the broken kinds users upload."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from PIL import Image

COLORS = [(220, 40, 40), (40, 200, 60), (30, 60, 220), (240, 220, 30), (200, 40, 200), (20, 200, 200)]


def image_bytes(color: tuple[int, int, int], fmt: str = "PNG", size: tuple[int, int] = (64, 64)) -> bytes:
    img = Image.new("RGB", size, color)
    # a diagonal stripe so images are not flat colour (the VAE sees structure)
    for i in range(min(size)):
        img.putpixel((i, i), (255 - color[0], 255 - color[1], 255 - color[2]))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def zip_folder(src: Path, dest: Path) -> Path:
    """A dataset folder (as the engine reads it) zipped, as a client uploads it."""
    with zipfile.ZipFile(dest, "w") as archive:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(src).as_posix())
    return dest


def kohya_entries(
    images: int = 4, repeats: int = 2, with_reg: bool = False, webp: bool = True
) -> dict[str, bytes]:
    """`img/N_lisabp woman/...` with captions on all but one image, one WEBP, optional `reg/1_woman`."""
    folder = f"img/{repeats}_lisabp woman"
    entries: dict[str, bytes] = {}
    for i in range(images):
        fmt, ext = (
            ("WEBP", "webp") if webp and i == images - 1 else ("PNG", "png") if i % 2 else ("JPEG", "jpg")
        )
        entries[f"{folder}/{i:03d}.{ext}"] = image_bytes(COLORS[i % len(COLORS)], fmt)
        if i != 0:  # image 0 falls back to the folder's "lisabp woman"
            entries[f"{folder}/{i:03d}.txt"] = f"lisabp, woman, color {i}".encode()
    if with_reg:
        for i in range(3):
            entries[f"reg/1_woman/r{i}.png"] = image_bytes(COLORS[(i + 3) % len(COLORS)])
    return entries


def flat_entries(images: int = 3) -> dict[str, bytes]:
    entries: dict[str, bytes] = {}
    for i in range(images):
        entries[f"{i}.png"] = image_bytes(COLORS[i])
        entries[f"{i}.txt"] = f"photo {i}".encode()
    return entries
