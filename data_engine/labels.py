"""Fine labels: layout blocks -> DeepSeek-OCR's interleaved grounded text, and back.

Each block, in reading order, is written as ``<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>``
followed by its text on the next line, blocks separated by a blank line (PAPER_FACTS "Prompts
and output format"). Coordinates are normalized to 1000 bins: ``int(x / page_w * 999)``
clamped to 0..999, the inverse of the official decoder's ``x / 999 * page_w``. The string
format itself lives in ``models.prompts`` (shared with the model's output parser) so labels and
parser cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence

from data_engine.coarse import normalize_text
from models.prompts import (
    DET_END,
    DET_START,
    NUM_BINS,
    REF_END,
    REF_START,
    format_grounded_page,
    parse_grounded_output,
)

_MARKERS = (REF_START, REF_END, DET_START, DET_END)


def to_bins(bbox: Sequence[float], page_w: float, page_h: float) -> list[int]:
    """A box in PDF points -> ``[x1, y1, x2, y2]`` in 0..999 bins of the page."""
    if page_w <= 0 or page_h <= 0:
        raise ValueError(f"page size must be positive, got {page_w} x {page_h}")
    x0, y0, x1, y1 = (float(v) for v in bbox)
    top = NUM_BINS - 1

    def b(v, size):
        return min(top, max(0, int(v / size * top)))

    return [b(min(x0, x1), page_w), b(min(y0, y1), page_h), b(max(x0, x1), page_w), b(max(y0, y1), page_h)]


def from_bins(box: Sequence[int], page_w: float, page_h: float) -> list[float]:
    """Inverse of ``to_bins`` (up to the bin width), as the official decoder does it."""
    top = NUM_BINS - 1
    return [box[0] / top * page_w, box[1] / top * page_h, box[2] / top * page_w, box[3] / top * page_h]


def _clean(text: str) -> str:
    # A literal marker in the page text would make the label unparsable. The text is then
    # normalised like the coarse label (NFC, whitespace runs -> one space, <= 1 blank line),
    # so both label kinds of a page spell its text the same way.
    for m in _MARKERS:
        text = text.replace(m, "")
    return normalize_text(text)


def fine_label(blocks, page_w: float, page_h: float) -> tuple[str, list[dict]]:
    """``blocks``: LayoutBlock-like objects (``.label``, ``.bbox`` in points, ``.text``) or dicts,
    in reading order. Returns ``(label_text, boxes)`` with ``boxes = [{"label", "bbox" (bins),
    "text"}]`` -- exactly what the shard's ``labels.fine`` holds."""
    boxes = []
    for b in blocks:
        label, bbox, text = (b["label"], b["bbox"], b["text"]) if isinstance(b, dict) else (b.label, b.bbox, b.text)
        boxes.append({"label": label, "bbox": to_bins(bbox, page_w, page_h), "text": _clean(text)})
    text = format_grounded_page((d["label"], d["bbox"], d["text"]) for d in boxes)
    return text, boxes


def parse_fine_label(text: str) -> list[dict]:
    """Grounded text -> ``[{"label", "bbox" (bins), "text"}]`` (model output or a label)."""
    return [{"label": lb, "bbox": box, "text": tx} for lb, box, tx in parse_grounded_output(text)]


__all__ = ["to_bins", "from_bins", "fine_label", "parse_fine_label"]
