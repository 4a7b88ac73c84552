"""What every training stage sets up before it builds a model: the config groups, the process
group, the checks of its inputs, the seeds, the output paths and the tokenizer (``start_run``).
The checks that need no model run here, so a bad setting fails in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from .checkpoints import CKPT_DIRNAME
from .config import Config, ModelConfig, TrainConfig, typed
from .deepspeed_config import batch_geometry
from .distributed import init_distributed
from .preflight import check_inputs
from .seeding import seed_everything


def load_run_tokenizer(model_cfg: Any):
    """The tokenizer named by ``model.tokenizer`` (a dir with tokenizer.json), with a clear error."""
    from models.tokenizer import load_tokenizer

    path = typed(model_cfg, ModelConfig).tokenizer
    if not path:
        raise ValueError("model.tokenizer must name a directory with tokenizer.json")
    return load_tokenizer(path)


class RunSetup(NamedTuple):
    """What both training stages set up first (see ``start_run``)."""

    train: TrainConfig
    model: ModelConfig
    data: Any  # DataConfig
    rank: int
    world: int
    device: torch.device
    seed: int
    steps: int
    seq_len: int
    out_dir: Path
    ckpt_dir: Path
    tokenizer: Any


def start_run(cfg: Config) -> RunSetup:
    """Config groups, process group, seeds, output paths and tokenizer of one training run.
    Ranges (``train.steps >= 1``, batch sizes) are the schema's; the batch geometry against
    the world size is checked here, before any model is built."""
    tcfg, mcfg, dcfg = cfg.train, cfg.model, cfg.data
    rank, world, device = init_distributed(cfg)
    batch_geometry(tcfg, world)
    check_inputs(cfg)  # shards, tokenizer, checkpoints, output folder: before any model is built
    seed_everything(tcfg.seed)
    out_dir = Path(tcfg.out_dir)
    return RunSetup(tcfg, mcfg, dcfg, rank, world, device, tcfg.seed, tcfg.steps,
                    dcfg.seq_len, out_dir, out_dir / CKPT_DIRNAME, load_run_tokenizer(mcfg))
