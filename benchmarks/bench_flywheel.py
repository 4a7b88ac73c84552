"""Flywheel benchmark: runs the rounds on the embedded default (or overrides) and prints, per
round and language, the recognizer's CER on held-out image-only line patches (with the
image-blind control), Tesseract's CER on the same patches, patches accepted / rejected (by
reason) and the CER of accepted labels; then checks the flywheel's targets:

* round 0 (text-layer patches only) reaches CER <= 0.10 on held-out Latin-script patches;
* on the language seeded with the fewest patches, CER after round 2 <= 0.8 x CER after round 0.

    python benchmarks/bench_flywheel.py [hydra overrides of conf/flywheel.yaml]
    python benchmarks/bench_flywheel.py out=runs/bench_flywheel 'flywheel.recognizer.steps=[300,150,150]'
    # the measured runs (docs/flywheel.md): the embedded default with 2000 steps in round 0 and
    # the learning curve on the gold lines; then 4x the Latin documents and 2900 steps
    python benchmarks/bench_flywheel.py out=runs/bench_flywheel flywheel.threads=1 \
        'flywheel.recognizer.steps=[2000,300,300]' \
        'flywheel.recognizer.overrides=["train.reliance.shards=[runs/bench_flywheel/data/gold/eng_Latn.tar]","train.reliance.every=500"]'
    python benchmarks/bench_flywheel.py out=runs/bench_flywheel_600 flywheel.threads=1 flywheel.collage=0 \
        'flywheel.languages=[{lang: eng-Latn, digital: 600, scan: 3, gold: 2},{lang: hin-Deva, digital: 30, scan: 8, gold: 2}]' \
        'flywheel.recognizer.steps=[2900,300,300]' \
        'flywheel.recognizer.overrides=["train.reliance.shards=[runs/bench_flywheel_600/data/gold/eng_Latn.tar]","train.reliance.every=500"]'
    # -> Latin gold CER 0.084 after round 0, trained in 747 CPU-s (docs/flywheel.md)

CPU time is process time (the machine may be shared), printed per round.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def reliance_curve(metrics: Path) -> list[tuple[int, float, float]]:
    """(step, held-out loss with real patches, with blank ones) from a round's training log."""
    if not metrics.is_file():
        return []
    rows = (json.loads(line) for line in metrics.read_text().splitlines() if "reliance/loss_real" in line)
    return [(d["step"], d["reliance/loss_real"], d["reliance/loss_blank"]) for d in rows]


def main(argv: list[str]) -> int:
    from hydra import compose, initialize_config_dir

    from train.flywheel import run_flywheel
    from train.flywheel.config import register
    from train.flywheel.report import table

    register()

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        cfg = compose(config_name="flywheel", overrides=["out=runs/bench_flywheel", *argv])
    t0, w0 = time.process_time(), time.time()
    report = run_flywheel(cfg)
    rounds = report["rounds"]
    print("\n" + table(rounds))
    for r in rounds:
        print(f"round {r['round']}: train {r['train'].get('steps')} steps, final loss "
              f"{r['train'].get('final_loss'):.3f}, round CPU {r['cpu_s_round_this_process']:.0f} s")
        curve = reliance_curve(Path(cfg.out) / f"round_{r['round']}" / "train" / "metrics.jsonl")
        if curve:  # measured when the recipe's overrides set train.reliance.shards (e.g. the gold shard)
            print("  held-out loss real / blank: " + ", ".join(f"step {s} {a:.2f}/{b:.2f}" for s, a, b in curve))
    print(f"total: {time.process_time() - t0:.0f} CPU-s in this process, {time.time() - w0:.0f} s wall")
    langs = list(rounds[0]["languages"])
    ok = True
    latin = [s for s in langs if s.endswith("Latn")]
    for s in latin:
        c = rounds[0]["languages"][s]["recognizer"].get("cer")
        good = c is not None and c <= 0.10
        ok &= good
        print(f"target round-0 CER <= 0.10 on {s}: {c if c is None else round(c, 3)} -> {'PASS' if good else 'FAIL'}")
    few = min(langs, key=lambda s: rounds[0]["languages"][s]["seed_patches"])
    if len(rounds) > 2:
        c0 = rounds[0]["languages"][few]["recognizer"].get("cer")
        c2 = rounds[2]["languages"][few]["recognizer"].get("cer")
        good = c0 is not None and c2 is not None and c2 <= 0.8 * c0
        ok &= good
        print(f"target round-2 CER <= 0.8 x round-0 CER on {few} (fewest seed patches): {c0} -> {c2} "
              f"-> {'PASS' if good else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
