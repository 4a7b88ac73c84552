"""The data engine on Ray (`executor: ray`) against the local process pool.

* a local Ray instance on 127.0.0.1 (2 CPUs) runs the engine: the shards are byte-identical to
  the local run's, and so is the report's page accounting;
* `doc_timeout_s`: a document stuck in MuPDF is cancelled on Ray and recorded as `timeout`;
* a Ray driver connected to that instance (`ray_address`, as on a cluster) is killed with
  SIGKILL mid-run; the same command re-run on Ray resumes from the committed units and writes
  the same bytes.
No Ray process started here outlives the module (checked in the fixture's teardown).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from data_engine.pipeline import run_engine  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
N_DOCS, N_PAGES = 16, 2
MAX_COUNT = 5

_DRIVER = """
import sys
from data_engine.pipeline import run_engine
run_engine(dict(input=sys.argv[1], out=sys.argv[2], executor="ray", ray_address=sys.argv[3], max_count=5,
                progress=False, print_summary=False))
"""


def _quiet(**kw) -> dict:
    return dict(max_count=MAX_COUNT, progress=False, print_summary=False, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from test_engine_faults import text_corpus

    return text_corpus(tmp_path_factory.mktemp("ray_corpus"), N_DOCS, N_PAGES, 10,
                       "Ray document {i} page {p} line {k}: enough words to keep.")


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ray_ref")
    rep = run_engine(dict(input=str(corpus), out=str(out), workers=1, **_quiet()))
    assert rep["pages"]["written"] == N_DOCS * N_PAGES
    return out, rep


def _ray_children() -> list:
    return psutil.Process().children(recursive=True)


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance of this test process on 127.0.0.1 with 2 CPUs; stopped, with every process
    it started, at the end of the module."""
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    before = {p.pid for p in _ray_children()}
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}}, log_to_driver=False)
    started = [p for p in _ray_children() if p.pid not in before]
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        _, alive = psutil.wait_procs(started, timeout=15)
        for p in alive:  # Ray's agents may ignore the shutdown: end what this fixture started
            p.kill()
        _, alive = psutil.wait_procs(alive, timeout=10)
        assert not alive, f"Ray processes left behind: {alive}"


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


def test_ray_run_is_byte_identical_to_local(corpus, reference, local_ray, tmp_path):
    ref_out, ref = reference
    rep = run_engine(dict(input=str(corpus), out=str(tmp_path), executor="ray", **_quiet()))
    assert rep["throughput"]["units_processed"] == N_DOCS
    assert rep["pages"] == ref["pages"] and rep["docs"] == ref["docs"]
    assert rep["config"]["executor"] == "ray"
    assert len(_shard_bytes(tmp_path)) == -(-N_DOCS * N_PAGES // MAX_COUNT)
    assert _shard_bytes(tmp_path) == _shard_bytes(ref_out)
    assert not list(tmp_path.glob("**/*.tmp"))
    # a re-run on Ray reuses every committed unit and rewrites nothing
    again = run_engine(dict(input=str(corpus), out=str(tmp_path), executor="ray", **_quiet()))
    assert again["docs"]["resumed_units"] == N_DOCS and again["throughput"]["units_processed"] == 0
    assert _shard_bytes(tmp_path) == _shard_bytes(ref_out)


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (the driver and anything it started)."""
    procs = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                procs.append(p)
                p.kill()
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], f"processes survived SIGKILL: {alive}"


def test_ray_driver_killed_mid_run_resumes(corpus, reference, local_ray, tmp_path):
    ref_out, ref = reference
    out = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(corpus), str(out), local_ray], cwd=REPO_ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    units = out / "work" / "units"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if units.is_dir() and len(list(units.glob("*/*.json"))) >= 2:
                break
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, mid-run; the Ray instance lives on
        proc.wait()
        _kill_session(proc.pid)
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill: {proc.stderr.read().decode()[-3000:]}"
    done = len(list(units.glob("*/*.json")))
    assert 2 <= done < N_DOCS, f"kill landed outside the run ({done} of {N_DOCS} units committed)"
    assert not (out / "report.json").exists()

    rep = run_engine(dict(input=str(corpus), out=str(out), executor="ray", **_quiet()))
    # (a task of the dead driver may still have committed its unit before Ray ended it)
    assert rep["docs"]["resumed_units"] >= done
    assert rep["throughput"]["units_processed"] == N_DOCS - rep["docs"]["resumed_units"] > 0
    assert rep["pages"] == ref["pages"]
    assert _shard_bytes(out) == _shard_bytes(ref_out)
    assert not list(out.glob("**/*.tmp"))  # stale temporaries of the killed writers are gone


def test_ray_stops_a_slow_document_at_the_time_limit(local_ray, tmp_path):
    """`doc_timeout_s` on Ray: the stuck task is cancelled (its worker killed) and the document
    recorded as `timeout`; the other document is written and the run ends promptly."""
    from test_engine_faults import _lines, _text_pdf, slow_pdf

    src = tmp_path / "in"
    src.mkdir()
    slow_pdf(src / "slow.pdf")
    _text_pdf(src / "fine.pdf", _lines("fine"))
    t0 = time.monotonic()
    rep = run_engine(dict(input=str(src), out=str(tmp_path / "out"), executor="ray", doc_timeout_s=3, **_quiet()))
    # the slow page alone is hours of work; the slack is for a busy machine (Ray's start-up and
    # workers run outside this process, so their CPU time cannot be counted here)
    assert time.monotonic() - t0 < 600
    assert rep["docs"]["failed_by_reason"] == {"timeout": 1} and rep["pages"]["written"] == 1
    (row,) = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert Path(row["path"]).name == "slow.pdf" and "3 s" in row["detail"]
