"""Columns of a page: which parts of it sit side by side, for reading order.

One geometry, two uses:

* ``split_interleaved(blocks)``: a producer that writes a multi-column page line by line across
  the columns (left line 1, right line 1, left line 2, ...) makes MuPDF join those lines into
  one block whose lines alternate between the columns; its text reads across the gutter. Such
  a block becomes one block per column, in reading order (left column first; right first on a
  right-to-left page). Coarse text (``coarse.text_from_dict``) and fine labels (the text-layer
  rules) both read the split blocks. Only prose columns are split: every side must be many
  words wide and most of its lines must fill it, so a table's cells (short, ragged) keep their
  row order.
* ``gutters(rects, page_w)``: the vertical white strips of a page's body (x ranges that little
  of its text crosses, with text on both sides), from which ``textlayer.reading_order`` reads
  a page as bands split by blocks that cross a gutter, each band column by column (any number
  of columns, of any widths).
"""

from __future__ import annotations

import unicodedata

GUTTER_MIN = 0.012     # x page width: the narrowest gutter between two columns
GUTTER_COVER = 0.2     # a gutter is crossed by at most this share of the text beside it (by height)
COLUMN_MIN_WIDTH = 8   # x line height: a prose column is at least this wide
COLUMN_FILL = 0.7      # x column width: a line this wide fills its column
TEXT_LABELS = ("text", "list", "title", "sub_title", "image_caption", "table_caption", "equation")


def is_rtl(texts) -> bool:
    """Most strong (directional) letters of `texts` are right-to-left."""
    n_rtl = n_all = 0
    for text in texts:
        for ch in text:
            bidi = unicodedata.bidirectional(ch)
            n_all += bidi in ("L", "R", "AL")
            n_rtl += bidi in ("R", "AL")
    return n_all > 0 and n_rtl > 0.5 * n_all


def _line_text(line: dict) -> str:
    return line["text"] if "text" in line else "".join(s.get("text", "") for s in line.get("spans", ()))


def _side_by_side(groups: list[list[dict]]) -> bool:
    """Every group is a prose column (wide, its lines filling it) and each shares height with
    the next one."""
    for lines in groups:
        if len(lines) < 2:
            return False
        x0 = min(ln["bbox"][0] for ln in lines)
        x1 = max(ln["bbox"][2] for ln in lines)
        height = sorted(ln["bbox"][3] - ln["bbox"][1] for ln in lines)[len(lines) // 2] or 1.0
        if x1 - x0 < COLUMN_MIN_WIDTH * height:
            return False
        if sum(ln["bbox"][2] - ln["bbox"][0] >= COLUMN_FILL * (x1 - x0) for ln in lines) * 2 < len(lines):
            return False
    for a, b in zip(groups, groups[1:]):
        top = max(min(ln["bbox"][1] for ln in a), min(ln["bbox"][1] for ln in b))
        bottom = min(max(ln["bbox"][3] for ln in a), max(ln["bbox"][3] for ln in b))
        if bottom <= top:
            return False
    return True


def _column_groups(lines: list[dict], min_gap: float) -> list[list[dict]]:
    """`lines` grouped by the x ranges they cover (no line crosses a gap of >= `min_gap`
    between two groups), left to right; one group when there is no such gap."""
    order = sorted(range(len(lines)), key=lambda i: lines[i]["bbox"][0])
    groups, right = [], None
    for i in order:
        x0, x1 = lines[i]["bbox"][0], lines[i]["bbox"][2]
        if right is None or x0 > right + min_gap:
            groups.append([])
            right = x1
        groups[-1].append(i)
        right = max(right, x1)
    return [[lines[i] for i in sorted(g)] for g in groups]


def split_interleaved(blocks: list[dict], page_w: float) -> list[dict]:
    """`blocks` (a text dict's) with every block whose lines lie in side-by-side prose columns
    replaced by one block per column, in reading order; other blocks as they are."""
    out = []
    for block in blocks:
        lines = block.get("lines") or ()
        if block.get("type", 0) != 0 or len(lines) < 4:
            out.append(block)
            continue
        groups = _column_groups(list(lines), GUTTER_MIN * page_w)
        if len(groups) < 2 or not _side_by_side(groups):
            out.append(block)
            continue
        if is_rtl(_line_text(ln) for ln in lines):
            groups.reverse()
        for g in groups:
            bbox = (min(ln["bbox"][0] for ln in g), min(ln["bbox"][1] for ln in g),
                    max(ln["bbox"][2] for ln in g), max(ln["bbox"][3] for ln in g))
            out.append({**block, "bbox": bbox, "lines": g})
    return out


def gutters(rects, page_w: float) -> list[tuple[float, float]]:
    """Vertical white strips between columns of `rects` (x0, y0, x1, y1 boxes of a page's text
    blocks), left to right: x ranges at least `GUTTER_MIN` x `page_w` wide where the blocks
    crossing them are at most `GUTTER_COVER` of the height of text on either side (a title or
    a wide caption crosses a gutter; a paragraph of a one-column page does not leave one)."""
    rects = [tuple(r) for r in rects]
    if len(rects) < 2:
        return []
    xs = sorted({r[0] for r in rects} | {r[2] for r in rects})
    # covered height of each elementary x segment between two block edges
    cover = [sum(r[3] - r[1] for r in rects if r[0] <= a and r[2] >= b) for a, b in zip(xs, xs[1:])]
    low = GUTTER_COVER * max(cover)
    found, k = [], 0
    while k < len(cover):
        if cover[k] > low:
            k += 1
            continue
        j = k
        while j < len(cover) and cover[j] <= low:
            j += 1
        # a run of little cover with text on both sides, little against each side's own text
        if k > 0 and j < len(cover) and xs[j] - xs[k] >= GUTTER_MIN * page_w:
            if max(cover[k:j]) <= GUTTER_COVER * min(max(cover[:k]), max(cover[j:])):
                found.append((xs[k], xs[j]))
        k = j
    return found
