"""Block patches (torch-free): text-layer blocks cut and labelled against the synthetic
generator's ground truth (a block's truth is the union of its lines), a block with a garbled
line cut into its trusted runs, detector lines grouped into blocks, block patches in shards,
acceptance of multi-line labels, and page reassembly where blocks and lines meet."""

from __future__ import annotations

import json

import pymupdf
import pytest

from data_engine.flywheel.accept import AcceptConfig, chars_per_height, judge
from data_engine.flywheel.blocks import block_runs, group_lines, lines_in
from data_engine.flywheel.dataset import match_block_truth, prepare_data
from data_engine.flywheel.detect import get_line_source
from data_engine.flywheel.linepages import truth_blocks
from data_engine.flywheel.patches import (BLOCK, CANVAS, LINE, cut_boxes, cut_text_layer, patch_canvas,
                                          read_patch_shard, render_page, write_patch_shard)
from data_engine.flywheel.reassemble import page_labels
from data_engine.labels import parse_fine_label
from data_engine.metrics import box_iou
from data_engine.render import extract_text
from data_engine.scripts import find_font

pytestmark = pytest.mark.skipif(find_font("NotoSansDevanagari-Regular.ttf") is None,
                                reason="Noto fonts missing (scripts/setup_fonts.sh)")


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    from test_flywheel_data import line_docs

    return line_docs(tmp_path_factory.mktemp("fwb"), seed=1, lines_per_block=(2, 4))


def _page(docs, key):
    path, gt = docs[key]
    page = pymupdf.open(path)[0]
    return page, render_page(page), gt["pages"][0]["blocks"]


def test_generator_sets_paragraphs_as_text_layer_blocks(docs):
    page, _, lines = _page(docs, ("eng-Latn", "digital"))
    blocks = truth_blocks(lines)
    assert len(blocks) < len(lines) and max(b["lines"] for b in blocks) >= 2
    fitz = [b for b in extract_text(page)["blocks"] if b.get("type", 0) == 0]
    assert len(fitz) == len(blocks)  # MuPDF returns each paragraph as one text block
    for b in blocks:  # each line's ink box is its own (measured with the other lines white)
        own = [ln for ln in lines if ln["block"] == lines_in(b["bbox"], lines)[0]["block"]]
        assert len(own) == b["lines"] and all(ln["bbox"][3] <= nxt["bbox"][1] for ln, nxt in zip(own, own[1:]))


def test_block_patches_match_ground_truth(docs):
    page, img, lines = _page(docs, ("eng-Latn", "digital"))
    truth = truth_blocks(lines)
    good, refused = cut_text_layer(page, img, doc_id="d", lang="eng", script="Latn", kinds=(BLOCK,))
    assert refused == [] and len(good) == len(truth)
    for p in good:
        t = max(truth, key=lambda t: box_iou(p.bbox, t["bbox"]))
        assert p.kind == BLOCK and "_b" in p.key and p.source == "textlayer"
        assert p.text == t["text"], (p.text, t["text"])
        assert p.text.count("\n") == t["lines"] - 1
        assert box_iou(p.bbox, t["bbox"]) > 0.7, (p.bbox, t["bbox"])
        assert match_block_truth(p.bbox, lines) == t["text"]


def test_block_with_a_garbled_line_is_cut_into_trusted_runs(docs):
    """Rule: a block keeps its runs of trusted lines as block patches; each run of untrusted
    lines is refused with the reason of its first bad line (and its box goes to the pool)."""
    page, img, lines = _page(docs, ("eng-Latn", "digital"))
    td = extract_text(page)
    target = max((b for b in td["blocks"] if b.get("type", 0) == 0), key=lambda b: len(b["lines"]))
    assert len(target["lines"]) >= 3
    middle = target["lines"][1]
    garbled_box = middle["bbox"]
    for span in middle["spans"]:  # a glyph without a ToUnicode entry, as MuPDF returns it
        span["chars"][0]["c"] = "\ufffd"
    good, refused = cut_text_layer(page, img, doc_id="d", lang="eng", script="Latn", kinds=(BLOCK,), text_dict=td)
    by_line = {r["kind"]: r for r in refused}
    assert set(by_line) == {LINE, BLOCK} and by_line[BLOCK]["reason"] == by_line[LINE]["reason"] == "bad_chars"
    assert by_line[BLOCK]["lines"] == 1 and box_iou(by_line[BLOCK]["bbox"], garbled_box) > 0.9
    block_lines = lines_in(target["bbox"], lines)
    runs = [p for p in good if box_iou(p.bbox, target["bbox"]) > 0 and lines_in(p.bbox, lines)[0] in block_lines]
    assert [p.text for p in runs] == [block_lines[0]["text"], "\n".join(ln["text"] for ln in block_lines[2:])]
    assert all("\ufffd" not in p.text for p in good)
    # the other blocks are untouched
    assert len(good) == len(truth_blocks(lines)) + 1


def test_devanagari_runs_hold_only_trusted_lines(docs):
    page, img, lines = _page(docs, ("hin-Deva", "digital"))
    runs = block_runs(extract_text(page), "Deva")
    assert {r["reason"] for r in runs} - {None} and any(r["reason"] is None for r in runs)
    good, _ = cut_text_layer(page, img, doc_id="d", lang="hin", script="Deva", kinds=(BLOCK,))
    assert len(good) == sum(r["reason"] is None for r in runs)
    exact = sum(p.text == match_block_truth(p.bbox, lines) for p in good)
    assert exact >= 0.8 * len(good), [(p.text, match_block_truth(p.bbox, lines)) for p in good]


