"""The DeepSpeed JSON config of a training run, built from the typed Hydra config.

* ``batch_geometry``: micro / global batch, gradient accumulation and data-parallel degree
  (dp = world size / pp), checked against each other.
* ``build_ds_config``: ZeRO stage, batch geometry, precision, clipping and the optional
  ``pipeline`` section; ``deepspeed.extra`` (raw DeepSpeed keys) merged last.

The optimizer and the lr schedule are not in it: they are torch objects (train/optimizer.py,
train/lr_schedule.py) handed to ``deepspeed.initialize``.

Reference: DeepSpeed config JSON (https://www.deepspeed.ai/docs/config-json/).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .config import TrainConfig, as_config, typed
from .distributed import world_info


def _deep_merge(base: dict, extra: Mapping) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def batch_geometry(train_cfg: Any, world_size: int) -> tuple[int, int, int, int]:
    """(micro, global, grad_accum, dp) with global = micro * grad_accum * dp checked.

    dp = world_size / pp: pipeline stages share one data-parallel replica.
    """
    tcfg = typed(train_cfg, TrainConfig)  # batch sizes >= 1: checked by the schema
    pp, micro, glob = tcfg.pp, tcfg.micro_batch_size, tcfg.global_batch_size
    if world_size % pp:
        raise ValueError(f"world size {world_size} is not a multiple of train.pp={pp}")
    dp = world_size // pp
    if glob % (micro * dp):
        raise ValueError(
            f"train.global_batch_size={glob} must be a multiple of micro_batch_size x dp "
            f"= {micro} x {dp} (world {world_size} / pp {pp})"
        )
    return micro, glob, glob // (micro * dp), dp


def build_ds_config(cfg: Any, world_size: int | None = None) -> dict:
    """DeepSpeed config dict from ``cfg.train``, ``cfg.deepspeed`` and ``cfg.optim``.

    The optimizer and scheduler are *not* in the dict: they are torch objects passed to
    ``deepspeed.initialize`` (client optimizer), so the schedule logic lives in one place.
    ``cfg.deepspeed.extra`` (raw DeepSpeed keys) is deep-merged last and wins.
    """
    cfg = as_config(cfg)  # a Config as it is; a dict converted (ranges: the schema's)
    if world_size is None:
        world_size = world_info()[1]
    micro, glob, accum, _ = batch_geometry(cfg.train, world_size)
    dtype, zero_stage, pp = cfg.deepspeed.dtype, cfg.deepspeed.zero_stage, cfg.train.pp
    if pp > 1 and zero_stage > 1:
        # DeepSpeed's pipeline engine only supports ZeRO-0/1 (paper: PP=4 + ZeRO-1).
        raise ValueError(f"pipeline parallelism (pp={pp}) supports ZeRO stage 0 or 1, got {zero_stage}")

    conf: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "train_batch_size": glob,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": zero_stage},
        "bf16": {"enabled": dtype == "bf16"},
        "fp16": {"enabled": dtype == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # we print/log ourselves (train/logging.py); DeepSpeed's own prints are noise
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # a client optimizer that is not one of DeepSpeed's own is intended under ZeRO
        "zero_allow_untested_optimizer": True,
    }
    if zero_stage in (1, 2):
        # overlapping reduce with backward needs CUDA streams; harmless to disable on CPU
        conf["zero_optimization"].update(
            contiguous_gradients=True, overlap_comm=torch.cuda.is_available(),
            reduce_scatter=True,
        )
    if pp > 1:
        # (dynamic shapes are a PipelineModule argument, set in train/pipeline.py: DeepSpeed
        # ignores a config key of that name)
        conf["pipeline"] = {
            "activation_checkpoint_interval": cfg.train.activation_checkpoint_interval,
        }
    return _deep_merge(conf, cfg.deepspeed.extra)
