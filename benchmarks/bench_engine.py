"""Data engine throughput: pages/s per core end to end at 144 DPI, next to the raw PyMuPDF loop.

    python benchmarks/bench_engine.py                        # synthetic corpus (data_engine.synthetic)
    python benchmarks/bench_engine.py --simple --docs 20      # plain generated text pages instead
    python benchmarks/bench_engine.py --pdfs a.pdf dir/ list.txt --workers 1,2,4
    python benchmarks/bench_engine.py --real --pages-per-doc 12 --workers 1   # scripts/fetch_real_pdfs.sh's PDFs
    python benchmarks/bench_engine.py --real --pages-per-doc 12 --digest-only --engine-root ../other  # labels of another checkout

Prints, for the same pages:
  raw        : page.get_pixmap(dpi) + page.get_text("dict") in one process (no encode, no labels)
  stages     : per-page ms of extract / coarse label + filters / lang+script / render / encoders
  coarse/fine: run_engine with 1 worker labelling only coarse, then only fine: pages per CPU-second
  engine w=N : run_engine end to end with N workers (fresh output dir): pages/s, pages/s per
               worker (processing phase) and per busy worker-second, plus total wall incl. start-up.
  digest     : sha256 of every page's coarse verdict (label text, reason, detail, text source),
               language, script, script mix and the text of every line and span of its text dict
               (what fine labels read): equal digests = a speed change left the labels as they were.
Targets: coarse labels >= 80 pages per CPU-second on real pages (raw PyMuPDF there: ~170 on
light pages; the ratio to raw, printed too, is the machine-independent figure); fine >= 15.
Exit status 1 when the coarse line misses its target (fine is printed beside its target).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pymupdf
from PIL import Image

# --engine-root: measure the data engine of another checkout (read before data_engine is imported)
_root = next((a.split("=", 1)[1] if "=" in a else sys.argv[i + 2] for i, a in enumerate(sys.argv[1:])
              if a.split("=", 1)[0] == "--engine-root"), None)
sys.path.insert(0, str(Path(_root).resolve() if _root else Path(__file__).resolve().parents[1]))

from data_engine import coarse, langid, queue, render
from data_engine.pipeline import run_engine

LOREM = ("Data engines turn document collections into training pages; each page keeps its text in "
         "reading order and its image at a fixed resolution. ")


def simple_corpus(out: Path, docs: int, pages: int) -> list[Path]:
    paths = []
    for i in range(docs):
        doc = pymupdf.open()
        for p in range(pages):
            page = doc.new_page()
            page.insert_textbox(pymupdf.Rect(60, 60, 535, 780), f"Document {i}, page {p}. " + LOREM * 18,
                                fontname="helv", fontsize=10)
        doc.save(out / f"simple_{i:03d}.pdf")
        paths.append(out / f"simple_{i:03d}.pdf")
    return paths


def synthetic_corpus(out: Path, docs: int, pages: int) -> list[Path]:
    from data_engine.synthetic import generate_corpus  # the synthetic generator (multi-script, layouts)

    scripts = ["Latn", "Cyrl", "Grek", "Hans"]
    per = max(1, docs // len(scripts))
    return generate_corpus(out, languages=scripts, n_docs=per, pages_per_doc=pages, seed=0)


def cpu_seconds() -> float:
    """CPU time of this process + its reaped children (engine workers once the pool is shut down).

    On a shared machine wall-clock rates reflect the load; pages per CPU-second is the per-core
    speed an idle core would deliver (minus cache/memory contention).
    """
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def raw_loop(paths: list[Path], dpi: float, pages_per_doc: int | None = None) -> tuple[int, float, float]:
    n, t0, c0 = 0, time.perf_counter(), cpu_seconds()
    for p in paths:
        with pymupdf.open(p) as doc:
            for i, page in enumerate(doc):
                if pages_per_doc is not None and i >= pages_per_doc:
                    break
                page.get_pixmap(dpi=dpi)
                page.get_text("dict")
                n += 1
    return n, time.perf_counter() - t0, cpu_seconds() - c0


class _Timer:
    """Accumulates CPU time per stage name: `with timer("render"): ...`."""

    def __init__(self):
        self.acc: dict[str, float] = {}
        self.name = ""

    def __call__(self, name: str) -> _Timer:
        self.name = name
        return self

    def __enter__(self):
        self.t0 = time.process_time()

    def __exit__(self, *exc):
        self.acc[self.name] = self.acc.get(self.name, 0.0) + time.process_time() - self.t0


def stage_times(paths: list[Path], dpi: float, limit: int = 60, per_doc: int = 3) -> dict[str, float]:
    """CPU ms per page of each engine stage (plus alternative JPEG encoders) on up to `limit`
    pages, the first `per_doc` of each document."""
    import gc

    gc.disable()  # as the engine runs a document's pages (pipeline._gc_paused)
    try:
        return _stage_times(paths, dpi, limit, per_doc)
    finally:
        gc.enable()


def _stage_times(paths: list[Path], dpi: float, limit: int, per_doc: int) -> dict[str, float]:
    timer, n, mupdf_jpeg = _Timer(), 0, []
    flt = coarse.CoarseFilter()
    langid.detect_language("warm up the language model once " * 3)
    zoom = pymupdf.Matrix(dpi / 72, dpi / 72)
    for p in paths:
        with pymupdf.open(p) as doc:
            for k, page in enumerate(doc):
                if n >= limit or k >= per_doc:
                    break
                with timer("extract dict"):
                    d = render.extract_text(page)
                with timer("coarse text+filters"):
                    text = coarse.text_from_dict(d)
                    flt.reason(text)
                with timer("lang+script"):
                    if hasattr(langid, "page_language_and_script"):
                        langid.page_language_and_script(text)
                    else:  # an older engine (the script also measures earlier checkouts)
                        langid.detect_language(text)
                        langid.detect_script(text)
                with timer("render (get_pixmap)"):
                    pix = page.get_pixmap(matrix=zoom, colorspace=pymupdf.csRGB, alpha=False)
                with timer("encode simplejpeg q90"):
                    render.encode_rgb(pix, "jpg", 90)
                rgb = np.frombuffer(pix.samples_mv, np.uint8).reshape(pix.height, pix.width, 3)
                with timer("encode PIL q90"):
                    Image.fromarray(rgb).save(io.BytesIO(), "JPEG", quality=90)
                if n < 3:  # MuPDF's own JPEG path is ~20x slower: sample it on a few pages only
                    t = time.process_time()
                    pix.tobytes("jpg", jpg_quality=90)
                    mupdf_jpeg.append(time.process_time() - t)
                n += 1
    out = {k: v / max(n, 1) * 1e3 for k, v in timer.acc.items()}
    out["encode mupdf tobytes(jpg) [3 pages]"] = sum(mupdf_jpeg) / max(len(mupdf_jpeg), 1) * 1e3
    return out


def label_digest(paths: list[Path], pages_per_doc: int | None) -> tuple[str, int]:
    """(sha256, pages) over what the engine labels each page with (see the module docstring),
    in the engine's own per-page path; works on checkouts that predate `fallback.page_check`."""
    flt = coarse.CoarseFilter()
    h, n = hashlib.sha256(), 0
    for p in paths:
        with pymupdf.open(p) as doc:
            for i, page in enumerate(doc):
                if pages_per_doc is not None and i >= pages_per_doc:
                    break
                try:
                    from data_engine import fallback

                    check, tdict, source = fallback.page_check(page, flt)
                except ImportError:
                    tdict, source = render.extract_text(page), None
                    check = flt.check(coarse.text_from_dict(tdict))
                if hasattr(langid, "page_language_and_script"):
                    ls = langid.page_language_and_script(check[0])
                else:
                    ls = (langid.detect_language(check[0])[0], langid.detect_script(check[0]))
                lines = [[ln.get("text"), [s.get("text") for s in ln["spans"]]]
                         for b in (tdict or {}).get("blocks", ()) for ln in b.get("lines", ())]
                rec = [p.name, i, list(check), source, list(ls), lines]
                h.update(json.dumps(rec, ensure_ascii=False).encode() + b"\n")
                n += 1
    return h.hexdigest(), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pdfs", nargs="*", default=[], help="real PDFs (files, dirs, globs, list files)")
    ap.add_argument("--real", action="store_true", help="the real PDFs of scripts/fetch_real_pdfs.sh (.cache/real_pdfs or $OCRFLOW_REAL_PDFS)")
    ap.add_argument("--pages-per-doc", type=int, default=None, help="first N pages of each document (raw loop and engine alike)")
    ap.add_argument("--simple", action="store_true", help="plain generated pages instead of the synthetic generator")
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--pages", type=int, default=4)
    ap.add_argument("--dpi", type=float, default=144)
    ap.add_argument("--workers", default="1,2", help="end-to-end runs with these worker counts ('': none)")
    ap.add_argument("--fine", default="{}", help="layout source for the fine-label line, JSON (default: picodet)")
    ap.add_argument("--engine-root", help="import data_engine from this checkout instead of this one")
    ap.add_argument("--digest-only", action="store_true", help="print the label digest of the pages and stop")
    ap.add_argument("--skip-fine", action="store_true", help="leave out the fine-label line (PicoDet: ~0.1 s a page)")
    args = ap.parse_args()
    fine_cfg = json.loads(args.fine)
    render.quiet_mupdf()

    tmp = Path(tempfile.mkdtemp(prefix="bench_engine_"))
    try:
        corpora = {}
        if args.real:
            real = Path(os.environ.get("OCRFLOW_REAL_PDFS", Path(__file__).resolve().parents[1] / ".cache" / "real_pdfs"))
            if not any(real.glob("*.pdf")):
                sys.exit(f"no PDFs in {real}: run scripts/fetch_real_pdfs.sh")
            corpora["real PDFs"] = sorted(real.glob("*.pdf"))
        if args.pdfs:
            corpora["given PDFs"] = [Path(f.path) for f in queue.discover_inputs(args.pdfs) if f.exists]
        if not corpora:
            (tmp / "corpus").mkdir()
            t = time.perf_counter()
            gen = simple_corpus if args.simple else synthetic_corpus
            corpora["simple" if args.simple else "synthetic"] = gen(tmp / "corpus", args.docs, args.pages)
            print(f"generated corpus in {time.perf_counter() - t:.1f} s")
        missed = []
        for name, paths in corpora.items():
            digest, n_digest = label_digest(paths, args.pages_per_doc)
            print(f"\n== {name}: label digest over {n_digest} pages: {digest}")
            if args.digest_only:
                continue
            n, dt, cpu = raw_loop(paths, args.dpi, args.pages_per_doc)
            print(f"\n== {name}: {len(paths)} docs, {n} pages, {args.dpi:g} DPI; load average {os.getloadavg()[0]:.1f} "
                  f"on {os.cpu_count()} cores")
            print(f"raw PyMuPDF render+extract, 1 process : {n / dt:7.1f} pages/s wall, {n / cpu:7.1f} pages/CPU-s")
            print("per-page stage CPU times (ms):")
            for k, v in stage_times(paths, args.dpi).items():
                print(f"  {k:<38}{v:8.2f}")
            # Fine labels (layout source: data_engine.fine, default picodet) vs coarse, same pages, 1 worker
            for labels in (["coarse"], ["fine"])[:1 if args.skip_fine else 2]:
                out = tmp / f"out_{name}_{labels[0]}"
                rep = run_engine(dict(input=[str(p) for p in paths], out=str(out), workers=1, dpi=args.dpi,
                                      labels=labels, fine=fine_cfg, progress=False, print_summary=False,
                                      max_pages_per_doc=args.pages_per_doc))
                th = rep["throughput"]
                target = 80 if labels[0] == "coarse" else 15
                if labels[0] == "coarse" and th["pages_per_cpu_s"] < target:
                    missed.append(f"{name}: coarse {th['pages_per_cpu_s']:.1f} < {target} pages per CPU-s")
                print(f"{labels[0]:<6} labels, 1 worker: {th['pages_per_cpu_s']:7.1f} pages per CPU-s of unit work "
                      f"({rep['pages']['seen']} pages, {rep['per_label_kind'].get(labels[0], {}).get('written', 0)} labelled); "
                      f"{th['pages_per_cpu_s'] / (n / cpu):.2f} x raw PyMuPDF; target {target}")
            for w in [int(x) for x in args.workers.split(",") if x]:
                out = tmp / f"out_{name}_{w}"
                t, c0 = time.perf_counter(), cpu_seconds()
                rep = run_engine(dict(input=[str(p) for p in paths], out=str(out), workers=w, dpi=args.dpi,
                                      progress=False, print_summary=False, max_pages_per_doc=args.pages_per_doc))
                wall, cpu = time.perf_counter() - t, cpu_seconds() - c0
                th = rep["throughput"]
                print(f"engine workers={w}: {th['pages_per_s']:7.1f} pages/s, {th['pages_per_s_per_worker']:6.1f} "
                      f"pages/s/worker, {th['pages_per_worker_s']:6.1f} pages per busy worker-s, "
                      f"{th['pages_per_cpu_s']:6.1f} pages per CPU-s of unit work; "
                      f"{rep['pages']['written']}/{rep['pages']['seen']} pages written; total wall {wall:.1f} s "
                      f"(incl. start-up, hashing, assembly {rep['timings_s']['assemble_s']:.1f} s); {rep['pages']['seen'] / cpu:.1f} pages per CPU-s "
                      f"over the whole run incl. worker start-up")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if missed:
        print("target missed: " + "; ".join(missed))
        sys.exit(1)


if __name__ == "__main__":
    main()
