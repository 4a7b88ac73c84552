"""Flywheel patch data, lines vs blocks: what the text layer and the detector give per patch kind.

Generates synthetic line pages set as paragraphs (``lines_per_block``), cuts line and block
patches (``flywheel.patches=both``) with the PP-OCRv4 detector on the image-only pages, and
prints per language and kind: seed patches (trusted text-layer lines / runs of trusted lines),
refused lines and runs, seed-label CER against the generator's ground truth, pool patches and
the share of them matched to ground truth (detector lines at IoU >= 0.5; detector line groups
to the ground-truth lines inside them), gold patches; then the CPU-seconds of the data step.

    python benchmarks/bench_flywheel_patches.py [--out DIR] [--digital 6] [--scan 3] [--lines 2 4]

CPU time is process time (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str]) -> int:
    from data_engine.flywheel.dataset import _truth_of, generate_default_corpus, prepare_data
    from data_engine.flywheel.detect import get_line_source
    from data_engine.flywheel.patches import BLOCK, LINE, read_patch_shard
    from data_engine.metrics import corpus_cer

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/bench_flywheel_patches")
    ap.add_argument("--languages", nargs="+", default=["eng-Latn", "hin-Deva"])
    ap.add_argument("--digital", type=int, default=6)
    ap.add_argument("--scan", type=int, default=3)
    ap.add_argument("--gold", type=int, default=1)
    ap.add_argument("--lines", type=int, nargs=2, default=[2, 4], help="lines per paragraph (lo hi)")
    args = ap.parse_args(argv)

    out = Path(args.out)
    langs = {s: {"digital": args.digital, "scan": args.scan, "gold": args.gold} for s in args.languages}
    t0 = time.process_time()
    generate_default_corpus(out / "pdfs", langs, pages_per_doc=2, seed=0, lines_per_block=tuple(args.lines))
    t_gen = time.process_time() - t0
    counts = prepare_data(out / "data", langs, pdf_dir=out / "pdfs", detector=get_line_source("ppocr_det", threads=1),
                          kinds=(LINE, BLOCK), tokenizer_vocab=400, log=lambda m: None)
    t_data = time.process_time() - t0 - t_gen
    refused = [json.loads(x) for x in (out / "data" / "seed_refused.jsonl").read_text(encoding="utf-8").splitlines()]
    truth = json.loads((out / "data" / "pool_truth.json").read_text(encoding="utf-8"))

    print("| language | kind | seed | refused | seed-label CER | pool | pool with truth | gold |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in langs:
        key = spec.replace("-", "_")
        seed = list(read_patch_shard(out / "data" / "seed" / f"{key}.tar"))
        pool = list(read_patch_shard(out / "data" / "pool" / f"{key}.tar"))
        gts = {}
        for kind in (LINE, BLOCK):
            pairs = []
            for p in (p for p in seed if p.kind == kind):
                gt_path = Path(p.source_path).with_suffix(".gt.json")
                if p.doc_id not in gts:
                    gts[p.doc_id] = json.loads(gt_path.read_text(encoding="utf-8"))
                t = _truth_of(p, gts[p.doc_id]["pages"][p.page]["blocks"])
                if t is not None:
                    pairs.append((t, p.text))
            lang = spec.split("-")[0]
            n_ref = Counter(r["reason"] for r in refused if r["lang"] == lang and r["kind"] == kind)
            kp = [p for p in pool if p.kind == kind]
            cer = corpus_cer(pairs)
            print(f"| {spec} | {kind} | {sum(p.kind == kind for p in seed)} | {sum(n_ref.values())} "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(n_ref.items())) or '-'}) | "
                  f"{'-' if cer is None else f'{cer:.3f}'} (n={len(pairs)}) | {len(kp)} | "
                  f"{sum(p.key in truth for p in kp)} | {counts[spec]['by_kind'][kind]['gold']} |")
    print(f"\nCPU-s: generation {t_gen:.1f}, data step (render, cut, detect, tokenizer) {t_data:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
