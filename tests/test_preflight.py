"""A user's mistakes in a training command: one line each, found before any model is built,
within seconds (the traceback only with logging.verbose=true)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cpu(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float]:
    """The command's result and the CPU seconds it used (its own and its children's): CPU
    time, not wall time, which a busy machine inflates."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _run(*args: str, module: str = "train.preflight") -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return run_cpu([sys.executable, "-m", module, *args], env)


# what makes a check slow: torch, DeepSpeed or the model's code imported (a model built needs them)
HEAVY = ("torch", "deepspeed", "models.deepseek_ocr", "models.sam")
_REPORT_HEAVY = ("import atexit, runpy, sys; "
                 f"atexit.register(lambda: print('heavy modules:', *[m for m in {HEAVY!r} if m in sys.modules])); "
                 "sys.argv = ['preflight', *sys.argv[1:]]; runpy.run_module('train.preflight', run_name='__main__')")


def _run_reporting_heavy(*args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """The preflight as ``python -m train.preflight`` runs it, printing at exit which of
    ``HEAVY`` it imported."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc, _ = run_cpu([sys.executable, "-c", _REPORT_HEAVY, *args], env)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("heavy modules:"))
    return proc, line.split()[2:]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from test_stage1 import train_tiny_tokenizer

    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok"), ["some words to learn"] * 20)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("mistake,expect", [
    ("train.stpes=3", "unknown config key 'train.stpes' (did you mean 'train.steps'?)"),
    ("+train.stpes=3", "unknown config key 'train.stpes' (did you mean 'train.steps'?)"),
    ("data.shards=[/nowhere/*.tar]", "data.shards: shard pattern '/nowhere/*.tar' matches no file"),
    ("model.tokenizer=/nowhere", "model.tokenizer=/nowhere: no tokenizer.json there"),
    ("model=tinny", "options: deepseek_ocr, deepseek_ocr2, tiny, tiny_ocr2"),
])
def test_common_mistakes_are_one_line_before_torch_is_imported(tmp_path, tokenizer, mistake, expect):
    """Found within seconds by construction: the check imports neither torch nor the model (a CPU
    bound here once failed on a loaded machine; the import set does not depend on load)."""
    proc, heavy = _run_reporting_heavy("smoke", f"model.tokenizer={tokenizer}", f"train.out_dir={tmp_path / 'run'}",
                                       mistake)
    err = _one_line(proc)
    assert expect in err and "+train" not in err.replace(mistake, ""), err  # never Hydra's "+key" advice
    assert heavy == [], heavy
    assert not (tmp_path / "run").exists()


def test_preflight_prints_the_process_layout(tmp_path, tokenizer):
    proc, _ = _run("smoke_stage2", f"model.tokenizer={tokenizer}", f"train.out_dir={tmp_path / 'run'}",
                   "data.shards=[]", "model.encoder_from=null")
    assert proc.returncode == 0, proc.stderr
    nproc, pp, backend, stage, out = proc.stdout.split()
    assert (pp, backend, stage, out) == ("2", "gloo", "2", str(tmp_path / "run")) and int(nproc) >= 1


def test_trainer_refuses_bad_shards_before_building_the_model(tmp_path, tokenizer):
    """Through train.cli (no preflight before it): one line, before the model is built (the
    run's "stage 1: N params" line never appears; the check once ran after it, at 11 CPU-s);
    verbose gives the traceback."""
    args = ("experiment=smoke", f"model.tokenizer={tokenizer}", f"train.out_dir={tmp_path / 'run'}",
            "data.shards=[/nowhere/*.tar]")
    proc, _ = _run(*args, module="train.cli")
    assert "matches no file" in _one_line(proc)
    assert " params" not in proc.stdout + proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc, _ = _run(*args, "logging.verbose=true", module="train.cli")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "matches no file" in proc.stderr
