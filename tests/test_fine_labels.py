"""Fine-label defect classes found on real PDFs, each on a small PDF made here; the PicoDet
layout source; and the engine report on a mixed Japanese/Latin document."""

from __future__ import annotations

import json

import pymupdf
import pytest

from data_engine.layout import check_layout_config, get_layout_source
from data_engine.layout.textlayer import TextLayerLayout, join_lines, table_from_words

BODY = "The engine reads every page of a document and keeps its text in reading order for training. "


def _doc():
    doc = pymupdf.open()
    return doc, doc.new_page()


def _reload(doc):
    return pymupdf.open("pdf", doc.tobytes())


def _rules():
    return TextLayerLayout(find_tables=False)


@pytest.fixture(scope="module")
def picodet():
    try:
        return get_layout_source("picodet")
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_title_over_two_lines_is_one_title():
    doc, page = _doc()
    page.insert_text((72, 90), "Optical Compression of Long", fontname="hebo", fontsize=20)
    page.insert_text((72, 114), "Document Contexts", fontname="hebo", fontsize=20)
    page.insert_textbox(pymupdf.Rect(72, 150, 523, 400), BODY * 8, fontname="helv", fontsize=10)
    blocks = _rules().blocks(_reload(doc)[0])
    titles = [b for b in blocks if b.label in ("title", "sub_title")]
    assert [(b.label, b.text) for b in titles] == [("title", "Optical Compression of Long Document Contexts")]


def test_bold_heading_at_body_size_and_bullets_without_space():
    doc, page = _doc()
    page.insert_textbox(pymupdf.Rect(72, 72, 523, 150), BODY * 3, fontname="helv", fontsize=10)
    page.insert_text((72, 180), "Related work", fontname="hebo", fontsize=10)
    page.insert_textbox(pymupdf.Rect(72, 200, 523, 280), BODY * 3, fontname="helv", fontsize=10)
    page.insert_font(fontname="F0", fontbuffer=pymupdf.Font("cjk").buffer)
    page.insert_text((72, 320), "\u2022First item of the list", fontname="F0", fontsize=10)
    labels = {b.text: b.label for b in _rules().blocks(_reload(doc)[0])}
    assert labels["Related work"] == "sub_title"
    assert labels["\u2022First item of the list"] == "list"


def test_hyphenated_line_ends_are_joined():
    assert join_lines(["models are super-", "vised on pages"]) == "models are supervised on pages"
    assert join_lines(["a well-", "Known case"]) == "a well- Known case"  # not a lower-case continuation
    doc, page = _doc()
    page.insert_text((72, 100), "The recognizer is super-", fontname="helv", fontsize=10)
    page.insert_text((72, 112), "vised on rendered pages.", fontname="helv", fontsize=10)
    blocks = _rules().blocks(_reload(doc)[0])
    assert any("is supervised on" in b.text for b in blocks)


def test_table_cells_keep_their_text():
    doc, page = _doc()
    rows = [["Model", "CER delta", "Pages"], ["base", "-0,41", "1 200"], ["large", "+12,5", "830"]]
    for i, row in enumerate(rows):
        for j, cell in enumerate(row):
            page.insert_text((100 + 120 * j, 120 + 20 * i), cell, fontname="helv", fontsize=10)
    for i in range(4):
        page.draw_line((95, 106 + 20 * i), (445, 106 + 20 * i))
    html = table_from_words(_reload(doc)[0], pymupdf.Rect(90, 100, 450, 170))
    assert html == ("<table><tr><td>Model</td><td>CER delta</td><td>Pages</td></tr>"
                    "<tr><td>base</td><td>-0,41</td><td>1 200</td></tr>"
                    "<tr><td>large</td><td>+12,5</td><td>830</td></tr></table>")


