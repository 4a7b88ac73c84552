"""The reading ladder: rungs of drawn-page reading, each a recipe that is trained and measured.

A rung is a page kind (data_engine/reading_pages.py), a recipe (conf/experiment/), a stage, a
CPU budget and targets. ``run_rung`` builds its data (PDF -> engine -> shards), trains it in this
process (stage 1) or over 2 CPU processes (stage 2, PP=2: torchrun), and scores the final model on
held-out pages in font families never trained, against the reading-free controls of
``data_engine.reading_metrics`` (wrong-page reference, blank pages, constant output) and the
untrained model; then on held-out pages in the trained fonts and at sizes outside the training
range; then the CER of earlier checkpoints on the unseen fonts (the CER-vs-CPU-time curve).

    from train.ladder import RUNGS, run_rung_at
    result = run_rung_at(RUNGS["A"], out="runs/ladder")   # result["met"], result["table"], ...

benchmarks/bench_reading.py ``--rung`` prints it and exits 1 on a missed target; ``./launch.sh demo``
and tests/test_ladder.py use smaller settings of the same code. docs/training.md holds the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from data_engine.reading_metrics import reading_lines, reading_scores


@dataclass(frozen=True)
class Rung:
    name: str
    kind: str  # reading-page kind: "caps" | "words"
    recipe: str  # conf/experiment/<recipe>.yaml
    stage: int
    mode: str  # resolution mode (the page side matches its view: no resampling)
    steps: int
    train_pages: int
    target_cer: float | None  # None: a curriculum step without a target of its own
    budget_cpu_min: float | None  # training CPU budget of the whole chain up to this rung (None: no budget target)
    target_word_accuracy: float | None = None
    heldout_pages: int = 100
    page: tuple[tuple[str, object], ...] = ()  # ReadingSpec settings other than the kind (size 256: micro)
    overrides: tuple[str, ...] = field(default_factory=tuple)
    after: str | None = None  # stage 1: the rung whose finished run this one continues (weights + tokenizer)


# Rung A's curriculum (docs/training.md, "the reading ladder"): from scratch a model does not find
# letters at free positions (measured: CER 0.95-0.98 after 1,000-3,000 steps); it learns the
# letters first where each sits in its own vision token, then where they are.
_NANO = (("size", 128.0), ("max_lines", 2))
_GRID = (("layout", "grid"), ("font_sizes", (64.0, 80.0)), ("jitter", 20.0))
RUNGS = {
    # A1: 2 x 2 capitals, one per 64-px token of the nano view (moved up to 20 px), every cell filled
    "A1": Rung("A1", "caps", "reading_caps", 1, "nano", steps=1500, train_pages=3000, target_cer=None,
               budget_cpu_min=None, heldout_pages=60, page=(*_NANO, *_GRID, ("chars", (4, 4))),
               overrides=("data.seq_len=48",)),
    # A2: 2-4 of them in any cells: where the letters are
    "A2": Rung("A2", "caps", "reading_caps", 1, "nano", steps=1000, train_pages=3000, target_cer=None,
               budget_cpu_min=None, heldout_pages=60, page=(*_NANO, *_GRID, ("chars", (2, 4))),
               overrides=("data.seq_len=48",), after="A1"),
    # A2r: 2-5 letters at the font's own advance, each line anywhere along its own row of tokens
    "A2r": Rung("A2r", "caps", "reading_caps", 1, "nano", steps=1500, train_pages=3000, target_cer=None,
                budget_cpu_min=None, heldout_pages=60,
                page=(*_NANO, ("layout", "rows"), ("chars", (2, 5)), ("font_sizes", (40.0, 64.0)), ("jitter", 16.0)),
                overrides=("data.seq_len=48",), after="A2"),
    # A3: the same letters with each line anywhere on the nano page
    "A3": Rung("A3", "caps", "reading_caps", 1, "nano", steps=1500, train_pages=3000, target_cer=None,
               budget_cpu_min=None, heldout_pages=60,
               page=(*_NANO, ("chars", (2, 5)), ("font_sizes", (40.0, 64.0))),
               overrides=("data.seq_len=48",), after="A2r"),
    # capitals and digits, 4-16 per page, any font / position / size, micro view (4 x 4 tokens)
    "A": Rung("A", "caps", "reading_caps", 1, "micro", steps=2400, train_pages=6000, target_cer=0.10,
              budget_cpu_min=30, page=(("font_sizes", (48.0, 80.0)),), after="A3"),
    # stage 2 (MoE decoder, PP=2) from rung A's encoder, on rung A's pages
    "C": Rung("C", "caps", "reading_caps_stage2", 2, "micro", steps=600, train_pages=6000, target_cer=0.15,
              budget_cpu_min=None, page=(("font_sizes", (48.0, 80.0)),)),
    # stage 2 on A2's pages (nano grid) from A2's encoder: what `./launch.sh demo` trains after A1 -> A2
    "C-grid": Rung("C-grid", "caps", "reading_caps_stage2", 2, "nano", steps=800, train_pages=3000, target_cer=None,
                   budget_cpu_min=None, heldout_pages=60, page=(*_NANO, *_GRID, ("chars", (2, 4))),
                   overrides=("data.seq_len=48",)),
    # DeepSeek-OCR 2 (tiny-ocr2-reader) on A1's and A2's pages: ocr2_nano view, 4 flow queries
    "ocr2-A1": Rung("ocr2-A1", "caps", "ocr2_reading", 1, "ocr2_nano", steps=1500, train_pages=3000, target_cer=None,
                    budget_cpu_min=None, heldout_pages=60, page=(*_NANO, *_GRID, ("chars", (4, 4)))),
    "ocr2-A2": Rung("ocr2-A2", "caps", "ocr2_reading", 1, "ocr2_nano", steps=1000, train_pages=3000, target_cer=None,
                    budget_cpu_min=None, heldout_pages=60, page=(*_NANO, *_GRID, ("chars", (2, 4))), after="ocr2-A1"),
    # 1-2 lines of words (unseen words and fonts): stage 1 from scratch
    "B": Rung("B", "words", "reading_words", 1, "micro", steps=4800, train_pages=8000, target_cer=0.30,
              budget_cpu_min=60, target_word_accuracy=0.5),
}
# rung A in small, for the default test set and quick checks: 4 letters on a 128 pt page in the
# nano view (2x2 tokens), 44-60 pt, one page per 48-token row; same fonts, positions, held-out splits
SMALL_A = Rung("A-small", "caps", "reading_caps", 1, "nano", steps=1000, train_pages=1500, target_cer=0.5,
               budget_cpu_min=3, heldout_pages=40,
               page=(("size", 128.0), ("chars", (4, 4)), ("max_lines", 2), ("font_sizes", (44.0, 60.0))),
               overrides=("data.seq_len=48", "train.reliance.every=300"))
HELDOUT_SPLITS = ("heldout_fonts", "heldout_seen_fonts", "heldout_sizes")
SPLIT_TITLES = {"heldout_fonts": "unseen font families", "heldout_seen_fonts": "trained fonts, new pages",
                "heldout_sizes": "sizes outside the training range"}


def build_data(rung: Rung, out: Path, seed: int = 0, splits: tuple[str, ...] = HELDOUT_SPLITS) -> dict:
    from data_engine.reading_pages import build_reading_dataset

    return build_reading_dataset(out, page_spec_of(rung), rung.train_pages, rung.heldout_pages, seed,
                                 heldout=splits)


def data_dir(rung: Rung, out: Path, seed: int = 0) -> Path:
    """The rung's page folder beside its output ``out``: one folder per page spec, page count and
    seed, so rungs with the same pages (A2 and C-grid) share it."""
    spec = page_spec_of(rung)
    digest = hashlib.sha1(repr(spec).encode()).hexdigest()[:8]
    return out.parent / (f"data_{rung.kind}_{spec.layout}_{int(spec.size)}_{rung.train_pages}_{digest}"
                         + (f"_seed{seed}" if seed else ""))


def page_spec_of(rung: Rung):
    from data_engine.reading_pages import page_spec

    return page_spec(rung.kind, **dict(rung.page))


def _mode_weights(mode: str) -> str:
    from models.config import RESOLUTION_MODES, get_mode

    # the modes of the rung's model (DeepSeek-OCR or DeepSeek-OCR 2), all but the rung's at 0
    version = get_mode(mode).version
    return "{" + ", ".join(f"{m}: {1.0 if m == mode else 0.0}" for m, r in RESOLUTION_MODES.items()
                           if r.version == version) + "}"


def run_tokenizer(run: Path) -> str:
    """The tokenizer folder a stage-1 run trained with (its run_config.yaml)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.load(run / "run_config.yaml").model.tokenizer)


