"""Data sources throughput: samples per CPU-second for each generator (data_engine/sources).

    python benchmarks/bench_sources.py                      # every embedded generator, 40 items each
    python benchmarks/bench_sources.py --count 200 --only charts,chemistry
    python benchmarks/bench_sources.py --end-to-end         # also through write_source (encode + tar)

For each source: the set-up cost (imports, model load: PP-OCR for scene text) once, then
``make`` on ``count`` items timed with process CPU time (``time.process_time``), single
threaded (OMP/onnxruntime intra-op threads = 1), so numbers are per core and do not depend on
other load on the machine the way wall time does. ``--end-to-end`` adds PNG/JPEG encoding and
the tar writer (what a production run pays). grounding and captions read inputs: grounding
is measured on pages the real data engine makes from synthetic PDFs (set-up, not timed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_engine.sources import get_source  # noqa: E402
from data_engine.sources.base import stable_rng  # noqa: E402
from data_engine.sources.writer import write_source  # noqa: E402

GENERATORS = ("charts", "chemistry", "geometry", "formulas", "tables", "scene", "grounding")


def _pages(tmp: Path, n: int) -> str:
    """Engine shards with fine labels: synthetic PDFs through the real data engine (set-up)."""
    from data_engine.pipeline import run_engine
    from data_engine.synthetic import generate_corpus

    generate_corpus(tmp / "pdfs", None, ["Latn"], n_docs=max(1, n // 4), pages_per_doc=4, seed=0)
    run_engine({"input": str(tmp / "pdfs"), "out": str(tmp / "engine"), "labels": ["coarse", "fine"],
                "dpi": 72, "workers": 1, "progress": False, "print_summary": False})
    return str(tmp / "engine" / "shards" / "*.tar")


def bench(name: str, count: int, end_to_end: bool, tmp: Path) -> dict:
    c0 = time.process_time()
    opts = {"input": _pages(tmp, max(count, 2))} if name == "grounding" else {}
    src = get_source(name, **opts)
    if name == "scene":  # load the ONNX models now: set-up, not per sample
        from data_engine.sources.scene_text import ocr_engine
        ocr_engine()
    setup = time.process_time() - c0
    n_items = src.num_items() or count
    c0 = time.process_time()
    made = 0
    for i in range(min(count, n_items)):
        try:
            src.make(i, stable_rng(0, name, i))
            made += 1
        except Exception as e:  # noqa: BLE001 - a benchmark reports skips, it does not stop
            print(f"  {name}[{i}] skipped: {e}")
    cpu = time.process_time() - c0
    row = {"source": name, "items": made, "setup_cpu_s": setup, "make_cpu_s": cpu,
           "samples_per_cpu_s": made / cpu if cpu else float("nan")}
    if end_to_end:
        c0 = time.process_time()
        rep = write_source(get_source(name, **opts), tmp / f"out-{name}", min(count, n_items), seed=1,
                           shard_size=max(1, count), progress=False)
        row["write_samples_per_cpu_s"] = rep["written"] / (time.process_time() - c0)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=40)
    ap.add_argument("--only", default=",".join(GENERATORS))
    ap.add_argument("--end-to-end", action="store_true")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.only.split(","):
            rows.append(bench(name, a.count, a.end_to_end, Path(tmp)))
            r = rows[-1]
            print(f"{r['source']:<10} {r['samples_per_cpu_s']:8.2f} samples/CPU-s  ({r['items']} items, "
                  f"{r['make_cpu_s']:.2f} CPU-s; set-up {r['setup_cpu_s']:.2f} CPU-s)"
                  + (f"  end to end {r['write_samples_per_cpu_s']:.2f}/CPU-s" if "write_samples_per_cpu_s" in r else ""),
                  flush=True)


if __name__ == "__main__":
    main()
