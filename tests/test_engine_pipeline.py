"""End-to-end data engine runs: bad inputs recorded with reasons, report contents, shard format."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from data_engine import queue
from data_engine.pipeline import run_engine
from data_engine.shards import iter_samples

EN = ["The engine reads every page of a document and keeps its text in reading order.",
      "Each page that passes the filters becomes one sample of the training shards."]
RU = ["Движок читает каждую страницу документа и сохраняет текст в порядке чтения.",
      "Каждая страница, прошедшая фильтры, становится одним обучающим примером."]


def _page(doc: pymupdf.Document, lines: list[str]) -> None:
    page = doc.new_page()
    if lines:
        page.insert_font(fontname="F0", fontbuffer=pymupdf.Font("cjk").buffer)
    for i, line in enumerate(lines):
        page.insert_text((72, 90 + 20 * i), line, fontname="F0", fontsize=11)


def _save(doc: pymupdf.Document, path: Path, **kw) -> Path:
    doc.save(path, **kw)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    doc = pymupdf.open()
    _page(doc, EN)                # page 0: written
    _page(doc, ["Fig. 1"])        # page 1: too_little_text
    _page(doc, [])                # page 2: blank -> no_text_layer
    _page(doc, EN[::-1])          # page 3: written
    _save(doc, d / "english.pdf")
    ru = pymupdf.open()
    _page(ru, RU)
    _save(ru, d / "russian.pdf")
    shutil.copy(d / "russian.pdf", d / "russian_copy.pdf")  # same bytes: processed once

    garbled = pymupdf.open()
    _page(garbled, RU)
    garbled = pymupdf.open("pdf", garbled.tobytes())
    for xref in range(1, garbled.xref_length()):   # no ToUnicode: glyph ids come out as text
        if garbled.xref_get_key(xref, "ToUnicode")[0] != "null":
            garbled.xref_set_key(xref, "ToUnicode", "null")
    _save(garbled, d / "garbled.pdf")

    enc = pymupdf.open()
    _page(enc, EN)
    _save(enc, d / "encrypted.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="secret", owner_pw="owner")

    (d / "zero_pages.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj\n<</Type/Catalog/Pages 2 0 R>>\nendobj\n"
        b"2 0 obj\n<</Type/Pages/Kids[]/Count 0>>\nendobj\ntrailer\n<</Root 1 0 R>>\n%%EOF\n")
    (d / "empty.pdf").write_bytes(b"")
    (d / "corrupt.pdf").write_bytes(b"%PDF-1.7\n" + b"\x00\x01 broken beyond repair " * 20)
    (d / "page.pdf").write_bytes(b"<!DOCTYPE html><html><body><h1>Not a PDF</h1><p>" + b"Words of a web page. " * 20
                                 + b"</p></body></html>")  # MuPDF would render it as a page

    Image.new("RGB", (300, 200), (200, 220, 240)).save(d / "scan.png")  # image page: no text layer
    img_only = pymupdf.open()
    page = img_only.new_page()
    page.insert_image(pymupdf.Rect(50, 50, 300, 250), filename=str(d / "scan.png"))
    _save(img_only, d / "image_only.pdf")

    (d / "list.txt").write_text("english.pdf\nrussian.pdf\n# comment\ndoes_not_exist.pdf\n")
    return d


def _run(corpus: Path, out: Path, **kw) -> dict:
    cfg = dict(input=[str(corpus), str(corpus / "list.txt")], out=str(out), workers=1, progress=False,
               print_summary=False)
    cfg.update(kw)
    return run_engine(cfg)


def _samples_bytes(shard_dir: Path) -> dict[str, bytes]:
    out = {}
    for shard in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf:
                out[m.name] = tf.extractfile(m).read()
    return out


def test_bad_inputs_and_report(corpus, tmp_path):
    rep = _run(corpus, tmp_path / "out")
    assert rep["docs"]["failed_by_reason"] == {
        "corrupt_file": 1, "duplicate": 1, "empty_file": 1, "encrypted": 1, "missing_file": 1, "not_pdf": 1,
        "zero_pages": 1}
    assert rep["pages"]["written"] == 3
    assert rep["pages"]["skipped_by_reason"] == {"no_text_layer": 3, "garbled_text": 1, "too_little_text": 1}
    assert rep["per_language"] == {"eng": 2, "rus": 1}
    assert rep["per_script"] == {"Latn": 2, "Cyrl": 1}
    assert rep["per_label_kind"]["coarse"]["written"] == 3
    assert rep["per_label_kind"]["coarse"]["skipped_by_reason"]["no_text_layer"] == 3
    t = rep["throughput"]
    assert t["pages_processed"] == 8 and t["pages_per_s"] > 0 and t["pages_per_s_per_worker"] > 0
    assert rep["shards"]["count"] == 1 and rep["shards"]["samples"] == 3

    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["pages"] == rep["pages"] and on_disk["per_language"] == rep["per_language"]
    rows = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    by_file = {(Path(r["path"]).name, r["page"]): r["reason"] for r in rows}
    assert by_file[("encrypted.pdf", None)] == "encrypted"
    assert by_file[("does_not_exist.pdf", None)] == "missing_file"
    assert by_file[("page.pdf", None)] == "not_pdf"
    assert by_file[("english.pdf", 1)] == "too_little_text"
    assert by_file[("garbled.pdf", 0)] == "garbled_text"
    assert by_file[("scan.png", 0)] == "no_text_layer"

    samples = list(iter_samples(sorted(str(p) for p in (tmp_path / "out" / "shards").glob("*.tar"))))
    eng_id = queue.hash_file(str(corpus / "english.pdf"))[0]
    keys = [s["key"] for s in samples]
    assert keys == sorted(keys) and f"{eng_id}_00000" in keys and f"{eng_id}_00003" in keys
    for s in samples:
        m = s["meta"]
        assert s["key"] == f"{m['doc_id']}_{m['page']:05d}"
        assert s["image"].size == tuple(m["image_size"]) == (1190, 1684)
        assert m["dpi"] == 144 and m["page_size"] == [595.0, 842.0] and m["source"] == "pdf"
        assert m["labels"]["coarse"]["prompt"] == "<image>\nFree OCR."
        assert set(m) >= {"num_pages", "lang", "script", "data_source", "source_path"}
    page3 = next(s for s in samples if s["key"] == f"{eng_id}_00003")
    assert page3["meta"]["labels"]["coarse"]["text"].split() == " ".join(EN[::-1]).split()

    # Re-running on the same output is a no-op: everything resumes, shards are reused.
    again = _run(corpus, tmp_path / "out")
    assert again["docs"]["resumed_units"] == 10 and again["throughput"]["units_processed"] == 0
    assert again["shards"]["rewritten"] is False and again["pages"] == rep["pages"]


def test_workers_and_shard_bounds_do_not_change_samples(corpus, tmp_path):
    ref = _run(corpus, tmp_path / "ref")
    two = _run(corpus, tmp_path / "two", workers=2, max_count=2)
    assert two["shards"]["count"] == 2 and two["shards"]["files"] == ["pages-000000.tar", "pages-000001.tar"]
    assert _samples_bytes(tmp_path / "two" / "shards") == _samples_bytes(tmp_path / "ref" / "shards")
    assert two["per_language"] == ref["per_language"]
    # Shrinking the plan removes shards of the earlier, larger plan.
    one = _run(corpus, tmp_path / "two", workers=1, max_count=1000)
    assert one["shards"]["files"] == ["pages-000000.tar"]
    assert sorted(p.name for p in (tmp_path / "two" / "shards").glob("*.tar")) == ["pages-000000.tar"]
    assert (tmp_path / "two" / "shards" / "pages-000000.tar").read_bytes() == \
        (tmp_path / "ref" / "shards" / "pages-000000.tar").read_bytes()


def test_plan_shards_bounds():
    recs = [{"doc_id": f"{i:016x}", "samples": [{"key": f"{i:016x}_{p:05d}", "size": 10} for p in range(3)]}
            for i in (2, 1)]
    plan = queue.plan_shards(recs, "x", max_count=4, max_size=10**6)
    assert [sp.count for sp in plan] == [4, 2]
    assert plan[0].parts[0][0] == f"{1:016x}" and plan[0].parts[1] == (f"{2:016x}", [f"{2:016x}_00000"])
    assert [sp.count for sp in queue.plan_shards(recs, "x", max_count=100, max_size=25)] == [2, 2, 2]
    with pytest.raises(ValueError):
        queue.plan_shards(recs, "x", max_count=0, max_size=1)


def test_bad_config_and_input_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown data engine config keys"):
        run_engine({"input": "x", "out": "y", "dpi_typo": 3})
    with pytest.raises(ValueError, match="labels"):
        run_engine({"input": "x", "out": str(tmp_path), "labels": ["ocr"]})
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        run_engine({"input": str(tmp_path / "nothing_here*.pdf"), "out": str(tmp_path), "progress": False})
    # Bad values fail before any work, not after processing everything (shard plan) or inside
    # every worker's initializer (where they would read as worker crashes).
    for bad, match in [({"max_count": 0}, "positive"), ({"dpi": -1}, "positive"), ({"jpeg_quality": 0}, "jpeg_quality"),
                       ({"start_method": "thread"}, "start_method"), ({"max_pages_per_doc": 0}, "max_pages_per_doc")]:
        with pytest.raises(ValueError, match=match):
            run_engine({"input": "x", "out": str(tmp_path), **bad})
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        run_engine({"input": "x", "out": str(tmp_path), "tokenizer": str(tmp_path / "no.json")})
    with pytest.raises(ValueError, match="layout source"):
        run_engine({"input": "x", "out": str(tmp_path), "labels": ["fine"], "fine": {"name": "yolo"}})


def test_fine_labels_on_synthetic_pages(tmp_path, noto_fonts):
    """coarse + fine labels through engineer E's layout source, on E's synthetic generator's pages."""
    from data_engine.layout import LABELS
    from data_engine.synthetic import generate_corpus

    noto_fonts("Latn")
    pdfs = generate_corpus(tmp_path / "syn", languages=["Latn"], n_docs=1, pages_per_doc=1, seed=1)
    rep = run_engine(dict(input=str(tmp_path / "syn"), out=str(tmp_path / "out"), workers=1, labels=["coarse", "fine"],
                          progress=False, print_summary=False))
    assert rep["pages"]["written"] == 1
    assert rep["per_label_kind"]["fine"]["written"] == rep["per_label_kind"]["coarse"]["written"] == 1
    (s,) = iter_samples(str(p) for p in (tmp_path / "out" / "shards").glob("*.tar"))
    meta = s["meta"]
    assert meta["source"] == "synthetic" and Path(meta["source_path"]) == pdfs[0].resolve()
    fine = meta["labels"]["fine"]
    assert fine["prompt"] == "<image>\n<|grounding|>Convert the document to markdown."
    assert fine["boxes"] and all(b["label"] in LABELS for b in fine["boxes"])
    assert all(0 <= v <= 999 for b in fine["boxes"] for v in b["bbox"])
    assert fine["text"].count("<|ref|>") == len(fine["boxes"])


