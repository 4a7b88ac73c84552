"""Stage-2 pipeline (train/pipeline.py) against the unpipelined model.

* in-process: the pipeline units run back to back give the loss and gradients of
  ``DeepseekOCRForCausalLM.forward`` (mixed resolution modes, Gundam tiles, text-only rows);
* distributed (gloo, DS_ACCELERATOR=cpu, worker processes from tests/dist_pipeline_worker.py):
  PP=4 on DeepSpeed reproduces, step by step, the losses of the plain model trained with the
  same AdamW / clipping / schedule in this process; the loss goes down on the fixed batches;
  a run resumed from the step-2 checkpoint reproduces steps 3-4 exactly; PP=2 x DP=2 with
  ZeRO-1 matches the plain model trained on the global batch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dist_pipeline_worker as W

from train.pipeline import (
    PipelineLoss,
    build_units,
    check_partition,
    default_partition,
    pack_images,
    sequential_forward,
)

WORKER = Path(__file__).resolve().parent / "dist_pipeline_worker.py"


def _model_loss(model, b):
    return model(b.input_ids, b.images, labels=b.labels, position_ids=b.position_ids,
                 segment_ids=b.segment_ids).loss


def reference_losses(steps: list[list], cfg: dict, return_model: bool = False):
    """Plain model, no DeepSpeed: mean loss over each step's micro-batches, the same AdamW
    param groups, global-norm clipping and lr schedule as the DeepSpeed runs."""
    from train.lr_schedule import build_lr_scheduler
    from train.optimizer import build_optimizer

    torch.manual_seed(0)
    model = W.tiny_model()
    model.model.sam_model.requires_grad_(False)  # freeze_sam
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(params, cfg["optim"])
    sched = build_lr_scheduler(opt, cfg["optim"], len(steps))
    out = []
    for micro in steps:
        opt.zero_grad()
        total = 0.0
        for b in micro:
            loss = _model_loss(model, b) / len(micro)
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, cfg["optim"]["grad_clip"])
        opt.step()
        sched.step()
        out.append(total)
    return (out, model) if return_model else out


def _launch(scenario: str, out: Path, world: int = 4) -> subprocess.Popen:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, str(WORKER), scenario, str(out), "--world", str(world)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _collect(proc: subprocess.Popen, out: Path, timeout: float = 400) -> list[dict]:
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # the whole group: ranks still starting would keep the output pipe open, and the
        # communicate() below would wait for them for ever
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"distributed workers timed out:\n{log[-4000:]}")
    assert proc.returncode == 0, f"workers failed (rc={proc.returncode}):\n{log[-6000:]}"
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- in-process


def test_partitions():
    assert default_partition(12, 4) == [0, 1, 2, 8, 15]  # paper: SAM | CLIP | 0-5 | 6-11+head
    assert default_partition(12, 2) == [0, 8, 15]
    assert default_partition(12, 1) == [0, 15]
    with pytest.raises(ValueError, match="no default partition"):
        default_partition(12, 3)
    assert check_partition([0, 2, 5, 7], 3, 7) == [0, 2, 5, 7]
    for bad in ([0, 2, 2, 7], [0, 3, 7], [1, 3, 5, 7]):
        with pytest.raises(ValueError, match="unit boundaries"):
            check_partition(bad, 3, 7)


def test_units_per_stage():
    model = W.tiny_model()  # 4 decoder layers -> 7 units
    layers, bounds = build_units(model, default_partition(4, 4))
    assert [type(m).__name__ for m in layers] == [
        "VisionTokenizer", "VisionEmbedding", "DecoderBlock", "DecoderBlock", "LMHead"]
    assert bounds == [0, 1, 2, 3, 5]
    assert (layers[2].start, layers[2].end, layers[3].start, layers[3].end) == (0, 2, 2, 4)
    layers, bounds = build_units(model, [0, 4, 7])  # pp=2: SAM..layer1 | layers 2-3 + head
    assert bounds == [0, 3, 5]


def test_pack_images_layout():
    b = W.fixed_batches()[2]  # small (640) + tiny (512) images
    pixels, meta = pack_images(b.images)
    assert meta.tolist() == [[640, 0, 0, 0, 0], [512, 0, 0, 0, 0]]
    assert pixels.shape == (3 * 640 * 640 + 3 * 512 * 512,)
    assert torch.equal(pixels[: 3 * 640 * 640].view(3, 640, 640), b.images[0].global_view)
    pixels, meta = pack_images([])
    assert pixels.shape == (0,) and meta.shape == (0, 5)


def test_units_match_model_loss_and_grads():
    """Pipeline units in one process == model.forward: loss and every gradient, on a batch
    with two resolution modes in one micro-batch and one with text-only rows."""
    torch.set_num_threads(2)
    for b in (W.fixed_batches()[2], W.fixed_batches()[1]):
        model = W.tiny_model()
        model.model.sam_model.requires_grad_(False)
        ref = _model_loss(model, b)
        ref.backward()
        ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        loss_fn = PipelineLoss()
        loss = sequential_forward(model, b, loss_fn)
        loss.backward()
        torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert not any(n.startswith("model.sam_model") for n in grads)  # frozen
        # text-only micro-batch: the vision tower gets zero gradients (not none, for ZeRO)
        vision = ("model.vision_model.", "model.projector.", "model.image_newline", "model.view_seperator")
        for n in grads.keys() - ref_grads.keys():
            assert not b.images and n.startswith(vision) and not grads[n].any(), n
        assert ref_grads.keys() <= grads.keys()
        for n, g in ref_grads.items():
            torch.testing.assert_close(grads[n], g, rtol=1e-5, atol=1e-7, msg=n)
        # aux loss reached the loss; per-source counts add up
        assert float(loss_fn.stats["aux"]) > 0
        n_src = sum(float(loss_fn.stats[f"n/source/{s}"]) for s in ("ocr", "vision", "text"))
        assert n_src == float(loss_fn.stats["loss_tokens"]) > 0


@torch.no_grad()
def test_units_match_model_gundam():
    """Gundam (tiles + global view of two sizes) next to a Base page, T = 1024."""
    torch.set_num_threads(2)
    b = W.make_batch([[("gundam", (1400, 700), 40), ("base", (300, 500), 30)]], seq_len=1024, seed=5)
    assert b.images[0].tile_grid == (2, 1) and b.images[0].tiles.shape[0] == 2
    model = W.tiny_model()
    torch.testing.assert_close(sequential_forward(model, b), _model_loss(model, b), rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- distributed


def test_pp4_matches_unpipelined_and_resumes(tmp_path):
    out = tmp_path / "pp4.json"
    t0 = time.perf_counter()
    proc = _launch("pp4", out)
    batches = W.fixed_batches()
    # GAS=2 over the cycle b0 b1 | b2 b3 | b0 b1 | b2 b3, computed while the workers run
    ref, ref_model = reference_losses([batches[0:2], batches[2:4], batches[0:2], batches[2:4]],
                                      W.train_cfg(4, 4, 0), return_model=True)
    ranks = _collect(proc, out)
    r0 = ranks[0]
    print(f"\nPP=4 losses {r0['losses']}\nreference   {ref}\nstep times (s) {r0['step_times']}"
          f"\nwall {time.perf_counter() - t0:.1f}s")
    for r in ranks:  # DeepSpeed broadcasts the last stage's loss to every stage
        assert r["losses"] == r0["losses"]
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(ref), rtol=0, atol=2e-5)
    # training works: the second visit of each fixed batch has a lower loss
    assert r0["losses"][2] < r0["losses"][0] - 0.02 and r0["losses"][3] < r0["losses"][1] - 0.02
    # killed after step 2 and resumed: steps 3-4 reproduce the uninterrupted run exactly
    assert r0["resumed_step"] == 2
    assert r0["resumed_losses"] == r0["losses"][2:]
    # loss stats of the last step: aux loss reached the loss; per-source means are finite
    extra = r0["extra"]
    assert extra["aux"] > 0
    assert extra["n/source/ocr"] > 0 and extra["n/source/text"] > 0
    assert extra["n/source/ocr"] + extra["n/source/text"] == pytest.approx(extra["loss_tokens"])
    # the export of the 4-step pipeline (published layout, strict import) is the trained model
    from models.checkpoint import import_checkpoint

    exported = import_checkpoint(tmp_path / "model")
    assert not any("anchor" in n for n, _ in exported.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(_model_loss(exported, batches[0]), _model_loss(ref_model, batches[0]),
                                   rtol=0, atol=1e-4)


def test_pp2_dp2_zero1_matches_global_batch(tmp_path):
    out = tmp_path / "pp2dp2.json"
    proc = _launch("pp2dp2", out)
    b = W.fixed_batches()
    # DP rank r reads micro-batches r, r+2: every step's global batch is all four
    ref = reference_losses([b, b, b], W.train_cfg(2, 4, 1))
    ranks = _collect(proc, out)
    print(f"\nPP=2xDP=2 losses {ranks[0]['losses']}\nreference {ref}\nstep times {ranks[0]['step_times']}")
    assert {(r["stage"], r["dp"], r["zero_stage"]) for r in ranks} == {(0, 2, 1), (1, 2, 1)}
    for r in ranks:  # averaged over DP, broadcast over PP
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(ref), rtol=0, atol=2e-5)
    assert ref[2] < ref[0]


@pytest.mark.parametrize("pp", [2, 4])
def test_per_stage_construction_matches_whole_model(tmp_path, pp):
    """Each rank materialising only its stage (meta model, stage tensors read from the
    checkpoint) trains exactly like today's construction (whole model per rank, stage kept)."""
    from models.checkpoint import export_checkpoint

    export_checkpoint(W.tiny_model(), tmp_path / "init", dtype=torch.float32)
    out = tmp_path / "construct.json"
    ranks = _collect(_launch("construct", out, world=pp), out)
    print(f"\nPP={pp} whole-model losses {ranks[0]['full_losses']}\nper-stage losses      {ranks[0]['stage_losses']}"
          f"\nparameters per stage {[r['stage_params'] for r in ranks]} of {ranks[0]['full_params']}")
    for r in ranks:
        assert r["stage_losses"] == r["full_losses"] == ranks[0]["full_losses"]  # bit-identical
        assert r["meta_params"] == 0 and r["model_params"] == r["full_params"]
    assert sorted(r["stage"] for r in ranks) == list(range(pp))
    # every parameter lives on exactly one stage (+ the 1-element anchor on stage 0)
    assert sum(r["stage_params"] for r in ranks) == ranks[0]["full_params"] + 1
    assert max(r["stage_params"] for r in ranks) < ranks[0]["full_params"]
