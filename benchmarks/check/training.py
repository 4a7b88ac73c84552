"""Training on the check's device: stage 1 and stage 2 (PP=1, ZeRO-1) through the real
trainers (``train.api.train``: DeepSpeed engine, data loader, checkpoints), on real shards.

Data: easy pages (``data_engine.easy_pages.build_dataset``: born-digital PDFs of random
capitals -> the data engine -> webdataset shards, and a byte-level BPE on their labels),
built once per check. Per stage and ``TrainRun`` (a preset in a conf/model group), ``train_and_resume``:

1. trains ``steps`` steps from scratch, checkpointing after step ``steps - 2`` and at the end;
2. trains again in a fresh output folder resumed from the step ``steps - 2`` checkpoint;
3. records: every loss finite; the loss falling (mean of the last 5 steps below the mean of
   the first 5); the resumed run's two losses equal to the uninterrupted run's bit for bit.

Stage 2 starts from the stage-1 encoder of the same run (``model.encoder_from``), as the
paper's recipe does. Checkpoints are deleted when a run's numbers are taken (a full-size
slice writes ~15 GB per checkpoint).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import shutil
import time
from pathlib import Path

RECIPES = {1: "smoke", 2: "smoke_stage2"}


@dataclasses.dataclass(frozen=True)
class TrainRun:
    """One preset trained by both stages: its conf/model group (``tiny``, or ``deepseek_ocr``, the
    published group: OPT-125M stage-1 LM with dropout, gradient checkpointing, bf16 export) and
    overrides of that group."""

    name: str  # the report's row name
    preset: str  # model.preset
    group: str  # conf/model/<group>.yaml
    seq_len: int  # packed sequence length
    dtype: str  # DeepSpeed precision: bf16 | fp32
    overrides: tuple[str, ...] = ()


def build_data(out: Path, pages: int, workers: int) -> dict:
    """Easy-page shards for training (``pages``) and a few held-out pages, plus the tokenizer."""
    from data_engine.easy_pages import build_dataset

    return build_dataset(out, train_pages=pages, heldout_pages=4, pages_per_doc=max(1, pages // 4), workers=workers)


def stage_overrides(stage: int, run: TrainRun, data: dict, out_dir: Path, sizes: dict,
                    encoder_from: str | None) -> list[str]:
    """Hydra overrides over ``RECIPES[stage]``: this run and device, PP=1, ZeRO-1, no logging.
    ``sizes``: modes (resolution mode -> weight; the modes left out get weight 0),
    bucket_elements (ZeRO reduce / all-gather bucket)."""
    from models.config import RESOLUTION_MODES

    # every mode named: a Hydra dict override merges into the default weights
    weights = ", ".join(f"{m}: {sizes['modes'].get(m, 0.0)}" for m in RESOLUTION_MODES)
    over = [
        f"model.tokenizer={data['tokenizer']}", f"data.shards=[{data['train']}]",
        f"data.seq_len={run.seq_len}", "data.num_workers=0",
        f"++data.mode_weights={{{weights}}}",  # ++: the CPU modes are not default keys
        f"deepspeed.dtype={run.dtype}", "deepspeed.zero_stage=1",
        "train.pp=1", "train.micro_batch_size=1", "train.global_batch_size=2", "train.reliance.every=0",
        f"train.out_dir={out_dir}", "logging=disabled", "optim.warmup_steps=2",
        # ZeRO's gradient buckets (DeepSpeed allocates a fresh one per micro-step): sized per device
        f"++deepspeed.extra.zero_optimization.reduce_bucket_size={sizes['bucket_elements']}",
        f"++deepspeed.extra.zero_optimization.allgather_bucket_size={sizes['bucket_elements']}",
    ]
    over += [f"model={run.group}", f"model.preset={run.preset}", *run.overrides]
    if stage == 2:
        over += [f"model.encoder_from={encoder_from}"] if encoder_from else ["model.encoder_from=null"]
    return over


def _loss_checks(losses: list[float]) -> dict:
    head, tail = losses[:5], losses[-5:]
    return {"finite": all(math.isfinite(x) for x in losses),
            "first5_mean": sum(head) / len(head), "last5_mean": sum(tail) / len(tail),
            "decreasing": sum(tail) / len(tail) < sum(head) / len(head)}


def train_and_resume(stage: int, run: TrainRun, data: dict, root: Path, sizes: dict, steps: int,
                     encoder_from: str | None = None) -> dict:
    """Steps 1-3 of the module docstring for one stage and run; returns the row."""
    from train.api import compose, train
    from train.checkpoints import checkpoint_tag

    resume_at = steps - 2
    base = stage_overrides(stage, run, data, root / "full", sizes, encoder_from)
    t0 = time.perf_counter()
    full = train(compose(RECIPES[stage], base + [f"train.steps={steps}", f"train.save_every={resume_at}",
                                                  "train.keep_last=null", "train.resume=null"]))
    wall_full = time.perf_counter() - t0
    ckpt_root = Path(full["checkpoint_dir"])
    shutil.rmtree(ckpt_root / checkpoint_tag(steps), ignore_errors=True)  # only the resume point is needed
    resumed_over = stage_overrides(stage, run, data, root / "resumed", sizes, encoder_from)
    resumed = train(compose(RECIPES[stage], resumed_over + [
        f"train.steps={steps}", f"train.save_every={steps}", f"train.resume={ckpt_root / checkpoint_tag(resume_at)}"]))
    losses, again = full["losses"], resumed["losses"]
    row = {"stage": stage, "preset": run.name, "model_group": run.group, "dtype": run.dtype, "steps": len(losses),
           "params": full["params"],
           "losses": losses, "resumed_losses": again, "wall_s": wall_full,
           "mean_step_time_s": full["mean_step_time_s"], **_loss_checks(losses),
           "resume_bit_exact": again == losses[resume_at:],
           "resume_max_abs_diff": max((abs(a - b) for a, b in zip(again, losses[resume_at:])), default=math.inf)}
    if stage == 1:
        row["encoder_path"] = full["encoder_path"]
    for done in (full, resumed):  # keep the numbers, free the disk
        shutil.rmtree(done["checkpoint_dir"], ignore_errors=True)
    gc.collect()  # the two engines (and their buffers) before the next run builds its own
    row["passed"] = bool(row["finite"] and row["decreasing"] and row["resume_bit_exact"] and len(again) == 2)
    return row

