"""Page labels from accepted lines (data_engine/flywheel/reassemble.py, torch-free): a page
whose unaccepted lines are erased (painted white, left out of the label) shows exactly what its
label says; pages where erasing would touch a labelled line, or too few lines are accepted, stay
partial. Checked on a real PDF rendered by PyMuPDF: pixels, not only the bookkeeping."""

from __future__ import annotations

import numpy as np
import pymupdf
import pytest
from PIL import Image

from data_engine.flywheel.patches import Patch
from data_engine.flywheel.reassemble import complete_pages, write_page_shard
from data_engine.labels import parse_fine_label
from data_engine.shards import iter_samples

LINES = ["alpha beta gamma", "delta epsilon", "zeta eta theta", "iota kappa lambda"]


@pytest.fixture()
def page_pdf(tmp_path):
    """One page with four lines of text; returns (path, line patches in PDF points)."""
    path = tmp_path / "doc.pdf"
    doc = pymupdf.open()
    page = doc.new_page(width=300, height=240)
    for i, text in enumerate(LINES):
        page.insert_text((30, 50 + 40 * i), text, fontsize=16)
    doc.save(path)
    lines = [ln for b in pymupdf.open(path)[0].get_text("dict")["blocks"] for ln in b.get("lines", [])]
    assert ["".join(s["text"] for s in ln["spans"]) for ln in lines] == LINES
    patches = [Patch(key=f"d_00000_{i:03d}", doc_id="d", page=0, bbox=tuple(ln["bbox"]), lang="eng", script="Latn",
                     source="detector", source_path=str(path), page_size=(300.0, 240.0))
               for i, ln in enumerate(lines)]
    return path, patches


def _accept(patches, which):
    return [Patch(**{**p.__dict__, "text": LINES[i]}) for i, p in enumerate(patches) if i in which]


def _ink(img: Image.Image, bbox, scale: float) -> int:
    """Dark pixels inside a PDF-point box of the rendered page."""
    x0, y0, x1, y1 = (round(v * scale) for v in bbox)
    return int((np.asarray(img.convert("L"))[y0:y1, x0:x1] < 128).sum())


def test_unaccepted_line_is_erased_from_image_and_label(page_pdf, tmp_path):
    path, pool = page_pdf
    accepted = _accept(pool, {0, 1, 3})  # line 2 refused
    labels, counts = complete_pages(accepted, pool, erase_share=0.5)
    assert counts["eng"] == {"pages": 1, "complete": 0, "erased": 1, "partial": 0}
    lab = labels[("d", 0)]
    assert [b["text"] for b in parse_fine_label(lab["text"])] == [LINES[0], LINES[1], LINES[3]]
    (box,) = lab["erase"]
    assert box[0] <= pool[2].bbox[0] and box[3] >= pool[2].bbox[3]  # covers the refused line
    assert write_page_shard(tmp_path / "pages.tar", labels) == 1
    (sample,) = iter_samples(str(tmp_path / "pages.tar"))
    img = sample["image"]
    scale = img.width / 300.0
    assert _ink(img, pool[2].bbox, scale) == 0  # the refused line is gone from the image ...
    for i in (0, 1, 3):  # ... and the labelled ones are intact
        assert _ink(img, pool[i].bbox, scale) > 50
    assert sample["meta"]["erased"] == [list(box)]
    # the source file is untouched: rendered again it still shows line 2
    pix = pymupdf.open(path)[0].get_pixmap(dpi=144)
    again = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    assert _ink(again, pool[2].bbox, pix.width / 300.0) > 50


def test_pages_stay_partial_without_erasing_or_with_too_few_accepted(page_pdf):
    _, pool = page_pdf
    labels, counts = complete_pages(_accept(pool, {0, 1, 3}), pool, erase_share=None)
    assert not labels and counts["eng"] == {"pages": 1, "complete": 0, "erased": 0, "partial": 1}
    labels, counts = complete_pages(_accept(pool, {0}), pool, erase_share=0.5)  # 1 of 4 < half
    assert not labels and counts["eng"]["partial"] == 1
    labels, counts = complete_pages(_accept(pool, {0, 1, 2, 3}), pool, erase_share=0.5)
    assert counts["eng"]["complete"] == 1 and "erase" not in labels[("d", 0)]


def test_refused_line_overlapping_a_labelled_one_is_not_erased(page_pdf):
    _, pool = page_pdf
    x0, y0, x1, y1 = pool[1].bbox
    pool = [*pool[:2], Patch(**{**pool[2].__dict__, "bbox": (x0, y0 + 2, x1, y1 + 30)}), pool[3]]  # reaches into line 1
    labels, counts = complete_pages(_accept(pool, {0, 1, 3}), pool, erase_share=0.5)
    assert not labels and counts["eng"]["partial"] == 1
