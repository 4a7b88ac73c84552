"""`./launch.sh demo` end to end (slow), and the evaluation metrics it prints (fast)."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from data_engine.metrics import levenshtein, levenshtein_dp
from train.evaluate import normalized_edit_distance, word_precision

ROOT = Path(__file__).resolve().parents[1]


def test_edit_distance_and_word_precision():
    assert levenshtein_dp("kitten", "sitting") == 3  # textbook example
    assert normalized_edit_distance("kitten", "sitting") == pytest.approx(3 / 7)
    assert normalized_edit_distance("", "") == 0.0 and normalized_edit_distance("abc", "") == 1.0
    rng = random.Random(0)
    for _ in range(50):  # the fast path (RapidFuzz when installed) agrees with the DP
        a = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 12)))
        assert levenshtein(a, b) == levenshtein_dp(a, b)
    # Fox-style precision: predicted words found in the reference, with multiplicity
    assert word_precision("the cat the cat", "the cat sat") == pytest.approx(2 / 4)
    assert word_precision("", "anything") == 0.0
    assert word_precision("a b c", "c b a") == 1.0


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The README's main command on a fresh output dir: every artefact appears; on pages in font
    designs never trained the stage-1 model reads (CER below half the wrong-page control, letters
    right above chance: data_engine/reading_metrics.py) and the exported stage-2 model gets its
    letters right above chance, far below the blank-page row."""
    env = {**os.environ, "DEMO_DIR": str(tmp_path / "demo"), "WANDB_MODE": "offline"}
    proc = subprocess.run(["bash", str(ROOT / "launch.sh"), "demo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    d = tmp_path / "demo"
    assert list((d / "engine" / "shards").glob("*.tar")) and (d / "tokenizer" / "tokenizer.json").is_file()
    assert list((d / "sources").glob("*/shards/*.tar"))
    lad = d / "reading"
    for rung in ("A1", "A2"):
        assert (lad / f"rung_{rung}" / "run" / "encoder.safetensors").is_file()
    export = lad / "rung_C-grid" / "run" / "model"
    assert (export / "config.json").is_file() and list(export.glob("*.safetensors"))
    for rung in ("A2", "C-grid"):
        s = json.loads((lad / f"rung_{rung}" / "result.json").read_text())["splits"]["heldout_fonts"]
        assert s["checks"]["words_above_chance"], (rung, s["verdict"])
        # measured: A2 0.331 and the stage-2 export 0.535 against blank pages 0.96-1.00
        assert s["cer"] < s["blank"]["cer"] - 0.15 and s["cer"] < s["untrained"]["cer"], (rung, s)
        # stage 1 reads (measured 0.331 against 1.122); stage 2's 700 steps on its frozen encoder
        # read too (0.535 against 1.105), a thin margin over half the control (0.553), so the
        # test asks for the clear part: at most 0.75 x the wrong-page CER
        assert s["reads"] if rung == "A2" else s["cer"] <= 0.75 * s["wrong_page"]["cer"], (rung, s["verdict"])
    assert "unseen-font CER" in proc.stdout and "before training" in proc.stdout
    assert str(export) in proc.stdout and (d / "loss_curve_stage1.png").is_file()
