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
    from test_engine_faults import text_corpus

    return text_corpus(tmp_path_factory.mktemp("resume_corpus"), N_DOCS, N_PAGES, 8,
                       "Document {i} page {p} line {k}: a sentence long enough to count.")


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
    deadline = time.monotonic() + 600  # worker start-up is slow on a loaded machine
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


def test_worker_killed_mid_run_is_recovered(corpus, tmp_path):
    """A worker dying (OOM killer, MuPDF crash) breaks the pool: the engine restarts it, requeues
    the in-flight units and still writes every page, byte-identical to a clean run."""
    import multiprocessing
    import threading

    ref_out, out = tmp_path / "ref", tmp_path / "crashed"
    run_engine(dict(input=str(corpus), out=str(ref_out), workers=1, progress=False, print_summary=False))
    killed = []

    def kill_one_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            units = out / "work" / "units"
            children = multiprocessing.active_children()
            if children and units.is_dir() and any(units.glob("*/*.json")):
                os.kill(children[0].pid, signal.SIGKILL)
                killed.append(children[0].pid)
            time.sleep(0.005)

    t = threading.Thread(target=kill_one_worker, daemon=True)
    t.start()
    rep = run_engine(dict(input=str(corpus), out=str(out), workers=2, progress=False, print_summary=False))
    t.join()
    assert killed, "no worker was killed: the run finished too early to test recovery"
    assert rep["docs"]["failed_by_reason"] == {}
    assert rep["pages"]["written"] == N_DOCS * N_PAGES
    assert _shard_bytes(out) == _shard_bytes(ref_out)


def _crash_on_doc_03(unit):
    # Stands in for a MuPDF segfault on one document: the worker process dies on the spot.
    if unit["path"].endswith("doc_03.pdf"):
        os._exit(139)
    return _real_process_unit(unit)


_real_process_unit = None


def test_document_that_kills_its_worker_is_isolated(corpus, tmp_path, monkeypatch):
    """Only the culprit is recorded as worker_crash; every other page is written."""
    global _real_process_unit
    from data_engine import pipeline

    _real_process_unit = pipeline.process_unit
    # fork: the workers inherit the patched module attribute the pool pickles by name.
    monkeypatch.setattr(pipeline, "process_unit", _crash_on_doc_03)
    rep = run_engine(dict(input=str(corpus), out=str(tmp_path / "o"), workers=2, start_method="fork",
                          progress=False, print_summary=False))
    assert rep["docs"]["failed_by_reason"] == {"worker_crash": 1}
    assert rep["pages"]["written"] == (N_DOCS - 1) * N_PAGES
    rows = [json.loads(line) for line in (tmp_path / "o" / "failures.jsonl").read_text().splitlines()]
    assert [(Path(r["path"]).name, r["reason"]) for r in rows] == [("doc_03.pdf", "worker_crash")]


def _pid(_=None) -> int:
    return os.getpid()


def _double(unit: dict) -> dict:
    return {"doc_id": unit["doc_id"], "value": 2 * unit["value"]}


def test_worker_killed_while_idle_does_not_break_the_pool():
    """The cause of pebble's "Unexpected error within the Pool" under load: a worker that dies
    while no task is running (between units, e.g. the OOM killer) makes pebble declare the whole
    pool broken ("All workers expired"). The executor starts a new pool and goes on."""
    from data_engine.executor import LocalExecutor

    ex = LocalExecutor(1, start_method="fork")
    try:
        (pid,) = ex.map(_pid, [None])
        os.kill(pid, signal.SIGKILL)  # idle: it just returned its result
        deadline = time.monotonic() + 60
        while ex.pool.active and time.monotonic() < deadline:  # pebble notices the death
            ex.pool._update_pool_status()
            time.sleep(0.05)
        units = [{"doc_id": f"{i:02d}", "value": i} for i in range(6)]
        got = list(ex.run(_double, units, timeout_s=None, max_crash_retries=0,
                          fail=lambda u, reason, detail: {"doc_id": u["doc_id"], "failed": reason}))
        assert sorted(r["doc_id"] for r in got) == [u["doc_id"] for u in units]
        assert all(r.get("value") == 2 * int(r["doc_id"]) for r in got), got
        assert ex.map(_pid, [None])[0] != pid  # a new pool, new workers
    finally:
        ex.close(wait_for_workers=False)
