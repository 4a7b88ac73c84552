"""Coarse text of real PDFs the project did not make (Debian TeX Live documentation, fetched by
`scripts/fetch_real_pdfs.sh`; .ci/run fetches them) against poppler's `pdftotext`, with the
harness's own metrics (scripts/compare_pdftotext.py). Each PDF shows one defect class in
MuPDF's plain text; the test checks the defect is there and that the engine's text is free of it."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pymupdf
import pytest

from data_engine import coarse

ROOT = Path(__file__).resolve().parents[1]
PDF_DIR = Path(os.environ.get("OCRFLOW_REAL_PDFS", ROOT / ".cache" / "real_pdfs"))


def _harness():
    spec = importlib.util.spec_from_file_location("compare_pdftotext", ROOT / "scripts" / "compare_pdftotext.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _mupdf_span_text(page) -> str:
    """What the engine labelled before glyph-level assembly: MuPDF's spans joined per line."""
    d = page.get_text("dict", flags=pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP)
    return "\n".join("".join(s["text"] for s in ln["spans"]) for b in d["blocks"] if b.get("type", 0) == 0
                     for ln in b["lines"])


def _pages(name: str, pages: list[int]):
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext not installed (Debian poppler-utils; scripts/fetch_real_pdfs.sh installs it)")
    path = PDF_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} absent: run scripts/fetch_real_pdfs.sh (downloads Debian texlive-lang-* packages)")
    h = _harness()
    doc = pymupdf.open(path)
    out = []
    for i in pages:
        ref = h.pdftotext_page(path, i)
        out.append((h.page_metrics(ref, coarse.page_text(doc[i])[0]), h.page_metrics(ref, _mupdf_span_text(doc[i]))))
    return out


def _sum(rows, key):
    return sum(r.get(key, 0) for r in rows)


def test_polish_tex_accents_are_composed():
    rows = _pages("pol_wkmgr1.pdf", [11, 12, 14])
    engine, mupdf = [r[0] for r in rows], [r[1] for r in rows]
    assert _sum(mupdf, "accents_hyp") >= 20  # "tre´s´c": the defect is in MuPDF's plain text
    assert _sum(engine, "accents_hyp") == 0  # (pdftotext itself leaves a few detached here)
    assert _sum(engine, "edits") / _sum(engine, "ref_chars") < 0.03


def test_korean_word_breaks_kept():
    rows = _pages("kor_lshort-ko.pdf", [20, 21, 22])
    engine, mupdf = [r[0] for r in rows], [r[1] for r in rows]
    assert _sum(mupdf, "break_hits") / _sum(mupdf, "ref_breaks") < 0.6
    assert _sum(engine, "break_hits") / _sum(engine, "ref_breaks") > 0.95
    assert _sum(engine, "hyp_breaks") / _sum(engine, "ref_breaks") < 1.05  # no spurious breaks
    assert _sum(engine, "edits") / _sum(engine, "ref_chars") < 0.02


def test_persian_lam_alef_and_order():
    rows = _pages("fas_lshort.pdf", [30, 31, 40])
    engine, mupdf = [r[0] for r in rows], [r[1] for r in rows]
    assert _sum(mupdf, "lamalef_hyp") < 0.5 * _sum(mupdf, "lamalef_ref")  # ligature reversed by MuPDF
    assert _sum(engine, "lamalef_hyp") == _sum(engine, "lamalef_ref") > 10
    assert _sum(engine, "kashida_hyp") == 0
    assert _sum(engine, "edits") / _sum(engine, "ref_chars") < 0.5 * _sum(mupdf, "edits") / _sum(mupdf, "ref_chars")


def test_russian_cp1251_mojibake_is_repaired():
    # lshort-russian (pdfTeX, T2A fonts without ToUnicode): the text layer is cp1251 read as
    # Latin-1 ("Âåðñòêà òåêñòà"); pdftotext gives the same mojibake, so only the engine is checked
    from data_engine import langid

    path = PDF_DIR / "rus_lshortru.pdf"
    if not path.is_file():
        pytest.skip(f"{path} absent: run scripts/fetch_real_pdfs.sh (downloads Debian texlive-lang-cyrillic)")
    doc = pymupdf.open(path)
    for i in (41, 55):
        raw = coarse.page_text(doc[i])[0]
        assert langid.detect_script(raw) == "Latn"  # what was labelled before: a "Latin" page
        text, reason, detail = coarse.CoarseFilter().check(raw)
        assert reason is None and "cp1251" in detail
        assert "Верстка текста" in text
        assert langid.detect_language(text)[0] == "rus" and langid.detect_script(text) == "Cyrl"


def test_thai_tex_manual_is_read_from_its_character_codes():
    # lshort-thai (pdfTeX 0.14, Thai TeX fonts without ToUnicode): MuPDF gives U+FFFD for every
    # Thai glyph; its character codes are TIS-620 (cp874), which the engine's second reading
    # decodes (data_engine/fallback.py). pdftotext reads glyph names and gets most of it.
    from data_engine import fallback, langid

    path = PDF_DIR / "tha_lsh132.pdf"
    if not path.is_file():
        pytest.skip(f"{path} absent: run scripts/fetch_real_pdfs.sh (downloads Debian texlive-lang-other)")
    doc = pymupdf.open(path)
    flt = coarse.CoarseFilter()
    for i in (10, 30):
        assert flt.check(coarse.page_text(doc[i])[0])[1] == coarse.GARBLED_TEXT  # MuPDF's reading
        (text, reason, detail), tdict, source = fallback.page_check(doc[i], flt)
        assert reason is None and source == fallback.CODES and "cp874" in detail and tdict is not None
        assert langid.page_language_and_script(text)[:2] == ("tha", "Thai")
    assert "สารบัญ" in fallback.page_check(doc[10], flt)[0][0]


def test_before_after_table_from_two_runs(tmp_path, capsys):
    """`--before old.json --after new.json` prints the per-producer and per-script tables of two
    runs without running either again; a group only one run has shows '-' on the other side."""
    h = _harness()
    row = dict(doc="a.pdf", page=0, ref_mojibake=False, script="Thai", lang="tha", engine_lang="tha",
               ref_chars=100, ref_breaks=10, hyp_breaks=10, break_hits=10, accents_hyp=0, accents_ref=0,
               letters_hyp=90, letters_ref=90)
    old = [dict(row, producer="pdfTeX", edits=80, engine_reason=None, engine_script="Latn")]
    new = [dict(row, producer="pdfTeX", edits=10, engine_reason=None, engine_script="Thai"),
           dict(row, producer="groff", doc="b.pdf", edits=0, script="Latn", lang="eng", engine_reason="garbled_text",
                engine_script="Latn")]
    paths = []
    for name, rows in (("old", old), ("new", new)):
        result = {"by_producer": h.summarize(rows, "producer"), "by_script": h.summarize(rows, "script"), "rows": rows}
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(h.json.dumps(result), encoding="utf-8")
    h.main(["--before", str(paths[0]), "--after", str(paths[1])])
    out = capsys.readouterr().out
    assert "0.8000 -> 0.1000" in out and "0.000 -> 1.000" in out  # pdfTeX's CER, Thai's script agreement
    groff = next(ln for ln in out.splitlines() if ln.startswith("groff"))
    assert groff.split()[3:6] == ["-", "->", "0.0000"] and "- -> 0" in " ".join(groff.split())