def _chart_page(doc, page):
    """Body text, a vector bar chart with tick labels and a title drawn inside it, its caption."""
    page.insert_textbox(pymupdf.Rect(72, 72, 523, 200), BODY * 5, fontname="helv", fontsize=10)
    x0, y0, x1, y1 = 150, 230, 450, 430
    page.draw_line((x0, y1), (x1, y1))
    page.draw_line((x0, y0), (x0, y1))
    for i, h in enumerate([120, 80, 160, 60, 140]):
        page.draw_rect(pymupdf.Rect(x0 + 20 + i * 55, y1 - h, x0 + 55 + i * 55, y1), color=(0, 0, 1), fill=(0.3, 0.5, 0.9))
        page.insert_text((x0 + 25 + i * 55, y1 + 12), f"Q{i + 1}", fontname="helv", fontsize=8)
    for j in range(5):
        page.insert_text((x0 - 22, y1 - j * 40 + 3), f"{j * 40}", fontname="helv", fontsize=8)
    page.insert_text((x0 + 60, y0 - 6), "Revenue per quarter", fontname="helv", fontsize=8)
    page.insert_textbox(pymupdf.Rect(72, 450, 523, 480), "Figure 1: Revenue per quarter of the year, in thousands.",
                        fontname="helv", fontsize=9)
    page.insert_textbox(pymupdf.Rect(72, 490, 523, 600), BODY * 3, fontname="helv", fontsize=10)
    return _reload(doc)[0]


def test_vector_chart_is_one_figure_with_its_caption(picodet):
    page = _chart_page(*_doc())
    blocks = picodet.blocks(page)
    labels = [b.label for b in blocks]
    assert labels.count("image") == 1
    assert [b.text for b in blocks if b.label == "image_caption"] == ["Figure 1: Revenue per quarter of the year, in thousands."]
    texts = " ".join(b.text for b in blocks)
    assert "Q3" not in texts and "Revenue per quarter Q" not in texts  # chart labels are not text boxes
    # the rules alone (no detector) turn the chart's labels into text boxes
    assert any("Q3" in b.text for b in _rules().blocks(page) if b.label != "image")


def test_text_inside_a_raster_figure_is_not_a_caption():
    doc, page = _doc()
    page.insert_textbox(pymupdf.Rect(72, 72, 523, 160), BODY * 3, fontname="helv", fontsize=10)
    pix = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 64, 48), 0)
    pix.clear_with(200)
    page.insert_image(pymupdf.Rect(150, 180, 450, 400), pixmap=pix)
    page.insert_text((170, 300), "axis label", fontname="heit", fontsize=8)  # small italic, inside the figure
    page.insert_textbox(pymupdf.Rect(72, 410, 523, 440), "Figure 2: A raster figure.", fontname="helv", fontsize=9)
    blocks = _rules().blocks(_reload(doc)[0])
    assert "axis label" not in [b.text for b in blocks]
    assert ("image_caption", "Figure 2: A raster figure.") in [(b.label, b.text) for b in blocks]


def test_picodet_needs_its_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="layout_cdla.onnx"):
        check_layout_config("picodet", model_path=str(tmp_path / "missing.onnx"))
    with pytest.raises(TypeError):
        check_layout_config("picodet", bandd=0.1)


def test_text_only_pages_skip_the_detector(picodet, monkeypatch):
    doc, page = _doc()
    page.insert_textbox(pymupdf.Rect(72, 72, 523, 400), BODY * 10, fontname="helv", fontsize=10)
    monkeypatch.setattr(picodet.detector, "detect", lambda page: pytest.fail("detector ran on a text-only page"))
    assert [b.label for b in picodet.blocks(_reload(doc)[0])] == ["text"]


def _mixed_doc(path):
    doc = pymupdf.open()
    cjk = pymupdf.Font("cjk")
    page = doc.new_page()
    page.insert_font(fontname="F0", fontbuffer=cjk.buffer)
    # per line: Latin letters outnumber kana and Han taken one at a time, not together
    for i in range(6):
        page.insert_text((72, 90 + 18 * i), "LaTeX の jsarticle クラスでは、本文の文字サイズを指定する。", fontname="F0", fontsize=11)
    page = doc.new_page()
    page.insert_font(fontname="F1", fontbuffer=cjk.buffer)
    page.insert_textbox(pymupdf.Rect(72, 72, 523, 300), BODY * 6, fontname="helv", fontsize=10)
    page.insert_text((72, 340), "\ufffd" * 40, fontname="F1", fontsize=10)  # a run of unmapped glyphs
    page = doc.new_page()
    page.insert_textbox(pymupdf.Rect(72, 72, 523, 300), BODY * 6, fontname="helv", fontsize=10)
    doc.save(path)


