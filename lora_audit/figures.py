"""Labelled image grids for the figures people read (docs/img, the evaluation harnesses).

A grid is rows of equally sized tiles (float RGB in [0, 1], ``None`` for a gap), with a label left of
each row and headers above the columns; a header may span several columns ("training photos" over
five of them). Tiles are upscaled by nearest neighbour, so pixels stay visible.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

Header = tuple[str, int]  # (text, number of columns it spans)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, ValueError, OSError):
        return ImageFont.load_default()


def labelled_grid(rows: Sequence[Sequence[np.ndarray | None]], row_labels: Sequence[str],
                  headers: Sequence[Header | str], scale: int = 3, title: str = "", font_size: int = 13):
    """A PIL image of ``rows`` of tiles [H, W, 3] with ``row_labels`` on the left and ``headers`` above.

    ``headers`` are strings (one column each) or ``(text, span)`` pairs; their spans add up to the
    number of columns. Raises ValueError when the labels or spans do not fit the rows.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("a grid needs at least one row")
    spans = [(h, 1) if isinstance(h, str) else h for h in headers]
    columns = max(len(r) for r in rows)
    if len(row_labels) != len(rows) or sum(s for _, s in spans) != columns:
        raise ValueError(f"{len(rows)} rows x {columns} columns, but {len(row_labels)} row labels and headers "
                         f"spanning {sum(s for _, s in spans)} columns")
    tile_h, tile_w = next(t for r in rows for t in r if t is not None).shape[:2]
    tile_h, tile_w, gap = tile_h * scale, tile_w * scale, max(2, scale)
    font = _font(font_size)
    line = font_size + 4
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max(int(probe.textlength(text, font=font)) for label in row_labels for text in label.split("\n")) + 2 * gap
    wrapped = [textwrap.wrap(text, max(4, int(span * (tile_w + gap) / (0.55 * font_size)))) or [""] for text, span in spans]
    header_height = line * max(len(w) for w in wrapped) + gap
    top = (line + gap if title else 0) + header_height
    sheet = Image.new("RGB", (label_width + columns * (tile_w + gap) + gap, top + len(rows) * (tile_h + gap) + gap), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((gap, gap), title, fill="black", font=font)
    x = label_width
    for (text, span), lines in zip(spans, wrapped):
        width = span * (tile_w + gap) - gap
        for n, part in enumerate(lines):
            offset = (width - probe.textlength(part, font=font)) / 2
            draw.text((x + gap + offset, top - header_height + n * line), part, fill="black", font=font)
        if span > 1:  # a rule under a header that spans columns
            draw.line((x + gap, top - gap // 2 - 1, x + gap + width, top - gap // 2 - 1), fill="grey")
        x += span * (tile_w + gap)
    for r, (row, label) in enumerate(zip(rows, row_labels)):
        y = top + gap + r * (tile_h + gap)
        lines = label.split("\n")
        draw.multiline_text((gap, y + (tile_h - line * len(lines)) / 2), label, fill="black", font=font, spacing=4)
        for c, tile in enumerate(row):
            if tile is not None:
                pixels = (np.clip(tile, 0, 1) * 255 + 0.5).astype(np.uint8)
                sheet.paste(Image.fromarray(pixels).resize((tile_w, tile_h), Image.NEAREST),
                            (label_width + gap + c * (tile_w + gap), y))
    return sheet


def save_labelled_grid(path: str | Path, *args, **kwargs) -> Path:
    """:func:`labelled_grid` written as a PNG at ``path`` (its folder made); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(*args, **kwargs).save(path)
    return path
