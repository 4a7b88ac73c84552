"""Training reads: a short stage-1 run from scratch relies on the image, not only on its labels.

The control is the same model with blank pages (train/reliance.py): a model that learnt only
the label distribution has the same held-out loss with real and with blank images (ratio
1.000, which is what stage 1 gave before DeepEncoder had its own learning rate: with
``optim.encoder_lr_scale=1.0`` this run stays image-blind). Data: easy pages (a few large
random letters, data_engine/easy_pages.py) through the real engine, held-out pages drawn with
another seed, so neither the loss nor the CER can come from memorised pages.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("deepspeed")


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    from data_engine.easy_pages import build_dataset

    return build_dataset(tmp_path_factory.mktemp("easy"), train_pages=600, heldout_pages=32, seed=0)


def _reliance(metrics_path) -> list[dict]:
    rows = [json.loads(line) for line in open(metrics_path)]
    return [r for r in rows if "reliance/ratio" in r]


def test_short_stage1_run_reads_held_out_easy_pages(easy, tmp_path):
    from train.api import compose
    from train.eval.suite import evaluate
    from train.stage1 import run_stage1

    out = tmp_path / "run"
    cfg = compose("reading_cpu", [
        f"model.tokenizer={easy['tokenizer']}", f"data.shards=[{easy['train']}]",
        f"train.reliance.shards=[{easy['heldout']}]", "train.reliance.every=100",
        "train.steps=200", "train.seed=0", "train.resume=null", "logging=disabled", f"train.out_dir={out}",
    ])
    run_stage1(cfg)

    rel = _reliance(out / "metrics.jsonl")
    assert [r["step"] for r in rel] == [100, 200]
    last = rel[-1]
    # held-out loss with real pages at most 0.8 x the loss with blank pages
    assert last["reliance/loss_real"] <= 0.8 * last["reliance/loss_blank"], last

    # and it reads them: greedy OCR of held-out pages against the image-blind row
    res = evaluate(str(out), easy["heldout"], modes=["nano"], label_kinds=["coarse"], pages=32,
                   out_dir=None, plots=False)
    summary = res["report"]["summary"]["nano"]["coarse"]
    trained, blind = summary["trained"]["cer"], summary["blind"]["cer"]
    assert blind > 0.8, summary  # random letters: without the image there is nothing to read
    assert trained <= 0.5 * blind, summary
