"""Text-layer layout vs the generator's ground truth; fine labels; PP-DocLayout result mapping."""

from __future__ import annotations

import json
import os

import pymupdf
import pytest

from data_engine.coarse import normalize_text
from data_engine.labels import fine_label, from_bins, parse_fine_label, to_bins
from data_engine.layout import (
    LABELS,
    LayoutBlock,
    check_layout_config,
    get_layout_source,
)
from data_engine.layout.paddle import PaddleLayout, map_detections
from data_engine.layout.textlayer import reading_order
from data_engine.scripts import SCRIPTS, find_font
from data_engine.synthetic import generate_corpus

# A box shifted by ~10% of its size on each side has IoU ~0.7; text-layer boxes are glyph
# line boxes while the ground truth is the element rect (line-height, unshaped width for
# one-line blocks), so a correct match lands at 0.8-0.95. 0.75 fails on any systematic error
# (wrong page mapping, mirrored RTL, lost blocks: IoU 0) while tolerating those offsets.
MIN_MEAN_IOU = 0.75
MIN_LABEL_ACC = 0.8


def iou(a, b) -> float:
    a, b = pymupdf.Rect(a), pymupdf.Rect(b)
    if not a.intersects(b):
        return 0.0
    i = (a & b).get_area()
    return i / (a.get_area() + b.get_area() - i)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    scripts = [s for s in ["Latn", "Cyrl", "Hebr", "Deva", "Grek"] if find_font(SCRIPTS[s].font)]
    if len(scripts) < 3:
        pytest.skip("Noto fonts not installed (scripts/setup_fonts.sh)")
    out = tmp_path_factory.mktemp("layout")
    return generate_corpus(out, None, scripts, n_docs=1, pages_per_doc=2, seed=11, page_size=(420.0, 595.0))


def test_textlayer_covers_ground_truth(corpus):
    src = get_layout_source("textlayer")
    rows, ious, hits, n = [], [], 0, 0
    for p in corpus:
        gt = json.loads(p.with_suffix(".gt.json").read_text(encoding="utf-8"))
        doc = pymupdf.open(p)
        doc_ious = []
        for pg in gt["pages"]:
            page = doc[pg["page"]]
            blocks = src.blocks(page, page.get_text("dict"))
            assert blocks and all(b.label in LABELS for b in blocks)
            for g in pg["blocks"]:
                best = max(blocks, key=lambda b: iou(b.bbox, g["bbox"]))
                doc_ious.append(iou(best.bbox, g["bbox"]))
                hits += best.label == g["label"]
                n += 1
        ious += doc_ious
        rows.append(f"{gt['script']}: mean IoU {sum(doc_ious) / len(doc_ious):.3f} over {len(doc_ious)} blocks")
    mean = sum(ious) / len(ious)
    print("\n" + "\n".join(rows) + f"\nall: mean IoU {mean:.3f}, label accuracy {hits / n:.3f}")
    assert mean >= MIN_MEAN_IOU
    assert hits / n >= MIN_LABEL_ACC


def test_fine_labels_round_trip(corpus):
    src = get_layout_source()
    doc = pymupdf.open(corpus[0])
    page = doc[0]
    blocks = src.blocks(page)
    text, boxes = fine_label(blocks, page.rect.width, page.rect.height)
    assert text.startswith("<|ref|>") and "<|det|>[[" in text
    parsed = parse_fine_label(text)
    assert [b["label"] for b in parsed] == [b.label for b in blocks]
    assert [b["bbox"] for b in parsed] == [b["bbox"] for b in boxes]
    assert [b["text"] for b in parsed] == [normalize_text(b.text) for b in blocks]
    for b, orig in zip(parsed, blocks):
        assert all(0 <= v <= 999 for v in b["bbox"])
        back = from_bins(b["bbox"], page.rect.width, page.rect.height)
        bin_w = page.rect.width / 999, page.rect.height / 999
        for k in range(4):  # decoded box is within one bin of the original
            assert abs(back[k] - orig.bbox[k]) <= bin_w[k % 2] + 1e-6


def test_to_bins_clamps_and_orders():
    assert to_bins((-5, -1, 700, 900), 600, 800) == [0, 0, 999, 999]
    assert to_bins((300, 400, 0, 0), 600, 800) == [0, 0, 499, 499]
    with pytest.raises(ValueError):
        to_bins((0, 0, 1, 1), 0, 10)
    text, _ = fine_label([LayoutBlock("text", (0, 0, 10, 10), "a <|ref|>b")], 100, 100)
    assert parse_fine_label(text)[0]["text"] == "a b"  # markers in page text cannot break labels
    # block text is normalised like the coarse label (NFC, whitespace runs -> one space)
    text, boxes = fine_label([LayoutBlock("text", (0, 0, 10, 10), " e\u0301te\t \u00a0x ")], 100, 100)
    assert boxes[0]["text"] == "\u00e9te x" and text.endswith("\n\u00e9te x")


