"""Rung A of the reading ladder at the check's scale (docs/training.md, "the reading ladder").

The ladder's own code (``train.ladder``: ``Rung``, ``build_data``, ``run_rung_at``, ``score``)
with rung A's pages (random capitals and digits, 4-16 per page in 1-4 lines, 48-80 pt, anywhere
on a 256 pt page, 35 trained font faces; the ``micro`` view, 4 x 4 vision tokens) and rung A's
recipe (``reading_caps``: stage 1 from scratch, its compact 2-layer 128-wide OPT, its optimizer
and schedule), with the plan's:

* preset: on CUDA ``deepseek-ocr``, the full-size DeepEncoder (SAM-base, 16x compressor,
  CLIP-L, projector to the LM width); on ``--dry`` ``tiny-reader``, the ladder's CPU encoder;
* precision (DeepSpeed bf16 on both), micro batch, loader workers, page counts;
* wall-clock limit: ``train.max_wall_s`` = what the section's budget leaves after the scoring
  reserve, at most ``train_s`` (3 minutes on CUDA); the schedule stays rung A's 2,400 steps.

Scored as every rung is: CER on held-out pages in the 3 font families never trained, beside the
wrong-page, blank-page and constant-output controls and the same model untrained, and word
accuracy (on these pages a word is a whole line of letters) against its chance threshold.

The pages are CPU work (PDF -> data engine -> shards + tokenizer): ``PageBuild`` starts them in a
background process at nice 19 when the check starts (``python -m train.ladder --data-only``), so
they are made while the other sections use the device; the section waits for them, then trains and scores
(``run_rung_at`` finds the finished pages and reuses them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("heldout_fonts",)  # unseen font families: the split a rung is scored on, with its controls


@dataclasses.dataclass(frozen=True)
class RungAPlan:
    """What the CUDA and the dry run of rung A differ in (besides the device)."""

    preset: str  # model.preset: the encoder's size
    dtype: str  # deepspeed.dtype
    train_s: float  # most wall seconds of training
    min_train_s: float  # fewer seconds left for training: the section is skipped
    score_reserve_s: float  # section seconds kept for scoring after training
    train_pages: int
    heldout_pages: int
    micro_batch: int  # = global batch (one process)
    loader_workers: int  # data.num_workers


def rung_of(plan: RungAPlan, max_wall_s: float):
    """Rung A with the plan's sizes and limit (rung A's steps and schedule; trained from scratch)."""
    from train.ladder import RUNGS, with_steps

    base = RUNGS["A"]
    over = (f"model.preset={plan.preset}", f"deepspeed.dtype={plan.dtype}",
            f"train.micro_batch_size={plan.micro_batch}", f"train.global_batch_size={plan.micro_batch}",
            f"data.num_workers={plan.loader_workers}", "train.reliance.every=0", "train.save_every=0",
            f"train.max_wall_s={max_wall_s:.1f}")
    return with_steps(base, base.steps, plan.train_pages, heldout_pages=plan.heldout_pages, after=None,
                      overrides=(*base.overrides, *over))


class PageBuild:
    """Rung A's pages made by a background process (its own session, so ``stop`` ends its data
    engine workers too); ``wait`` reaps it and keeps its CPU seconds (children included)."""

    def __init__(self, plan: RungAPlan, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.log = out, out.parent / "rung_a_pages.log"
        # nice 19: the timed sections keep the cores they need to feed the device
        cmd = ["nice", "-n", "19", sys.executable, "-m", "train.ladder", "--rung", "A", "--data-only", "--out", str(out),
               "--train-pages", str(plan.train_pages), "--heldout-pages", str(plan.heldout_pages),
               "--splits", *SPLITS]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.t0 = time.monotonic()
        self.returncode: int | None = None
        self.cpu_s: float | None = None
        self.wall_s: float | None = None

    def _reap(self, flags: int) -> bool:
        pid, status, usage = os.wait4(self.proc.pid, flags)
        if pid == 0:
            return False
        self.returncode = self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu_s = round(usage.ru_utime + usage.ru_stime, 1)
        self.wall_s = round(time.monotonic() - self.t0, 1)
        return True

    def wait(self, seconds: float) -> bool:
        """True when the build has ended within ``seconds`` (successfully or not: ``returncode``)."""
        end = time.monotonic() + seconds
        while self.returncode is None:
            if self._reap(os.WNOHANG):
                break
            if time.monotonic() >= end:
                return False
            time.sleep(0.5)
        return True

    def stop(self) -> None:
        if self.returncode is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self._reap(0)

    def error(self) -> str:
        tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] if self.log.is_file() else []
        return f"page build exited {self.returncode}: {tail[0][:300] if tail else '(no output)'} ({self.log})"


def _run_summary(run_dir: Path) -> dict:
    """Parameters, step time and first / last loss of the stage-1 run (its stage1_result.json)."""
    done = json.loads((run_dir / "stage1_result.json").read_text())
    losses = done["losses"]
    return {"params": done["params"], "mean_step_time_s": done["mean_step_time_s"],
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def run(plan: RungAPlan, pages: PageBuild, out: Path, budget, device: str, progress=print) -> dict:
    """Wait for the pages, train rung A for what the budget allows, score it; the report's row."""
    from train.ladder import run_rung_at

    reserve = plan.score_reserve_s
    if not pages.wait(max(0.0, budget.left() - reserve - plan.min_train_s)):
        pages.stop()
        return {"skipped": f"rung A's pages were not ready with {budget.left():.0f} s of the section left"}
    if pages.returncode != 0:
        return {"skipped": pages.error()}
    train_s = min(plan.train_s, budget.left() - reserve)
    if train_s < plan.min_train_s:
        return {"skipped": f"{budget.left():.0f} s of the section left: under {plan.min_train_s:.0f} s of "
                           f"training + {reserve:.0f} s of scoring"}
    rung = rung_of(plan, train_s)
    res = run_rung_at(rung, out, curve_points=0, progress=progress, splits=SPLITS, device=device)
    s = res["splits"]["heldout_fonts"]
    row = {"preset": plan.preset, "dtype": plan.dtype, "micro_batch": plan.micro_batch, "max_wall_s": round(train_s, 1),
           "steps": res["steps"], "planned_steps": res["planned_steps"], "stopped_by": res["stopped_by"],
           "train_pages": rung.train_pages, "pages_cpu_s": pages.cpu_s, "pages_wall_s": pages.wall_s,
           "train_wall_s": res["train_wall_s"], "train_cpu_s": res["train_cpu_s"],
           **_run_summary(out / "run"), "heldout_pages": s["pages"], "cer": s["cer"],
           "wrong_page_cer": s["wrong_page"]["cer"] if s["wrong_page"] else None,
           "blank_cer": s["blank"]["cer"], "constant_cer": s["constant"]["cer"], "untrained_cer": s["untrained"]["cer"],
           "word_accuracy": s["word_accuracy"], "first_letter_accuracy": s["first_letter_accuracy"],
           "chance_word_accuracy": s["chance"]["word_accuracy"], "word_threshold": s["chance"]["threshold"],
           "reads": s["reads"], "verdict": s["verdict"], "examples": s["examples"][:4], "table": res["table"]}
    return row
