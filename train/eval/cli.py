"""``python -m train.evaluate`` (= ``python -m train.eval``): the evaluation suite's command line.

    python -m train.evaluate --model runs/demo/stage2/model --shards 'runs/demo/heldout/shards/*.tar' \
        --tokenizer runs/demo/tokenizer --modes tiny,small --labels coarse,fine --untrained \
        --out runs/demo/eval

``--model``: a stage-2 export / published checkpoint directory, or a stage-1 run directory.
Writes ``report.json``, ``report.md`` and PNG plots to ``--out`` and prints the
before/after/image-blind table.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Greedy OCR of held-out pages: CER, word and first-letter accuracy, edit distance, Fox-style "
                    "compression table, per block type (fine labels), repetition, per language; beside an "
                    "image-blind baseline, a wrong-page control and a constant output, with a reading verdict.")
    ap.add_argument("--model", required=True,
                    help="stage-2 export / published checkpoint dir (config.json + safetensors) or a stage-1 run dir")
    ap.add_argument("--shards", required=True, help="held-out shard glob (comma-separate several)")
    ap.add_argument("--tokenizer", default=None, help="dir with tokenizer.json (default: the run's or the model dir)")
    ap.add_argument("--config", default=None, help="stage-1 run config (default: <run>/run_config.yaml or hydra/config.yaml)")
    ap.add_argument("--pages", type=int, default=8, help="held-out pages to read (0 = all)")
    ap.add_argument("--modes", "--mode", default=None,
                    help="resolution modes, e.g. tiny,small (default: tiny for DeepSeek-OCR, ocr2 for DeepSeek-OCR 2)")
    ap.add_argument("--labels", "--label-kind", default="coarse", help="label kinds: coarse, fine or coarse,fine")
    ap.add_argument("--train-shards", default=None,
                    help="training shard glob (comma-separate several) for the constant-output baseline (the most "
                         "frequent training label); default: the run config's data.shards, else the held-out references")
    ap.add_argument("--untrained", action="store_true", help="add the untrained row: same architecture, fresh init")
    ap.add_argument("--seed", type=int, default=0, help="seed of the untrained model's init")
    ap.add_argument("--budget-factor", type=float, default=1.5,
                    help="decoding budget per page = factor x reference tokens + margin")
    ap.add_argument("--budget-margin", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="cap on any page's budget (default: none)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--no-repeat-ngram", type=int, default=20, help="0 disables the no-repeat n-gram processor")
    ap.add_argument("--fox-bins", default=None, help="text-token bin edges, e.g. 600,700,800 (default: 100-wide)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None,
                    help="report folder (report.json, report.md, *.png); a path ending in .json: that file only")
    ap.add_argument("--no-plots", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> dict:
    from pathlib import Path

    from .suite import console_table, evaluate

    a = parser().parse_args(argv)
    out, json_only = a.out, bool(a.out and a.out.endswith(".json"))
    shards = _csv(a.shards) if "," in a.shards else a.shards
    train_shards = (_csv(a.train_shards) if "," in a.train_shards else a.train_shards) if a.train_shards else None
    res = evaluate(a.model, shards, train_shards=train_shards, tokenizer=a.tokenizer, config=a.config, pages=a.pages or None, device=a.device,
                   modes=_csv(a.modes) if a.modes else None, label_kinds=_csv(a.labels), untrained=a.untrained, seed=a.seed,
                   out_dir=None if json_only or not out else out, plots=not a.no_plots,
                   fox_edges=[int(x) for x in _csv(a.fox_bins)] if a.fox_bins else None,
                   budget_factor=a.budget_factor, budget_margin=a.budget_margin, max_new_tokens=a.max_new_tokens,
                   batch_size=a.batch_size, no_repeat_ngram=a.no_repeat_ngram,
                   progress=lambda s: print(s, file=sys.stderr))
    if json_only:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({**res["report"], "pages": res["rows"]}, ensure_ascii=False, indent=1))
    print(console_table(res["report"]))
    for s in [r for r in res["rows"] if r["variant"] == "trained"][:2]:
        print(f"  [{s['key']}] ref:  {s['ref'][:90]!r}\n  {' ' * (len(s['key']) + 2)} pred: {s['pred'][:90]!r}")
    if out:
        print(f"  report: {out}" + ("" if json_only else f"/report.md (+ report.json, plots)"))
    return res


if __name__ == "__main__":
    main()