def rung_overrides(rung: Rung, data: dict, run_dir: Path, seed: int, from_run: Path | None) -> list[str]:
    """A stage-1 rung with ``from_run`` continues that run's weights (a curriculum step; ``data``
    then names that run's tokenizer); a stage-2 rung takes its encoder."""
    ov = [f"model.tokenizer={data['tokenizer']}", f"data.shards=[{data['train']}]",
          f"train.reliance.shards=[{data['heldout_fonts']}]", f"data.mode_weights={_mode_weights(rung.mode)}",
          f"train.steps={rung.steps}", f"train.seed={seed}", "train.resume=null", f"train.out_dir={run_dir}",
          "logging.wandb.mode=disabled"]
    if rung.stage == 1 and from_run is not None:
        ov.append(f"model.stage1_from={from_run}")
    if rung.stage == 2:  # from_run: a stage-1 run dir (its final encoder) or an encoder file (encoder_at)
        enc = from_run if from_run is not None and from_run.suffix == ".safetensors" else \
            (from_run / "encoder.safetensors" if from_run is not None else None)
        if enc is None or not enc.is_file():
            raise FileNotFoundError(f"rung {rung.name} starts from a stage-1 encoder: no {enc}")
        ov.append(f"model.encoder_from={enc}")
    return [*ov, *rung.overrides]


