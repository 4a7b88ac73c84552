"""benchmarks/gpu_check.py: the dry run (CPU, tiny preset) end to end, so the device check
cannot rot, and the FLOP counts against hand counts on tiny configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.check import flops
from models.config import ClipConfig, SamConfig, get_preset

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_executes_every_section_and_writes_the_report(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # --deadline: a net for a loaded machine (wall time); the CPU time is asserted below.
    # --peak-tflops: a nominal peak, so the MFU lines run as on a card (a CPU is in no peak table)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry", "--out", str(tmp_path),
                           "--deadline", "900", "--peak-tflops", "1"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["complete"] and report["meta"]["dry"]
    sections = report["sections"]
    assert [s["status"] for s in sections.values()] == ["ok"] * 5, sections
    checks = sections["correctness"]["results"]
    assert len(checks) == 7 and all(c["passed"] for c in checks), checks
    (enc,) = sections["encoder speed"]["results"]
    _assert_encoder_row(enc, "micro")
    (dec,) = sections["decoder speed"]["results"]
    assert dec["max_abs_diff_fp32"] < 1e-4 and dec["ocrflow_tokens_per_s"] > 0 and dec["transformers_tokens_per_s"] > 0
    assert dec["ocrflow_experts"] == "grouped" and dec["ocrflow_mfu"] > 0 and dec["ratio"] > 0
    runs = sections["training"]["results"]
    assert [(r["stage"], r["preset"], r["dtype"]) for r in runs] == [(1, "tiny", "bf16"), (2, "tiny", "bf16")]
    for r in runs:
        assert r["steps"] == 20 and r["finite"] and r["decreasing"] and r["resume_bit_exact"], r
    (rung,) = sections["rung A"]["results"]
    # the wall-clock limit ended training (rung A's 2,400-step schedule is never reached in 10 s)
    assert rung["preset"] == "tiny-reader" and rung["dtype"] == "bf16" and rung["stopped_by"] == "train.max_wall_s"
    assert 1 <= rung["steps"] < rung["planned_steps"] == 2400 and rung["heldout_pages"] == 8, rung
    for key in ("cer", "wrong_page_cer", "blank_cer", "constant_cer", "untrained_cer"):
        assert rung[key] is not None and rung[key] >= 0, (key, rung)
    assert 0 <= rung["word_accuracy"] <= 1 and rung["word_threshold"] is not None and rung["pages_cpu_s"] > 0
    targets = report["targets"]
    assert [t["met"] for t in targets] == ["not applicable on CPU"] * 3 and all(t["value"] > 0 for t in targets)
    md = (tmp_path / "gpu_check.md").read_text()
    assert "not applicable on CPU" in md and "| micro |" in md
    assert "| tiny-reader (bf16) |" in md and "train.max_wall_s" in md
    assert not (tmp_path / "work").exists()  # training data, checkpoints and rung A's pages removed
    # the dry run's CPU time in its own process (wall varies with load); the data engine's, the
    # loader's and the page build's processes are reported beside it (cpu_children_s)
    meta = report["meta"]
    assert meta["cpu_s"] < 120 and meta["cpu_children_s"] > 0, meta


def _assert_encoder_row(enc: dict, mode: str) -> None:
    assert enc["mode"] == mode, enc
    assert enc["sam_max_abs_diff"] < 1e-4 and enc["sam_images_per_s"] > 0 and enc["deepencoder_images_per_s"] > 0
    assert enc["sam_mfu"] > 0 and enc["deepencoder_mfu"] > 0 and enc["sam_ratio"] > 0


@pytest.mark.slow
def test_dry_encoder_section_runs_gundam_tiles(tmp_path):
    """The encoder section's tiled path on CPU (the 1024 px global view + 6 tiles of an A4 page):
    measured 43 CPU-s, so it is left out of the default dry run and run here."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry", "--out", str(tmp_path),
                           "--sections", "encoder speed", "--modes", "gundam", "--peak-tflops", "1", "--deadline", "1800"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (enc,) = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["encoder speed"]["results"]
    _assert_encoder_row(enc, "gundam")
    assert enc["views"] == 7 and enc["view_sides"] == [640, 1024]  # 6 tiles + the global view


