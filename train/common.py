"""Shared training plumbing for stage 1 and stage 2.

* ``build_ds_config``: the DeepSpeed JSON config from the Hydra config (ZeRO stage, micro /
  global batch and gradient accumulation, precision, clipping, optional ``pipeline`` section).
* ``init_distributed``: torch.distributed through ``deepspeed.init_distributed`` (gloo on CPU,
  nccl on GPU); works single-process without a launcher.
* ``seed_everything`` / ``rng_state`` / ``set_rng_state``: reproducibility and exact resume.
* ``build_optimizer`` / ``build_lr_scheduler``: torch AdamW (passed to DeepSpeed as a client
  optimizer) and warmup + cosine / step schedules as a ``LambdaLR``.
* ``save_checkpoint`` / ``resume_checkpoint``: ``engine.save_checkpoint`` / ``load_checkpoint``
  plus a per-rank side file with the RNG states and the data loader position, so a resumed
  run reproduces the losses of an uninterrupted one from the next step on.

Reference: DeepSpeed config JSON (https://www.deepspeed.ai/docs/config-json/) and the
checkpoint API of ``DeepSpeedEngine``; schedule shapes follow nanoGPT / torchtitan.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import shutil
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .config import Config, ModelConfig, OptimConfig, TrainConfig, typed
from .preflight import check_inputs

CKPT_DIRNAME = "checkpoints"
_TAG_PREFIX = "step_"
log = logging.getLogger(__name__)


def to_container(x: Any) -> Any:
    """OmegaConf node or config dataclass -> plain python (dict/list); other values unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    return x


# ---------------------------------------------------------------------------------------
# distributed
# ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Set by init_distributed to the MASTER_PORT of the world of one it makes up. The RANK and
# MASTER_PORT it puts into os.environ are inherited by every child process, e.g. the
# `python -m train.flywheel` that a test or notebook starts after training in-process: such a
# child is not a launcher's rank, and its parent's TCP store still listens on that port.
_SOLO_WORLD_ENV = "OCRFLOW_SOLO_WORLD_PORT"


def _started_by_launcher() -> bool:
    """RANK set by a launcher (torchrun, deepspeed), not inherited from a made-up world of one
    (a launcher sets its own MASTER_PORT, so the port tells the two apart)."""
    return "RANK" in os.environ and os.environ.get(_SOLO_WORLD_ENV) != os.environ.get("MASTER_PORT")


def world_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torch.distributed or the launcher's environment."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


SHM_ALLREDUCE_OP = "deepspeed_shm_comm"  # DeepSpeed's CPU shared-memory all-reduce op (ShareMemCommBuilder)


