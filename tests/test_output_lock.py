"""One writer per output folder: a second engine on the same out= is refused with a line that
names the first (pid, host, start time); the lock of a killed run is taken over."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from test_engine_faults import _lines, _run, _text_pdf

REPO_ROOT = Path(__file__).resolve().parents[1]

_HOLDER = """
import sys, time
from data_engine.lock import folder_lock
with folder_lock(sys.argv[1], "data engine"):
    print("held", flush=True)
    time.sleep(600)
"""


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_second_engine_on_the_same_out_is_refused_and_a_dead_holders_lock_is_recovered(tmp_path):
    _text_pdf(tmp_path / "a.pdf", _lines("a"))
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], cwd=REPO_ROOT, env=_env(),
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run([sys.executable, "-m", "data_engine.cli", f"input={tmp_path / 'a.pdf'}",
                               f"out={out}", "data_engine.progress=false"], cwd=REPO_ROOT, env=_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        err = proc.stderr.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert f"pid {holder.pid} on host {socket.gethostname()}, started " in err and "in use by" in err
        assert not (out / "work").exists()  # refused before touching anything
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # dies holding the lock: its file stays behind
        holder.wait()
    assert (out / ".ocrflow.lock").is_file()
    rep = _run(tmp_path / "a.pdf", out)
    assert rep["pages"]["written"] == 1
    assert not (out / ".ocrflow.lock").exists()  # released at the end of the run


def test_second_flywheel_on_the_same_out_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "fw"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run([sys.executable, "-m", "train.flywheel", f"out={out}"], capture_output=True, text=True,
                              env=_env(), cwd=REPO_ROOT, timeout=300)
        assert proc.returncode != 0
        err = proc.stderr.strip().splitlines()
        assert err and err[-1].startswith("error: ") and f"pid {holder.pid}" in err[-1], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    finally:
        holder.kill()
        holder.wait()
