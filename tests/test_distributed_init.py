"""Starting the training's distributed backend on CPU leaves nothing behind in /dev/shm:
DeepSpeed's shared-memory all-reduce op (unused by training, never unlinked) is not built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")

CHILD = """
import torch.distributed as dist
from train.distributed import init_distributed
init_distributed()
t = __import__("torch").ones(3)
dist.all_reduce(t)  # the backend works: a world of one sums to itself
assert t.tolist() == [1.0, 1.0, 1.0]
print(__import__("os").environ["MASTER_PORT"])
"""


@pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm on this system")
def test_cpu_backend_leaves_no_shared_memory_segment():
    env = dict(os.environ, PYTHONPATH=str(ROOT), DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    env.pop("RANK", None)
    res = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    port = res.stdout.strip().splitlines()[-1]
    left = [p.name for p in SHM.glob(f"deepspeed_allreduce_buffer_*_{port}_*")]
    assert left == [], f"DeepSpeed left shared-memory segments behind: {left}"


PARENT = """
import os, subprocess, sys
from train.distributed import init_distributed
init_distributed()  # a world of one made up in this process: RANK and MASTER_PORT in os.environ
child = subprocess.run([sys.executable, "-c", sys.argv[1]], env=dict(os.environ), capture_output=True, text=True,
                       timeout=300)
assert child.returncode == 0, child.stderr[-3000:]
print(os.environ["MASTER_PORT"], child.stdout.strip().splitlines()[-1])
"""


def test_child_of_a_world_of_one_makes_up_its_own():
    """A process that trained in-process (a test, a notebook) and then starts a training
    subprocess passes on RANK and its MASTER_PORT, where its TCP store still listens: the child
    is no launcher's rank and must not take that port (it failed to start before)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "OCRFLOW_SOLO_WORLD_PORT"):
        env.pop(k, None)
    res = subprocess.run([sys.executable, "-c", PARENT, CHILD], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    parent_port, child_port = res.stdout.strip().splitlines()[-1].split()
    assert parent_port != child_port
