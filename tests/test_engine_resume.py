"""kill -9 in the middle of a multi-worker engine run, then a re-run: the shards are byte-identical
to those of an uninterrupted run (same keys, same bytes, no page missing or duplicated)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pymupdf
import pytest

from data_engine.pipeline import run_engine

REPO_ROOT = Path(__file__).resolve().parents[1]
N_DOCS, N_PAGES = 12, 2

_RUNNER = """
import sys
from data_engine.pipeline import run_engine
run_engine(dict(input=sys.argv[1], out=sys.argv[2], workers=2, max_count=5, progress=False, print_summary=False))
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("resume_corpus")
    for i in range(N_DOCS):
        doc = pymupdf.open()
        for p in range(N_PAGES):
            page = doc.new_page()
            for k in range(8):
                page.insert_text((72, 90 + 16 * k), f"Document {i} page {p} line {k}: a sentence long enough to count.",
                                 fontname="helv", fontsize=10)
        doc.save(d / f"doc_{i:02d}.pdf")
    return d


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


def _keys(out: Path) -> list[str]:
    keys = []
    for p in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(p) as tf:
            keys += [m.name for m in tf if m.name.endswith(".json")]
    return keys


def test_kill9_then_rerun_is_identical(corpus, tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    ref = run_engine(dict(input=str(corpus), out=str(ref_out), workers=1, max_count=5,
                          progress=False, print_summary=False))
    assert ref["pages"]["written"] == N_DOCS * N_PAGES

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", _RUNNER, str(corpus), str(out)], cwd=REPO_ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    units = out / "work" / "units"
    done = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = len(list(units.glob("*/*.json"))) if units.is_dir() else 0
            if done >= 2:
                break
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and its workers, mid-run
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill: {proc.stderr.read().decode()[-2000:]}"
    done = len(list(units.glob("*/*.json")))
    assert 2 <= done < N_DOCS, f"kill landed outside the run ({done} of {N_DOCS} units committed)"
    assert not (out / "report.json").exists()

    rerun = run_engine(dict(input=str(corpus), out=str(out), workers=2, max_count=5,
                            progress=False, print_summary=False))
    assert rerun["docs"]["resumed_units"] == done
    assert rerun["throughput"]["units_processed"] == N_DOCS - done
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == N_DOCS * N_PAGES
    assert keys == _keys(ref_out)
    assert _shard_bytes(out) == _shard_bytes(ref_out)
    assert len(_shard_bytes(out)) == -(-N_DOCS * N_PAGES // 5)
    assert not list(out.glob("**/*.tmp"))
    assert json.loads((out / "report.json").read_text())["pages"] == ref["pages"]
