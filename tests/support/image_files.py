"""Image files Pillow cannot write itself, built byte by byte for the pixel-conversion tests: 16-bit PNGs of
every colour type (Pillow writes only 16-bit gray) and a CMYK ICC profile with a known answer."""

from __future__ import annotations

import struct
import zlib

import numpy as np

GRADIENT_16 = (3341, 51143)  # the range of the 16-bit photo that trained white (issue 15)
# PNG colour type by channel count: gray, gray+alpha, RGB, RGBA
_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}


def gradient16(height: int = 8, width: int = 40) -> np.ndarray:
    """uint16 [height, width], rising across the image over GRADIENT_16."""
    low, high = GRADIENT_16
    return np.linspace(low, high, height * width).round().astype(np.uint16).reshape(height, width)


def png16(pixels: np.ndarray, transparent: tuple[int, ...] | None = None) -> bytes:
    """A 16-bit PNG of uint16 pixels [h, w] or [h, w, channels]; `transparent`: a tRNS key (gray or RGB)."""
    pixels = pixels if pixels.ndim == 3 else pixels[..., None]
    height, width, channels = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, _COLOR_TYPE[channels], 0, 0, 0)
    trns = chunk(b"tRNS", struct.pack(f">{len(transparent)}H", *transparent)) if transparent else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + trns
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def k_only_cmyk_profile() -> bytes:
    """An ICC v2 CMYK printer profile (one lut8 A2B0 tag) giving neutral gray of L* = 100 * (1 - K): cyan,
    magenta and yellow have no effect, so a test can compute the sRGB answer (cmyk_profile_srgb)."""
    identity = bytes(range(256))
    # 2 grid points per input (C, M, Y, K; K varies fastest); Lab as lut8 encodes it: L * 255 / 100, a + 128
    grid = b"".join(bytes((0 if k else 255, 128, 128)) for _ in range(8) for k in (0, 1))
    matrix = b"".join(_s15(v) for v in (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a2b0 = b"mft1" + bytes(4) + bytes((4, 3, 2, 0)) + matrix + identity * 4 + grid + identity * 3
    d50 = _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    tags = [(b"A2B0", a2b0), (b"wtpt", b"XYZ " + bytes(4) + d50)]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = (
        struct.pack(">I", offset + len(data))
        + bytes(4)
        + bytes((2, 0x10, 0, 0))  # version 2.1
        + b"prtrCMYKLab "
        + bytes(12)
        + b"acsp"
        + bytes(28)  # platform, flags, manufacturer, model, attributes, rendering intent
        + d50
        + bytes(48)
    )
    return header + struct.pack(">I", len(tags)) + table + data


def cmyk_profile_srgb(k: np.ndarray) -> np.ndarray:
    """The 8-bit sRGB gray level k_only_cmyk_profile gives for K values `k` (CIE L* -> Y -> sRGB curve)."""
    lightness = 100.0 * (255 - k.astype(np.float64)) / 255
    y = np.where(lightness > 8, ((lightness + 16) / 116) ** 3, lightness / 903.2963)
    srgb = np.where(y > 0.0031308, 1.055 * y ** (1 / 2.4) - 0.055, 12.92 * y)
    return np.floor(srgb * 255 + 0.5)
