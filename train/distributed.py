"""torch.distributed for the trainers: one process group per run, the same code path with or
without a launcher.

* ``init_distributed``: torch.distributed through ``deepspeed.init_distributed`` (gloo on CPU,
  nccl on GPU); a plain ``python`` process gets a world of one on a free local port.
* ``world_info``: (rank, world size, local rank), initialised or not.
* ``all_ranks_agree``: a boolean AND over the ranks (every rank takes the same decision).
* ``touch_params``: a zero gradient for parameters a micro-batch does not use, so the
  data-parallel ranks reduce the same gradient buckets.

Reference: ``deepspeed.init_distributed`` and the environment contract of torchrun / the
DeepSpeed launcher (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

from .config import as_config

# DeepSpeed's CPU shared-memory all-reduce op (ShareMemCommBuilder)
SHM_ALLREDUCE_OP = "deepspeed_shm_comm"

# Set by init_distributed to the MASTER_PORT of the world of one it makes up. The RANK and
# MASTER_PORT it puts into os.environ are inherited by every child process, e.g. the
# `python -m train.flywheel` that a test or notebook starts after training in-process: such a
# child is not a launcher's rank, and its parent's TCP store still listens on that port.
_SOLO_WORLD_ENV = "OCRFLOW_SOLO_WORLD_PORT"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a made-up world's MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    backend = as_config(cfg).train.backend or default_backend()
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
            os.environ["MASTER_PORT"] = os.environ[_SOLO_WORLD_ENV] = port or str(free_port())
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


def all_ranks_agree(ok: bool) -> bool:
    """True when ``ok`` holds on every rank (collective), so all ranks take the same decision."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


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