def test_reading_order_bands_and_columns():
    R = pymupdf.Rect
    # one column: a centred caption between narrow left-aligned items stays in its place
    items = [("list", R(50, 100, 200, 110)), ("list", R(50, 120, 200, 130)), ("image_caption", R(250, 140, 350, 150)),
             ("list", R(50, 160, 200, 170)), ("text", R(50, 180, 545, 220)), ("footer", R(290, 800, 300, 810)),
             ("header", R(50, 20, 100, 30))]
    assert [b[1].y0 for b in reading_order(items, 595)] == [20, 100, 120, 140, 160, 180, 800]
    # two columns: left column first (right column first for RTL), then the next band
    cols = [("text", R(50, 100, 290, 300)), ("text", R(305, 100, 545, 300)), ("text", R(50, 310, 290, 400)),
            ("text", R(305, 310, 545, 400)), ("title", R(50, 420, 545, 440))]
    assert [(b[1].x0, b[1].y0) for b in reading_order(cols, 595)] == [(50, 100), (50, 310), (305, 100), (305, 310), (50, 420)]
    assert [(b[1].x0, b[1].y0) for b in reading_order(cols, 595, rtl=True)][:2] == [(305, 100), (305, 310)]
    # three columns of two paragraphs under a title (the middle column crosses the page's
    # centre line: it was read as a full-width block between the others' paragraphs)
    three = [("title", R(50, 60, 545, 80))] + [("text", R(x, y, x + 150, y + 90)) for y in (100, 200) for x in (50, 220, 395)]
    assert [(b[1].x0, b[1].y0) for b in reading_order(three, 595)][1:] == [
        (50, 100), (50, 200), (220, 100), (220, 200), (395, 100), (395, 200)]
    # a wide main column and a narrow side column (the main one was taken for full width)
    main_side = [("text", R(50, 100, 400, 200)), ("text", R(420, 100, 545, 150)), ("text", R(50, 210, 400, 300)),
                 ("text", R(420, 160, 545, 300))]
    assert [(b[1].x0, b[1].y0) for b in reading_order(main_side, 595)] == [(50, 100), (50, 210), (420, 100), (420, 160)]


def test_paddle_mapping_documented_structure():
    # PaddleOCR LayoutDetection result: res["boxes"] = [{cls_id, label, score, coordinate (px)}]
    res = {"res": {"input_path": None, "page_index": None, "boxes": [
        {"cls_id": 2, "label": "text", "score": 0.97, "coordinate": [100.0, 200.0, 500.0, 300.0]},
        {"cls_id": 1, "label": "doc_title", "score": 0.91, "coordinate": [80, 40, 600, 90]},
        {"cls_id": 5, "label": "table", "score": 0.30, "coordinate": [0, 0, 10, 10]},
        {"cls_id": 9, "label": "figure_title", "score": 0.88, "coordinate": [100, 1600, 700, 1800]},
    ]}}
    page_rect = pymupdf.Rect(0, 0, 595, 842)
    dets = map_detections(res, scale=2.0, page_rect=page_rect, min_score=0.5)
    assert [d[0] for d in dets] == ["text", "title", "image_caption"]
    assert tuple(dets[0][1]) == (50.0, 100.0, 250.0, 150.0)
    assert tuple(dets[2][1]) == (50.0, 800.0, 350.0, 842.0)  # clipped to the page
    assert len(map_detections(res["res"], 2.0, page_rect, 0.2)) == 4
    with pytest.raises(ValueError, match="boxes"):
        map_detections({"foo": 1}, 1.0, page_rect)


def test_paddle_requires_local_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_dir"):
        PaddleLayout(model_dir=tmp_path / "missing")
    # the engine's up-front check gives the same errors without loading anything
    with pytest.raises(FileNotFoundError, match="model_dir"):
        check_layout_config("paddle", model_dir=str(tmp_path / "missing"))
    with pytest.raises(TypeError):
        check_layout_config("paddle", model_dir=str(tmp_path), typo=1)
    with pytest.raises(ValueError, match="unknown layout source"):
        check_layout_config("yolo")
    with pytest.raises(TypeError):
        check_layout_config("textlayer", bandd=0.1)
    check_layout_config("textlayer", band=0.1)


@pytest.mark.weights
def test_paddle_layout_with_weights(corpus):
    model_dir = os.environ.get("OCRFLOW_PP_DOCLAYOUT_DIR")
    if not model_dir:
        pytest.skip("set OCRFLOW_PP_DOCLAYOUT_DIR to a local PP-DocLayout model folder")
    pytest.importorskip("paddleocr")
    src = get_layout_source("paddle", model_dir=model_dir)
    page = pymupdf.open(corpus[0])[0]
    blocks = src.blocks(page)
    assert blocks and all(0 <= b.bbox[0] <= b.bbox[2] <= page.rect.width for b in blocks)