def test_keep_units_false_still_reruns_correctly(corpus, tmp_path):
    first = _run(corpus, tmp_path / "o", keep_units=False)
    assert not list((tmp_path / "o" / "work" / "units").glob("*/*.tar"))
    shard = (tmp_path / "o" / "shards" / "pages-000000.tar").read_bytes()
    again = _run(corpus, tmp_path / "o", keep_units=False)
    # Units with samples had their tars deleted, so they are redone; the failed ones are reused.
    assert again["throughput"]["units_processed"] == 2 and again["docs"]["resumed_units"] == 8
    assert (tmp_path / "o" / "shards" / "pages-000000.tar").read_bytes() == shard
    assert again["pages"] == first["pages"]


def test_moved_document_rewrites_shards(corpus, tmp_path):
    """Same bytes under a new path: same sample keys, but source_path in the shard must follow."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(corpus / "russian.pdf", src / "a.pdf")
    out = tmp_path / "o"
    run_engine(dict(input=str(src), out=str(out), workers=1, progress=False, print_summary=False))
    (src / "a.pdf").rename(src / "b.pdf")
    rep = run_engine(dict(input=str(src), out=str(out), workers=1, progress=False, print_summary=False))
    assert rep["shards"]["rewritten"] and rep["throughput"]["units_processed"] == 1
    (s,) = iter_samples(str(out / "shards" / "pages-000000.tar"))
    assert s["meta"]["source_path"] == str((src / "b.pdf").resolve())
