"""Any mode Pillow opens -> 8-bit pixels: one conversion for the intake, thumbnails, captioners and trainer.

Pillow's own `convert("RGB")` is wrong for several modes a camera or editor writes: it clips 16- and 32-bit
gray (I;16*, I, F) at 255, so a 16-bit photo turns solid white, and it ignores a CMYK image's ICC profile.
Choices, so every caller agrees (Pillow only, no numpy: the API image has none):

- 16-bit data (I;16, I;16L, I;16B, I;16N, and I within 0..65535, which is how 16-bit PNGs open) keeps its
  high byte (v >> 8): what Pillow itself does to 16-bit RGB(A) and LA PNGs, which it opens as 8-bit, so
  gray and colour 16-bit files reduce alike. The image's own range is not stretched.
- I beyond 16 bits has no known range: scaled by its real maximum (v * 255 / max); negatives are 0.
- F: 0..1 if its maximum is <= 1, else 0..255 if <= 255, else by its maximum; rounded, negatives 0.
- Alpha (RGBA, LA, PA, La, RGBa, palette or colour-key transparency) is kept by `to_8bit` as an alpha channel
  (the loss mask of alpha_mask reads it); `to_rgb` drops it and keeps the stored colour under transparent
  pixels, as sd-scripts trains (docs/datasets.md). Captioners composite over white themselves.
- CMYK with an ICC profile goes through it to sRGB (ImageCms, its default perceptual intent); without one, or
  with a profile lcms refuses, Pillow's naive conversion.
"""

from __future__ import annotations

import io

from PIL import Image, ImageCms

SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
HIGH_BIT_DEPTH_MODES = SIXTEEN_BIT_MODES | {"I", "F"}
_ALPHA_MODES = frozenset({"LA", "RGBA", "PA", "La", "RGBa"})
_EIGHT_BIT = frozenset({"L", "LA", "RGB", "RGBA"})
_TO_STRAIGHT_ALPHA = {"PA": "RGBA", "La": "LA", "RGBa": "RGBA"}  # Pillow un-premultiplies La / RGBa
_HIGH_BYTE = [v >> 8 for v in range(65536)]  # I -> L lookup table; Pillow clips indices to 0..65535


def has_transparency(img: Image.Image) -> bool:
    """An alpha channel, or palette / colour-key transparency (PNG tRNS)."""
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def reduced_bit_depth(img: Image.Image) -> str | None:
    """The source depth `to_8bit` (or Pillow's PNG decoder) reduces to 8 bits, e.g. "16-bit"; None if 8-bit.
    Call before the image is loaded: a 16-bit RGB(A)/LA PNG opens as 8-bit, only its raw mode tells."""
    if img.mode == "F":
        return "32-bit float"
    if img.mode in HIGH_BIT_DEPTH_MODES:
        return "16-bit"  # I too: the accepted formats write at most 16 bits (PNG)
    rawmodes = [t.args for t in img.tile if isinstance(t.args, str)] if img.format == "PNG" else []
    return "16-bit" if any(";16" in raw for raw in rawmodes) else None


def to_8bit(img: Image.Image) -> Image.Image:
    """The image as L, LA, RGB or RGBA (alpha kept, transparency as an alpha channel); may be `img` itself."""
    mode = img.mode
    if mode in HIGH_BIT_DEPTH_MODES:
        return _gray(img)
    if mode == "CMYK":
        return _cmyk_to_srgb(img)
    if mode in _TO_STRAIGHT_ALPHA:
        return img.convert(_TO_STRAIGHT_ALPHA[mode])
    if "transparency" in img.info:  # P, L, 1 or RGB with tRNS: Pillow turns it into alpha on RGBA/LA
        return _keyed_alpha(img)
    if mode in _EIGHT_BIT:
        return img
    if mode == "1":
        return img.convert("L")
    return img.convert("RGB")  # P, RGBX, YCbCr, LAB, HSV


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, a new image: alpha dropped, the stored colour under transparency kept (as sd-scripts trains)."""
    return to_8bit(img).convert("RGB")


def alpha_channel(img: Image.Image) -> Image.Image:
    """The alpha as an L image: 255 (opaque) where the image has none."""
    img = to_8bit(img)
    if img.mode in ("LA", "RGBA"):
        return img.getchannel("A")
    return Image.new("L", img.size, 255)


def _gray(img: Image.Image) -> Image.Image:
    """A high-bit-depth gray image as L (LA when a tRNS value marks transparent pixels)."""
    if img.mode in SIXTEEN_BIT_MODES:
        img = img.convert("I")  # exact, whatever the byte order
    if img.mode == "I":
        _, high = img.getextrema()
        gray = img.point(_HIGH_BYTE, "L") if high <= 65535 else _scaled(img.convert("F"), float(high))
    else:
        _, high = img.getextrema()
        gray = _scaled(img, 1.0 if high <= 1 else 255.0 if high <= 255 else float(high))
    key = img.info.get("transparency")
    if isinstance(key, int) and img.mode == "I":  # a 16-bit gray PNG's tRNS: exactly that value is clear
        alpha = img.point([0 if v == key else 255 for v in range(65536)], "L")
        return Image.merge("LA", (gray, alpha))
    return gray


def _scaled(img: Image.Image, top: float) -> Image.Image:
    """F -> L as round(v * 255 / top), clipped to 0..255 (Pillow's F -> L truncates, hence the + 0.5)."""
    factor = 255.0 / max(top, 1e-12)
    return img.point(lambda v: v * factor + 0.5).convert("L")


def _keyed_alpha(img: Image.Image) -> Image.Image:
    key = img.info["transparency"]
    if img.mode == "RGB" and isinstance(key, tuple) and max(key) > 255:
        # a 16-bit RGB PNG's tRNS colour, while Pillow decoded the pixels to their high bytes: compare those
        img = img.copy()
        img.info["transparency"] = tuple(v >> 8 for v in key)
    return img.convert("LA" if img.mode in ("L", "1") else "RGBA")


def _cmyk_to_srgb(img: Image.Image) -> Image.Image:
    icc = img.info.get("icc_profile")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(img, source, srgb, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            converted = None  # damaged, or not a CMYK profile: the naive conversion beats refusing the image
        if converted is not None:
            return converted
    return img.convert("RGB")
