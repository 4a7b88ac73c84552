"""data_engine/sources: label round trips on the rendered output, resumable byte-identical
shards, bad input recorded with its reason, and missing optional dependencies named.

Round trips check the label against an independent reading of what was drawn: the chart's
matplotlib artists (bar heights, line and scatter data, pie wedge angles), the molecule RDKit
parses from the SMILES label redrawn pixel for pixel, geometry strokes on the rendered pixels,
the formula's LaTeX re-rendered by mathtext.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_engine.sources import get_source
from data_engine.sources.base import MissingDependency, require, stable_rng
from data_engine.sources.htmltable import html_table, parse_html_table
from data_engine.sources.writer import write_source
from models.prompts import PROMPT_FIGURE, parse_grounded_output


def _samples(out: Path, name: str) -> list[dict]:
    from data_engine.shards import iter_samples

    return list(iter_samples(sorted(str(p) for p in (out / "shards").glob(f"{name}-*.tar"))))


def _failures(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------- charts

def _artist_table(fig, spec) -> list[list[float]]:
    """The data the figure shows, read back from its artists (rows x series)."""
    from matplotlib.container import BarContainer

    ax = fig.axes[0]
    kind = spec["type"]
    if kind in ("bar", "hbar", "stacked_bar"):
        cols = []
        for c in (c for c in ax.containers if isinstance(c, BarContainer)):
            cols.append([p.get_width() if kind == "hbar" else p.get_height() for p in c.patches])
        return [list(r) for r in zip(*cols)]
    if kind == "line":
        return [list(r) for r in zip(*[list(line.get_ydata()) for line in ax.lines])]
    if kind == "scatter":
        return [list(p) for coll in ax.collections for p in coll.get_offsets()]
    if kind == "pie":
        angles = [p.theta2 - p.theta1 for p in ax.patches]
        return [[a / 360.0] for a in angles]
    raise AssertionError(kind)


def test_chart_html_table_parses_back_to_the_plotted_data():
    from data_engine.sources.charts import KINDS, chart_figure, label_html, random_spec

    specs, i = {}, 0
    while len(specs) < len(KINDS):
        s = random_spec(stable_rng(1, "charts", i))
        specs.setdefault(s["type"], s)
        i += 1
    for kind, spec in specs.items():
        table = parse_html_table(label_html(spec))
        header, rows = table[0], table[1:]
        fig = chart_figure(spec)
        fig.canvas.draw()
        shown = _artist_table(fig, spec)
        if kind == "scatter":
            assert header == ["", "x", "y"]
            got = sorted((float(r[1]), float(r[2])) for r in rows)
            assert np.allclose(got, sorted(map(tuple, shown))), kind
            continue
        assert header[1:] == list(spec["columns"]) and len(rows) == len(shown), kind
        vals = np.array([[float(v) for v in r[1:]] for r in rows])
        if kind == "pie":  # wedge angles are the values' shares
            assert np.allclose(vals[:, 0] / vals[:, 0].sum(), np.array(shown)[:, 0], atol=1e-6)
        else:
            assert np.allclose(vals, np.array(shown, dtype=float)), kind
        ax = fig.axes[0]
        ticks = ax.get_yticklabels() if kind == "hbar" else ax.get_xticklabels()
        if kind != "pie":
            assert [t.get_text() for t in ticks] == [r[0] for r in rows], kind
        else:
            assert [t.get_text() for t in ax.texts][: len(rows)] == [r[0] for r in rows]


def test_user_chart_tables_bad_input_recorded_and_skipped(tmp_path):
    good = {"type": "bar", "title": "t", "columns": ["a", "b"], "rows": [["x", 1, 2.5], ["y", 3, 4]]}
    lines = [json.dumps(good), json.dumps({**good, "rows": []}), json.dumps({**good, "rows": [["x", "oops", 1]]}),
             "{not json", json.dumps({**good, "type": "radar"})]
    inp = tmp_path / "tables.jsonl"
    inp.write_text("\n".join(lines) + "\n")
    rep = write_source(get_source("charts", input=str(inp)), tmp_path / "out", None, progress=False)
    assert rep["written"] == 1 and rep["failed"] == 4
    reasons = {f["item"]: f["reason"] for f in _failures(tmp_path / "out")}
    assert reasons == {1: "empty_table", 2: "bad_table", 3: "bad_json", 4: "bad_table"}
    (s,) = _samples(tmp_path / "out", "charts")
    lab = s["meta"]["labels"]["figure"]
    assert lab["prompt"] == PROMPT_FIGURE
    assert parse_html_table(lab["text"]) == [["", "a", "b"], ["x", "1.0", "2.5"], ["y", "3.0", "4.0"]]


def test_html_table_spans_round_trip():
    rows = [[("h", 2, 1), "z"], [("a", 1, 2), "1", "2"], ["3", "4"]]
    assert parse_html_table(html_table(rows)) == [["h", "h", "z"], ["a", "1", "2"], ["a", "3", "4"]]


# ------------------------------------------------------------------------------- chemistry

def test_smiles_label_canonicalises_to_the_molecule_drawn(tmp_path):
    pytest.importorskip("rdkit")
    from rdkit import Chem

    from data_engine.sources.chemistry import draw_smiles

    inp = tmp_path / "mols.smi"
    inp.write_text("OC(=O)c1ccccc1O salicylic\nC1=CC=CN=C1\nnot_a_smiles\n\n# comment\nC(\n")
    rep = write_source(get_source("chemistry", input=str(inp)), tmp_path / "user", None, progress=False)
    assert rep["written"] == 2
    assert {f["item"]: f["reason"] for f in _failures(tmp_path / "user")} == {
        2: "invalid_smiles", 3: "empty_line", 4: "empty_line", 5: "invalid_smiles"}
    write_source(get_source("chemistry"), tmp_path / "gen", 6, seed=3, progress=False)
    samples = _samples(tmp_path / "user", "chemistry") + _samples(tmp_path / "gen", "chemistry")
    labels = {s["meta"]["labels"]["figure"]["text"] for s in samples}
    assert {Chem.MolToSmiles(Chem.MolFromSmiles("OC(=O)c1ccccc1O")), "c1ccncc1"} <= labels
    for s in samples:
        label = s["meta"]["labels"]["figure"]["text"]
        mol = Chem.MolFromSmiles(label)
        assert mol is not None and Chem.MolToSmiles(mol) == label  # canonical
        # the image is that molecule: redrawing the label's molecule gives the same pixels
        redrawn = Image.open(io.BytesIO(draw_smiles(label, s["meta"]["extra"]["style"]))).convert("RGB")
        assert np.array_equal(np.asarray(redrawn), np.asarray(s["image"]))
    assert len(labels) >= 6  # embedded default: distinct molecules


# -------------------------------------------------------------------------------- geometry

def _ink(img: np.ndarray, x: float, y: float, bg: np.ndarray, r: int = 1) -> bool:
    h, w, _ = img.shape
    xi, yi = int(round(x)), int(round(y))
    patch = img[max(0, yi - r):min(h, yi + r + 1), max(0, xi - r):min(w, xi + r + 1)].astype(int)
    return bool((np.abs(patch - bg).sum(-1) > 120).any())


def test_geometry_endpoints_on_strokes_and_move_with_translation():
    src = get_source("geometry", translations=3)
    for group in range(4):
        ref = None
        for t in range(3):
            img, label, info = src.render(group * 3 + t)
            a = np.asarray(img)
            S = img.width
            bg = a[0, 0].astype(int)
            px = lambda p: (p[0] / 999 * S, p[1] / 999 * S)  # noqa: E731
            for seg in label["segments"]:
                (x1, y1), (x2, y2) = px(seg["endpoints"][0]), px(seg["endpoints"][1])
                for f in np.linspace(0, 1, 11):  # endpoints and the stroke between them
                    assert _ink(a, x1 + f * (x2 - x1), y1 + f * (y2 - y1), bg, r=2), (group, t, seg, f)
            for c in label["circles"]:
                cx, cy = px(c["center"])
                r = c["radius"] / 999 * S
                for th in np.linspace(0, 2 * np.pi, 16, endpoint=False):
                    assert _ink(a, cx + r * np.cos(th), cy + r * np.sin(th), bg, r=2), (group, t, c)
            # a point that is on no stroke is background (the check can fail)
            assert not _ink(a, 1, 1, bg)
            pts = np.array(list(label["points"].values()), dtype=float)
            if t == 0:
                ref = (a, pts, label)
                assert info["offset"] == [0, 0]
                continue
            dx, dy = info["offset"]
            assert (dx, dy) != (0, 0)
            # labels move with the translation (to within the bin rounding) ...
            assert np.abs(pts - ref[1] - [dx / S * 999, dy / S * 999]).max() <= 1.0
            assert [s["name"] for s in label["segments"]] == [s["name"] for s in ref[2]["segments"]]
            # ... and so do the pixels: the translated image is the original shifted
            a0 = ref[0]
            ys, xs = slice(max(0, dy), S + min(0, dy)), slice(max(0, dx), S + min(0, dx))
            ys0, xs0 = slice(max(0, -dy), S + min(0, -dy)), slice(max(0, -dx), S + min(0, -dx))
            assert (a[ys, xs] == a0[ys0, xs0]).all(-1).mean() > 0.999


# -------------------------------------------------------------------- formulas and tables

def test_formula_label_is_the_latex_rendered(tmp_path):
    from data_engine.sources.formulas_tables import pad, render_formula

    write_source(get_source("formulas"), tmp_path, 6, seed=5, progress=False)
    samples = _samples(tmp_path, "formulas")
    assert len(samples) == 6
    for s in samples:
        latex = s["meta"]["labels"]["coarse"]["text"]
        st = s["meta"]["extra"]["math"]
        again = pad(render_formula(latex, st["fontset"], st["size"], st["dpi"]), random.Random(st["margin_seed"]))
        assert np.array_equal(np.asarray(again), np.asarray(s["image"])), latex
        other = pad(render_formula(latex + " + 1", st["fontset"], st["size"], st["dpi"]), random.Random(st["margin_seed"]))
        assert other.size != s["image"].size or not np.array_equal(np.asarray(other), np.asarray(s["image"]))


def test_table_label_is_the_html_rendered():
    from data_engine.sources.formulas_tables import random_table, render_table

    for i in range(4):
        rows, lang = random_table(stable_rng(2, "tables", i))
        label = html_table(rows)
        grid = parse_html_table(label)
        assert grid and all(len(r) == len(grid[0]) for r in grid)  # rectangular once spans expand
        words: list[str] = []
        img = render_table(label, lang, stable_rng(2, "style", i), words)
        # MuPDF's text layer of what it drew holds exactly the label's cell texts, in row order
        # (NFKC: the CJK font's cmap maps a few ideographs to their compatibility code points)
        cells = [w for r in rows for c in r for w in c[0].split()]
        assert [unicodedata.normalize("NFKC", w) for w in words] == cells, (words, cells)
        assert img.width > 20 and img.height > 20


# ------------------------------------------------------------------------------ writer

def test_writer_resumes_to_identical_bytes_and_refuses_other_settings(tmp_path):
    src = get_source("geometry", translations=2)
    rep = write_source(src, tmp_path / "a", 10, seed=7, shard_size=4, progress=False)
    assert rep["written"] == 10 and rep["shards"] == 3
    full = {p.name: p.read_bytes() for p in (tmp_path / "a" / "shards").glob("*.tar")}
    # an interrupted run: shard 2 never committed, shard 1 left as a partial .tmp
    write_source(get_source("geometry", translations=2), tmp_path / "b", 10, seed=7, shard_size=4, progress=False)
    (tmp_path / "b" / "shards" / "geometry-000002.tar").unlink()
    (tmp_path / "b" / "work" / "geometry-000002.json").unlink()
    (tmp_path / "b" / "shards" / "geometry-000001.tar.tmp").write_bytes(b"partial")
    rep_b = write_source(get_source("geometry", translations=2), tmp_path / "b", 10, seed=7, shard_size=4, progress=False)
    assert rep_b["shards_resumed"] == 2
    assert {p.name: p.read_bytes() for p in (tmp_path / "b" / "shards").glob("*.tar")} == full
    # a finished run re-run rewrites nothing
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "shards").glob("*.tar")}
    assert write_source(src, tmp_path / "a", 10, seed=7, shard_size=4, progress=False)["shards_resumed"] == 3
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    with pytest.raises(RuntimeError, match="other settings"):
        write_source(src, tmp_path / "a", 10, seed=8, shard_size=4, progress=False)
    # the shards follow the engine's contract
    s = _samples(tmp_path / "a", "geometry")[0]
    assert s["key"].endswith("_00000") and len(s["key"]) == 22
    m = s["meta"]
    assert m["data_source"] == "ocr" and m["ocr_source"] == "geometry" and m["image_size"] == list(s["image"].size)
    with tarfile.open(tmp_path / "a" / "shards" / "geometry-000000.tar") as tf:
        assert all(i.mtime == 0 and i.uname == "ocrflow" for i in tf)


def test_cli_hydra_config_and_worker_processes(tmp_path, capsys):
    from hydra import compose, initialize_config_dir

    from data_engine.sources.cli import main_argv, run_config

    main_argv(["geometry", "--out", str(tmp_path / "a"), "--count", "6", "--shard-size", "2", "--no-progress",
               "--option", "translations=1"])
    rep = json.loads(capsys.readouterr().out)
    assert rep["written"] == 6 and (tmp_path / "a" / "shards" / "geometry.index.json").is_file()
    from data_engine.sources.config import register

    register()
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base=None):
        cfg = compose("sources", [f"out={tmp_path / 'b'}", "source=geometry", "source.translations=1", "count=6",
                                  "shard_size=2", "workers=2", "progress=false"])
    assert run_config(cfg)["written"] == 6
    # two worker processes write the same bytes as one process
    a = sorted((tmp_path / "a" / "shards").glob("*.tar"))
    assert [p.read_bytes() for p in a] == [(tmp_path / "b" / "shards" / p.name).read_bytes() for p in a]


# ------------------------------------------------------------------ scene text, vision

def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_scene_text_labels_from_ppocr_and_undecodable_images_skipped(tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    from data_engine.sources.scene_text import embedded_scene

    img, placed = embedded_scene(stable_rng(0, "scene-test", 1))
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(_jpeg(img))
    (folder / "b.jpg").write_bytes(_jpeg(img)[:200])  # truncated: cannot be decoded
    (folder / "c.png").write_bytes(b"not an image at all")
    rep = write_source(get_source("scene", input=str(folder)), tmp_path / "out", None, progress=False)
    assert rep["written"] == 1
    assert sorted(f["reason"] for f in _failures(tmp_path / "out")) == ["bad_image", "bad_image"]
    (s,) = _samples(tmp_path / "out", "scene")
    fine, coarse = s["meta"]["labels"]["fine"], s["meta"]["labels"]["coarse"]
    assert fine["prompt"] == "<image>\n<|grounding|>OCR this image." and coarse["prompt"] == "<image>\nFree OCR."
    blocks = parse_grounded_output(fine["text"])
    assert [b[2] for b in blocks] == coarse["text"].split("\n")
    assert all(0 <= v <= 999 for b in blocks for v in b[1])
    # PP-OCR reads the words that were placed (the labeller works, independently of our drawing)
    read = "".join(coarse["text"].split())
    assert any("".join(w.split()) in read for w in placed), (placed, coarse["text"])


def test_captions_reader_img2dataset_format(tmp_path):
    img = Image.new("RGB", (64, 48), (200, 30, 30))
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tf:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        add("000000000.jpg", _jpeg(img))
        add("000000000.txt", b"a red square")
        add("000000001.jpg", _jpeg(img))
        add("000000001.json", json.dumps({"caption": "another red square", "url": "x"}).encode())
        add("000000002.jpg", b"\xff\xd8garbage")
        add("000000002.txt", b"broken")
        add("000000003.jpg", _jpeg(img))
    rep = write_source(get_source("captions", input=str(shard)), tmp_path / "out", None, progress=False)
    assert rep["written"] == 2 and rep["data_source"] == "vision"
    assert sorted(f["reason"] for f in _failures(tmp_path / "out")) == ["bad_image", "no_caption"]
    caps = sorted(s["meta"]["labels"]["caption"]["text"] for s in _samples(tmp_path / "out", "captions"))
    assert caps == ["a red square", "another red square"]


def test_grounding_samples_from_layout_boxes(tmp_path):
    from data_engine.shards import encode_meta, open_shard_writer
    from models.prompts import parse_boxes

    boxes = [{"label": "title", "bbox": [100, 50, 900, 120], "text": "T"},
             {"label": "table", "bbox": [100, 200, 900, 500], "text": "<table></table>"},
             {"label": "table", "bbox": [100, 600, 900, 800], "text": "<table></table>"}]
    (tmp_path / "pages").mkdir()
    with open_shard_writer(str(tmp_path / "pages" / "p-%06d.tar")) as w:
        meta = {"doc_id": "0" * 16, "source_path": "/x.pdf", "page": 0, "labels": {"fine": {"prompt": "p", "text": "t", "boxes": boxes}}}
        w.write({"__key__": "0" * 16 + "_00000", "jpg": _jpeg(Image.new("RGB", (100, 140), "white")), "json": encode_meta(meta)})
        w.write({"__key__": "1" * 16 + "_00000", "jpg": _jpeg(Image.new("RGB", (100, 140), "white")),
                 "json": encode_meta({**meta, "labels": {"coarse": {"prompt": "p", "text": "t"}}})})
    src = get_source("grounding", input=str(tmp_path / "pages" / "*.tar"), preferred=1.0)
    rep = write_source(src, tmp_path / "out", None, progress=False)
    assert rep["written"] == 1 and rep["failure_reasons"] == {"no_layout": 1}
    (s,) = _samples(tmp_path / "out", "grounding")
    lab = s["meta"]["labels"]["locate"]
    assert lab["prompt"] == "<image>\nLocate <|ref|>table<|/ref|> in the image."
    assert parse_boxes(lab["text"]) == [[100, 200, 900, 500], [100, 600, 900, 800]]
    assert s["meta"]["data_source"] == "vision"


# ------------------------------------------------------------------- docx, dependencies

def test_missing_optional_dependency_names_the_package():
    with pytest.raises(MissingDependency, match=r"some-package.*ocrflow\[sources\]"):
        require("ocrflow_no_such_module", "some-package", "sources")


def test_docx_label_from_structure_and_render_needs_libreoffice(tmp_path):
    docx = pytest.importorskip("docx")
    pytest.importorskip("mammoth")
    import shutil

    from data_engine.sources.docx import docx_label

    d = docx.Document()
    d.add_heading("Quarterly report", level=1)
    d.add_paragraph("Revenue grew in every region.")
    t = d.add_table(rows=2, cols=2)
    for i, row in enumerate([["region", "growth"], ["north", "12%"]]):
        for j, v in enumerate(row):
            t.cell(i, j).text = v
    path = tmp_path / "report.docx"
    d.save(path)
    label = docx_label(path)
    parts = label.split("\n\n")
    assert parts[0] == "# Quarterly report" and parts[1] == "Revenue grew in every region."
    assert parse_html_table(parts[2]) == [["region", "growth"], ["north", "12%"]]
    if shutil.which("soffice") or shutil.which("libreoffice"):
        rep = write_source(get_source("docx", input=str(tmp_path)), tmp_path / "out", None, progress=False)
        assert rep["written"] == 1
    else:
        with pytest.raises(MissingDependency, match="libreoffice-writer-nogui"):
            get_source("docx", input=str(tmp_path))
