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


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's bundled font (needs FreeType)
    except (OSError, TypeError):
        return ImageFont.load_default()


def _label_size(cell_height: int) -> int:
    return max(12, min(48, cell_height // 10))  # A1111 scales its labels with the image too


MIN_LABEL_SIZE = 8


class _Labels:
    """Text measured and wrapped with one font: a column label gets as many lines as it needs to stay inside
    its cell's width, with the font made smaller for a word that fits no other way (64 px cells)."""

    def __init__(self, size: int):
        self.size = size
        self.font = _font(size)
        self.measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(self, text: str) -> tuple[int, int]:
        left, top, right, bottom = self.measure.textbbox((0, 0), text, font=self.font)
        return right - left, bottom - top

    def wrap(self, text: str, width: int) -> list[str] | None:
        """Lines of at most `width` pixels, split at spaces; None when one word alone is wider."""
        lines: list[str] = []
        for word in text.split():
            if self.text_size(word)[0] > width:
                return None
            if lines and self.text_size(f"{lines[-1]} {word}")[0] <= width:
                lines[-1] = f"{lines[-1]} {word}"
            else:
                lines.append(word)
        return lines or [""]


def _column_labels(columns: Sequence[str], width: int, size: int) -> tuple[_Labels, list[list[str]]]:
    """The largest font (from `size` down) at which every column label wraps inside its cell."""
    for candidate in range(size, MIN_LABEL_SIZE - 1, -1):
        labels = _Labels(candidate)
        wrapped = [labels.wrap(text, width) for text in columns]
        if all(lines is not None for lines in wrapped):
            return labels, wrapped  # type: ignore[return-value]
    labels = _Labels(MIN_LABEL_SIZE)  # a word wider than the cell even so: one word per line
    return labels, [text.split() or [""] for text in columns]


def draw_grid(
    cells: Sequence[Sequence[Image.Image]], rows: Sequence[str], columns: Sequence[str]
) -> tuple[Image.Image, GridLayout]:
    """cells[r][c] (all one size) under `columns` labels and after `rows` labels."""
    if len(cells) != len(rows) or any(len(row) != len(columns) for row in cells):
        raise ValueError("one label per row and per column")
    width, height = cells[0][0].size
    pad = max(4, height // 32)
    row_labels = _Labels(_label_size(height))
    column_labels, wrapped = _column_labels(columns, width - 2 * pad, _label_size(height))
    line_height = max(column_labels.text_size("Ag")[1], 1) + pad // 2

    left = max(row_labels.text_size(label)[0] for label in rows) + 2 * pad
    top = max(len(lines) for lines in wrapped) * line_height + 2 * pad
    layout = GridLayout(left, top, width, height, list(rows), list(columns))
    grid = Image.new("RGB", (left + width * len(columns), top + height * len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for c, lines in enumerate(wrapped):
        x0, _, x1, _ = layout.box(0, c)
        for i, line in enumerate(lines):
            w, _ = column_labels.text_size(line)
            at = (x0 + (x1 - x0 - w) // 2, pad + i * line_height)
            draw.text(at, line, fill=INK, font=column_labels.font)
    for r, label in enumerate(rows):
        _, y0, _, y1 = layout.box(r, 0)
        _, h = row_labels.text_size(label)
        draw.text((pad, y0 + (y1 - y0 - h) // 2), label, fill=INK, font=row_labels.font)
        for c, image in enumerate(cells[r]):
            if image.size != (width, height):
                raise ValueError("every cell of a grid has the same size")
            grid.paste(image.convert("RGB"), layout.box(r, c)[:2])
    return grid, layout