def test_report_mixed_japanese_latin_and_garbled_page(tmp_path):
    from data_engine.pipeline import run_engine

    (tmp_path / "in").mkdir()
    _mixed_doc(tmp_path / "in" / "mixed.pdf")
    cfg = dict(input=str(tmp_path / "in"), out=str(tmp_path / "out"), workers=1, dpi=36, progress=False,
               print_summary=False, labels=["coarse", "fine"], fine={"name": "textlayer", "find_tables": False})
    rep = run_engine(cfg)
    assert rep["per_script"] == {"Jpan": 1, "Latn": 1}
    assert rep["per_language"] == {"eng": 1, "jpn": 1}
    assert rep["pages"]["skipped_by_reason"] == {"garbled_text": 1}
    # the fine label follows the page's verdict: no fine label where the coarse text is garbled
    assert rep["per_label_kind"]["fine"] == {"written": 2, "skipped_by_reason": {"garbled_text": 1}}
    assert rep["garbled"]["pages"] == 1 and "U+FFFD" in rep["garbled"]["top_chars"]
    failure = json.loads((tmp_path / "out" / "failures.jsonl").read_text().splitlines()[0])
    assert failure["page"] == 1 and "U+FFFD x40" in failure["detail"]
    docs = [json.loads(x) for x in (tmp_path / "out" / "documents.jsonl").read_text().splitlines()]
    assert docs[0]["pages_written"] == 2 and docs[0]["skipped_by_reason"] == {"garbled_text": 1}
    # an incremental run: this run's throughput covers the new document, the total covers both
    doc = pymupdf.open()
    doc.new_page().insert_textbox(pymupdf.Rect(72, 72, 523, 300), BODY * 6, fontname="helv", fontsize=10)
    doc.save(tmp_path / "in" / "more.pdf")
    rep2 = run_engine(cfg)
    assert rep2["throughput"]["pages_processed"] == 1
    assert rep2["throughput_total"]["pages_processed"] == 4 and rep2["throughput_total"]["runs"] == 2
    assert rep2["throughput_total"]["pages_per_cpu_s"] > 0


def _math_page():
    """A new document whose page has Noto Sans Math as font "MA" (skips without the font)."""
    from data_engine.scripts import find_font

    math = find_font("NotoSansMath-Regular.ttf")
    if math is None:
        pytest.skip("Noto Sans Math not installed (scripts/setup_fonts.sh)")
    doc, page = _doc()
    page.insert_font(fontname="MA", fontfile=str(math))
    return doc, page


def test_display_equation_in_math_font_is_an_equation():
    doc, page = _math_page()
    page.insert_textbox(pymupdf.Rect(72, 72, 523, 160), BODY * 3, fontname="helv", fontsize=10)
    page.insert_text((200, 200), "∑ 𝑥ᵢ² = ∫ 𝑓(𝑥) 𝑑𝑥 + 𝛼𝛽", fontname="MA", fontsize=12)
    page.insert_textbox(pymupdf.Rect(72, 230, 523, 320), BODY * 3, fontname="helv", fontsize=10)
    labels = [b.label for b in _rules().blocks(_reload(doc)[0])]
    assert labels == ["text", "equation", "text"]


def test_display_formula_is_one_box():
    """A display set piece by piece as TeX does (a sum with limits, a sub/superscript, an
    integral with bounds, an equation number): MuPDF makes 7 blocks of it, 4 of them tiny."""
    doc, page = _math_page()
    page.insert_textbox(pymupdf.Rect(72, 72, 523, 150), BODY * 3, fontname="helv", fontsize=10)
    y = 200
    for x, dy, s, font, size in [(200, 6, "\u2211", "MA", 22), (205, -16, "n", "MA", 7), (198, 17, "i", "MA", 7),
                                 (201, 17, "=1", "tiro", 7), (222, 0, "x", "MA", 11), (228, 3, "i", "MA", 7),
                                 (228, -5, "2", "tiro", 7), (240, 0, "=", "tiro", 11), (255, 4, "\u222b", "MA", 20),
                                 (266, -12, "1", "tiro", 7), (262, 12, "0", "tiro", 7), (275, 0, "f(x) dx", "MA", 11),
                                 (500, 0, "(1)", "tiro", 10)]:
        page.insert_text((x, y + dy), s, fontname=font, fontsize=size)
    page.insert_textbox(pymupdf.Rect(72, 240, 523, 320), BODY * 3, fontname="helv", fontsize=10)
    blocks = _rules().blocks(_reload(doc)[0])
    assert [b.label for b in blocks] == ["text", "equation", "text"]
    eq = blocks[1]
    assert eq.bbox[0] <= 198 and eq.bbox[1] <= 178 and eq.bbox[2] >= 510 and eq.bbox[3] >= 216  # limits and number inside
    assert all(piece in eq.text for piece in ("\u2211", "\u222b", "f(x) dx", "(1)"))