def test_both_kinds_cut_no_duplicate_one_line_block(docs):
    page, img, _ = _page(docs, ("eng-Latn", "digital"))
    only_lines, _ = cut_text_layer(page, img, doc_id="d", lang="eng", script="Latn")
    only_blocks, _ = cut_text_layer(page, img, doc_id="d", lang="eng", script="Latn", kinds=(BLOCK,))
    both, _ = cut_text_layer(page, img, doc_id="d", lang="eng", script="Latn", kinds=(LINE, BLOCK))
    multi = [p for p in only_blocks if "\n" in p.text]
    assert len(both) == len(only_lines) + len(multi)
    assert len({p.key for p in both}) == len(both)


def test_detector_lines_grouped_into_blocks(docs):
    page, img, lines = _page(docs, ("eng-Latn", "scan"))
    boxes = [b.bbox for b in get_line_source("ppocr_det", threads=1).blocks(page, image=img)]
    truth = truth_blocks(lines)
    grouped = group_lines(boxes)
    assert len(grouped) == len(truth)
    for b in grouped:
        assert max(box_iou(b, t["bbox"]) for t in truth) > 0.7
    assert len(group_lines(boxes, min_lines=2)) == sum(t["lines"] >= 2 for t in truth) >= 1


def test_block_shard_canvas_and_acceptance(tmp_path, docs):
    page, img, lines = _page(docs, ("eng-Latn", "scan"))
    truth = truth_blocks(lines)
    patches = cut_boxes(img, page.rect, [t["bbox"] for t in truth], doc_id="doc", page=0, lang="eng", script="Latn",
                        source="gold", texts=[t["text"] for t in truth], kind=BLOCK)
    canvas = patch_canvas(patches[0].image, kind=BLOCK)
    assert canvas.size == (CANVAS, CANVAS)
    write_patch_shard(tmp_path / "b.tar", patches)
    back = list(read_patch_shard(tmp_path / "b.tar"))
    assert [(p.kind, p.text) for p in back] == [(BLOCK, t["text"]) for t in truth]
    cfg = AcceptConfig()
    p = next(p for p in patches if "\n" in p.text)
    # a block's label is judged per line: its newlines are line breaks, its length per line
    first = cut_boxes(img, page.rect, [lines_in(p.bbox, lines)[0]["bbox"]], doc_id="doc", page=0, lang="eng",
                      script="Latn", source="gold", texts=[lines_in(p.bbox, lines)[0]["text"]])[0]
    assert 0.5 < chars_per_height(p.text, p.bbox) / chars_per_height(first.text, first.bbox) < 2.0
    ok = dict(confidence=-0.1, finished=True, bbox=p.bbox, cfg=cfg)
    assert judge(p.text, script="Latn", **ok) is None
    assert judge(p.text + "\nनमस्ते दुनिया", script="Latn", **ok) == "wrong_script"


def test_reassembly_blocks_stand_for_their_lines(docs):
    page, img, lines = _page(docs, ("eng-Latn", "scan"))
    truth = truth_blocks(lines)
    multi = next(t for t in truth if t["lines"] >= 2)
    block = cut_boxes(img, page.rect, [multi["bbox"]], doc_id="doc", page=0, lang="eng", script="Latn",
                      source="detector", texts=[multi["text"]], kind=BLOCK)
    line_patches = cut_boxes(img, page.rect, [ln["bbox"] for ln in lines], doc_id="doc", page=0, lang="eng",
                             script="Latn", source="detector", texts=[ln["text"] for ln in lines])
    lab = page_labels(line_patches + block)[("doc", 0)]
    parsed = [b["text"] for b in parse_fine_label(lab["text"])]
    inside = {ln["text"] for ln in lines_in(multi["bbox"], lines)}
    assert multi["text"] in parsed and not inside & set(parsed)  # the block, not its lines again
    assert len(parsed) == len(lines) - len(inside) + 1  # every other line kept
    json.dumps(lab)


def test_prepare_data_blocks(tmp_path, docs):
    pdfs = tmp_path / "pdfs"
    (pdfs / "gold").mkdir(parents=True)
    for (spec, kind), (path, _) in docs.items():
        if spec == "eng-Latn":
            dest = (pdfs / "gold" if kind == "scan" else pdfs) / f"eng_Latn_{kind}_0000.pdf"
            dest.write_bytes(path.read_bytes())
            dest.with_suffix(".gt.json").write_bytes(path.with_suffix(".gt.json").read_bytes())
    counts = prepare_data(tmp_path / "data", {"eng-Latn": {}}, pdf_dir=pdfs, detector=None, kinds=(BLOCK,),
                          tokenizer_vocab=300, log=lambda m: None)
    c = counts["eng-Latn"]
    assert c["by_kind"] == {BLOCK: {"seed": c["seed"], "pool": 0, "gold": c["gold"], "calib": 0, "gold_unseen": 0}} \
        and c["seed"] > 0
    assert c["seed_label_cer"] == 0.0 and c["gold"] == len(truth_blocks(docs[("eng-Latn", "scan")][1]["pages"][0]["blocks"]))
    seed = list(read_patch_shard(tmp_path / "data" / "seed" / "eng_Latn.tar"))
    assert all(p.kind == BLOCK for p in seed) and any("\n" in p.text for p in seed)
    with pytest.raises(ValueError, match="flywheel.patches changed"):
        prepare_data(tmp_path / "data", {"eng-Latn": {}}, pdf_dir=pdfs, detector=None, kinds=(LINE,))
