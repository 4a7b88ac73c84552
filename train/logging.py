"""Training metrics: wandb (offline by default), a JSONL file and rich console lines. Rank 0 only.

``MetricsLogger(cfg, out_dir, total_steps)`` is created on every rank and is a no-op off rank
0, so trainers call it unconditionally. Metrics are plain floats keyed like
``loss``, ``loss/source/ocr``, ``loss/mode/gundam``, ``aux_loss``, ``lr``, ``grad_norm``,
``tokens_per_s``, ``samples_per_s``, ``expert_load/...``.

wandb runs offline unless the user sets ``WANDB_MODE`` (``wandb sync <run dir>`` uploads
later); its files go under the run's output directory. ``logging.wandb.mode=disabled`` turns
it off. ``metrics.jsonl`` is always written: it is what tests and scripts read back.

Helpers that turn per-token losses / router counts into those metrics live here too, so
stage 1 and stage 2 report the same names.

Console: one line per ``logging.log_every`` steps, at most 100 columns (``format_step``). The
trainers call ``quiet_libraries`` first and set up inside ``library_prints``, so DeepSpeed's
and distutils' chatter stays off the console; ``logging.verbose=true`` lets it through.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .config import as_config, to_container
from .distributed import world_info

log = logging.getLogger(__name__)


def token_loss_breakdown(
    token_loss: torch.Tensor,
    label_mask: torch.Tensor,
    group_ids: torch.Tensor,
    names: Sequence[str],
    prefix: str,
) -> dict[str, tuple[float, int]]:
    """Mean loss per group: {f"{prefix}/{name}": (sum of token losses, token count)}.

    token_loss, label_mask, group_ids: (B, T') aligned with the *predicted* tokens. Sums and
    counts (not means) are returned so callers can all-reduce / accumulate before dividing.
    """
    out: dict[str, tuple[float, int]] = {}
    token_loss = token_loss.detach().float()
    for i, name in enumerate(names):
        sel = label_mask & (group_ids == i)
        n = int(sel.sum())
        if n:
            out[f"{prefix}/{name}"] = (float(token_loss[sel].sum()), n)
    return out


def reduce_breakdowns(parts: Sequence[Mapping[str, tuple[float, int]]]) -> dict[str, float]:
    """Merge several (sum, count) dicts (micro-batches, and ranks if gathered) into means."""
    acc: dict[str, list[float]] = {}
    for p in parts:
        for k, (s, n) in p.items():
            a = acc.setdefault(k, [0.0, 0])
            a[0] += s
            a[1] += n
    return {k: s / n for k, (s, n) in acc.items() if n}


def expert_load_metrics(counts: torch.Tensor, prefix: str = "expert_load") -> dict[str, float]:
    """Router load balance from token counts per expert, counts (L, E) for L MoE layers.

    Reports per layer the max / mean load ratio (1.0 = perfectly balanced; E = all tokens on
    one expert) and the coefficient of variation, plus their mean over layers.
    """
    counts = counts.detach().float()
    if counts.ndim == 1:
        counts = counts[None]
    mean = counts.mean(dim=-1).clamp_min(1e-9)  # (L,)
    max_ratio = counts.max(dim=-1).values / mean
    cv = counts.std(dim=-1, unbiased=False) / mean
    out = {f"{prefix}/layer{i}/max_over_mean": float(r) for i, r in enumerate(max_ratio)}
    out.update({f"{prefix}/layer{i}/cv": float(c) for i, c in enumerate(cv)})
    out[f"{prefix}/max_over_mean"] = float(max_ratio.mean())
    out[f"{prefix}/cv"] = float(cv.mean())
    return out


# --------------------------------------------------------------------------- console lines

CONSOLE_WIDTH = 100  # a step line never exceeds it (a terminal of that width shows one per line)


def _rate(v: float) -> str:
    """742 / 12.3k / 1.23M: tokens/s stays short at any scale."""
    return f"{v:.0f}" if v < 1e4 else f"{v / 1e3:.3g}k" if v < 1e6 else f"{v / 1e6:.3g}M"


def _duration(s: float) -> str:
    s = max(0, round(s))
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


# metric -> console text, drop rank (0: always shown; the highest is dropped first when too long)
_FIELDS = (
    ("loss", "loss {:.4f}".format, 0),
    ("aux_loss", "aux {:.4f}".format, 3),
    ("lr", "lr {:.2e}".format, 0),
    ("grad_norm", "gnorm {:.2f}".format, 2),
    ("tokens_per_s", lambda v: f"{_rate(v)} tok/s", 0),
    ("step_time_s", "{:.3g} s/step".format, 0),
)


def format_step(step: int, total: int, m: Mapping[str, float], eta_s: float | None = None,
                width: int = CONSOLE_WIDTH) -> str:
    """One console line for a step's metrics, at most ``width`` characters.

    Always shown (when logged): step, loss, lr, tokens/s, s/step and, on the steps it is
    measured, vision reliance as ``real/blank <held-out loss with real images>/<with blank
    images>``. Shown while they fit, dropped in this order when they do not: per-source losses
    (``src``), MoE aux loss, gradient norm, ETA. Everything is in metrics.jsonl and wandb anyway.
    """
    parts = [(f"step {step}/{total}", 0)]  # (text, drop rank: 0 = always kept, higher = dropped first)
    parts += [(text(m[key]), rank) for key, text, rank in _FIELDS if key in m]
    if "reliance/loss_real" in m and "reliance/loss_blank" in m:
        parts.append((f"real/blank {m['reliance/loss_real']:.3f}/{m['reliance/loss_blank']:.3f}", 0))
    srcs = [f"{k.rsplit('/', 1)[-1]} {v:.2f}" for k, v in m.items() if k.startswith("loss/source/")]
    if srcs:
        parts.append(("src " + " ".join(srcs), 4))
    if eta_s is not None:
        parts.append((f"eta {_duration(eta_s)}", 1))
    sep = "  "
    while len(sep.join(t for t, _ in parts)) > width and any(r for _, r in parts):
        worst = max(r for _, r in parts)
        parts = [(t, r) for t, r in parts if r != worst]
    return sep.join(t for t, _ in parts)


# --------------------------------------------------------------------------- libraries' chatter

# Library loggers whose messages on a normal run are chatter nobody can act on, and the level
# they are raised to. ``logging.verbose=true`` leaves every library at its own levels.
QUIET_LEVELS: dict[str, int] = {
    # distutils' compiler command lines ("gcc ... test.c"): DeepSpeed's op builders probing for
    # libaio while importing; they propagate to the root logger, which Hydra sets to INFO
    "compilers": logging.WARNING,
    # DeepSpeed's own logger: INFO is its config dump and per-step lines; warnings stay
    "DeepSpeed": logging.WARNING,
}


def quiet_libraries(verbose: bool = False) -> None:
    """Keep the libraries' chatter off the console; the trainers call this first thing.

    * DeepSpeed's accelerator: without CUDA the trainers run on CPU (gloo), so the accelerator
      is named (``DS_ACCELERATOR=cpu``) instead of DeepSpeed warning, on every rank, that it
      fell back to CPU. A ``DS_ACCELERATOR`` already set is left alone. Must run before
      ``import deepspeed`` (the detection runs on import).
    * the loggers of ``QUIET_LEVELS`` are raised to their level.
    * what libraries ``print`` while the trainers set up goes through ``library_prints``.

    Warnings of ocrflow's own loggers (``train.*``, ``models.*``, ``data_engine.*``: a bad
    setting, a dropped data source, an image-blind run) are untouched. ``verbose=True``
    (``logging.verbose=true``) changes nothing, so every library speaks as it would.
    """
    if verbose:
        return
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    for name, level in QUIET_LEVELS.items():
        lg = logging.getLogger(name)
        if lg.getEffectiveLevel() < level:
            lg.setLevel(level)


@contextlib.contextmanager
def library_prints(verbose: bool = False) -> Iterator[None]:
    """Lines that libraries ``print`` inside the block (DeepSpeed: "Using topology: ...",
    "SEED_LAYERS=...", "... shm_comm_op built successfully") go to this module's logger at
    DEBUG instead of stdout; if the block raises they are printed after all, as context for
    the error. ``verbose=True``: printed as usual."""
    if verbose:
        yield
        return
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield
    except BaseException:
        sys.stdout.write(buf.getvalue())
        raise
    for line in buf.getvalue().splitlines():
        if line.strip():
            log.debug("library output: %s", line)


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the entries of ``metrics.jsonl`` up to ``last_step`` (atomic rewrite; a torn last
    line from a killed run is dropped too)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= last_step:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, path)


class MetricsLogger:
    """wandb + ``metrics.jsonl`` + console. Call ``log(step, metrics)`` on every rank."""

    def __init__(self, cfg: Any, out_dir: str | Path, total_steps: int, *,
                 run_config: Any = None, start_step: int = 0) -> None:
        """``start_step``: the step the run continues from (0 = a fresh start). Entries of
        ``metrics.jsonl`` after it belong to steps that are about to be redone: they are
        dropped, so each step appears once, with the values of the run that continues."""
        self.rank = world_info()[0]
        self.enabled = self.rank == 0
        self.total_steps = int(total_steps)
        self.out_dir = Path(out_dir)
        cfg = as_config(cfg)
        log_cfg = cfg.logging
        self.console_every = log_cfg.log_every
        self._wandb_run = None
        self._jsonl = None
        self._start_step = int(start_step)
        if not self.enabled:
            return
        from rich.console import Console

        self.console = Console(highlight=False)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "metrics.jsonl"
        _truncate_metrics(path, start_step)
        self._jsonl = open(path, "a", encoding="utf-8")
        self._init_wandb(log_cfg, run_config if run_config is not None else cfg)
        self._t0 = time.perf_counter()  # ETA: the steps' time, not wandb's start-up

    def _init_wandb(self, log_cfg: Any, run_config: Any) -> None:
        wb = log_cfg.wandb
        # the user's WANDB_MODE wins; otherwise the config (offline by default)
        mode = os.environ.get("WANDB_MODE") or wb.mode
        if mode == "disabled":
            return
        import wandb

        wdir = Path(wb.dir or self.out_dir)
        wdir.mkdir(parents=True, exist_ok=True)
        self._wandb_run = wandb.init(
            project=wb.project,
            name=wb.name,
            dir=str(wdir),
            mode=mode,
            config=to_container(run_config) if run_config is not None else None,
            settings=wandb.Settings(console="off", silent=True),
        )

    @property
    def wandb_dir(self) -> str | None:
        return self._wandb_run.dir if self._wandb_run is not None else None

    def log(self, step: int, metrics: Mapping[str, float], *, console: bool | None = None) -> None:
        if not self.enabled:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
            self._jsonl.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(metrics, step=step)
        if console is None:
            console = step == 1 or step % max(1, self.console_every) == 0 or step == self.total_steps
        if console:
            done = step - self._start_step  # steps timed by this process (a resumed run starts later)
            eta = (time.perf_counter() - self._t0) / done * max(self.total_steps - step, 0) if done > 0 else None
            from rich.text import Text

            line = Text(format_step(step, self.total_steps, metrics, eta))
            line.stylize("bold", 0, len(f"step {step}/{self.total_steps}"))
            self.console.print(line, soft_wrap=True)

    def info(self, msg: str) -> None:
        if self.enabled:  # as is: no rich markup in paths, no line breaks at 80 columns off a terminal
            self.console.print(msg, markup=False, soft_wrap=True)

    def summary(self, values: Mapping[str, Any]) -> None:
        if self.enabled and self._wandb_run is not None:
            for k, v in values.items():
                self._wandb_run.summary[k] = v

    def close(self) -> None:
        if not self.enabled:
            return
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
