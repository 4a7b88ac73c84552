"""Reading from scratch on a CPU: held-out CER after a budget of CPU time, against controls.

Builds easy pages (data_engine/easy_pages.py: large random letters, PDF -> engine -> shards;
held-out pages from another seed), trains stage 1 from scratch with the ``reading_cpu`` recipe
(DeepEncoder, tiny preset, + a 128-wide OPT) in this process, then reads the held-out pages
greedily (train/eval) and prints CER for

* the model after training,
* the same model with blank pages (image-blind baseline: what the label prior alone gives),
* the untrained model (same architecture, fresh init),
* the wrong-page control and the constant output, with word accuracy and the reading verdict
  (data_engine/reading_metrics.py, docs/evaluation.md),

with the training's CPU time (process time of all threads) and wall time. Targets (training
that reads): CER <= 0.15 after <= 15 CPU-minutes of training, and the verdict
"reads". Prints numbers and whether the targets are met; exits 1 when they are not. Nothing is
asserted elsewhere.

    python benchmarks/bench_reading.py                      # nano view, 2 lines x 2 letters
    python benchmarks/bench_reading.py --task micro         # 256 px, 4 x 4 letters (harder)
    python benchmarks/bench_reading.py --steps 800 --out runs/bench_reading

The reading ladder (docs/training.md) runs with
``--rung``: reading pages (data_engine/reading_pages.py) scored on held-out pages in 3 font
families never trained, against the wrong-page control, blank pages, the constant output and
the untrained model (data_engine/reading_metrics.py), plus held-out pages in the trained fonts
and at sizes outside the training range, and a CER-vs-CPU-time curve over the checkpoints:

    python benchmarks/bench_reading.py --rung A     # caps + digits after A1 -> A2 -> A2r -> A3: CER <= 0.10, chain <= 30 CPU-min
    python benchmarks/bench_reading.py --rung C     # stage 2 (MoE, PP=2) from rung A's encoder: <= 0.15
    python benchmarks/bench_reading.py --rung B     # words: CER <= 0.30, word accuracy >= 0.5, 60 CPU-min
    python benchmarks/bench_reading.py --rung ocr2-A2   # DeepSeek-OCR 2 (tiny-ocr2-reader): ocr2-A1 -> ocr2-A2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# name -> (easy page spec, resolution mode, seq_len, default steps, train pages)
TASKS = {
    "nano": (dict(size=128, lines=2, chars=2), "nano", 48, 600, 1600),
    "micro": (dict(size=256, lines=4, chars=4), "micro", 64, 1200, 4000),
}


def run_rung(a: argparse.Namespace) -> int:
    """One rung of the reading ladder (train/ladder.py), after the curriculum rungs it continues:
    train, score against the controls, targets (the CPU budget covers the whole chain)."""
    from train.ladder import RUNGS, chain, run_chain, run_rung_at, with_steps

    out = Path(a.out) / f"rung_{a.rung}"
    if RUNGS[a.rung].stage == 1:  # --steps / --train-pages / overrides apply to the last rung only
        rungs = {**RUNGS, a.rung: with_steps(RUNGS[a.rung], a.steps, a.train_pages,
                                             overrides=(*RUNGS[a.rung].overrides, *a.overrides))}
        print("[bench] chain: " + " -> ".join(r.name for r in chain(a.rung, rungs)))
        res = run_chain(a.rung, a.out, rungs=rungs, seed=a.seed, curve_points=a.curve_points,
                        eval_pages=a.heldout_pages)
    else:
        rung = with_steps(RUNGS[a.rung], a.steps, a.train_pages, overrides=tuple(a.overrides))
        from_run = a.from_run or (Path(a.out) / "rung_A" / "run")
        res = run_rung_at(rung, out, seed=a.seed, from_run=from_run, curve_points=a.curve_points,
                          eval_pages=a.heldout_pages)
    print("\n".join(res["table"]))
    print(f"  {out / 'result.json'}")
    return 0 if res["met"] else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rung", choices=("A", "A1", "A2", "A3", "B", "C", "ocr2-A1", "ocr2-A2"), default=None,
                    help="a rung of the reading ladder (train/ladder.py)")
    ap.add_argument("--from-run", default=None, help="rung C: rung A's run dir (default: OUT/rung_A/run)")
    ap.add_argument("--curve-points", type=int, default=5, help="rungs: checkpoints scored for the CER curve")
    ap.add_argument("--task", choices=sorted(TASKS), default="nano")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the task's)")
    ap.add_argument("--train-pages", type=int, default=None)
    ap.add_argument("--heldout-pages", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench_reading")
    ap.add_argument("--budget-cpu-min", type=float, default=15.0, help="target: training CPU minutes")
    ap.add_argument("--target-cer", type=float, default=0.15)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides of the reading_cpu recipe")
    a = ap.parse_args(argv)
    if a.rung:
        return run_rung(a)

    from data_engine.easy_pages import EasyPageSpec, build_dataset
    from models.config import RESOLUTION_MODES
    from train.api import compose
    from train.eval.suite import console_table, evaluate
    from train.stage1 import run_stage1

    spec_kw, mode, seq_len, steps, train_pages = TASKS[a.task]
    steps = a.steps or steps
    out = Path(a.out) / a.task
    t0 = time.time()
    data = build_dataset(out / "data", a.train_pages or train_pages, a.heldout_pages, EasyPageSpec(**spec_kw), a.seed)
    t_data = time.time() - t0

    weights = ", ".join(f"{m}: {1.0 if m == mode else 0.0}" for m in RESOLUTION_MODES)
    cfg = compose("reading_cpu", [
        f"model.tokenizer={data['tokenizer']}", f"data.shards=[{data['train']}]",
        f"train.reliance.shards=[{data['heldout']}]", f"data.mode_weights={{{weights}}}",
        f"data.seq_len={seq_len}", f"train.steps={steps}", f"train.reliance.every={max(1, steps // 4)}",
        f"train.seed={a.seed}", "train.resume=null", f"train.out_dir={out / 'run'}", "logging.wandb.mode=disabled",
        *a.overrides,
    ])
    cpu0, wall0 = time.process_time(), time.time()
    run_stage1(cfg)
    train_cpu, train_wall = time.process_time() - cpu0, time.time() - wall0

    res = evaluate(str(out / "run"), data["heldout"], modes=[mode], label_kinds=["coarse"],
                   pages=a.heldout_pages, untrained=True, seed=a.seed, out_dir=str(out / "eval"))
    summary = res["report"]["summary"][mode]["coarse"]
    reading = res["report"]["reading"][mode]["coarse"]  # the verdict layout cannot fool (docs/evaluation.md)
    cer = {k: summary[k]["cer"] for k in ("untrained", "trained", "blind")}
    cer.update(wrong_page=reading["wrong_page"]["cer"], constant=reading["constant"]["cer"])
    met = cer["trained"] <= a.target_cer and train_cpu <= a.budget_cpu_min * 60 and reading["reads"]
    result = {
        "task": a.task, "mode": mode, "page": spec_kw, "steps": steps, "train_pages": a.train_pages or train_pages,
        "heldout_pages": a.heldout_pages, "data_s": round(t_data, 1), "train_cpu_s": round(train_cpu, 1),
        "train_wall_s": round(train_wall, 1), "cer": cer,
        "word_accuracy": {k: summary[k]["word_accuracy"] for k in ("untrained", "trained", "blind")},
        "first_letter_accuracy": reading["first_letter_accuracy"], "chance": reading["chance"],
        "loss_ratio": reading["loss_ratio"], "reads": reading["reads"], "verdict": reading["verdict"],
        "target": {"cer": a.target_cer, "cpu_min": a.budget_cpu_min, "reads": True}, "target_met": met,
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(console_table(res["report"]))
    print(f"\nreading benchmark ({a.task}: {spec_kw['lines']} lines x {spec_kw['chars']} letters, {mode} view), "
          f"{steps} steps from scratch")
    print(f"  training: {train_cpu / 60:.1f} CPU-min ({train_wall / 60:.1f} min wall); data: {t_data:.0f} s")
    print(f"  held-out CER: after training {cer['trained']:.3f} | image-blind {cer['blind']:.3f} | "
          f"wrong-page {cer['wrong_page']:.3f} | constant {cer['constant']:.3f} | untrained {cer['untrained']:.3f}")
    print(f"  word accuracy {reading['word_accuracy']:.3f} (needed {reading['chance']['threshold']:.3f}); "
          f"{reading['verdict']}")
    print(f"  target CER <= {a.target_cer} within {a.budget_cpu_min:g} CPU-min, and reads: "
          f"{'met' if met else 'NOT met'}")
    print(f"  {out / 'result.json'}, {out / 'eval' / 'report.md'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
