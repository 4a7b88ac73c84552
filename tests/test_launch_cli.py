"""launch.sh for a new user: mistakes answered in one line within seconds, help that installs
nothing, every command listed, the torch build chosen for the machine, skipped tests named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_preflight import run_cpu, tokenizer  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]


def _launch(*args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    full = {**os.environ, "OCRFLOW_VENV": sys.prefix, "OMP_NUM_THREADS": "1", **env}
    full.pop("VIRTUAL_ENV", None)  # and its bin/ off PATH: launch.sh must judge the machine, not this venv
    venv_bin = str(Path(sys.prefix) / "bin")
    full["PATH"] = os.pathsep.join(p for p in full.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return run_cpu(["bash", str(REPO / "launch.sh"), *args], full)


@pytest.mark.parametrize("mistake,expect", [
    ("train.stpes=3", "error: unknown config key 'train.stpes' (did you mean 'train.steps'?)"),
    ("data.shards=[/data/nowhere/*.tar]", "error: data.shards: shard pattern '/data/nowhere/*.tar' matches no file"),
    ("model.tokenizer=/data/nowhere", "error: model.tokenizer=/data/nowhere: no tokenizer.json there"),
])
def test_a_new_users_mistakes_are_one_line_within_3_cpu_seconds(tmp_path, tokenizer, mistake, expect):
    proc, cpu_s = _launch("smoke", f"model.tokenizer={tokenizer}", f"train.out_dir={tmp_path / 'run'}", mistake)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and expect in proc.stderr, proc.stderr
    assert "[launch] experiment=" not in proc.stdout  # nothing started
    assert cpu_s < 3.0, f"{cpu_s:.1f} CPU-s"


def test_unknown_command_lists_every_command():
    proc, _ = _launch("smoek")
    assert proc.returncode == 2
    for name in ("demo", "flywheel", "test", "env", "help", "smoke", "paper_stage2"):
        assert f" {name}" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args", [("flywheel", "--help"), ("smoke", "--help"), ("demo", "--help")])
def test_help_installs_nothing(tmp_path, args):
    venv = tmp_path / "venv"
    proc, _ = _launch(*args, OCRFLOW_VENV=str(venv))
    assert proc.returncode == 0 and "Usage: ./launch.sh" in proc.stdout
    assert not venv.exists() and "[launch]" not in proc.stdout + proc.stderr
    assert "Noto" not in proc.stdout + proc.stderr and "Tesseract" not in proc.stdout + proc.stderr
    if args[0] != "demo":  # with an installed env: the module's own help, still no set-up
        proc, _ = _launch(*args)
        assert proc.returncode == 0 and "powered by Hydra" in proc.stdout
        assert "Noto" not in proc.stdout + proc.stderr


def test_cpu_machine_gets_a_cpu_build_and_an_installed_build_is_kept(tmp_path):
    wheel = tmp_path / "torch-9.9.9+cpu-cp311-cp311-linux_x86_64.whl"
    wheel.write_bytes(b"\0" * (3 * 2**20))
    none = str(tmp_path / "no-venv")
    proc, _ = _launch("env", OCRFLOW_VENV=none, OCRFLOW_ACCEL="cpu", PIP_FIND_LINKS=str(tmp_path))
    assert f"torch: install: torch CPU build from the local wheel {wheel} (3 MB)" in proc.stdout, proc.stdout
    assert not Path(none).exists()
    proc, _ = _launch("env", OCRFLOW_VENV=none, OCRFLOW_ACCEL="cpu", PIP_FIND_LINKS=str(tmp_path / "empty"),
                      OCRFLOW_TORCH_WHEEL="")
    assert "torch: install: torch CPU build from https://download.pytorch.org/whl/cpu" in proc.stdout \
        or "torch: stop: no GPU here" in proc.stdout, proc.stdout  # never the registry's CUDA build
    proc, _ = _launch("env", OCRFLOW_ACCEL="cuda")  # this env's torch: a user's build is kept
    assert "torch: keep: torch " in proc.stdout, proc.stdout


def test_test_command_names_the_tests_that_will_skip(tmp_path):
    script = (f"set -euo pipefail; eval \"$(sed -n '/^say_test_skips()/,/^}}/p' {REPO / 'launch.sh'})\"; "
              f"ROOT={REPO}; cd {REPO}; say_test_skips")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "OCRFLOW_SHARED": str(tmp_path / "no-shared")}).stdout
    assert "bash scripts/fetch_real_pdfs.sh" in out or (REPO / ".cache" / "real_pdfs").is_dir(), out
    assert f"{tmp_path / 'no-shared'} not found" in out and "OCRFLOW_SHARED" in out, out
