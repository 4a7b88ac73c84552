"""``flywheel.input=DIR`` on a folder of your own: born-digital and scanned PDFs and page images
with arbitrary names, the language by rule (folder, name, the only one, language ID; a refusal
names the rules), optional gold page images with ``<stem>.gt.json`` (a gold page without one is
reported), then one tiny round end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pymupdf
import pytest

from data_engine.scripts import find_font

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(find_font("NotoSans-Regular.ttf") is None,
                                reason="Noto fonts missing (scripts/setup_fonts.sh)")


def _page_png(pdf: Path, png: Path, dpi: int = 144) -> float:
    """Page 0 of ``pdf`` as a PNG; returns pixels per PDF point."""
    with pymupdf.open(pdf) as doc:
        doc[0].get_pixmap(dpi=dpi).save(png)
    return dpi / 72


def _user_folder(d: Path) -> Path:
    """A folder as a user has it: any names, PDFs and images mixed, gold page images."""
    from data_engine.flywheel.linepages import LineLanguage, Vocabulary, make_line_document

    lang, words = LineLanguage.parse("eng-Latn"), Vocabulary(3000, 0, "wordfreq")
    work, user = d / "made", d / "mine"
    (user / "my docs").mkdir(parents=True)
    (user / "scans").mkdir()
    (user / "gold").mkdir()
    for i, (kind, name) in enumerate([("digital", "my docs/Annual report (final).pdf"),
                                      ("digital", "my docs/letter.v2.pdf"),
                                      ("scan", "scans/scan 2019-03.pdf")]):
        make_line_document(lang, work / f"{i}.pdf", kind=kind, seed=100 + i, vocab=words)
        shutil.copy(work / f"{i}.pdf", user / name)
    make_line_document(lang, work / "s.pdf", kind="scan", seed=7, vocab=words)
    _page_png(work / "s.pdf", user / "scans" / "IMG_0042.png")
    gt = make_line_document(lang, work / "g.pdf", kind="scan", seed=8, vocab=words)
    zoom = _page_png(work / "g.pdf", user / "gold" / "page 1.png")
    lines = [{"bbox": [v * zoom for v in b["bbox"]], "text": b["text"]} for b in gt["pages"][0]["blocks"]]
    (user / "gold" / "page 1.gt.json").write_text(json.dumps({"lines": lines}, ensure_ascii=False))
    _page_png(work / "g.pdf", user / "gold" / "no truth.png")  # its sidecar is missing
    return user


def test_language_rules_and_refusals(tmp_path):
    from data_engine.flywheel.inputs import InputError, find_inputs, language_of

    specs = ["eng-Latn", "hin-Deva"]
    png = tmp_path / "x.png"
    pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 20, 20), False).save(png)
    assert language_of(png, Path("hin-Deva/a/x.png"), specs) == "hin-Deva"  # 1. a language folder
    assert language_of(png, Path("hin_Deva/x.png"), specs) == "hin-Deva"
    assert language_of(png, Path("eng_Latn_scan_0001.png"), specs) == "eng-Latn"  # 2. the corpus's names
    assert language_of(png, Path("x.png"), ["hin-Deva"]) == "hin-Deva"  # 3. the only language
    doc = pymupdf.open()
    doc.new_page().insert_text((50, 80), "The committee agreed that the report should be published next week "
                                         "together with the annual accounts of the society.", fontsize=9)
    doc.save(tmp_path / "notes.pdf")
    assert language_of(tmp_path / "notes.pdf", Path("notes.pdf"), specs) == "eng-Latn"  # 4. language ID
    with pytest.raises(InputError, match="cannot tell the language of x.png .*folder named after its language"):
        language_of(png, Path("x.png"), specs)
    with pytest.raises(InputError, match="x.png"):
        find_inputs(tmp_path, specs)
    # no flywheel.languages: the language folders and the text layers' language IDs
    from data_engine.flywheel.inputs import detect_languages

    (tmp_path / "hin-Deva").mkdir()
    png.rename(tmp_path / "hin-Deva" / "x.png")
    assert detect_languages(tmp_path) == ["eng-Latn", "hin-Deva"]
    assert [(f.spec, f.doc_id) for f in find_inputs(tmp_path, specs)] == [("hin-Deva", "hin-Deva_x"), ("eng-Latn", "notes")]


def test_gold_sidecar_tool_pairs_lines_or_says_why():
    from data_engine.flywheel.gold import gold_sidecar

    side = gold_sidecar([[1, 2, 30, 12], [1, 20, 40, 30]], ["first line", "", "e\u0301cole"])
    assert side == {"lines": [{"bbox": [1, 2, 30, 12], "text": "first line"},
                              {"bbox": [1, 20, 40, 30], "text": "\u00e9cole"}]}  # NFC
    with pytest.raises(ValueError, match="found 2 lines but the text has 1"):
        gold_sidecar([[1, 2, 30, 12], [1, 20, 40, 30]], ["one"])


def test_flywheel_input_folder_of_pdfs_and_images_end_to_end(tmp_path):
    from train.flywheel import run_flywheel

    user = _user_folder(tmp_path)
    out = tmp_path / "run"
    rep = run_flywheel({"out": str(out), "flywheel": {
        "input": str(user), "languages": [{"lang": "eng-Latn"}], "rounds": 1, "threads": 1,
        "recognizer": {"kind": "paper", "steps": [2]}, "label": {"batch_size": 8, "max_new_tokens": 6},
        "baseline": {"tesseract": False}}}, log=lambda m: None)
    data = rep["data"]["eng-Latn"]
    assert data["seed"] > 0  # the born-digital PDFs' text layers, whatever their names
    assert data["pool"] > 0  # the scanned PDF's and the PNG's detector lines
    assert data["gold"] == len(json.loads((user / "gold" / "page 1.gt.json").read_text())["lines"])
    assert data["gold_without_truth"] == 1  # reported, not a silent 0
    log = [json.loads(x) for x in (out / "data" / "pages.jsonl").read_text().splitlines()]
    assert any(r.get("reason") == "gold_without_truth" and r["file"].endswith("no truth.png") for r in log)
    docs = {r["doc_id"] for r in log if "doc_id" in r}
    assert {"my_docs_Annual_report_final_", "my_docs_letter_v2", "scans_scan_2019-03", "scans_IMG_0042"} <= docs
    r0 = rep["rounds"][0]["languages"]["eng-Latn"]
    assert r0["labelled"] == data["pool"] and r0["recognizer"]["gold_n"] == data["gold"]
    assert r0["pages"]["pages"] >= 2  # the scanned PDF's page and the image's
