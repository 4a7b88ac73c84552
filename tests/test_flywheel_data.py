"""Flywheel data side (torch-free): line pages, per-line trust, patch cutting against the
generator's ground truth, the PP-OCRv4 detector on an image-only page, acceptance filters,
patch shards and page-level reassembly."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pymupdf
from PIL import Image
import pytest

from data_engine.flywheel.accept import AcceptConfig, calibrate, cer_bound, judge, loop_span
from data_engine.flywheel.collage import refused_line_words
from data_engine.flywheel.dataset import split_calibration
from data_engine.flywheel.detect import PPOCR_DET_FILE, find_ppocr_det_model, get_line_source
from data_engine.flywheel.linepages import LineLanguage, make_line_document
from data_engine.flywheel.patches import (CANVAS, ROW, Patch, cut_boxes, cut_text_layer, patch_canvas, read_patch_shard,
                                          render_page, write_patch_shard)
from data_engine.flywheel.reassemble import page_labels
from data_engine.flywheel.trust import line_problem
from data_engine.labels import parse_fine_label
from data_engine.metrics import box_iou
from data_engine.scripts import find_font

pytestmark = pytest.mark.skipif(find_font("NotoSansDevanagari-Regular.ttf") is None,
                                reason="Noto fonts missing (scripts/setup_fonts.sh)")


def line_docs(d: Path, seed: int, **kw) -> dict:
    """One-page line documents {(lang, kind): (pdf path, ground truth)}: born-digital Latin and
    Devanagari, image-only Latin (``kw``: more ``make_line_document`` settings)."""
    out = {}
    for spec, kind in (("eng-Latn", "digital"), ("hin-Deva", "digital"), ("eng-Latn", "scan")):
        path = d / f"{spec}_{kind}.pdf"
        out[(spec, kind)] = (path, make_line_document(LineLanguage.parse(spec), path, kind=kind, n_pages=1,
                                                      seed=seed, **kw))
    return out


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    return line_docs(tmp_path_factory.mktemp("fw"), seed=3)


def _match(box, truth):
    best = max(truth, key=lambda t: box_iou(box, t["bbox"]))
    return best, box_iou(box, best["bbox"])


def test_text_layer_patches_match_ground_truth(docs):
    path, gt = docs[("eng-Latn", "digital")]
    page = pymupdf.open(path)[0]
    truth = gt["pages"][0]["blocks"]
    good, refused = cut_text_layer(page, render_page(page), doc_id="d", lang="eng", script="Latn")
    assert refused == [] and len(good) == len(truth) >= 5
    for p in good:
        t, iou = _match(p.bbox, truth)
        assert p.text == t["text"], (p.text, t["text"])
        assert iou > 0.6, (p.bbox, t["bbox"])
        assert p.image.width > 3 * p.image.height  # a line crop, not a block


def test_garbled_lines_refused_per_line_good_lines_kept(docs):
    path, gt = docs[("hin-Deva", "digital")]
    page = pymupdf.open(path)[0]
    truth = gt["pages"][0]["blocks"]
    good, refused = cut_text_layer(page, render_page(page), doc_id="d", lang="hin", script="Deva")
    assert refused, "pseudo-Devanagari with conjuncts should garble some text-layer lines"
    assert good, "one garbled line must not cost the page's good lines"
    assert {r["reason"] for r in refused} <= {"bad_chars", "wrong_script", "invalid_sequence"}
    for r in refused:  # a refused line really is wrong
        assert r["text"] != _match(r["bbox"], truth)[0]["text"]
    exact = sum(p.text == _match(p.bbox, truth)[0]["text"] for p in good)
    assert exact >= 0.8 * len(good), [(p.text, _match(p.bbox, truth)[0]["text"]) for p in good]



def test_refused_lines_give_their_trustworthy_words(tmp_path):
    # ten Devanagari pages: the words that pass the trust check on their own, cut from the
    # refused lines for collage lines, against the generator's words (the text layer's word count
    # matching the truth's, so that words align by position)
    right = wrong = words = 0
    for seed in range(10):
        path = tmp_path / f"hin_{seed}.pdf"
        gt = make_line_document(LineLanguage.parse("hin-Deva"), path, kind="digital", n_pages=1, seed=seed)
        page = pymupdf.open(path)[0]
        truth = gt["pages"][0]["blocks"]
        _, refused = cut_text_layer(page, render_page(page), doc_id="d", lang="hin", script="Deva")
        page_words = page.get_text("words")
        for r in refused:
            line = Patch("k", "d", 0, tuple(r["bbox"]), "hin", "Deva", "textlayer_box")
            t = _match(r["bbox"], truth)[0]["text"].split(" ")
            inside = [w for w in page_words if r["bbox"][1] <= (w[1] + w[3]) / 2 <= r["bbox"][3]]
            if len(inside) != len(t):
                continue
            got = refused_line_words(line, page_words)
            words += len(t)
            order = sorted(inside, key=lambda w: w[0])
            for x0, _, text in got:
                i = next(i for i, w in enumerate(order) if w[0] == x0)
                right, wrong = right + (text == t[i]), wrong + (text != t[i])
    assert right >= 0.5 * words, (right, wrong, words)  # most words of a refused line are usable
    assert wrong <= 0.01 * (right + wrong), (right, wrong)  # and the ones taken are right


def test_trust_and_script_checks():
    assert line_problem("hello world", "Latn") is None
    assert line_problem("नमस्ते दुनिया", "Deva") is None
    assert line_problem("ɟ ताब नम×ते", "Deva") == "wrong_script"  # what MuPDF extracts for "किताब नमस्ते"
    assert line_problem("नम×ते", "Deva") == "invalid_sequence"
    assert line_problem("ि कताब", "Deva") == "invalid_sequence"  # a vowel sign opening a word
    # unmapped conjunct glyphs at a word's edge (MuPDF's text of the embedded default's pages)
    for garbled in ("·पुद", "णो½झछे", "¾नऑ", "×ख"):
        assert line_problem(f"कताब {garbled}", "Deva") == "invalid_sequence", garbled
    assert line_problem("नमस्ते। दुनिया, 5 × 3", "Deva") is None  # punctuation, and symbols between numbers
    assert line_problem("x² + y²", "Latn") is None  # an exact script keeps its symbols
    assert line_problem("ङ\ufffd छरैटं", "Deva") == "bad_chars"
    assert line_problem(" . ", "Latn") == "empty"


def test_detector_on_image_only_page(docs):
    path, gt = docs[("eng-Latn", "scan")]
    page = pymupdf.open(path)[0]
    assert page.get_text().strip() == ""  # image-only
    blocks = get_line_source("ppocr_det", threads=1).blocks(page)
    truth = gt["pages"][0]["blocks"]
    hits = [_match(b.bbox, truth)[1] for b in blocks]
    assert len(blocks) == len(truth)
    assert min(hits) > 0.5, hits


def test_missing_detector_model_names_file_and_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx.*rapidocr-onnxruntime==1\.4\.4"):
        find_ppocr_det_model(tmp_path / "nope.onnx")
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)  # package absent
    with pytest.raises(FileNotFoundError, match=PPOCR_DET_FILE):
        get_line_source("ppocr_det")


def test_acceptance_filters_give_reasons():
    cfg = AcceptConfig()
    box = (0, 0, 200, 20)  # 10 heights wide
    ok = dict(confidence=-0.1, finished=True, bbox=box, cfg=cfg)
    assert judge("abc defg hij", script="Latn", **ok) is None
    assert loop_span("ab ab ab ab ab ab") >= 12
    assert judge("ab ab ab ab ab ab ab ab", script="Latn", **ok) == "repetition"
    assert judge("नमस्ते दुनिया", script="Latn", **ok) == "wrong_script"
    assert judge("abc defg hij", script="Deva", **ok) == "wrong_script"
    assert judge("", script="Latn", **ok) == "empty"
    assert judge("abc defg", script="Latn", **{**ok, "finished": False}) == "unfinished"
    assert judge("abc defg hij", script="Latn", **{**ok, "confidence": -2.0}) == "low_confidence"
    assert judge("a", script="Latn", **ok) == "length_mismatch"  # 1 char over 10 heights
    assert judge("abc defg hij", script="Latn", length_bounds=(3.0, 5.0), **ok) == "length_mismatch"



def test_calibrated_threshold_reaches_target_cer_on_held_out_lines():
    # (confidence, truth, read): the confident reads are right, the unsure ones wrong
    good = [(-0.05 * i, "abcdefghij", "abcdefghij") for i in range(6)]
    bad = [(-1.0 - 0.1 * i, "abcdefghij", "xyzxyzxyzx") for i in range(6)]
    cal = calibrate(good + bad, target_cer=0.10, min_lines=8)
    assert cal["status"] == "calibrated" and cal["threshold"] == -0.25  # the 6th good read, none of the bad
    assert cal["cer_at_threshold"] == 0.0 and cal["share"] == 0.5
    # one wrong character among the three most confident lines (1 / 30) stays under 10 %
    mixed = [(-0.1, "abcdefghij", "abcdefghiX"), (-0.2, "abcdefghij", "abcdefghij"), (-0.3, "abcdefghij", "abcdefghij")]
    assert calibrate(mixed + bad, 0.10, 8)["threshold"] == -0.3
    assert calibrate(bad + [(-0.5, "abcdefghij", "abcdefghij")], 0.10, 5)["status"] == "unreachable"
    assert calibrate(good[:4], 0.10, 8)["status"] == "too_few"
    # equal confidences are accepted together: the boundary cannot fall inside a tie
    tie = [(-0.1, "abcdefghij", "abcdefghij")] * 3 + [(-0.1, "abcdefghij", "xyzxyzxyzx")] * 3
    assert calibrate(tie, 0.10, 5)["status"] == "unreachable"
    # with a bound: the CER plus z standard errors over the lines must reach the target
    assert cer_bound([(0, 10), (2, 10)], 0.0) == 0.1 and abs(cer_bound([(0, 10), (2, 10)], 1.0) - 0.2) < 1e-9
    noisy = good + [(-0.3 - 0.01 * i, "abcdefghij", "abcdeXXXXX" if i % 3 == 0 else "abcdefghij") for i in range(6)]
    plain, bounded = calibrate(noisy, 0.10, 8), calibrate(noisy, 0.10, 8, z=1.0)
    assert plain["share"] == 1.0 and plain["cer_at_threshold"] == 0.0833  # 10 errors in 120 characters
    assert bounded["status"] == "calibrated" and bounded["share"] < 1.0 and bounded["cer_bound"] <= 0.10
    # the calibrated threshold, not the fixed one, decides low_confidence
    cfg, ok = AcceptConfig(), dict(finished=True, bbox=(0, 0, 200, 20), script="Latn")
    assert judge("abc defg hij", confidence=-0.5, cfg=cfg, **ok) == "low_confidence"  # fixed -0.35
    assert judge("abc defg hij", confidence=-0.5, cfg=cfg, min_confidence=-0.6, **ok) is None
    assert judge("abc defg hij", confidence=-0.01, cfg=cfg, min_confidence=float("inf"), **ok) == "low_confidence"


def test_calibration_split_holds_out_whole_documents():
    seed = [Patch(key=f"d{d}_{i}", doc_id=f"doc{d}", page=0, bbox=(0, 0, 1, 1), lang="eng", script="Latn",
                  source="textlayer", text="x") for d in range(10) for i in range(5)]
    train, held = split_calibration(seed, 8)
    held_docs = {p.doc_id for p in held}
    assert len(held) == 10  # two documents: the first reaching 8 lines, within a quarter of 50
    assert held_docs.isdisjoint({p.doc_id for p in train}) and len(train) + len(held) == len(seed)
    assert split_calibration(seed, 8) == (train, held)  # a fixed order: the same split every run
    # few seeds: never more than a quarter held out (here one document is half of them)
    assert split_calibration(seed[:10], 12) == (seed[:10], [])
    assert split_calibration(seed, 0) == (seed, [])


def test_unseen_word_pages_share_no_word_with_the_training_lexicon(tmp_path):
    import random

    from data_engine.flywheel.dataset import generate_default_corpus
    from data_engine.flywheel.linepages import UNSEEN, Vocabulary, lexicon, make_line

    for script in ("Latn", "Deva"):
        for size in (300, 1000):
            train, unseen = set(Vocabulary(size).words(script)), set(Vocabulary(size, UNSEEN).words(script))
            assert len(train) == size and len(unseen) > 0.8 * size and not train & unseen
    # the default vocabulary is the lexicon lines always drew from: existing corpora are unchanged
    rng_a, rng_b = random.Random(5), random.Random(5)
    words = lexicon("Latn")
    assert make_line(rng_a, "Latn") == " ".join(rng_b.choice(words) for _ in range(rng_b.randint(2, 4)))
    # a run directory's pages keep their lexicon size and word source: another one is refused
    plan = {"eng-Latn": {"digital": 0, "scan": 0, "gold": 0}, "khm-Khmr": {}}
    generate_default_corpus(tmp_path / "pdfs", plan, 1, 0, lexicon_size=500, words="wordfreq")
    assert json.loads((tmp_path / "pdfs" / "CORPUS.json").read_text()) == {
        "lexicon_size": 500, "words": "wordfreq", "real_words": ["eng-Latn"], "pool_words": "seed"}  # no Khmer in wordfreq
    generate_default_corpus(tmp_path / "pdfs", plan, 1, 0, lexicon_size=500, words="wordfreq")  # the same: fine
    with pytest.raises(ValueError, match="500-word lexicons of wordfreq words .pool: seed words., not flywheel.lexicon_size=300"):
        generate_default_corpus(tmp_path / "pdfs", plan, 1, 0)


def test_pages_to_label_can_hold_words_of_their_own(tmp_path):
    """flywheel.pool_words=own: the image-only pages to label draw from words none of the seed's
    or the unseen-word gold's (documents to label hold words the seed never had); the seed pages
    are those of the default corpus, page for page; the setting is recorded and checked."""
    from data_engine.flywheel.dataset import generate_default_corpus
    from data_engine.flywheel.linepages import POOL, UNSEEN, Vocabulary

    plan = {"hin-Deva": {"digital": 1, "scan": 2}}
    generate_default_corpus(tmp_path / "own", plan, 1, 0, lexicon_size=3000, words="wordfreq", pool_words="own")
    generate_default_corpus(tmp_path / "seed", plan, 1, 0, lexicon_size=3000, words="wordfreq")
    train = set(Vocabulary(3000, 0, "wordfreq").words("Deva", "hin"))
    unseen = set(Vocabulary(3000, UNSEEN, "wordfreq").words("Deva", "hin"))
    pool = set(Vocabulary(3000, POOL, "wordfreq").words("Deva", "hin"))
    assert len(pool) > 2000 and not pool & (train | unseen)

    def words(path):
        gt = json.loads(path.read_text(encoding="utf-8"))
        return [w for pg in gt["pages"] for b in pg["blocks"] for w in b["text"].split()]

    scan = [w for i in range(2) for w in words(tmp_path / "own" / f"hin_Deva_scan_{i:04d}.gt.json")]
    assert len(scan) >= 20 and set(scan) <= pool
    assert set(words(tmp_path / "seed" / "hin_Deva_scan_0000.gt.json")) <= train
    same = "hin_Deva_digital_0000.gt.json"
    assert (tmp_path / "own" / same).read_text() == (tmp_path / "seed" / same).read_text()
    assert json.loads((tmp_path / "own" / "CORPUS.json").read_text())["pool_words"] == "own"
    with pytest.raises(ValueError, match="pool: own words"):
        generate_default_corpus(tmp_path / "own", plan, 1, 0, lexicon_size=3000, words="wordfreq")


def test_real_words_split_and_letter_ranges():
    """Real words (wordfreq) of each language's script, a fixed word split for the unseen-word
    gold, pseudo-words as the fallback, and the pseudo-word letter ranges checked."""
    import unicodedata

    from data_engine.flywheel.linepages import UNSEEN, Vocabulary, lexicon
    from data_engine.flywheel.trust import char_script
    from data_engine.flywheel.words import held_out, real_words
    from data_engine.scripts import SCRIPTS, letters

    for lang, script in (("eng", "Latn"), ("hin", "Deva"), ("arb", "Arab"), ("rus", "Cyrl"), ("ell", "Grek")):
        train, unseen = Vocabulary(3000, 0, "wordfreq"), Vocabulary(3000, UNSEEN, "wordfreq")
        assert train.real(lang, script)
        seen_w, unseen_w = set(train.words(script, lang)), set(unseen.words(script, lang))
        assert not seen_w & unseen_w and 0.08 < len(unseen_w) / len(real_words(lang, script, 3000)) < 0.17
        assert all(held_out(w) for w in unseen_w) and not any(held_out(w) for w in seen_w)
        assert all(unicodedata.is_normalized("NFC", w) and char_script(w[0]) == script for w in seen_w)
        assert "\u0640" not in "".join(seen_w)  # no tatweel
    greek = real_words("ell", "Grek", 3000)
    assert "της" in greek and "τησ" not in greek  # the final sigma written as text has it
    assert any("\u094d" in w for w in real_words("hin", "Deva", 3000))  # conjuncts: real Hindi has them
    assert not Vocabulary(3000, 0, "wordfreq").real("khm", "Khmr")  # not in wordfreq: pseudo-words
    assert Vocabulary(300, 0, "wordfreq").words("Khmr", "khm") == lexicon("Khmr")
    assert not [c for script in SCRIPTS for c in letters(script) if unicodedata.category(c) == "Lm"]  # e.g. tatweel
    for script in ("Latn", "Cyrl", "Grek", "Arab", "Hebr", "Deva", "Beng", "Taml", "Thai", "Khmr"):
        assert {char_script(c) for c in letters(script)} == {script}  # the pseudo-words' ranges hold its letters


def test_canvas_rows_and_patch_shard_roundtrip(tmp_path, docs):
    path, gt = docs[("eng-Latn", "scan")]
    page = pymupdf.open(path)[0]
    img = render_page(page)
    truth = gt["pages"][0]["blocks"]
    patches = cut_boxes(img, page.rect, [b["bbox"] for b in truth], doc_id="doc", page=0, lang="eng",
                        script="Latn", source="gold", texts=[b["text"] for b in truth], source_path=str(path))
    canvas = patch_canvas(patches[0].image)
    assert canvas.size == (CANVAS, CANVAS)
    ink_rows = [y for y in range(CANVAS) if min(canvas.getpixel((x, y))[0] for x in range(0, CANVAS, 2)) < 128]
    assert ink_rows and ink_rows[0] % ROW != 0  # glyphs sit inside a row, with a margin
    assert all(y % ROW not in (0, ROW - 1) for y in ink_rows)  # no glyph straddles a token row
    # one scale for every line: a short crop and a long one (the same line twice) are set at
    # the same height, the long one wrapped onto more rows
    def rows_and_height(im):
        c = patch_canvas(im)
        ink = [y for y in range(CANVAS) if min(c.getpixel((x, y))[0] for x in range(0, CANVAS, 2)) < 128]
        rows = {y // ROW for y in ink}
        return len(rows), max(max(y for y in ink if y // ROW == r) - min(y for y in ink if y // ROW == r) for r in rows)
    crop = patches[0].image
    double = Image.new("RGB", (crop.width * 2, crop.height), "white")
    double.paste(crop, (0, 0)); double.paste(crop, (crop.width, 0))
    (r1, h1), (r2, h2) = rows_and_height(crop), rows_and_height(double)
    assert r2 > r1 and h1 == h2 < ROW
    # a loose box (a text-layer line box carries the font's ascent and descent) shows the text
    # at the same size as a box hugging the ink (detector, ground truth)
    loose = Image.new("RGB", (crop.width + 20, crop.height * 2), "white")
    loose.paste(crop, (10, crop.height // 2))
    assert rows_and_height(loose) == rows_and_height(crop)
    wide = patch_canvas(crop, stretch=2.0)  # stretch widens: more ink columns or rows
    ink_px = lambda im: sum(v < 128 for v in im.convert("L").getdata())  # noqa: E731
    assert ink_px(wide) > 1.5 * ink_px(patch_canvas(crop))
    with pytest.raises(ValueError, match="multiple of the token row"):
        patch_canvas(crop, size=300)
    n = write_patch_shard(tmp_path / "p.tar", patches)
    back = list(read_patch_shard(tmp_path / "p.tar"))
    assert n == len(back) == len(patches)
    assert [(p.key, p.text, p.bbox) for p in back] == [(p.key, p.text, tuple(round(v, 2) for v in p.bbox))
                                                       for p in sorted(patches, key=lambda p: p.key)]
    assert back[0].image.size == patches[0].image.size  # the crop travels with the canvas


def test_reassembled_page_fine_label(docs):
    path, gt = docs[("eng-Latn", "scan")]
    page = pymupdf.open(path)[0]
    truth = gt["pages"][0]["blocks"]
    patches = cut_boxes(render_page(page), page.rect, [b["bbox"] for b in truth][::-1], doc_id="doc", page=0,
                        lang="eng", script="Latn", source="detector", texts=[b["text"] for b in truth][::-1])
    labels = page_labels(patches)
    lab = labels[("doc", 0)]
    parsed = parse_fine_label(lab["text"])
    assert [b["text"] for b in parsed] == [b["text"] for b in truth]  # reading order restored
    assert all(0 <= v <= 999 for b in parsed for v in b["bbox"])
    json.dumps(lab)  # serialisable into the shard's json member


def test_flywheel_data_side_is_torch_free():
    import subprocess

    code = ("import sys; import data_engine.flywheel.dataset, data_engine.flywheel.detect, "
            "data_engine.flywheel.accept, data_engine.flywheel.baseline; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def test_tesseract_baseline_reads_a_latin_line(docs):
    from data_engine.flywheel.baseline import availability, read_line
    from data_engine.metrics import corpus_cer

    code, why = availability("eng")
    if code is None:
        pytest.skip(why)
    path, gt = docs[("eng-Latn", "scan")]
    page = pymupdf.open(path)[0]
    truth = gt["pages"][0]["blocks"][:3]
    patches = cut_boxes(render_page(page), page.rect, [b["bbox"] for b in truth], doc_id="d", page=0, lang="eng",
                        script="Latn", source="gold", texts=[b["text"] for b in truth])
    assert corpus_cer((p.text, read_line(p.image, "eng")) for p in patches) < 0.2
    assert availability("xyz")[0] is None and "tesseract-ocr-xyz" in availability("xyz")[1]


def test_real_words_are_shaped_and_the_text_layer_garbles_them_as_real_pdfs(tmp_path):
    """MuPDF's HTML engine shapes with HarfBuzz: Hindi conjuncts become glyphs without a Unicode
    mapping (U+FFFD in the text layer: those lines are refused), Arabic letters take their joining
    forms (extracted as presentation forms U+FExx, which the text-layer path turns into base
    letters, NFC); trusted lines then equal the ground truth."""
    from data_engine.flywheel.linepages import Vocabulary, make_line_document

    if find_font("NotoNaskhArabic-Regular.ttf") is None:
        pytest.skip("Noto Naskh Arabic missing (scripts/setup_fonts.sh)")
    words = Vocabulary(3000, 0, "wordfreq")
    for spec, rtl in (("hin-Deva", False), ("arb-Arab", True)):
        lang = LineLanguage.parse(spec)
        gt = make_line_document(lang, tmp_path / f"{spec}.pdf", seed=3, vocab=words)
        assert gt["pseudo_text"] is False
        page = pymupdf.open(tmp_path / f"{spec}.pdf")[0]
        raw = "".join(chr(c[0]) for sp in page.get_texttrace() for c in sp["chars"] if c[0] > 0)
        good, bad = cut_text_layer(page, render_page(page), doc_id="d", lang=lang.lang, script=lang.script, rtl=rtl)
        truth = [b["text"] for b in gt["pages"][0]["blocks"]]
        assert good and bad and all(p.text in truth for p in good)
        if spec == "hin-Deva":
            assert "\ufffd" in raw and any("\u094d" in t for t in truth)  # conjunct glyphs, unmapped
        else:  # joining forms in the raw text layer, base letters (U+06xx) in the labels
            assert any("\ufe70" <= c <= "\ufeff" for c in raw)
            assert not any("\ufb50" <= c <= "\ufeff" for p in good for c in p.text)


def test_presentation_forms_become_base_letters_in_refused_line_words():
    from data_engine.flywheel.collage import refused_line_words
    from data_engine.flywheel.patches import Patch
    from data_engine.flywheel.trust import base_text

    assert base_text("\ufefb\ufe8e") == "\u0644\u0627\u0627"  # lam-alef ligature + alef final form
    assert base_text("x\u00b2 \uff21") == "x\u00b2 \uff21"  # NFKC only for the presentation-form ranges
    line = Patch("k", "d", 0, (0, 0, 100, 20), "arb", "Arab", "textlayer_box")
    words = [(10, 5, 40, 15, "\ufee3\ufeb8\ufe98\ufeae\ufedb", 0, 0, 0), (50, 5, 90, 15, "\ufec3\ufeee\ufef2", 0, 0, 1)]
    assert [w[2] for w in refused_line_words(line, words)] == ["\u0645\u0634\u062a\u0631\u0643", "\u0637\u0648\u064a"]


def test_drawn_seed_lines_hold_shaped_glyphs_and_calibration_is_cut_like_the_pool(tmp_path):
    """The text layer never gives Devanagari's pre-base matra or a conjunct (U+FFFD), so the
    generator draws seed lines of training words that hold them (``drawn/``), labelled with the
    text drawn and counted apart from the text layer's; never a held-out word. Calibration pages
    (``calib/``) are cut as the pool is (refused text-layer boxes, detector lines) and scored
    against their truth; no calibration line is a seed line."""
    from data_engine.flywheel.dataset import generate_default_corpus, prepare_data
    from data_engine.flywheel.linepages import shaped_signs
    from data_engine.flywheel.words import held_out

    if not Path(find_ppocr_det_model()).is_file():
        pytest.skip("PP-OCRv4 detector missing (rapidocr-onnxruntime)")
    plan = {"hin-Deva": {"digital": 1, "scan": 0, "gold": 0, "drawn": 1, "calib": 1},
            "eng-Latn": {"digital": 1, "scan": 0, "gold": 0, "drawn": 1, "calib": 0}}
    generate_default_corpus(tmp_path / "pdfs", plan, 1, 0, lexicon_size=3000, words="wordfreq")
    assert not list((tmp_path / "pdfs" / "drawn").glob("eng_*.pdf"))  # Latin has no shaped signs
    counts = prepare_data(tmp_path / "data", plan, pdf_dir=tmp_path / "pdfs", detector=get_line_source("ppocr_det"),
                          calibration_lines=32, log=lambda *_: None)
    hin = counts["hin-Deva"]
    assert hin["seed_by_source"]["drawn text"] > 0 and hin["seed_by_source"]["text layer"] >= 0
    assert hin["seed"] == hin["seed_by_source"]["drawn text"] + hin["seed_by_source"]["text layer"]
    seed = list(read_patch_shard(tmp_path / "data" / "seed" / "hin_Deva.tar", images=False))
    drawn = [p for p in seed if p.source == "drawn"]
    assert len(drawn) == hin["seed_by_source"]["drawn text"]
    assert all(shaped_signs("Deva").intersection(w) for p in drawn for w in p.text.split())
    assert any("\u093f" in p.text for p in drawn) and any("\u094d" in p.text for p in drawn)
    assert not any(held_out(w) for p in seed for w in p.text.split())  # no unseen-word gold word
    text_layer = [p for p in seed if p.source != "drawn"]
    assert not any(c in p.text for p in text_layer for c in "\u093f\ufffd")  # what the text layer refuses
    calib = list(read_patch_shard(tmp_path / "data" / "calib" / "hin_Deva.tar", images=False))
    assert hin["calib_from"] == "calib pages cut like the pool" and calib
    assert {p.source for p in calib} == {"textlayer_box", "detector"} and all(p.text for p in calib)
    assert not {p.doc_id for p in calib} & {p.doc_id for p in seed}
    assert all("\ufffd" in p.extra["text_layer"] for p in calib if p.source == "textlayer_box")  # what labels must fit
    assert counts["eng-Latn"]["calib_from"] == "held-out seed documents"  # no calib pages: the old split


def test_label_of_a_refused_line_must_fit_its_garbled_text_layer():
    """A refused line's text layer is wrong only at its garbled glyphs: a label that drops or
    changes an intact letter is rejected (``text_layer_mismatch``), whatever its confidence."""
    from data_engine.flywheel.trust import fits_text_layer

    garbled = "रोग बनना टाइ\ufffdस \ufffdांड"  # MuPDF's text of रोग बनना टाइम्स ब्रांड
    assert fits_text_layer("रोग बनना टाइम्स ब्रांड", garbled, "Deva")
    assert not fits_text_layer("रोग बना टाइम्स ब्रांड", garbled, "Deva")  # a letter of बनना dropped
    assert not fits_text_layer("रोग बनना टाइस ब्रांड", garbled, "Deva")  # the conjunct's glyph left out
    assert fits_text_layer("ab¾cd", "ab¾cd", "Latn") and not fits_text_layer("abxd", "abcd", "Latn")
    ok = dict(confidence=0.0, finished=True, bbox=(0, 0, 300, 20), script="Deva", cfg=AcceptConfig(),
              length_bounds=(0.0, 99.0))
    assert judge("रोग बना टाइम्स ब्रांड", text_layer=garbled, **ok) == "text_layer_mismatch"
    assert judge("रोग बनना टाइम्स ब्रांड", text_layer=garbled, **ok) is None
    assert judge("रोग बना टाइम्स ब्रांड", **ok) is None  # a scan's line has no text layer to fit
