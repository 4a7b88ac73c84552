"""Training checkpoints with exact resume, for every trainer.

* ``save_checkpoint``: ``engine.save_checkpoint`` plus a per-rank side file with the RNG states
  and the data loader position, so a resumed run reproduces the losses of an uninterrupted one
  from the next step on.
* ``find_resume_path`` / ``select_checkpoint``: ``train.resume`` (auto | path | null) -> the
  newest intact checkpoint (a damaged one is named in a warning and skipped).
* ``resume_checkpoint`` / ``resume_if_requested``: load it into the engine, restore RNG and
  data position.

Layout: ``<train.out_dir>/checkpoints/step_XXXXXXXX/`` (``checkpoint_tag``) and ``latest``.
Reference: the checkpoint API of ``DeepSpeedEngine`` (save_checkpoint / load_checkpoint).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig, typed
from .distributed import all_ranks_agree, world_info
from .seeding import rng_state, set_rng_state

CKPT_DIRNAME = "checkpoints"
_TAG_PREFIX = "step_"
log = logging.getLogger(__name__)


def checkpoint_tag(step: int) -> str:
    """The folder name of the checkpoint saved after ``step`` optimizer steps."""
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
    tag = checkpoint_tag(step)
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
    loading the tensors. With ``all_ranks_agree`` over the ranks every file is checked once.
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
        if not all_ranks_agree(problem is None):
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
        if all_ranks_agree(problem is None):
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
