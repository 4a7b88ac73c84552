"""The trainers' optimizer: torch AdamW with parameter groups per model part.

* ``param_part``: which part a parameter belongs to (SAM + compressor, the rest of the vision
  encoder, or the language model), from its name in any trainer's model.
* ``part_schedule`` / ``encoder_has_own_schedule``: each part's lr multiplier and warm-up.
* ``build_optimizer``: AdamW groups by (part schedule, decay or not); frozen parameters skipped.
* ``current_lrs``: the lrs the next step uses, per part, for the metrics.

The lr schedule over the run is train/lr_schedule.py; it reads the ``warmup_steps`` each group
records here. Reference: torch.optim.AdamW; weight-decay groups as in nanoGPT.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .config import OptimConfig, typed

# Parameter names (stage 1 ``encoder.*``, stage 2 / export ``model.*``, pipeline stages) that
# belong to DeepEncoder (V2: ``qwen2_model`` instead of CLIP), and the SAM + neck + compressor part of it.
_ENCODER_NAMES = ("sam_model.", "vision_model.", "qwen2_model.", "projector.", "image_newline", "view_seperator",
                  "backbone.")  # the flywheel's PP-OCR recognizer: its PP-LCNetV3 backbone (train/flywheel/ppocr.py)
_SAM_NAMES = ("sam_model.",)


def param_part(name: str) -> str:
    """``"sam"`` (SAM + neck + compressor), ``"encoder"`` (CLIP, projector, newline and
    separator) or ``"lm"`` (the language model) for a parameter name of any trainer's model."""
    if any(k in name for k in _SAM_NAMES):
        return "sam"
    return "encoder" if any(k in name for k in _ENCODER_NAMES) else "lm"


def part_schedule(part: str, optim_cfg: Any) -> tuple[float, int]:
    """(lr multiplier, warm-up steps) of a model part (``param_part``)."""
    ocfg = typed(optim_cfg, OptimConfig)
    if part == "lm":
        return 1.0, ocfg.warmup_steps
    warmup = ocfg.warmup_steps if ocfg.encoder_warmup_steps is None else ocfg.encoder_warmup_steps
    scale = ocfg.encoder_lr_scale * (ocfg.sam_lr_scale if part == "sam" else 1.0)
    return scale, warmup


def encoder_has_own_schedule(optim_cfg: Any) -> bool:
    """True when an encoder part's (lr, warm-up) differs from the language model's, i.e. when
    ``build_optimizer`` gives the encoder parameter groups of its own."""
    lm = part_schedule("lm", optim_cfg)
    return any(part_schedule(part, optim_cfg) != lm for part in ("encoder", "sam"))


def build_optimizer(params: Iterable | torch.nn.Module, optim_cfg: Any) -> torch.optim.Optimizer:
    """torch AdamW; matrices get weight decay, vectors (norms, biases, newline) do not.

    DeepEncoder has its own learning rate: ``lr * optim.encoder_lr_scale`` (x ``sam_lr_scale``
    more for SAM + compressor). Trained from scratch at the language model's lr, AdamW turns
    the encoder's small, noisy early gradients into full-size steps: the patch embedding's
    response to the white page grows until LayerNorm erases the ink, and the run stays
    image-blind (docs/training.md, benchmarks/probe_vision.py). Each group records its
    ``warmup_steps`` for ``build_lr_scheduler`` (the encoder's own warm-up).

    ``params``: a module, an iterable of parameters, or of (name, parameter) pairs. Frozen
    parameters (requires_grad False) are skipped, so freezing happens before this call.
    """
    if isinstance(params, torch.nn.Module):
        params = params.named_parameters()
    named = [p if isinstance(p, tuple) else ("", p) for p in params]
    named = [(n, p) for n, p in named if p.requires_grad]
    if not named:
        raise ValueError("build_optimizer: no trainable parameters")
    ocfg = typed(optim_cfg, OptimConfig)
    wd, lr = ocfg.weight_decay, ocfg.lr
    # parts with the same lr and warm-up share groups: with the defaults (all 1.0) every rank of a
    # pipeline has the same two groups, which ZeRO needs (it reduces norms group by group)
    groups: dict[tuple, dict] = {}
    for n, p in named:
        part = param_part(n)
        scale, warmup = part_schedule(part, ocfg)
        key = (scale, warmup, p.ndim >= 2)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": wd if p.ndim >= 2 else 0.0,
                           "lr": lr * scale, "warmup_steps": warmup, "part": part}
        groups[key]["params"].append(p)
    # fused: one kernel over all tensors instead of a Python loop per parameter (CPU and CUDA
    # both have it): AdamW was 3 % of a CPU step of the flywheel's small recognizer
    return torch.optim.AdamW(list(groups.values()), lr=lr, betas=tuple(ocfg.betas), eps=ocfg.eps, fused=True)


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``{"lr": the language model's lr}`` plus ``lr/encoder`` / ``lr/sam`` when those parts have
    their own groups: the lrs the next step uses (after the scheduler's last step)."""
    by_part: dict[str, float] = {}
    for g in optimizer.param_groups:
        by_part.setdefault(g.get("part", "lm"), g["lr"])
    first = optimizer.param_groups[0]["lr"]
    out = {"lr": by_part.get("lm", first)}
    out.update({f"lr/{k}": v for k, v in by_part.items() if k != "lm" and v != out["lr"]})
    return out
