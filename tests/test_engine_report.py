"""The engine CLI's report on a real-PDF run: the summary lands in Hydra's cli.log, and
coarse_cer_per_language is filled from pdftotext on a few pages per document (real PDFs have no
ground truth; before, both were empty)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pymupdf
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_cli_log_and_cer_against_pdftotext(tmp_path):
    if shutil.which("pdftotext") is None:
        pytest.skip("pdftotext not installed (Debian poppler-utils; scripts/fetch_real_pdfs.sh installs it)")
    doc = pymupdf.open()
    for p in range(3):
        page = doc.new_page()
        for k in range(8):
            page.insert_text((72, 90 + 16 * k), f"Page {p}, line {k}: words that any reader extracts alike.",
                             fontname="helv", fontsize=10)
    (tmp_path / "in").mkdir()
    doc.save(tmp_path / "in" / "report.pdf")
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "data_engine.cli", f"input={tmp_path / 'in'}", f"out={tmp_path / 'out'}",
                          "data_engine.workers=1", "data_engine.progress=false"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    (log,) = (tmp_path / "out" / "logs").rglob("cli.log")
    assert "data engine summary" in log.read_text() and "coarse CER" in log.read_text()
    cer = json.loads((tmp_path / "out" / "report.json").read_text())["coarse_cer_per_language"]
    (entry,) = cer.values()  # 2 evenly spaced pages of the document: the first and the last
    assert entry["reference"] == "pdftotext" and entry["pages"] == 2 and entry["chars"] > 500
    assert entry["cer"] < 0.02