@pytest.mark.slow
def test_dry_training_resumes_the_published_group_bit_exactly(tmp_path):
    """The stand-in of the card's `deepseek-ocr-slice` run: tiny in the published group (dropout
    0.1, gradient checkpointing, a narrower stage-1 LM) falls and resumes bit-exactly in both stages
    (stage 1 did not before the loader stopped drawing from the global torch RNG; ~100 CPU-s)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry", "--out", str(tmp_path),
                           "--sections", "training", "--published-group", "--deadline", "1800"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["training"]["results"]
    assert [(r["stage"], r["model_group"]) for r in runs] == [(1, "tiny"), (2, "tiny"), (1, "deepseek_ocr"),
                                                               (2, "deepseek_ocr")], runs
    for r in runs:
        assert r["steps"] == 20 and r["finite"] and r["decreasing"] and r["resume_bit_exact"], r


def test_no_cuda_without_dry_is_a_clear_exit():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    from benchmarks.gpu_check import main

    assert main(["--out", "/nonexistent/never-written"]) == 2


def test_views_are_grouped_by_side_with_gundam_tiles():
    """The encoder section's SAM batches: Gundam's global view and its tiles, by side (the
    dry run's CPU modes have no tiles; this covers the tiled branch without a model)."""
    from benchmarks.check.speed import _pixels_by_side, mode_views

    images = mode_views("gundam", 2, "cpu", torch.float32)
    pixels = _pixels_by_side(images)
    assert [tuple(p.shape) for p in pixels] == [(12, 3, 640, 640), (2, 3, 1024, 1024)]


def test_decoder_flops_match_a_hand_count():
    c = get_preset("tiny").decoder  # D 64, 4 heads x 16, I 128, 1 dense + 3 MoE, E 8, k 2, 2 shared x 32, V 1024
    T = 8
    attn = 4 * (2 * 64 * 64) + 2 * 2 * 64 * (T + 1) / 2  # q, k, v, o + causal q k^T and p v
    dense = 2 * 3 * 64 * 128
    moe = 2 * 64 * 8 + 2 * (2 * 3 * 64 * 32) + 2 * 3 * 64 * 64  # router, 2 routed, shared (2 x 32 wide)
    head = 2 * 64 * 1024
    per_token = 4 * attn + dense + 3 * moe + head
    assert per_token == 466_432
    assert flops.decoder_forward_flops_per_token(c, T) == per_token
    assert flops.decoder_train_flops(c, batch=3, seq_len=T) == 3 * 3 * T * per_token


def test_sam_and_clip_flops_match_a_hand_count():
    sam = SamConfig(width=32, depth=2, num_heads=2, window_size=3, global_attn_indexes=(1,),
                    neck_channels=16, downsample_channels=(32, 64))
    # 128 px: 8 x 8 patches (64 tokens); windowed block 0 pads 8 -> 9 (81 tokens, 3 x 3 windows)
    patch = 2 * 64 * (3 * 256) * 32
    win = 2 * 81 * 32 * 96 + 2 * 81 * 32 * 32 + 4 * 81 * 9 * 32 + 2 * 81 * 6 * 32
    glob = 2 * 64 * 32 * 96 + 2 * 64 * 32 * 32 + 4 * 64 * 64 * 32 + 2 * 64 * 16 * 32
    mlp = 2 * (2 * 2 * 64 * 32 * 128)
    neck = 2 * 64 * 32 * 16 + 2 * 64 * 16 * 16 * 9
    compress = 2 * 16 * 16 * 32 * 9 + 2 * 4 * 32 * 64 * 9
    assert flops.sam_forward_flops(sam, 128) == patch + win + glob + mlp + neck + compress
    cfg = get_preset("tiny").replace(sam=sam, clip=ClipConfig(width=64, layers=1, heads=2, mlp_dim=128))
    n = 4 + 1  # 2 x 2 compressor tokens + class token
    clip = 2 * n * 64 * 192 + 2 * n * 64 * 64 + 4 * n * n * 64 + 4 * n * 64 * 128
    proj = 2 * 4 * 128 * 64
    assert flops.clip_projector_forward_flops(cfg, 4) == clip + proj
    assert flops.encoder_train_flops(cfg, [128]) == 3 * (patch + win + glob + mlp + neck + compress + clip + proj)


def test_peak_flops_and_mfu():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert flops.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert flops.peak_flops("NVIDIA H200") == 989e12 and flops.peak_flops("some CPU") is None
    assert flops.mfu(989e12 * 0.5, 1.0, 989e12) == 0.5 and flops.mfu(1.0, 1.0, None) is None
