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
    """The README's main command on a fresh output dir: every artefact appears, losses fall."""
    env = {**os.environ, "DEMO_DIR": str(tmp_path / "demo"), "WANDB_MODE": "offline"}
    proc = subprocess.run(["bash", str(ROOT / "launch.sh"), "demo"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    d = tmp_path / "demo"
    assert list((d / "engine" / "shards").glob("*.tar")) and (d / "tokenizer" / "tokenizer.json").is_file()
    s1 = json.loads((d / "stage1" / "stage1_result.json").read_text())
    assert (d / "stage1" / "encoder.safetensors").is_file()
    assert min(s1["losses"][-5:]) < s1["losses"][0]
    assert (d / "stage2" / "model" / "config.json").is_file()
    ev = json.loads((d / "eval" / "report.json").read_text())
    table = ev["summary"]["nano"]["coarse"]
    assert set(table) == {"untrained", "trained", "blind"} and all(0 <= v["ned"] <= 1 for v in table.values())
    # the exported model reads held-out easy pages: far below the image-blind baseline
    assert table["trained"]["cer"] <= 0.5 * table["blind"]["cer"], table
    assert (d / "eval" / "report.md").is_file() and (d / "eval" / "compression.png").is_file()
    assert "before training" in proc.stdout and "image-blind" in proc.stdout
    assert str(d / "stage2" / "model") in proc.stdout
