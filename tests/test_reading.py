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


def test_easy_page_labels_match_what_was_drawn_and_poppler(easy):
    """The engine's coarse labels equal the drawn letters; poppler's pdftotext (an independent
    reader of the same PDFs) agrees, so the labels are the pages' text, not the generator's say-so."""
    import glob
    import shutil
    import subprocess
    from pathlib import Path

    import webdataset as wds

    root = Path(easy["train"]).parents[2]
    gt = {}
    for f in glob.glob(str(root / "pdfs" / "*.gt.json")):
        g = json.loads(Path(f).read_text())
        gt.update({(Path(f).name.replace(".gt.json", ".pdf"), p["page"]): p["text"] for p in g["pages"]})
    n = 0
    for s in wds.WebDataset(sorted(glob.glob(easy["train"])), shardshuffle=False):
        meta = json.loads(s["json"])
        assert meta["labels"]["coarse"]["text"] == gt[(Path(meta["source_path"]).name, meta["page"])]
        assert meta["image_size"] == [128, 128]
        n += 1
    assert n == len(gt) == 600
    if shutil.which("pdftotext") is None:
        pytest.skip("poppler-utils (pdftotext) not installed: the independent check is skipped")
    pdf = sorted((root / "pdfs").glob("*.pdf"))[0]
    pages = subprocess.run(["pdftotext", "-layout", "-l", "20", str(pdf), "-"], capture_output=True, text=True,
                           check=True).stdout.split("\f")
    for i, text in enumerate(pages[:20]):
        assert text.split() == gt[(pdf.name, i)].split("\n"), (i, text)


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
        "train.steps=250", "train.seed=0", "train.resume=null", "logging=disabled", f"train.out_dir={out}",
    ])
    run_stage1(cfg)

    rel = _reliance(out / "metrics.jsonl")
    assert [r["step"] for r in rel] == [100, 200, 250]
    last = rel[-1]
    # held-out loss with real pages at most 0.8 x the loss with blank pages (measured over seeds:
    # 0.26-0.34 at step 250; CER 0.14-0.16 against 0.95-0.96 blind)
    assert last["reliance/loss_real"] <= 0.8 * last["reliance/loss_blank"], last

    # and it reads them: greedy OCR of held-out pages against the image-blind row
    res = evaluate(str(out), easy["heldout"], modes=["nano"], label_kinds=["coarse"], pages=32,
                   out_dir=None, plots=False)
    summary = res["report"]["summary"]["nano"]["coarse"]
    trained, blind = summary["trained"]["cer"], summary["blind"]["cer"]
    assert blind > 0.8, summary  # random letters: without the image there is nothing to read
    assert trained <= 0.5 * blind, summary
    # and the verdict that layout cannot fool: against the wrong-page control and chance (docs/evaluation.md)
    reading = res["report"]["reading"]["nano"]["coarse"]
    assert reading["reads"], reading["verdict"]
