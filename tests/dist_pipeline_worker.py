"""Worker script for tests/test_pipeline.py: stage-2 DeepSpeed pipeline runs on CPU (gloo).

``python tests/dist_pipeline_worker.py <scenario> <out.json> [--world N]`` spawns N processes
(torch.multiprocessing, torchrun-style env vars, DS_ACCELERATOR=cpu) that each build the tiny
model with the same seed, wrap it with ``train.pipeline.build_pipeline_module``, train with
``engine.train_batch`` on fixed synthetic ``PackedBatch``es and write per-step losses.

Scenarios:
  pp4     PP=4 x DP=1: 4 steps, checkpoint after step 2, then a fresh engine resumes from it
          and runs steps 3-4 again ("killed after step 2, resumed"), then exports the model
          (train.stage2.export_pipeline) to <dir of out.json>/model.
  pp2dp2  PP=2 x DP=2 with ZeRO-1: 3 steps; DP rank r reads micro-batches r, r+2, ...
  construct  PP=world x DP=1 from the checkpoint <dir of out.json>/init: 2 steps with today's
          construction (whole model in every process, then its stage kept), then 2 steps with
          the per-stage construction (train.stage2.build_stage2_pipeline: meta model, only this
          stage materialised and read from the checkpoint).

Also importable: ``make_batch`` / ``fixed_batches`` build the synthetic batches (random token
ids + synthetic PIL images through ``models.image_processing``), shared with the in-process
reference in the test.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SEQ_LEN = 256
MICRO_BATCH = 2
GRAD_ACCUM = 2
MODEL_SEED = 1234


def make_batch(rows: list[list[tuple]], seq_len: int = SEQ_LEN, seed: int = 0):
    """PackedBatch from row specs. A segment is ("text", n) (text-only sample of n tokens) or
    (mode, (w, h), n) (an OCR page: bos + <image> run + n label tokens + eos)."""
    from PIL import Image

    from models.config import get_preset
    from models.image_processing import preprocess_image
    from train.data import MODES, SOURCES, PackedBatch

    cfg = get_preset("tiny")
    rng = np.random.RandomState(seed)
    B = len(rows)
    ids = torch.full((B, seq_len), cfg.pad_token_id, dtype=torch.long)
    labels = torch.full((B, seq_len), -100, dtype=torch.long)
    pos = torch.zeros((B, seq_len), dtype=torch.long)
    seg = torch.zeros((B, seq_len), dtype=torch.long)
    src = torch.full((B, seq_len), -1, dtype=torch.long)
    mode_ids = torch.full((B, seq_len), -1, dtype=torch.long)
    images = []
    for b, row in enumerate(rows):
        t = 0
        for s, spec in enumerate(row, start=1):
            if spec[0] == "text":
                body = rng.randint(9, cfg.decoder.vocab_size, size=spec[1]).tolist()
                tok, lab = [cfg.bos_token_id] + body, [-100] + body
                source, mode = SOURCES.index("text"), -1
            else:
                mode_name, (w, h), n = spec
                pixels = rng.randint(0, 256, size=(h, w, 3), dtype=np.uint8)
                img = preprocess_image(Image.fromarray(pixels), mode_name)
                images.append(img)
                body = rng.randint(9, cfg.decoder.vocab_size, size=n).tolist() + [cfg.eos_token_id]
                prompt = [cfg.bos_token_id] + [cfg.image_token_id] * img.num_tokens + [10, 11]
                tok, lab = prompt + body, [-100] * len(prompt) + body
                source, mode = SOURCES.index("ocr"), MODES.index(mode_name)
            L = len(tok)
            if t + L > seq_len:
                raise ValueError(f"row {b} overflows seq_len {seq_len}")
            ids[b, t:t + L], labels[b, t:t + L] = torch.tensor(tok), torch.tensor(lab)
            pos[b, t:t + L], seg[b, t:t + L] = torch.arange(L), s
            src[b, t:t + L], mode_ids[b, t:t + L] = source, mode
            t += L
    return PackedBatch(ids, labels, pos, seg, src, mode_ids, images)


def fixed_batches() -> list:
    """4 micro-batches (B=2, T=256): images of two resolution modes in one micro-batch,
    OCR pages packed with text samples, and a text-only micro-batch."""
    return [
        make_batch([[("tiny", (300, 420), 60), ("text", 40)], [("text", 200), ("text", 50)]], seed=1),
        make_batch([[("text", 255)], [("text", 120), ("text", 90)]], seed=2),
        make_batch([[("small", (500, 380), 100)], [("tiny", (640, 200), 80), ("text", 60)]], seed=3),
        make_batch([[("text", 30), ("text", 170)], [("text", 250)]], seed=4),
    ]


def tiny_model():
    from models.config import get_preset
    from models.deepseek_ocr import DeepseekOCRForCausalLM

    torch.manual_seed(MODEL_SEED)
    return DeepseekOCRForCausalLM(get_preset("tiny"))


def train_cfg(pp: int, world: int, zero_stage: int) -> dict:
    dp = world // pp
    return {
        "train": {"pp": pp, "micro_batch_size": MICRO_BATCH,
                  "global_batch_size": MICRO_BATCH * GRAD_ACCUM * dp},
        "deepspeed": {"zero_stage": zero_stage, "dtype": "fp32"},
        "optim": {"lr": 2e-3, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1,
                  "schedule": "step", "step_milestones": [3], "step_gamma": 0.5,
                  "warmup_steps": 0, "grad_clip": 1.0},
    }


def _engine(cfg: dict, steps: int, module=None):
    import deepspeed

    from train.deepspeed_config import build_ds_config
    from train.lr_schedule import build_lr_scheduler
    from train.optimizer import build_optimizer
    from train.pipeline import build_pipeline_module

    if module is None:
        module = build_pipeline_module(tiny_model(), pp=cfg["train"]["pp"], freeze_sam=True)
    opt = build_optimizer([p for p in module.parameters() if p.requires_grad], cfg["optim"])
    sched = build_lr_scheduler(opt, cfg["optim"], steps)
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=opt, lr_scheduler=sched,
                                           config=build_ds_config(cfg))
    return engine


class _Cycle:
    """Endless, position-tracked stream over this DP rank's share of the fixed batches."""

    def __init__(self, batches, dp_rank: int, dp: int, pos: int = 0):
        self.batches = batches[dp_rank::dp]
        self.pos = pos

    def __iter__(self):
        return self

    def __next__(self):
        b = self.batches[self.pos % len(self.batches)]
        self.pos += 1
        return b


