"""The square canvas a line or block patch is shown to the recognizer on.

The recognizer reads one square view, the side of its resolution mode (default ``micro``:
256 px = 4 x 4 vision tokens of 64 px). A line is drawn the way an OCR front end normalises
text before recognition (x-height and baseline normalisation), then wrapped like a paragraph:

1. ``normalize_line``: the crop is cut to its ink and scaled so its **x-height** (the zone
   between the mean line and the baseline, found on the row profile) is ``X_HEIGHT`` px. The
   scale no longer depends on which letters a line holds (a line without descenders cut to its
   ink is shorter, and scaling it by that height showed its letters 1.3x larger) nor on where
   the box came from (text-layer boxes carry the font's ascent and descent, detector and
   ground-truth boxes hug the ink).
2. ``wrap_spans``: the scaled line is cut into rows at blank columns, preferring word gaps, so
   no glyph is split between two rows (a fixed-width cut split one glyph per row break).
3. Each row's baseline sits ``BASELINE`` px below the top of a 64 px token row; what would
   cross into the next token row is clipped, so a glyph never straddles two vision-token rows.
4. Right-to-left scripts (``is_rtl``: Arabic, Hebrew, ...) start at the line's right end: rows
   are cut from the right and set right-aligned, so the first row holds the first words.

A line too long for the canvas's rows is shrunk until it fits. A block (several lines already)
is scaled to fit the square, its aspect kept (``block_canvas``). Measured in docs/flywheel.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from data_engine.scripts import script_info

CANVAS = 256  # side of the recognizer's default mode ("micro"): the canvas is fed without resizing
ROW = 64  # pixels per vision-token row (16 px SAM patches x 4 from the 16x compressor)
X_HEIGHT = 28  # px: the x-height a line is scaled to (Latin letters about 16 px wide: ~4 per token)
BASELINE = 46  # px from a token row's top to the baseline: room for ascenders above, descenders below
MARGIN = 4  # px of white at the canvas's left and right
INK = 160  # grey level below which a pixel is ink
LINE, BLOCK = "line", "block"  # patch kinds
# How line canvases are drawn, recorded with prepared patch data (a resumed run drawing them
# differently would mix two views of the text): bump it whenever the layout changes.
LAYOUT = f"x-height {X_HEIGHT}, baseline {BASELINE}, word wrap"


def _ink(img: Image.Image, threshold: int = INK) -> np.ndarray:
    """(H, W) bool: the ink pixels of a greyscale image."""
    return np.asarray(img) < threshold


def core_band(ink: np.ndarray) -> tuple[int, int]:
    """(top, bottom) rows of the text's core zone (x-height for Latin, headline to baseline for
    Devanagari): the row profile's sharpest rise in the upper half is the mean line, its sharpest
    fall in the lower half the baseline. Robust to how many letters have ascenders or descenders,
    which moves an ink-mass or threshold estimate."""
    prof = ink.sum(1).astype(float)  # (H,) ink pixels per row
    h = len(prof)
    if h < 4 or not prof.any():
        return 0, max(0, h - 1)
    padded = np.concatenate([[0.0], prof, [0.0]])
    rise = prof - padded[:-2]  # prof[i] - prof[i-1]
    fall = prof - padded[2:]  # prof[i] - prof[i+1]
    mid = h // 2
    return int(np.argmax(rise[:mid + 1])), mid + int(np.argmax(fall[mid:]))


@dataclass
class NormalLine:
    """A line scaled to ``X_HEIGHT``: its greyscale image and the row of its baseline."""

    image: Image.Image
    baseline: int
    scale: float  # from the crop's (ink-tight) pixels to ``image``'s
    x0: int  # left edge of the ink in the crop's pixels


def normalize_line(img: Image.Image, x_height: int = X_HEIGHT, stretch: float = 1.0) -> NormalLine:
    """The line's ink, scaled so its core zone is ``x_height`` px (``stretch`` widens it)."""
    grey = img.convert("L")
    ink = _ink(grey)
    cols, rows = np.flatnonzero(ink.any(0)), np.flatnonzero(ink.any(1))
    if not len(cols):  # blank: nothing to measure; shown at its own size
        return NormalLine(grey, grey.height, 1.0, 0)
    x0, y0 = max(0, cols[0] - 1), max(0, rows[0] - 1)
    tight = grey.crop((x0, y0, min(grey.width, cols[-1] + 2), min(grey.height, rows[-1] + 2)))
    h = tight.height
    top, bottom = core_band(ink[y0:y0 + h, x0:x0 + tight.width])
    # a core under 35 % of the ink height is a failed estimate (a rule, a line of one glyph);
    # up to all of it is right (a line without ascenders or descenders)
    core = max(bottom - top + 1, 0.35 * h)
    scale = x_height / core
    size = (max(1, round(tight.width * scale * stretch)), max(1, round(h * scale)))
    return NormalLine(tight.resize(size, Image.BILINEAR), round((bottom + 1) * scale), scale, int(x0))