# Written for this test: a different paragraph on each page (running heads are what repeats).
PAGE_TEXTS = ["Shards are written one document at a time and renamed when complete. ",
              "Each page keeps its coarse label, its fine label and the rendered image. ",
              "A page that fails is recorded with its reason and the run goes on. ",
              "The report counts pages per language, per script and per skip reason. "]


def test_running_heads_are_header_and_footer():
    """A running head set below the top margin band and a footer line that is more than a
    page number: both were plain text. Repeated on the neighbouring pages at the same height,
    they are `header` / `footer`; the body's first block (different on every page) is not."""
    doc = pymupdf.open()
    for i, body in enumerate(PAGE_TEXTS):
        page = doc.new_page()  # A4: the 7% band ends at y = 59, the last 7% start at 783
        page.insert_text((72, 80), "Data Engine Notes - Chapter 2", fontname="helv", fontsize=9)
        page.insert_text((400, 80), f"{i + 11}", fontname="helv", fontsize=9)
        page.insert_textbox(pymupdf.Rect(72, 110, 523, 300), body * 6, fontname="helv", fontsize=10)
        page.insert_text((72, 770), f"ocrflow documentation, page {i + 11} of 40", fontname="helv", fontsize=9)
    doc = _reload(doc)
    layout = _rules()
    for page in doc:
        blocks = layout.blocks(page)
        labels = [(b.label, b.text) for b in blocks]
        # (MuPDF makes the head and its page number one line: digits aside, the same text)
        assert labels[0] == ("header", f"Data Engine Notes - Chapter 2 {page.number + 11}")
        assert labels[-1] == ("footer", f"ocrflow documentation, page {page.number + 11} of 40")
        assert [lb for lb, _ in labels[1:-1]] == ["text"]
    # a one-page document has no neighbours: the same lines stay text
    single = pymupdf.open()
    single.insert_pdf(doc, from_page=0, to_page=0)
    labels = {b.text: b.label for b in _rules().blocks(_reload(single)[0])}
    assert labels["Data Engine Notes - Chapter 2 11"] == labels["ocrflow documentation, page 11 of 40"] == "text"


def _headings_page():
    """A title, two section headings (bold, 1.3x the body) and a raster figure, which makes the
    ``picodet`` source call its detector on the page."""
    doc, page = _doc()
    page.insert_text((72, 90), "Optical Compression", fontname="hebo", fontsize=22)
    page.insert_textbox(pymupdf.Rect(72, 110, 523, 200), BODY * 5, fontname="helv", fontsize=10)
    page.insert_text((72, 230), "1 Introduction", fontname="hebo", fontsize=13)
    page.insert_textbox(pymupdf.Rect(72, 240, 523, 330), BODY * 5, fontname="helv", fontsize=10)
    pix = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 64, 48), 0)
    pix.clear_with(120)
    page.insert_image(pymupdf.Rect(150, 350, 450, 500), pixmap=pix)
    page.insert_text((72, 540), "2 Method", fontname="hebo", fontsize=13)
    page.insert_textbox(pymupdf.Rect(72, 550, 523, 650), BODY * 5, fontname="helv", fontsize=10)
    return _reload(doc)[0]