def train_rung(rung: Rung, overrides: list[str], curve_points: int = 0) -> dict:
    """Train; returns CPU seconds (all processes, all threads), wall seconds and the steps
    trained (fewer than ``rung.steps`` when ``train.max_wall_s`` stopped a stage-1 run). With
    ``curve_points`` every checkpoint on the way is kept for the CER curve."""
    if curve_points:
        overrides = [*overrides, f"train.save_every={max(1, rung.steps // curve_points)}", "train.keep_last=0"]
    wall0 = time.time()
    if rung.stage == 1:
        from train.api import compose
        from train.stage1 import run_stage1

        cpu0 = time.process_time()
        done = run_stage1(compose(rung.recipe, overrides))
        cpu = time.process_time() - cpu0
        steps, stopped_by = done["steps"], done["stopped_by"]
    else:  # PP=2: two processes, as ./launch.sh runs it
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "train.cli", f"experiment={rung.recipe}", *overrides]
        subprocess.run(cmd, check=True, env=env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        steps, stopped_by = rung.steps, "train.steps"
    return {"cpu_s": cpu, "wall_s": time.time() - wall0, "steps": steps, "stopped_by": stopped_by}


def train_labels(shards: str, n: int = 2000) -> list[str]:
    from train.eval.decode import heldout_pages

    return [p.labels["coarse"]["text"] for p in heldout_pages(shards, n)]


def score(model_path: Path, shards: str, mode: str, pages: int, *, tokenizer: str | None = None,
          labels: list[str] | None = None, untrained: bool = False, blank: bool = True, seed: int = 0,
          loss_ratio: float | None = None, device: str = "cpu") -> dict:
    """Reading scores of a model on held-out pages (+ blank pages and the untrained model), read
    on ``device``."""
    from train.eval.decode import heldout_pages
    from train.eval.loading import load_model
    from train.eval.suite import run_variant

    m = load_model(model_path, tokenizer, device)
    data = heldout_pages(shards, pages)
    variants = {"trained": m.model}
    if blank:
        variants["blind"] = m.model
    if untrained:
        variants["untrained"] = m.fresh(seed)
    preds, refs = {}, None
    for name, model in variants.items():
        rows = run_variant(model, m.tokenizer, data, "coarse", mode, name, max_positions=m.max_positions)
        preds[name], refs = [r["pred"] for r in rows], [r["ref"] for r in rows]
    s = reading_scores(preds["trained"], refs, train_labels=labels, blank_preds=preds.get("blind"), seed=seed,
                       loss_ratio=loss_ratio)
    if untrained:
        s["untrained"] = reading_scores(preds["untrained"], refs, seed=seed)
    s["examples"] = [{"ref": r, "pred": p} for r, p in list(zip(refs, preds["trained"]))[:8]]
    return s


def _checkpoint_view(run: Path, tag: str, view: Path) -> Path:
    """A run directory whose only checkpoint is ``tag`` (symlinks): what ``load_model`` reads."""
    (view / "checkpoints").mkdir(parents=True, exist_ok=True)
    for c in ("run_config.yaml", "hydra"):
        if (run / c).exists() and not (view / c).exists():
            (view / c).symlink_to((run / c).resolve())
    link = view / "checkpoints" / tag
    if not link.exists():
        link.symlink_to((run / "checkpoints" / tag).resolve())
    (view / "checkpoints" / "latest").write_text(tag)
    return view


def encoder_at(run: Path, step: int) -> Path:
    """``encoder.safetensors`` (what stage 2 starts from) of a kept stage-1 checkpoint, written to
    ``run/encoder_step_<step>.safetensors``: a stage-2 rung can start from part of a rung-A run."""
    from models.config import get_preset
    from omegaconf import OmegaConf

    from train.eval.loading import load_model
    from train.stage1 import save_encoder

    tag = f"step_{step:08d}"
    m = load_model(_checkpoint_view(run, tag, run.parent / "curve" / tag))
    preset = OmegaConf.load(run / "run_config.yaml").model.preset
    return save_encoder(m.model.model.stage1, run / f"encoder_step_{step}.safetensors",
                        get_preset(preset).decoder.hidden_size, meta={"preset": preset, "steps": step})


def curve(run: Path, shards: str, mode: str, pages: int, total_steps: int, train_cpu_s: float,
          device: str = "cpu") -> list[dict]:
    """Unseen-font CER of every kept checkpoint. A step costs the same CPU all along, so the CPU
    time at step k is k / steps x the training's measured CPU time."""
    points = []
    for tag in sorted(p.name for p in (run / "checkpoints").glob("step_*") if p.is_dir()):
        step = int(tag.split("_")[-1])
        s = score(_checkpoint_view(run, tag, run.parent / "curve" / tag), shards, mode, pages, blank=False,
                  device=device)
        points.append({"step": step, "cpu_s": round(train_cpu_s * step / total_steps, 1), "cer": s["cer"],
                       "word_accuracy": s["word_accuracy"], "wrong_page_cer": s["wrong_page"]["cer"]})
    return points


def run_rung_at(rung: Rung, out: str | Path, *, seed: int = 0, from_run: str | Path | None = None,
                curve_points: int = 5, eval_pages: int | None = None, progress=print,
                chain_cpu_s: float = 0.0, splits: tuple[str, ...] = HELDOUT_SPLITS, device: str = "cpu") -> dict:
    """Build the rung's pages, train it, score it on the held-out ``splits`` (the first one,
    unseen font families, with the controls and the untrained model) reading on ``device``;
    ``out/result.json``. ``steps`` in the result: the steps trained (``train.max_wall_s`` in the
    rung's overrides may stop it before ``rung.steps``)."""
    out = Path(out)
    t0 = time.time()
    data = build_data(rung, data_dir(rung, out, seed), seed, splits)
    if rung.stage == 1 and from_run:  # a curriculum step trains and is read with the earlier run's tokenizer
        data = {**data, "tokenizer": run_tokenizer(Path(from_run))}
    data_s = time.time() - t0
    run_dir = out / "run"
    overrides = rung_overrides(rung, data, run_dir, seed, Path(from_run) if from_run else None)
    progress(f"[ladder] rung {rung.name}: {rung.recipe}, {rung.steps} steps -> {run_dir}")
    cost = train_rung(rung, overrides, curve_points)
    model = run_dir / "model" if rung.stage == 2 else run_dir
    pages = eval_pages or rung.heldout_pages
    labels = train_labels(data["train"])
    res = {"rung": rung.name, "recipe": rung.recipe, "stage": rung.stage, "mode": rung.mode, "steps": cost["steps"],
           "planned_steps": rung.steps, "stopped_by": cost["stopped_by"], "train_pages": rung.train_pages,
           "data_s": round(data_s, 1), "train_cpu_s": round(cost["cpu_s"], 1),
           "train_wall_s": round(cost["wall_s"], 1), "chain_cpu_s": round(chain_cpu_s + cost["cpu_s"], 1),
           "splits": {}}
    from train.eval.loading import last_loss_ratio

    ratio = last_loss_ratio(run_dir)  # held-out loss real / blank pages: reported, never the verdict
    for split in splits:
        first = split == "heldout_fonts"
        s = score(model, data[split], rung.mode, pages, tokenizer=data["tokenizer"], labels=labels, untrained=first,
                  blank=first, seed=seed, loss_ratio=ratio if first else None, device=device)
        res["splits"][split] = s
        progress(f"[ladder] {SPLIT_TITLES[split]}: CER {s['cer']:.3f}, word accuracy {s['word_accuracy']:.3f}")
    if curve_points and rung.stage == 1:
        res["curve"] = curve(run_dir, data["heldout_fonts"], rung.mode, min(pages, 50), cost["steps"], cost["cpu_s"],
                             device)
    main = res["splits"]["heldout_fonts"]
    checks = {"cer_vs_wrong_page": main["checks"]["cer_vs_wrong_page"]}
    if rung.target_cer is not None:
        checks["cer"] = main["cer"] <= rung.target_cer
    if rung.budget_cpu_min is not None:  # the whole chain's training CPU (earlier rungs included)
        checks["cpu_budget"] = cost["cpu_s"] + chain_cpu_s <= rung.budget_cpu_min * 60
    if rung.target_word_accuracy is not None:
        checks["word_accuracy"] = main["word_accuracy"] >= rung.target_word_accuracy
    res["checks"], res["met"] = checks, all(checks.values())
    res["table"] = table_lines(res)
    (out / "result.json").write_text(json.dumps(res, indent=1, ensure_ascii=False))
    return res


def chain(name: str, rungs: dict[str, Rung] | None = None) -> list[Rung]:
    """The rungs a rung's training continues, first to last, ending with the rung itself."""
    rungs = rungs or RUNGS
    out, seen = [], set()
    while name is not None:
        if name in seen or name not in rungs:
            raise ValueError(f"rung chain through {name!r}: unknown or circular (known: {sorted(rungs)})")
        seen.add(name)
        out.insert(0, rungs[name])
        name = rungs[name].after
    return out


def run_chain(name: str, out: str | Path, *, rungs: dict[str, Rung] | None = None, seed: int = 0,
              curve_points: int = 5, eval_pages: int | None = None, progress=print, reuse: bool = True) -> dict:
    """Train a rung after the rungs it continues (a curriculum: each stage-1 rung starts from the
    previous one's weights and tokenizer), each in ``out/rung_<name>``; every rung is scored,
    the last one's CPU budget covers the whole chain. A rung whose result.json is there is
    reused (``reuse``), so a stopped chain goes on where it stopped."""
    out = Path(out)
    prev, cpu, steps = None, 0.0, []
    for r in chain(name, rungs):
        rung_out = out / f"rung_{r.name}"
        done = rung_out / "result.json"
        if reuse and done.is_file():
            res = json.loads(done.read_text())
            progress(f"[ladder] rung {r.name}: reusing {done}")
        else:
            res = run_rung_at(r, rung_out, seed=seed, from_run=prev if r.after else None, curve_points=curve_points,
                              eval_pages=eval_pages, progress=progress, chain_cpu_s=cpu)
        cpu += res["train_cpu_s"]
        main = res["splits"]["heldout_fonts"]
        steps.append({"rung": r.name, "steps": res["steps"], "train_cpu_s": res["train_cpu_s"],
                      "chain_cpu_s": round(cpu, 1), "cer": main["cer"], "wrong_page_cer": main["wrong_page"]["cer"],
                      "word_accuracy": main["word_accuracy"]})
        prev = rung_out / "run"
    res["chain"] = steps
    res["table"] = table_lines(res)
    (out / f"rung_{name}" / "result.json").write_text(json.dumps(res, indent=1, ensure_ascii=False))
    return res


def table_lines(res: dict) -> list[str]:
    main = res["splits"]["heldout_fonts"]
    lines = [f"rung {res['rung']} ({res['recipe']}, stage {res['stage']}, {res['mode']} view, {res['steps']} steps): "
             f"training {res['train_cpu_s'] / 60:.1f} CPU-min ({res['train_wall_s'] / 60:.1f} min wall)"
             + (f", {res['chain_cpu_s'] / 60:.1f} CPU-min with the rungs before it"
                if res.get("chain_cpu_s", res["train_cpu_s"]) > res["train_cpu_s"] else ""),
             f"held-out pages in {SPLIT_TITLES['heldout_fonts']} ({main['pages']} pages):"]
    extra = [("before training (same model, fresh init)", main["untrained"])] if main.get("untrained") else []
    lines += reading_lines(main, title="trained", extra=extra)
    for split in [k for k in HELDOUT_SPLITS[1:] if k in res["splits"]]:
        s = res["splits"][split]
        lines.append(f"  {SPLIT_TITLES[split]:44s}: CER {s['cer']:.3f}, word accuracy {s['word_accuracy']:.3f} "
                     f"(wrong-page CER {s['wrong_page']['cer']:.3f})")
    for c in res.get("chain", [])[:-1]:  # the rungs before this one
        lines.append(f"  curriculum: rung {c['rung']:3s} {c['steps']:5d} steps, chain {c['chain_cpu_s'] / 60:5.1f} CPU-min: "
                     f"unseen-font CER {c['cer']:.3f} (wrong-page {c['wrong_page_cer']:.3f}), "
                     f"word accuracy {c['word_accuracy']:.3f}")
    for p in res.get("curve", []):
        lines.append(f"  curve: step {p['step']:5d} ~{p['cpu_s'] / 60:5.1f} CPU-min  unseen-font CER {p['cer']:.3f}")
    lines.append("  targets: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in res["checks"].items()))
    return lines


def with_steps(rung: Rung, steps: int | None = None, train_pages: int | None = None, **kw) -> Rung:
    return replace(rung, steps=steps or rung.steps, train_pages=train_pages or rung.train_pages, **kw)


def summary_line(res: dict) -> str:
    """One line of a finished rung: unseen-font CER beside its controls, letters right, verdict."""
    s = res["splits"]["heldout_fonts"]
    before = f"before training {s['untrained']['cer']:.3f}, " if "untrained" in s else ""
    return (f"rung {res['rung']} (stage {res['stage']}, {res['steps']} steps, {res['train_cpu_s'] / 60:.1f} CPU-min): "
            f"unseen-font CER {s['cer']:.3f} ({before}blank {s['blank']['cer']:.3f}, wrong-page "
            f"{s['wrong_page']['cer']:.3f}, constant {s['constant']['cer']:.3f}); word accuracy "
            f"{s['word_accuracy']:.3f} (chance {s['chance']['word_accuracy']:.3f}); {s['verdict']}")


def main(argv: list[str] | None = None) -> int:
    """``python -m train.ladder --rung A --out DIR [--steps N ...] [overrides]``: one rung, its table.
    Exits 0 whether or not the targets are met (benchmarks/bench_reading.py --rung gates on them)."""
    import argparse

    ap = argparse.ArgumentParser(description="train and score one rung of the reading ladder")
    ap.add_argument("--rung", choices=[*RUNGS, SMALL_A.name])
    ap.add_argument("--summary", nargs="+", metavar="OUT", default=None,
                    help="print one line per finished rung (its OUT/result.json: unseen-font CER beside the "
                         "controls, verdict) and stop")
    ap.add_argument("--out", help="run dir OUT/run, result OUT/result.json; data beside OUT")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--train-pages", type=int, default=None)
    ap.add_argument("--heldout-pages", type=int, default=None)
    ap.add_argument("--curve-points", type=int, default=0)
    ap.add_argument("--from-run", default=None,
                    help="stage-2 rungs: the stage-1 run whose encoder they start from, or an encoder .safetensors")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-only", action="store_true",
                    help="build the rung's pages (PDF -> engine -> shards + tokenizer) beside OUT and stop; "
                         "a later run of the rung reuses them")
    ap.add_argument("--splits", nargs="+", choices=HELDOUT_SPLITS, default=list(HELDOUT_SPLITS),
                    help="held-out splits to build and score (default: all)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the rung's recipe")
    a = ap.parse_args(argv)
    if a.summary:
        for out in a.summary:
            print(summary_line(json.loads((Path(out) / "result.json").read_text())))
        return 0
    if a.rung is None or a.out is None:
        ap.error("--rung and --out are required (or --summary OUT...)")
    if "heldout_fonts" not in a.splits:
        ap.error("--splits must include heldout_fonts (the pages a rung is scored on, with its controls)")
    base = SMALL_A if a.rung == SMALL_A.name else RUNGS[a.rung]
    rung = with_steps(base, a.steps, a.train_pages, heldout_pages=a.heldout_pages or base.heldout_pages,
                      overrides=(*base.overrides, *a.overrides))
    if a.data_only:
        paths = build_data(rung, data_dir(rung, Path(a.out), a.seed), a.seed, tuple(a.splits))
        print(f"[ladder] rung {rung.name} pages: " + ", ".join(f"{k} {v}" for k, v in paths.items()))
        return 0
    res = run_rung_at(rung, a.out, seed=a.seed, from_run=a.from_run, curve_points=a.curve_points,
                      splits=tuple(a.splits))
    print("\n".join(res["table"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