def _blank_runs(ink_cols: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) runs of columns without ink."""
    blank = np.concatenate([[False], ink_cols == 0, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(blank))
    return list(zip(edges[0::2], edges[1::2]))


def wrap_spans(ink_cols: np.ndarray, width: int, max_rows: int, space: int) -> list[tuple[int, int]] | None:
    """[start, end) column spans of the rows a line of ``ink_cols`` (ink pixels per column) wraps
    into, each at most ``width`` wide: cut in the widest-enough blank run (a word gap: at least
    ``space`` columns) furthest right, else in any blank run (between two letters), else hard.
    None when the line needs more than ``max_rows`` rows."""
    total = len(ink_cols)
    runs = _blank_runs(ink_cols)
    spans, pos = [], 0
    while True:
        while pos < total and ink_cols[pos] == 0:  # a row starts at ink
            pos += 1
        if total - pos <= width:
            spans.append((pos, total))
            return spans if len(spans) <= max_rows else None
        inside = [(a, b) for a, b in runs if pos < a <= pos + width]
        gaps = [r for r in inside if r[1] - r[0] >= space] or inside
        cut = min((gaps[-1][0] + gaps[-1][1]) // 2, pos + width) if gaps else pos + width
        spans.append((pos, cut))
        pos = cut
        if len(spans) >= max_rows:
            return None if any(ink_cols[pos:]) else spans


def line_canvas(img: Image.Image, size: int = CANVAS, row: int = ROW, stretch: float = 1.0,
                x_height: int = X_HEIGHT, rtl: bool = False) -> Image.Image:
    """The line ``img`` normalised (``normalize_line``) and wrapped into token rows on a white
    ``size`` x ``size`` canvas (module docstring). ``rtl`` (Arabic, Hebrew...): the line starts
    at its right end, so rows are cut from the right and set right-aligned, like a paragraph."""
    if size % row:
        raise ValueError(f"canvas side {size} must be a multiple of the token row {row}")
    baseline_at, xh = round(BASELINE * row / ROW), round(x_height * row / ROW)
    line = normalize_line(img, xh, stretch)
    usable, max_rows = size - 2 * MARGIN, size // row
    while True:  # shrink (aspect kept) until the line fits the rows
        ink_cols = _ink(line.image).sum(0)
        spans = wrap_spans(ink_cols[::-1] if rtl else ink_cols, usable, max_rows, space=max(3, round(0.45 * xh)))
        if spans is not None:
            break
        xh *= 0.85
        w, h = line.image.size
        line = NormalLine(line.image.resize((max(1, round(w * 0.85)), max(1, round(h * 0.85))), Image.BILINEAR),
                          round(line.baseline * 0.85), line.scale * 0.85, line.x0)
    canvas = Image.new("L", (size, size), 255)
    width, height = line.image.size
    for r, (a, b) in enumerate(spans):
        y = r * row + baseline_at - line.baseline  # where the line's top row lands
        top, bottom = max(0, r * row - y), min(height, (r + 1) * row - y)  # clip to this token row
        if bottom > top and b > a:
            x0, x1 = (width - b, width - a) if rtl else (a, b)  # spans of the mirrored line -> columns
            canvas.paste(line.image.crop((x0, top, x1, bottom)), (size - MARGIN - (b - a) if rtl else MARGIN, y + top))
    return canvas.convert("RGB")


def block_canvas(img: Image.Image, size: int = CANVAS) -> Image.Image:
    """A block (its lines already stacked) scaled to fit a white ``size`` square, aspect kept,
    top-left aligned (small blocks are scaled up, at most 4x, so thin strokes stay thin)."""
    img = img.convert("L")
    w, h = img.size
    scale = min(size / max(w, 1), size / max(h, 1), 4.0)
    canvas = Image.new("L", (size, size), 255)
    canvas.paste(img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR), (0, 0))
    return canvas.convert("RGB")


def patch_canvas(img: Image.Image, size: int = CANVAS, row: int = ROW, kind: str = LINE,
                 stretch: float = 1.0, rtl: bool = False) -> Image.Image:
    """The canvas of a patch crop: ``line_canvas`` for a line, ``block_canvas`` for a block."""
    if kind == BLOCK:
        return block_canvas(img, size)
    return line_canvas(img, size, row, stretch, rtl=rtl)


def is_rtl(script: str) -> bool:
    """Whether lines of ``script`` (ISO 15924) run right to left."""
    return script_info(script).direction == "rtl"
