"""The device check: one command, one JSON + one Markdown report, about 8 minutes on one H100.

    python benchmarks/gpu_check.py                      # CUDA: the whole check (bf16, full size)
    python benchmarks/gpu_check.py --dry                # CPU: the same functions, tiny preset, < 2 min
    python benchmarks/gpu_check.py --out DIR --deadline 450 --peak-tflops 989
    python benchmarks/gpu_check.py --sections "rung A" --deadline 330   # rung A with its full 3 minutes

Sections (each with its time budget; a global deadline bounds them all, and the report is
rewritten after every result, so a run stopped anywhere leaves the numbers it has):

1. correctness  bf16 vs fp32 (DeepEncoder, decoder), grouped-GEMM MoE vs loop, SDPA vs eager
                attention, fused AdamW vs the update written out (benchmarks/check/correctness.py;
                the same functions are the ``gpu``-marked tests/test_gpu_correctness.py)
2. encoder speed  DeepEncoder and SAM forward + backward images/s per resolution mode, SAM beside
                transformers' DeepSeek-OCR-2 SAM with the same weights, MFU, peak memory
3. decoder speed  training tokens/s of a 3B-MoE slice at seq 8192 beside transformers'
                DeepseekOcr2TextModel (same weights and routing; fp32 max abs diff), MFU, memory
4. training     stage 1 and stage 2 (PP=1, ZeRO-1) for 20 steps on the tiny preset and the
                full-size slice: finite, falling loss, resume bit-exact for 2 steps
5. rung A       the reading ladder's rung A at GPU scale (benchmarks/check/reading.py): stage 1 of
                rung A's recipe with the full-size DeepEncoder for up to 3 minutes of what the
                deadline leaves, CER on unseen fonts beside the reading-free controls (its pages are
                made by a background process from the start of the check)

Targets (CUDA; exit 1 on a miss): decoder >= 1.3x transformers' tokens/s, decoder MFU >= 35 %,
SAM >= 1.0x transformers' images/s in every mode. ``--dry`` prints the same tables with the
targets "not applicable on CPU" and exits 1 only when a check fails or a section errs.
The CUDA plan and the dry plan differ only in device, dtype and sizes (``PLANS``); both run
every line of the sections (docs/benchmarks.md, "GPU check", has the line-by-line review).
Exit codes: 0 all met, 1 a check failed or a target was missed, 2 no CUDA device (without
--dry), 3 the global deadline stopped a section (partial report).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
# cuBLAS keeps its reductions in a fixed order only with a fixed workspace (set before CUDA starts)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch  # noqa: E402

from benchmarks.check import correctness, flops, reading, speed, training  # noqa: E402
from benchmarks.check.report import NOT_ON_CPU, Report, start_watchdog  # noqa: E402
from models.config import get_preset  # noqa: E402

TARGETS = {"decoder_ratio": 1.3, "decoder_mfu": 0.35, "sam_ratio": 1.0}


@dataclasses.dataclass(frozen=True)
class Plan:
    """Device, dtypes and sizes of one run of the check: the only things CUDA and --dry differ in."""

    device: str
    dtype: torch.dtype  # speed sections: bf16 on CUDA, fp32 on CPU
    check_dtype: torch.dtype  # the kernels under check run in bf16 on both
    preset: str  # correctness and speed
    train_runs: tuple[training.TrainRun, ...]
    modes: tuple[str, ...]
    encoder_batch: int
    iters: int
    warmup: int
    decoder_layers: int
    decoder_seq: int
    decoder_batch: int
    decoder_check_len: int
    correctness: dict
    train_modes: dict  # resolution mode -> sampling weight
    train_bucket_elements: int  # ZeRO gradient bucket (DeepSpeed's default on CUDA)
    train_steps: int
    train_pages: int
    train_engine_workers: int  # data-engine processes making the training shards
    rung_a: reading.RungAPlan
    deadline_s: float
    budgets: dict  # section -> its share of the deadline (rung A: 1.0, whatever the others leave)


PLANS = {
    "cuda": Plan(
        device="cuda", dtype=torch.bfloat16, check_dtype=torch.bfloat16,
        preset="deepseek-ocr",
        train_runs=(training.TrainRun("tiny", "tiny", "tiny", 1024, "bf16"),
                    training.TrainRun("deepseek-ocr-slice", "deepseek-ocr-slice", "deepseek_ocr", 2048, "bf16")),
        modes=("tiny", "small", "base", "large", "gundam"), encoder_batch=4, iters=5, warmup=2,
        decoder_layers=4, decoder_seq=8192, decoder_batch=1, decoder_check_len=1024,
        correctness=dict(side=1024, seq_len=2048, decoder_layers=4, moe_tokens=4096, attn_heads=10,
                         attn_head_dim=128, attn_seq_len=4096, sam_grid=64),
        train_modes={"tiny": 1.0, "small": 1.0},
        train_bucket_elements=500_000_000,
        train_steps=20, train_pages=64, train_engine_workers=4,
        rung_a=reading.RungAPlan(preset="deepseek-ocr", dtype="bf16", train_s=180, min_train_s=30, score_reserve_s=60,
                                 train_pages=6000, heldout_pages=100, micro_batch=32, loader_workers=4),
        deadline_s=450,
        budgets={"correctness": 0.1, "encoder speed": 0.22, "decoder speed": 0.18, "training": 0.45, "rung A": 1.0}),
    "dry": Plan(
        device="cpu", dtype=torch.float32, check_dtype=torch.bfloat16,
        preset="tiny",
        # tiny in bf16: DeepSpeed's mixed precision as on the card (measured 47.7 CPU-s for both
        # stages and their resumes, 3x fp32). The slice's stand-in (PUBLISHED_GROUP_STAND_IN,
        # 53 CPU-s more) runs with --published-group (the slow test)
        train_runs=(training.TrainRun("tiny", "tiny", "tiny", 128, "bf16"),),
        # micro only: Gundam's tiled path (1024 px view + 6 tiles) costs 43 CPU-s here, a third of the
        # dry run's budget; the slow test runs it with --modes gundam
        modes=("micro",), encoder_batch=1, iters=1, warmup=1,
        decoder_layers=4, decoder_seq=256, decoder_batch=1, decoder_check_len=64,
        correctness=dict(side=256, seq_len=128, decoder_layers=4, moe_tokens=64, attn_heads=2,
                         attn_head_dim=16, attn_seq_len=64, sam_grid=8),
        train_modes={"nano": 1.0, "micro": 1.0},
        train_bucket_elements=5_000_000,
        train_steps=20, train_pages=16, train_engine_workers=1,
        rung_a=reading.RungAPlan(preset="tiny-reader", dtype="bf16", train_s=10, min_train_s=1, score_reserve_s=60,
                                 train_pages=32, heldout_pages=8, micro_batch=8, loader_workers=1),
        deadline_s=300,
        budgets={"correctness": 0.15, "encoder speed": 0.1, "decoder speed": 0.05, "training": 0.65, "rung A": 1.0}),
}


# tiny in the published group `deepseek_ocr`, as the card's `deepseek-ocr-slice` trains: OPT dropout
# 0.1 (resume must restore its RNG), gradient checkpointing, a stage-1 LM narrower than the decoder
# (stage 2 starts the projector fresh)
PUBLISHED_GROUP_STAND_IN = training.TrainRun(
    "tiny (deepseek_ocr group)", "tiny", "deepseek_ocr", 128, "bf16",
    ("model.stage1_lm.hidden_size=32", "model.stage1_lm.num_layers=2", "model.stage1_lm.num_heads=2",
     "model.stage1_lm.ffn_dim=64"))


def device_meta(plan: Plan, dry: bool) -> dict:
    import transformers

    name = torch.cuda.get_device_name(0) if plan.device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"dry": dry, "device_name": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "commit": commit, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "plan": {k: str(v) for k, v in dataclasses.asdict(plan).items()}}


# ------------------------------------------------------------------------------ sections


def section_correctness(ctx, budget):
    for name, run in correctness.planned_checks(get_preset(ctx.plan.preset), ctx.plan.device, ctx.plan.check_dtype,
                                                ctx.plan.correctness):
        if budget.expired():
            ctx.report.add("correctness", {"name": name, "passed": False, "error": "section budget spent"})
            continue
        ctx.report.add("correctness", *run())
    failed = [r["name"] for r in ctx.report.section("correctness")["results"] if not r.get("passed")]
    return f"failed: {', '.join(failed)}" if failed else "ok"


def section_encoder(ctx, budget):
    p = ctx.plan
    rows = speed.encoder_speed(get_preset(p.preset), list(p.modes), p.encoder_batch, p.device, p.dtype,
                               p.iters, p.warmup, ctx.peak, budget)
    ctx.report.add("encoder speed", *rows)
    skipped = [r["mode"] for r in rows if "skipped" in r]
    return f"partial: not measured {', '.join(skipped)}" if skipped else "ok"


def section_decoder(ctx, budget):
    p = ctx.plan
    row = speed.decoder_speed(get_preset(p.preset), p.decoder_layers, p.decoder_batch, p.decoder_seq, p.device,
                              p.dtype, p.iters, p.warmup, ctx.peak, p.decoder_check_len)
    ctx.report.add("decoder speed", row)


def section_training(ctx, budget):
    p = ctx.plan
    # bit-exact resume needs kernels that sum in a fixed order (index_add_, scatter, cuBLAS)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # deterministic mode would also fill every torch.empty with NaN: DeepSpeed takes a fresh
    # gradient bucket (5e8 elements) per micro-step and writes it before reading it
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        data = training.build_data(ctx.workdir / "data", p.train_pages, workers=p.train_engine_workers)
        sizes = {"modes": p.train_modes, "bucket_elements": p.train_bucket_elements}
        for i, run in enumerate(p.train_runs):
            encoder_from = None
            for stage in (1, 2):
                if budget.expired():
                    ctx.report.add("training", {"stage": stage, "preset": run.name, "skipped": "section budget spent"})
                    continue
                try:
                    row = training.train_and_resume(stage, run, data, ctx.workdir / f"run{i}_stage{stage}",
                                                    sizes, p.train_steps, encoder_from)
                except Exception as e:  # noqa: BLE001 - recorded as a failed run; the next one still runs
                    row = {"stage": stage, "preset": run.name, "passed": False,
                           "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
                encoder_from = row.get("encoder_path", encoder_from)
                ctx.report.add("training", row)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = fill
    failed = [f"stage {r['stage']} {r['preset']}" for r in ctx.report.section("training")["results"]
              if not r.get("passed") and "skipped" not in r]
    return f"failed: {', '.join(failed)}" if failed else "ok"


def section_rung_a(ctx, budget):
    row = reading.run(ctx.plan.rung_a, ctx.pages, ctx.workdir / "rung_a", budget, ctx.plan.device)
    ctx.report.add("rung A", row)
    return f"skipped: {row['skipped']}" if "skipped" in row else "ok"


SECTIONS = (("correctness", section_correctness), ("encoder speed", section_encoder),
            ("decoder speed", section_decoder), ("training", section_training), ("rung A", section_rung_a))


# ------------------------------------------------------------------------------ targets


def target_rows(report: Report, dry: bool) -> list[dict]:
    sec = report.data["sections"]
    dec = next(iter(sec.get("decoder speed", {}).get("results", [])), {})
    sam = [r["sam_ratio"] for r in sec.get("encoder speed", {}).get("results", []) if "sam_ratio" in r]
    rows = [("decoder tokens/s, ocrflow / transformers", dec.get("ratio"), TARGETS["decoder_ratio"]),
            ("decoder MFU (ocrflow)", dec.get("ocrflow_mfu"), TARGETS["decoder_mfu"]),
            ("SAM fwd+bwd img/s, ocrflow / transformers (worst mode)", min(sam) if sam else None, TARGETS["sam_ratio"])]
    out = []
    for name, value, need in rows:
        reached = value is not None and value >= need
        out.append({"name": name, "value": value, "needed": f">= {need}", "reached": reached,
                    "met": NOT_ON_CPU if dry else reached})
    return out


class Context:
    def __init__(self, plan: Plan, report: Report, workdir: Path, peak: float | None):
        self.plan, self.report, self.workdir, self.peak = plan, report, workdir, peak
        self.pages: reading.PageBuild | None = None  # rung A's pages, made in the background


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--dry", action="store_true", help="CPU, tiny preset, small sizes: the same functions")
    ap.add_argument("--out", default=None, help="report folder (default runs/gpu_check, runs/gpu_check_dry)")
    ap.add_argument("--deadline", type=float, default=None, help="global deadline in seconds (plan default)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak of a card not in flops.PEAK_BF16_FLOPS")
    ap.add_argument("--sections", default=",".join(n for n, _ in SECTIONS), help="comma-separated subset")
    ap.add_argument("--modes", default=None, help="comma-separated resolution modes of the encoder section "
                                                  "(default: the plan's)")
    ap.add_argument("--keep", action="store_true", help="keep the training data and runs (under OUT/work)")
    ap.add_argument("--published-group", action="store_true",
                    help="--dry: also train tiny in the published model group (dropout, checkpointing), "
                         "the CPU stand-in of the card's deepseek-ocr-slice run")
    a = ap.parse_args(argv)
    plan = PLANS["dry" if a.dry else "cuda"]
    if a.published_group:
        if not a.dry:
            print("gpu_check: --published-group is for --dry (the card's plan trains the slice itself)", file=sys.stderr)
            return 2
        plan = dataclasses.replace(plan, train_runs=(*plan.train_runs, PUBLISHED_GROUP_STAND_IN))
    if a.modes:
        from models.config import get_mode

        try:
            modes = tuple(get_mode(m.strip()).name for m in a.modes.split(",") if m.strip())
        except KeyError as e:
            print(f"gpu_check: {e.args[0]}", file=sys.stderr)
            return 2
        plan = dataclasses.replace(plan, modes=modes)
    if not a.dry and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is visible; run with --dry on CPU", file=sys.stderr)
        return 2
    deadline_s = a.deadline if a.deadline is not None else plan.deadline_s
    deadline = time.monotonic() + deadline_s
    out = Path(a.out or ("runs/gpu_check_dry" if a.dry else "runs/gpu_check"))
    meta = device_meta(plan, a.dry)
    # a CPU's name is in no table (None: no MFU), unless --peak-tflops names a peak
    peak = a.peak_tflops * 1e12 if a.peak_tflops else flops.peak_flops(meta["device_name"])
    meta.update(peak_flops=peak, deadline_s=deadline_s)
    wanted = {s.strip() for s in a.sections.split(",") if s.strip()}
    unknown = wanted - {n for n, _ in SECTIONS}
    if unknown:
        print(f"gpu_check: unknown sections {sorted(unknown)}; known: {[n for n, _ in SECTIONS]}", file=sys.stderr)
        return 2
    report = Report(out, meta)
    ctx = Context(plan, report, out / "work", peak)
    if "rung A" in wanted:  # CPU work: made while the sections before it use the device
        ctx.pages = reading.PageBuild(plan.rung_a, ctx.workdir / "rung_a")
    start_watchdog(report, deadline, cleanup=ctx.pages.stop if ctx.pages else None)
    try:
        for name, fn in SECTIONS:
            if name in wanted:
                report.run_section(name, plan.budgets[name] * deadline_s, deadline,
                                   lambda budget, fn=fn: fn(ctx, budget))
    finally:
        if ctx.pages:
            ctx.pages.stop()
    report.set_targets(target_rows(report, a.dry))
    report.finish()
    if not a.keep:
        shutil.rmtree(ctx.workdir, ignore_errors=True)
    print(report.md_path.read_text())
    print(f"[gpu_check] report: {report.json_path} and {report.md_path}")
    bad_sections = [n for n, s in report.data["sections"].items() if s.get("status", "ok") not in ("ok",)
                    and not s["status"].startswith("skipped")]
    missed = [t["name"] for t in report.data["targets"] if t["met"] is False]
    if bad_sections or missed:
        print(f"[gpu_check] FAILED: sections {bad_sections}, targets missed {missed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