def _run_steps(engine, stream, n: int) -> tuple[list[float], list[float]]:
    from train.pipeline import PipelineBatches

    data = PipelineBatches(stream, engine.is_first_stage())
    losses, times = [], []
    for _ in range(n):
        t = time.perf_counter()
        losses.append(float(engine.train_batch(data)))
        times.append(time.perf_counter() - t)
    return losses, times


def _worker(rank: int, world: int, port: int, scenario: str, out: str, ckpt_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    from train.checkpoints import resume_checkpoint, save_checkpoint
    from train.distributed import init_distributed

    init_distributed({"train": {"backend": "gloo"}})
    batches = fixed_batches()
    res: dict = {"rank": rank}
    if scenario == "pp4":
        cfg, steps = train_cfg(4, world, 0), 4
        eng = _engine(cfg, steps)
        stream = _Cycle(batches, 0, 1)
        l12, t12 = _run_steps(eng, stream, 2)
        save_checkpoint(eng, ckpt_dir, 2, client_state={"data_pos": stream.pos})
        l34, t34 = _run_steps(eng, stream, 2)
        res.update(losses=l12 + l34, step_times=t12 + t34,
                   extra={k: float(v) for k, v in (eng.agg_additional_losses or {}).items()})
        # "killed after step 2": a fresh model + engine resumes from the checkpoint
        eng2 = _engine(cfg, steps)
        state = resume_checkpoint(eng2, ckpt_dir)
        res["resumed_losses"], _ = _run_steps(eng2, _Cycle(batches, 0, 1, state["data_pos"]), 2)
        res["resumed_step"] = int(state["step"])
        # the export (published layout) of the resumed engine, read back by the test
        from models.config import get_preset
        from train.stage2 import export_pipeline

        export_pipeline(eng2, get_preset("tiny"), Path(out).parent, torch.float32)
    elif scenario == "pp2dp2":
        cfg = train_cfg(2, world, 1)
        eng = _engine(cfg, 3)
        dp_rank = eng.grid.get_data_parallel_rank()
        res["losses"], res["step_times"] = _run_steps(eng, _Cycle(batches, dp_rank, eng.dp_world_size), 3)
        res["zero_stage"] = eng.zero_optimization_stage()
        res["dp"], res["stage"] = eng.dp_world_size, eng.stage_id
    elif scenario == "construct":
        from train.pipeline import build_pipeline_module
        from train.stage2 import build_stage2_model, build_stage2_pipeline

        cfg = train_cfg(world, world, 0)
        cfg["model"] = {"init_from": str(Path(out).parent / "init")}
        full = build_stage2_model(cfg)  # today: the whole model in every process
        n_full = full.num_parameters()
        eng = _engine(cfg, 2, build_pipeline_module(full, pp=world, freeze_sam=True))
        del full
        res["full_losses"], _ = _run_steps(eng, _Cycle(batches, 0, 1), 2)
        module, _, n_model = build_stage2_pipeline(cfg, None, world, torch.device("cpu"), seed=0)
        res["stage_params"] = sum(p.numel() for p in module.parameters())
        res["meta_params"] = sum(p.is_meta for p in module.parameters())
        res["model_params"], res["full_params"] = n_model, n_full
        eng = _engine(cfg, 2, module)
        res["stage_losses"], _ = _run_steps(eng, _Cycle(batches, 0, 1), 2)
        res["stage"] = eng.stage_id
    else:
        raise ValueError(scenario)
    Path(f"{out}.rank{rank}").write_text(json.dumps(res))


def main() -> None:
    import torch.multiprocessing as mp

    from train.distributed import free_port

    scenario, out = sys.argv[1], sys.argv[2]
    world = int(sys.argv[sys.argv.index("--world") + 1]) if "--world" in sys.argv else 4
    with tempfile.TemporaryDirectory() as ckpt:
        mp.spawn(_worker, args=(world, free_port(), scenario, out, ckpt), nprocs=world)
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(world)]
    Path(out).write_text(json.dumps(ranks))


if __name__ == "__main__":
    main()
