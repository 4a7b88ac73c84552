"""DeepSeek-OCR 2 training on CPU (``tiny-ocr2``): the pipeline units equal the unpipelined model
(fast), and the three recipes chained (slow): stage 1 (DeepEncoder V2 + compact LM) -> stage 2
(PP=2, two gloo processes, killed after step 2 and resumed to the same losses) -> stage 3
(encoder frozen, from the stage-2 export)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.config import get_preset
from models.deepseek_ocr import DeepseekOCRForCausalLM

ROOT = Path(__file__).resolve().parents[1]


def _v2_batch(seed: int = 0):
    """A packed batch of two rows: two ocr2_micro pages + text, one ocr2 page with 2 tiles."""
    from PIL import Image

    from models.image_processing import preprocess_image
    from train.data import MODES, PackedBatch

    cfg = get_preset("tiny-ocr2")
    g = torch.Generator().manual_seed(seed)
    rows = [[("ocr2_micro", (300, 80), 6), ("ocr2_micro", (200, 90), 5)], [("ocr2", (900, 500), 4)]]
    T = 2 + max(sum(1 + preprocess_image(Image.new("RGB", s), m).num_tokens + n + 1 for m, s, n in r) for r in rows)
    B = len(rows)
    ids = torch.full((B, T), cfg.pad_token_id)
    labels = torch.full((B, T), -100)
    pos, seg = torch.zeros(B, T, dtype=torch.long), torch.zeros(B, T, dtype=torch.long)
    src, mode_ids = torch.full((B, T), -1), torch.full((B, T), -1)
    images = []
    for b, row in enumerate(rows):
        t = 0
        for k, (mode, size, n) in enumerate(row):
            img = preprocess_image(Image.effect_noise(size, 60).convert("RGB"), mode)
            images.append(img)
            text = torch.randint(16, cfg.decoder.vocab_size, (n,), generator=g)
            seq = torch.cat([torch.tensor([cfg.bos_token_id]), torch.full((img.num_tokens,), cfg.image_token_id),
                             text, torch.tensor([cfg.eos_token_id])])
            L = len(seq)
            ids[b, t:t + L], pos[b, t:t + L], seg[b, t:t + L] = seq, torch.arange(L), k + 1
            labels[b, t + L - n - 1:t + L] = seq[-n - 1:]
            src[b, t:t + L], mode_ids[b, t:t + L] = 0, MODES.index(mode)
            t += L
    return PackedBatch(input_ids=ids, labels=labels, position_ids=pos, segment_ids=seg, images=images,
                       source_ids=src, mode_ids=mode_ids)


def test_pipeline_units_match_model_loss_and_grads():
    from models.deepseek_ocr import causal_lm_loss
    from train.pipeline import PipelineLoss, build_units, default_partition, sequential_forward

    torch.manual_seed(0)
    model = DeepseekOCRForCausalLM(get_preset("tiny-ocr2"))
    batch = _v2_batch()
    out = model(batch.input_ids, images=batch.images, position_ids=batch.position_ids,
                segment_ids=batch.segment_ids)
    ref = causal_lm_loss(out.logits, batch.labels, batch.segment_ids) + out.aux_loss
    ref.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss = sequential_forward(model, batch, PipelineLoss())
    loss.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert {n for n, p in model.named_parameters() if p.grad is not None} == set(grads)
    for n, p in model.named_parameters():
        if n in grads:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6, msg=n)
    layers, _ = build_units(model, default_partition(model.cfg.decoder.num_hidden_layers, 4))
    names = set(layers[1].state_dict())  # PP1: flow encoder + projector + separator + embedding
    assert any(n.startswith("qwen2_model.layers.") for n in names) and "view_seperator" in names
    assert not any(n.startswith(("vision_model.", "image_newline")) for n in names)


def _overrides(data, out_dir: Path, **train) -> list[str]:
    over = [f"model.tokenizer={data['tokenizer']}", f"data.shards=[{data['shards']}]", "model=tiny_ocr2",
            "model.dtype=fp32", "deepspeed=zero1", "deepspeed.dtype=fp32", "train.backend=gloo",
            "data.seq_len=256", "data.num_workers=0", "logging=disabled", f"train.out_dir={out_dir}",
            "data.mode_weights={tiny: 0.0, small: 0.0, base: 0.0, large: 0.0, gundam: 0.0, gundam_m: 0.0, "
            "ocr2: 0.0, ocr2_768: 0.0, ocr2_micro: 1.0}",
            "optim.lr=1.0e-3", "optim.warmup_steps=1", "train.micro_batch_size=1", "train.reliance.every=0"]
    return over + [f"train.{k}={v}" for k, v in train.items()]


def _torchrun(recipe: str, overrides: list[str], nproc: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "train.cli", f"experiment={recipe}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(l for l in proc.stdout.splitlines()[::-1] if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.mark.slow
def test_tiny_ocr2_three_stages_with_resume(tmp_path):
    from test_stage1 import train_tiny_tokenizer, write_tiny_shards
    from train.api import compose
    from train.stage1 import run_stage1

    shards, texts = write_tiny_shards(tmp_path / "shards", n=8)
    data = {"shards": shards, "tokenizer": str(train_tiny_tokenizer(tmp_path / "tok", texts))}

    s1 = run_stage1(compose("ocr2_stage1", _overrides(data, tmp_path / "s1", steps=3, global_batch_size=2,
                                                       save_every=0)))
    assert s1["steps"] == 3 and all(torch.isfinite(torch.tensor(s1["losses"])))

    s2_over = lambda out, **kw: _overrides(data, out, pp=2, global_batch_size=2, steps=4, save_every=2, **kw) + [
        f"model.encoder_from={s1['encoder_path']}"]
    full = _torchrun("ocr2_stage2", s2_over(tmp_path / "s2", resume="null"), nproc=2)
    ckpt = tmp_path / "s2_killed" / "checkpoints"
    ckpt.mkdir(parents=True)
    shutil.copytree(tmp_path / "s2" / "checkpoints" / "step_00000002", ckpt / "step_00000002")
    (ckpt / "latest").write_text("step_00000002")
    resumed = _torchrun("ocr2_stage2", s2_over(tmp_path / "s2_killed", resume="auto"), nproc=2)
    l_full = json.loads((tmp_path / "s2" / "stage2_result.json").read_text())["losses"]
    l_res = json.loads((tmp_path / "s2_killed" / "stage2_result.json").read_text())["losses"]
    assert len(l_full) == 4 and len(l_res) == 2
    torch.testing.assert_close(torch.tensor(l_res), torch.tensor(l_full[2:]), rtol=1e-5, atol=1e-6)
    print("stage-2 losses", l_full, "resumed", l_res)

    s3 = _torchrun("ocr2_stage3", _overrides(data, tmp_path / "s3", pp=2, global_batch_size=2, steps=2,
                                             save_every=0, resume="null")
                   + [f"model.init_from={full['export_dir']}"], nproc=2)
    from models.checkpoint import import_checkpoint

    before, after = import_checkpoint(full["export_dir"]), import_checkpoint(s3["export_dir"])
    sd0, sd1 = before.state_dict(), after.state_dict()
    frozen = [n for n in sd0 if n.startswith(("model.sam_model.", "model.qwen2_model."))]
    assert frozen and all(torch.equal(sd0[n], sd1[n]) for n in frozen)  # the encoder did not move
    assert not torch.equal(sd0["lm_head.weight"], sd1["lm_head.weight"])  # the decoder did
