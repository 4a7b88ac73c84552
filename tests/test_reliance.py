"""Vision reliance (train/reliance.py): blank pages, and the metric inside a stage-1 run.

The stage-1 run is 2 optimizer steps on the tiny preset (the data helpers of test_stage1):
reliance/* reach metrics.jsonl and the result, real and blank losses differ (the model's
output depends on the image at all), and the image-blind warning fires when asked to.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from PIL import Image, ImageDraw

from models.image_processing import PAD_COLOR, preprocess_image
from train.reliance import WHITE, blank_image
from test_stage1 import stage1_cfg, tiny_data  # noqa: F401  (fixture)


def _page(w: int, h: int) -> Image.Image:
    img = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(img).text((10, 10), "ink on the page", fill="black")
    return img


def test_blank_image_whitens_page_and_keeps_padding():
    tiny = preprocess_image(_page(300, 400), "tiny")  # plain resize: no padding
    b = blank_image(tiny)
    assert b.global_view.shape == tiny.global_view.shape and b.num_tokens == tiny.num_tokens
    assert tiny.global_view.min() < 0 and torch.all(b.global_view == WHITE)

    base = preprocess_image(_page(300, 600), "base")  # aspect kept: grey bars left and right
    pad = PAD_COLOR[0] / 127.5 - 1.0
    grey_cols = ((base.global_view - pad).abs() < 1e-3).all(dim=0).all(dim=0)  # (W,)
    bars = grey_cols[None, :].expand(base.global_view.shape[1:])  # (H, W): whole grey columns
    assert 0.3 < bars.float().mean() < 0.7
    bb = blank_image(base)
    assert torch.equal(bb.global_view[:, bars], base.global_view[:, bars])
    assert torch.all(bb.global_view[:, ~bars] == WHITE)

    gundam = preprocess_image(_page(1400, 1000), "gundam")  # tiles too
    bg = blank_image(gundam)
    assert gundam.tiles.shape[0] > 0 and bg.tiles.shape == gundam.tiles.shape
    assert torch.all(bg.tiles == WHITE)


def test_stage1_logs_vision_reliance_and_warns_when_blind(tiny_data, tmp_path, caplog):  # noqa: F811
    from train.stage1 import run_stage1

    cfg = stage1_cfg(tiny_data, tmp_path, steps=2, save_every=0, resume="null",
                     micro_batch_size=1, global_batch_size=1)
    # min_gap 1.0: every measurement counts as image-blind, so the warning must fire
    rel = cfg.train.reliance  # compose() gives the typed Config: set by attribute
    rel.every, rel.batches, rel.min_gap, rel.patience, rel.shards = 1, 1, 1.0, 2, [tiny_data["shards"]]
    with caplog.at_level(logging.WARNING, logger="train.reliance"):
        result = run_stage1(cfg)
    hist = result["reliance"]
    assert [h["step"] for h in hist] == [1, 2]
    for h in hist:
        real, blank = h["reliance/loss_real"], h["reliance/loss_blank"]
        assert 0 < real < 20 and 0 < blank < 20 and real != blank  # the image reaches the loss
        assert h["reliance/gap"] == pytest.approx(blank - real)
    assert any("not reading the image" in r.getMessage() for r in caplog.records)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all("reliance/ratio" in r for r in rows)
