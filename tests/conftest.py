"""Shared pytest fixtures: the `../shared/` reference folder and GPU/weights skips."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # benchmarks/ (not an installed package) for tests/test_gpu_*.py
    sys.path.insert(0, str(REPO_ROOT))
SHARED = Path(os.environ.get("OCRFLOW_SHARED", REPO_ROOT.parent / "shared"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared reference folder not found at {SHARED} (dev/CI machines only)")
    return SHARED


@pytest.fixture(scope="session")
def manifest(shared_dir: Path) -> dict:
    import json

    path = shared_dir / "reference" / "deepseek_ocr_checkpoint_manifest.json"
    if not path.is_file():
        pytest.skip(f"checkpoint manifest not found at {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def udhr_dir(shared_dir: Path) -> Path:
    path = shared_dir / "corpora" / "udhr"
    if not path.is_dir():
        pytest.skip(f"UDHR corpus not found at {path}")
    return path


@pytest.fixture
def noto_fonts():
    """``noto_fonts("Latn", "Cyrl")`` skips the test, naming the missing files, unless the Noto
    fonts of those scripts are installed (scripts/setup_fonts.sh or OCRFLOW_FONT_DIRS)."""
    from data_engine.scripts import find_font, font_dirs, script_info

    def need(*scripts: str) -> None:
        missing = sorted({script_info(c).font for c in scripts if find_font(script_info(c).font) is None})
        if missing:
            pytest.skip(f"Noto fonts {missing} not found in {[str(d) for d in font_dirs()]}: install them "
                        "with scripts/setup_fonts.sh or set OCRFLOW_FONT_DIRS")
    return need


@pytest.fixture
def still_running():
    """``still_running(procs, within_s)``: the psutil processes of ``procs`` that have not ended
    within ``within_s`` seconds (zombies count as ended: a container's init may never reap)."""
    psutil = pytest.importorskip("psutil")

    def wait(procs, within_s: float = 20.0) -> list:
        import time

        deadline, alive = time.monotonic() + within_s, list(procs)
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.1)
        return alive
    return wait


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def _available_gb() -> float | None:
    """MemAvailable of /proc/meminfo in GB (None where there is no /proc)."""
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    return kb / 1e6


def pytest_runtest_setup(item):
    """``@pytest.mark.large_memory(gb)``: the test needs about ``gb`` GB of RAM to itself. It
    never shares the machine with another pytest-xdist worker (next to the rest of the suite
    under ``-n 2`` such a worker died without a traceback, most likely out of memory), and it
    skips, naming both figures, when less memory is available than it needs."""
    mark = item.get_closest_marker("large_memory")
    if mark is None:
        return
    need = float(mark.args[0])
    if os.environ.get("PYTEST_XDIST_WORKER"):
        pytest.skip(f"needs ~{need:g} GB of RAM to itself: run it alone, without -n "
                    f"(pytest -m slow '{item.nodeid}')")
    free = _available_gb()
    if free is not None and free < need:
        pytest.skip(f"needs ~{need:g} GB of RAM, {free:.1f} GB available")
