"""Every experiment recipe composes (Hydra compose API) and builds its model; paper numbers.

Paper recipes are built on the meta device (no memory); their sizes are checked against
independent counts (published checkpoint: 3,336,106,240 parameters; OPT-125M's layer stack).
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from train.api import CONF_DIR, build_model, compose, launch_plan
from train.deepspeed_config import build_ds_config

RECIPES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_recipes_present():
    assert {"smoke", "smoke_stage2", "paper_stage1", "paper_stage2", "paper_gundam_m"} <= set(RECIPES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_builds(recipe):
    cfg = compose(recipe)
    for group in ("model", "data", "optim", "deepspeed", "logging", "train"):
        assert dataclasses.is_dataclass(getattr(cfg, group, None)), f"{recipe}: group {group} missing"
    tiny = cfg.model.preset.startswith("tiny")
    model = build_model(cfg, device="cpu" if tiny else "meta")
    n = sum(p.numel() for p in model.parameters())
    assert n > 0
    if int(cfg.train.stage) == 2 and not tiny:
        # the published checkpoints' parameter counts (DeepSeek-OCR; DeepSeek-OCR 2's encoder is larger)
        assert n == {"deepseek-ocr": 3_336_106_240, "deepseek-ocr2": 3_389_119_360}[cfg.model.preset]
    # the DeepSpeed config builds for a world the recipe can run on
    world = cfg.train.pp * (1 if tiny else 40)  # paper: DP 40
    ds = build_ds_config(cfg, world)
    assert ds["train_batch_size"] == cfg.train.global_batch_size


def test_paper_stage1_numbers():
    cfg = compose("paper_stage1")
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.data.seq_len, cfg.train.global_batch_size) == (5e-5, "cosine", 4096, 1280)
    m = build_model(cfg, device="meta")
    lm = m.lm.model.decoder
    assert (len(lm.layers), lm.config.hidden_size, lm.config.num_attention_heads, lm.config.ffn_dim) == (12, 768, 12, 3072)
    # OPT-125M's transformer stack without embeddings: 12 x 7,087,872 + final LayerNorm
    stack = sum(p.numel() for n, p in lm.named_parameters() if not n.startswith(("embed_tokens", "embed_positions")))
    assert stack == 12 * (4 * (768 * 768 + 768) + 2 * 768 * 3072 + 3072 + 768 + 4 * 768) + 2 * 768
    assert m.encoder.projector.layers.out_features == 768  # projector feeds the OPT width
    assert lm.embed_positions.num_embeddings - 2 >= 4096  # OPT's learned positions (offset 2)


def test_paper_stage2_numbers():
    cfg = compose("paper_stage2")
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.data.seq_len) == (3e-5, "step", 8192)
    assert (cfg.train.pp, cfg.deepspeed.zero_stage, cfg.train.global_batch_size) == (4, 1, 640)
    ds = build_ds_config(cfg, world_size=160)  # 20 nodes x 8 GPUs -> DP 40
    assert ds["gradient_accumulation_steps"] * 40 * ds["train_micro_batch_size_per_gpu"] == 640
    assert launch_plan(cfg, gpus_per_node=8)["nproc_per_node"] == 8


def test_gundam_m_continuation_requires_init_from():
    cfg = compose("paper_gundam_m")
    w = cfg.data.mode_weights
    assert w["gundam_m"] > 0 and all(w[k] == 0 for k in w if k != "gundam_m")
    from train.api import train

    with pytest.raises(ValueError, match="init_from"):
        train(cfg)
    assert compose("paper_gundam_m", ["model.init_from=/ckpt"]).model.init_from == "/ckpt"


def test_cpu_launch_plan_uses_one_process_per_stage():
    assert launch_plan(compose("smoke_stage2"), gpus_per_node=0) == {
        "nproc_per_node": 2, "pp": 2, "backend": "gloo", "stage": 2, "out_dir": "runs/smoke_stage2"}
    assert launch_plan(compose("smoke"), gpus_per_node=0)["nproc_per_node"] == 1


def test_launch_help_documents_every_command():
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(["bash", str(root / "launch.sh"), "help"], capture_output=True, text=True, check=True).stdout
    for word in ("demo", "test", "help", "HOSTFILE", *RECIPES):
        assert word in out, word
