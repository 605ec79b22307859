"""A labelled image grid, as A1111's X/Y plot draws one: a header row naming each column, a header column
naming each row, the images unscaled in between (so a cell's pixels are the image's pixels exactly)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


@dataclass(frozen=True)
class GridLayout:
    """Where the cells are (stored as the grid artifact's meta, so a client can crop a cell)."""

    left: int  # the header column's width: the first cell's x
    top: int  # the header row's height: the first cell's y
    cell_width: int
    cell_height: int
    rows: list[str]
    columns: list[str]

    def box(self, row: int, column: int) -> tuple[int, int, int, int]:
        x, y = self.left + column * self.cell_width, self.top + row * self.cell_height
        return x, y, x + self.cell_width, y + self.cell_height

    def meta(self) -> dict[str, Any]:
        return asdict(self)


def _font(cell_height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = max(12, min(48, cell_height // 10))  # A1111 scales its labels with the image too
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled font (needs FreeType)
    except (OSError, TypeError):
        return ImageFont.load_default()


def draw_grid(
    cells: Sequence[Sequence[Image.Image]], rows: Sequence[str], columns: Sequence[str]
) -> tuple[Image.Image, GridLayout]:
    """cells[r][c] (all one size) under `columns` labels and after `rows` labels."""
    if len(cells) != len(rows) or any(len(row) != len(columns) for row in cells):
        raise ValueError("one label per row and per column")
    width, height = cells[0][0].size
    font = _font(height)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    pad = max(4, height // 32)

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    left = max(text_size(label)[0] for label in rows) + 2 * pad
    top = max(text_size(label)[1] for label in columns) + 2 * pad
    layout = GridLayout(left, top, width, height, list(rows), list(columns))
    grid = Image.new("RGB", (left + width * len(columns), top + height * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(columns):
        x0, _, x1, _ = layout.box(0, c)
        w, _ = text_size(label)
        draw.text((x0 + (x1 - x0 - w) // 2, pad), label, fill=INK, font=font)
    for r, label in enumerate(rows):
        _, y0, _, y1 = layout.box(r, 0)
        _, h = text_size(label)
        draw.text((pad, y0 + (y1 - y0 - h) // 2), label, fill=INK, font=font)
        for c, image in enumerate(cells[r]):
            if image.size != (width, height):
                raise ValueError("every cell of a grid has the same size")
            grid.paste(image.convert("RGB"), layout.box(r, c)[:2])
    return grid, layout