def test_detector_headings_keep_the_rules_level(picodet):
    """PicoDet's CDLA `title` covers every heading: on a page where the detector runs, section
    headings stay sub_title as on pages without it (they were all `title` before)."""
    page = _headings_page()
    assert [lb for lb, _, _ in picodet.detector.detect(page)].count("title") == 3  # the detector's view
    want = {"Optical Compression": "title", "1 Introduction": "sub_title", "2 Method": "sub_title"}
    for source in (picodet, _rules()):
        labels = {b.text: b.label for b in source.blocks(page)}
        assert {t: labels[t] for t in want} == want


def test_rewritten_picodet_graph_gives_the_shipped_models_detections(picodet):
    """The in-memory rewrite (fused hard-swish, preprocessing in the graph, layout.picodet_graph)
    against the shipped file run as PP-Structure's deploy pipeline feeds it: BGR, ImageNet
    statistics, float NCHW."""
    import numpy as np
    import onnxruntime as ort

    from data_engine.layout.picodet import INPUT_HW, decode

    page = _chart_page(*_doc())
    h, w = INPUT_HW
    pix = page.get_pixmap(matrix=pymupdf.Matrix(w / page.rect.width, h / page.rect.height), alpha=False)
    img = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.width, 3)[:h, :w]
    img = np.pad(img, ((0, h - img.shape[0]), (0, w - img.shape[1]), (0, 0)), constant_values=255)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    x = ((img[:, :, ::-1].astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1)[None]
    shipped = ort.InferenceSession(str(picodet.detector.path), providers=["CPUExecutionProvider"])
    ref = shipped.run(None, {shipped.get_inputs()[0].name: x})
    got = picodet.detector.session.run(None, {picodet.detector.input: img[None]})
    assert max(float(np.abs(a - b).max()) for a, b in zip(ref, got)) < 1e-4
    want, have = decode(ref), decode(got)
    assert [c for c, _, _ in have] == [c for c, _, _ in want] and len(want) >= 2
    assert max(float(np.abs(a[2] - b[2]).max()) for a, b in zip(want, have)) < 0.05  # input pixels


def test_compare_layout_script_on_generated_pages(picodet, tmp_path, capsys):
    """scripts/compare_layout.py on two generated pages: its tables, the JSON per page, and a
    picture where rules and PicoDet disagree (the chart: a vector figure the rules cannot see)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "compare_layout", Path(__file__).resolve().parents[1] / "scripts" / "compare_layout.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    pdfs = tmp_path / "pdfs"
    pdfs.mkdir()
    for name, page in (("chart", _chart_page(*_doc())), ("headings", _headings_page())):
        out = pymupdf.open()
        out.insert_pdf(page.parent)
        out.save(pdfs / f"{name}.pdf")
    mod.main([str(pdfs), "--json", str(tmp_path / "out.json"), "--draw", str(tmp_path / "draw")])
    text = capsys.readouterr().out
    assert "2 pages of 2 PDFs; the engine calls PicoDet on 2" in text and "| image |" in text
    records = json.loads((tmp_path / "out.json").read_text())
    chart = next(r for r in records if r["doc"] == "chart.pdf")
    assert any(lb == "image" for lb, _ in chart["picodet"]) and not any(lb == "image" for lb, _ in chart["rules"])
    assert (tmp_path / "draw" / "chart_p0.png").is_file()


def test_picodet_runs_another_export_as_it_is(picodet, tmp_path):
    """A model file the input rewrite does not fit (here: the input feeds an extra Identity op)
    runs as it is, preprocessed in NumPy, with the same detections as the rewritten graph."""
    import onnx
    from onnx import helper

    from data_engine.layout.picodet import PicoDetDetector

    model = onnx.load(str(picodet.detector.path))
    name = model.graph.input[0].name
    for n in model.graph.node:
        for k, i in enumerate(n.input):
            if i == name:
                n.input[k] = f"{name}_same"
    model.graph.node.insert(0, helper.make_node("Identity", [name], [f"{name}_same"]))
    other = tmp_path / "other.onnx"
    onnx.save(model, other)
    plain = PicoDetDetector(other)
    assert not plain.raw_input and picodet.detector.raw_input
    page = _chart_page(*_doc())
    want, got = picodet.detector.detect(page), plain.detect(page)
    assert [c for c, _, _ in got] == [c for c, _, _ in want] and want
    assert all(abs(a - b) < 0.05 for (_, ra, _), (_, rb, _) in zip(want, got) for a, b in zip(ra, rb))