def _skip_shm_allreduce() -> None:
    """Keep DeepSpeed's comm backend from building its shared-memory all-reduce op on CPU.

    Training never calls it (ZeRO and the pipeline reduce through torch.distributed; the op
    serves DeepSpeed's inference all-reduce), yet starting the backend JIT-compiles it (minutes
    on a fresh machine) and leaves a 69 MB ``/dev/shm/deepspeed_allreduce_buffer_*`` segment
    per rank behind at every run: it is never unlinked, so a test suite or a flywheel run of
    many trainings fills /dev/shm, i.e. RAM.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[SHM_ALLREDUCE_OP] = False


def init_distributed(cfg: Any = None) -> tuple[int, int, torch.device]:
    """Initialise torch.distributed once; returns (rank, world_size, device).

    Under a launcher (deepspeed / torchrun) the env vars are set already. Run as a plain
    ``python`` process we fill in a single-process world on a free local port, so the same
    code path (DeepSpeed engine, ZeRO) runs in tests and notebooks. Backend:
    ``cfg.train.backend`` if set, else nccl with CUDA and gloo without.
    """
    import deepspeed
    import torch.distributed as dist

    backend = typed(cfg, Config).train.backend or default_backend()
    if backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("train.backend=nccl needs CUDA; use gloo on CPU")
    launched = _started_by_launcher()
    if launched and not dist.is_initialized():
        # Started by a launcher (torchrun, deepspeed): end with it. Otherwise a killed launcher
        # leaves the ranks blocked in a collective for ever, holding the GPUs.
        from data_engine.executor import die_with_parent

        die_with_parent(os.getppid())
    if not dist.is_initialized():
        if not launched:  # not started by a launcher: a world of one
            made_up = _SOLO_WORLD_ENV in os.environ  # a port made up before, e.g. by the parent
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_SIZE="1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            port = None if made_up else os.environ.get("MASTER_PORT")  # a user's MASTER_PORT is kept
            os.environ["MASTER_PORT"] = os.environ[_SOLO_WORLD_ENV] = port or str(_free_port())
        if backend == "gloo":
            _skip_shm_allreduce()
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    rank, world, local_rank = world_info()
    if torch.cuda.is_available() and backend == "nccl":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return rank, world, device


# ---------------------------------------------------------------------------------------
# DeepSpeed config
# ---------------------------------------------------------------------------------------


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
    cfg = typed(cfg, Config)  # dtype and zero_stage ranges: checked by the schema
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


# ---------------------------------------------------------------------------------------
# seeding / RNG
# ---------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------
# optimizer / schedule
# ---------------------------------------------------------------------------------------


# Parameter names (stage 1 ``encoder.*``, stage 2 / export ``model.*``, pipeline stages) that
# belong to DeepEncoder (V2: ``qwen2_model`` instead of CLIP), and the SAM + neck + compressor part of it.
_ENCODER_NAMES = ("sam_model.", "vision_model.", "qwen2_model.", "projector.", "image_newline", "view_seperator")
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


def lr_multiplier(step: int, optim_cfg: Any, total_steps: int, warmup: int | None = None) -> float:
    """Multiplier on the peak lr after ``step`` optimizer steps (0-based); ``warmup``
    overrides ``optim.warmup_steps`` (the encoder's own warm-up)."""
    ocfg = typed(optim_cfg, OptimConfig)  # the schedule name is checked by the schema
    schedule = ocfg.schedule
    warmup = ocfg.warmup_steps if warmup is None else warmup
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        min_ratio = ocfg.min_lr_ratio
        span = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "step":
        # milestones < 1 are fractions of the run, >= 1 absolute optimizer steps
        milestones = [m * total_steps if m < 1 else m for m in ocfg.step_milestones]
        return ocfg.step_gamma ** sum(step >= m for m in milestones)
    return 1.0  # constant


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Any,
                       total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + cosine (to ``min_lr_ratio`` x lr) or step (x ``step_gamma`` per milestone);
    encoder groups warm up over ``optim.encoder_warmup_steps`` (null: ``warmup_steps``).

    Stepped once per optimizer step (DeepSpeed calls ``scheduler.step()`` inside
    ``engine.step()`` at gradient-accumulation boundaries).
    """
    ocfg = typed(optim_cfg, OptimConfig)

    def schedule(warmup: int | None):
        return lambda s: lr_multiplier(s, ocfg, total_steps, warmup)

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, [schedule(g.get("warmup_steps")) for g in optimizer.param_groups])


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------


def _tag(step: int) -> str:
    return f"{_TAG_PREFIX}{step:08d}"


def save_checkpoint(engine, out_dir: str | Path, step: int, client_state: Mapping | None = None,
                    keep_last: int | None = None) -> Path:
    """Collective: every rank calls it. Writes ``out_dir/step_XXXXXXXX/`` + ``out_dir/latest``.

    ``client_state`` is per rank (e.g. ``{"data": loader.state_dict()}``): it goes, with the
    RNG states and ``step``, to ``rank_{r}_client_state.pt`` inside the tag folder, because
    DeepSpeed stores its own client_state only from one rank and data positions / RNG differ
    per data-parallel rank.
    """
    import torch.distributed as dist

    out_dir = Path(out_dir)
    rank, world, _ = world_info()
    tag = _tag(step)
    engine.save_checkpoint(str(out_dir), tag=tag, client_state={"step": step, "world_size": world})
    state = {"step": step, "world_size": world, "rng": rng_state(), **dict(client_state or {})}
    # DeepSpeed creates the tag folder only on ranks that write engine files (not on DP
    # ranks > 0 under ZeRO-0, nor on a node without a shared file system)
    (out_dir / tag).mkdir(parents=True, exist_ok=True)
    torch.save(state, out_dir / tag / f"rank_{rank:05d}_client_state.pt")
    if dist.is_initialized():
        dist.barrier()
    if keep_last and rank == 0:
        tags = sorted(p for p in out_dir.glob(f"{_TAG_PREFIX}*") if p.is_dir())
        for old in tags[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return out_dir / tag


def find_resume_path(resume: Any, out_dir: str | Path) -> Path | None:
    """``train.resume``: "auto" -> ``out_dir`` if it holds a ``latest`` file, a path as is,
    null/false/"none" -> None."""
    if resume is None or str(resume).lower() in ("false", "none", "null", ""):
        return None
    if resume == "auto":
        return Path(out_dir) if (Path(out_dir) / "latest").is_file() else None
    path = Path(str(resume))
    if not path.exists():
        raise FileNotFoundError(f"train.resume={resume!r} does not exist")
    return path


def _tag_step(tag: str) -> int:
    return int(tag[len(_TAG_PREFIX):]) if tag.startswith(_TAG_PREFIX) and tag[len(_TAG_PREFIX):].isdigit() else -1


def checkpoint_problem(tag_dir: Path, rank: int, world: int = 1) -> str | None:
    """Why the checkpoint folder ``tag_dir`` cannot be resumed on ``rank``, or None.

    This rank's side file must exist, and its share (every ``world``-th) of the ``*.pt`` files
    must open: a truncated zip has no central directory; ``mmap`` reads the structure without
    loading the tensors. With ``_agree`` over the ranks every file is checked once.
    """
    if not tag_dir.is_dir():
        return "the folder does not exist"
    side = tag_dir / f"rank_{rank:05d}_client_state.pt"
    if not side.is_file():
        return f"{side.name} is missing (unfinished save, or another world size)"
    for f in sorted(tag_dir.rglob("*.pt"))[rank::world]:
        try:
            torch.load(f, map_location="cpu", mmap=True, weights_only=False)
        except Exception as e:  # noqa: BLE001 - any failure to read means damaged
            return f"{f.relative_to(tag_dir)} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    return None


def _agree(ok: bool) -> bool:
    """True when ``ok`` holds on every rank (collective), so all ranks pick the same checkpoint."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def select_checkpoint(path: str | Path) -> Path:
    """The tag folder to resume from (collective under torch.distributed).

    ``path`` is a tag folder (used as is; an error if damaged) or a checkpoint root: the tag
    named by ``latest`` if intact, else the newest older intact one, with a warning naming
    each damaged checkpoint. Tags newer than ``latest`` are never used (their save did not
    finish). No intact checkpoint: one clear error.
    """
    path = Path(path)
    rank, world, _ = world_info()
    if path.name.startswith(_TAG_PREFIX) and not (path / "latest").is_file():
        problem = checkpoint_problem(path, rank, world)
        if not _agree(problem is None):
            raise RuntimeError(f"checkpoint {path} cannot be resumed: {problem or 'damaged on another rank'}")
        return path
    if not (path / "latest").is_file():
        raise FileNotFoundError(f"{path} is neither a checkpoint root (with 'latest') nor a {_TAG_PREFIX}* folder")
    latest = (path / "latest").read_text().strip()
    newest = _tag_step(latest)
    older = sorted((p.name for p in path.glob(f"{_TAG_PREFIX}*") if p.is_dir() and -1 < _tag_step(p.name) < newest),
                   key=_tag_step, reverse=True)
    damaged = []
    for tag in [latest, *older]:
        problem = checkpoint_problem(path / tag, rank, world)
        if problem:  # logged by the rank that found it (each checks its share of the files)
            log.warning("checkpoint %s is damaged: %s", path / tag, problem)
        if _agree(problem is None):
            if damaged and rank == 0:
                log.warning("resuming from %s instead of %s (damaged)", path / tag, path / latest)
            return path / tag
        damaged.append(f"checkpoint {path / tag} is damaged: {problem or 'see the warnings of the other ranks'}")
    raise FileNotFoundError(f"no intact checkpoint to resume in {path}: " + "; ".join(damaged))


def resume_checkpoint(engine, path: str | Path) -> dict:
    """Load a checkpoint written by ``save_checkpoint`` into ``engine`` (module, optimizer,
    lr scheduler) and restore this rank's RNG state. Returns the client_state dict
    (``step``, ``rng``, and whatever the trainer saved, e.g. ``data``).

    ``path``: the checkpoint root (its ``latest`` file names the tag) or one tag folder.
    """
    path = Path(path)
    if (path / "latest").is_file():
        load_dir, tag = path, (path / "latest").read_text().strip()
    elif path.is_dir() and path.name.startswith(_TAG_PREFIX):
        load_dir, tag = path.parent, path.name
    else:
        raise FileNotFoundError(f"{path} is neither a checkpoint root (with 'latest') nor a {_TAG_PREFIX}* folder")
    if not (load_dir / tag).is_dir():
        raise FileNotFoundError(f"{load_dir / 'latest'} names {tag!r}, which does not exist in {load_dir}")
    try:
        loaded, _ = engine.load_checkpoint(str(load_dir), tag=tag, load_optimizer_states=True,
                                           load_lr_scheduler_states=True)
    except Exception as e:  # name the checkpoint: DeepSpeed/torch errors do not
        raise RuntimeError(f"checkpoint {load_dir / tag} could not be loaded: {type(e).__name__}: {e}") from e
    if loaded is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {load_dir / tag}")
    rank, world, _ = world_info()
    side = load_dir / tag / f"rank_{rank:05d}_client_state.pt"
    if not side.is_file():
        raise FileNotFoundError(f"{side} missing: checkpoint was written by a different world size?")
    try:
        state = torch.load(side, map_location="cpu", weights_only=False)
    except Exception as e:
        raise RuntimeError(f"checkpoint file {side} could not be read: {type(e).__name__}: {e}") from e
    if state.get("world_size", world) != world:
        raise ValueError(
            f"checkpoint {tag} was written with world size {state['world_size']}, now {world}: "
            "exact data/RNG resume needs the same layout"
        )
    set_rng_state(state["rng"])
    return state


def touch_params(x: torch.Tensor, *parts: torch.nn.Module | torch.nn.Parameter) -> torch.Tensor:
    """x + 0 * (one element of every trainable parameter in ``parts``): parameters unused by
    this micro-batch (the vision tower on a text-only batch) get a zero gradient instead of
    none. ZeRO-1/2 reduce the gradients of the DP ranks in flat buckets of the parameters that
    have one; if one rank's set differs (its micro-batch was text-only), the buckets mismatch."""
    params = [q for part in parts
              for q in ([part] if isinstance(part, torch.nn.Parameter) else part.parameters())
              if q.requires_grad]
    if not params or not torch.is_grad_enabled():
        return x
    zero = torch.stack([q.reshape(-1)[0] for q in params]).sum() * 0
    return x + zero.to(x.dtype)


def load_run_tokenizer(model_cfg: Any):
    """The tokenizer named by ``model.tokenizer`` (a dir with tokenizer.json), with a clear error."""
    from models.tokenizer import load_tokenizer

    path = typed(model_cfg, ModelConfig).tokenizer
    if not path:
        raise ValueError("model.tokenizer must name a directory with tokenizer.json")
    return load_tokenizer(path)


def resume_if_requested(engine, train_cfg: Any, ckpt_dir: Path, loader=None) -> tuple[int, Path | None]:
    """Apply ``train.resume`` (auto | path | null): restore engine, RNG and the loader's exact
    data position. Returns (step to continue from, checkpoint path or None)."""
    path = find_resume_path(typed(train_cfg, TrainConfig).resume, ckpt_dir)
    if path is None:
        return 0, None
    path = select_checkpoint(path)
    state = resume_checkpoint(engine, path)
    if loader is not None:
        loader.load_state_dict(state["data"])
    return int(state["step"]), path


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
