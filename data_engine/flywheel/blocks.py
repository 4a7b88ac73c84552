"""Block patches: a text block (several lines) cut as one patch, labelled with its lines' texts.

A block is the text layer's block (a MuPDF text block: a paragraph, a heading, a list item)
on pages with a text layer, and a group of detector lines on image-only pages (lines stacked
closely enough to read as one paragraph, ``group_lines``). A block's label is its lines' texts
joined with newlines, top to bottom (each line's text in reading order, ``patches.visual_lines``).

Trust is still judged per line (``trust.line_problem``). A block with an untrusted line is
**cut into its runs of trusted lines**: each maximal run of consecutive trusted lines becomes a
block patch (box = the union of the run's line boxes), so one garbled line costs neither its
page's nor its block's good lines; each run of untrusted lines is returned as a refused block
(box, text, reason of its first bad line) whose box joins the pool to be labelled. Cutting to
runs rather than refusing the whole block keeps what the per-line rule keeps for lines; the
price is that a run is not always a whole paragraph (its box ends at the garbled line).

When line patches are cut too (``flywheel.patches=both``), a one-line run is the same patch as
its line patch (or its refused line) and is not cut a second time; the same holds for one-line
detector groups and ground-truth blocks (``dataset.prepare_data``).
"""

from __future__ import annotations

import pymupdf
from PIL import Image

from data_engine.flywheel.patches import BLOCK, Patch, cut_boxes, visual_lines
from data_engine.flywheel.trust import line_problem


def inside(inner, outer, share: float = 0.5) -> bool:
    """Does at least ``share`` of ``inner``'s area lie in ``outer``?"""
    ix = max(0.0, min(inner[2], outer[2]) - max(inner[0], outer[0]))
    iy = max(0.0, min(inner[3], outer[3]) - max(inner[1], outer[1]))
    area = max(1e-6, (inner[2] - inner[0]) * (inner[3] - inner[1]))
    return ix * iy >= share * area


def lines_in(box, lines: list[dict]) -> list[dict]:
    """The (ground-truth) lines ``{bbox, text}`` lying mostly inside ``box``, top to bottom: a
    block's or a run's truth, whatever cut it (text layer, detector group)."""
    return sorted((ln for ln in lines if inside(ln["bbox"], box)), key=lambda ln: (ln["bbox"][1], ln["bbox"][0]))


def _union(boxes) -> tuple[float, float, float, float]:
    xs0, ys0, xs1, ys1 = zip(*boxes)
    return (min(xs0), min(ys0), max(xs1), max(ys1))


def text_blocks(text_dict: dict, rtl: bool = False) -> list[list[tuple[pymupdf.Rect, str]]]:
    """The text layer's blocks, each as its visual lines (box, text), top to bottom; blocks in
    the order of their first line (lines merged inside a block only, so columns stay apart)."""
    out = []
    for block in text_dict.get("blocks", ()):
        if block.get("type", 0) != 0:
            continue
        lines = visual_lines({"blocks": [block]}, rtl)
        if lines:
            out.append(lines)
    return sorted(out, key=lambda ls: (ls[0][0].y0, ls[0][0].x0))


def block_runs(text_dict: dict, script: str, rtl: bool = False) -> list[dict]:
    """Runs of consecutive lines of one trust inside each text block, in reading order:
    ``{"bbox", "text" (lines joined by newlines), "lines", "block", "reason"}`` where ``reason``
    is None for a trusted run, else the first bad line's reason (``trust.line_problem``)."""
    runs = []
    for b, lines in enumerate(text_blocks(text_dict, rtl)):
        current: list = []
        for r, t in lines:
            why = line_problem(t, script)
            if current and (why is None) != (current[-1][2] is None):  # trust changes: a new run
                runs.append(_run(current, b))
                current = []
            current.append((r, t, why))
        runs.append(_run(current, b))
    return runs


def _run(lines: list, block: int) -> dict:
    return {"bbox": [round(v, 2) for v in _union([tuple(r) for r, _, _ in lines])],
            "text": "\n".join(t for _, t, _ in lines), "lines": len(lines), "block": block,
            "reason": next((w for _, _, w in lines if w is not None), None)}


def cut_blocks(page: pymupdf.Page, page_img: Image.Image, text_dict: dict, *, doc_id: str, lang: str, script: str,
               rtl: bool = False, source_path: str = "", with_lines: bool = False) -> tuple[list[Patch], list[dict]]:
    """Trusted runs as labelled block patches (``source: textlayer``, ``kind: block``); the
    untrusted runs as refused blocks ``{bbox, text, reason, lines, block, kind: "block"}``."""
    good, refused = [], []
    for i, run in enumerate(block_runs(text_dict, script, rtl)):
        if with_lines and run["lines"] == 1:  # the line patch (or refused line) already is this run
            continue
        if run["reason"] is not None:
            refused.append({**run, "kind": BLOCK})
        else:
            good += cut_boxes(page_img, page.rect, [run["bbox"]], doc_id=doc_id, page=page.number, lang=lang,
                              script=script, source="textlayer", texts=[run["text"]], source_path=source_path,
                              start=i, kind=BLOCK)
    return good, refused


def group_lines(boxes, max_gap: float = 0.8, min_overlap: float = 0.3,
                min_lines: int = 1) -> list[tuple[float, float, float, float]]:
    """Line boxes (a detector's, PDF points) grouped into block boxes: a line joins the block
    above it when the vertical gap is below ``max_gap`` x the line's height and the two overlap
    horizontally by ``min_overlap`` of the narrower one. Blocks of at least ``min_lines`` lines,
    in reading order (top first)."""
    blocks: list[list] = []
    for b in sorted((tuple(float(v) for v in b) for b in boxes), key=lambda b: (b[1], b[0])):
        h = b[3] - b[1]
        for g in reversed(blocks):
            last = g[-1]
            gap = b[1] - last[3]
            overlap = min(b[2], last[2]) - max(b[0], last[0])
            if -0.5 * h < gap < max_gap * h and overlap > min_overlap * min(b[2] - b[0], last[2] - last[0]):
                g.append(b)
                break
        else:
            blocks.append([b])
    return sorted((_union(g) for g in blocks if len(g) >= min_lines), key=lambda b: (b[1], b[0]))
