"""Flywheel rounds end to end on a tiny configuration: one round trains the tiny recognizer with
``train.api.train``, labels detector-cut patches in batches, accepts/rejects with reasons,
measures, reassembles page labels and reports; ``kill -9`` during labelling then the same
command gives the same labels and accepted set; bad input gets a clear error or a reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_engine.scripts import find_font

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(find_font("NotoSansDevanagari-Regular.ttf") is None,
                                reason="Noto fonts missing (scripts/setup_fonts.sh)")

TINY = [
    "flywheel.languages=[{lang: eng-Latn, digital: 1, scan: 1, gold: 1}, {lang: khm-Khmr, scan: 1}]",
    "flywheel.pages_per_doc=1", "flywheel.rounds=1", "flywheel.recognizer.kind=paper", "flywheel.recognizer.steps=[2]",
    "flywheel.label.batch_size=4", "flywheel.label.max_new_tokens=6", "flywheel.threads=1",
    "flywheel.baseline.tesseract=false", "flywheel.recognizer.overrides=['train.save_every=1']",
    "flywheel.collage=1",
]


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "train.flywheel", f"out={out}", *TINY]


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", WANDB_MODE="disabled")


def _tail(text: str, n: int = 60) -> str:
    return "\n".join(text.splitlines()[-n:])


def _run_flywheel(out: Path, what: str) -> None:
    """Run the flywheel command to completion; on failure the test's message carries the tail of
    its output (stdout and stderr interleaved), so a failure in CI says why."""
    proc = subprocess.Popen(_cmd(out), cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its whole group: no compiler or worker left behind
        output, _ = proc.communicate()
        pytest.fail(f"{what}: timed out after 900 s; last output:\n{_tail(output)}")
    if proc.returncode != 0:
        pytest.fail(f"{what}: exit {proc.returncode}; last output:\n{_tail(output)}")


def _labels(out: Path) -> list[dict]:
    rows = []
    for line in (out / "round_0" / "labels.jsonl").read_text().splitlines():
        rows += json.loads(line)["rows"]
    return sorted(rows, key=lambda r: r["key"])


def _accepted(out: Path) -> set[str]:
    from data_engine.flywheel.patches import read_patch_shard

    return {p.key for t in sorted((out / "round_0" / "accepted").glob("*.tar")) for p in read_patch_shard(t)}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("fw")


@pytest.fixture(scope="module")
def full_run(base):
    """An uninterrupted run, moved aside so the killed run can use the very same paths (shard
    paths seed the trainer's data order, so equal paths are part of "the same command")."""
    _run_flywheel(base / "run", "the uninterrupted flywheel run")
    (base / "run").rename(base / "ref")
    return base / "ref"


def test_one_round_end_to_end(full_run):
    rep = json.loads((full_run / "report.json").read_text())
    r0 = rep["rounds"][0]
    eng, khm = r0["languages"]["eng-Latn"], r0["languages"]["khm-Khmr"]
    assert rep["data"]["eng-Latn"]["seed"] > 0 and rep["data"]["eng-Latn"]["gold"] > 0
    # collage lines (one per seed line) are made and trained on with the seed
    assert rep["data"]["eng-Latn"]["collage"] == rep["data"]["eng-Latn"]["seed"]
    trained = json.loads((full_run / "round_0" / "TRAINED").read_text())
    assert any(s.endswith("collage/eng_Latn.tar") for s in trained["shards"])
    assert eng["labelled"] > 0 and eng["labelled"] == eng["accepted"] + eng["rejected"]
    assert sum(eng["rejected_by_reason"].values()) == eng["rejected"]
    assert eng["recognizer"]["gold_n"] > 0 and eng["recognizer"]["cer"] is not None
    assert eng["recognizer"]["cer_blind"] is not None  # the image-blind control is always there
    reading = eng["recognizer"]["reading"]  # the reading verdict and its controls (docs/evaluation.md)
    assert reading["pages"] == eng["recognizer"]["gold_n"] and reading["blank"]["cer"] == pytest.approx(
        eng["recognizer"]["cer_blind"]) and reading["reads"] in (True, False)
    # held-out pages of words no training page has: the CER of reading letters, measured apart
    assert eng["recognizer"]["unseen_n"] > 0 and eng["recognizer"]["cer_unseen"] is not None
    unseen = eng["recognizer"]["reading_unseen"]  # with its own controls; the constant output is a seed label
    assert unseen["pages"] == eng["recognizer"]["unseen_n"] and unseen["constant"]["source"] == "training labels"
    assert unseen["blank"]["cer"] == pytest.approx(eng["recognizer"]["cer_unseen_blind"]) and unseen["wrong_page"]
    # one born-digital document cannot be split for calibration: the fixed threshold, said so
    assert eng["calibration"]["status"] == "too_few" and "min_confidence" in eng["calibration"]["note"]
    assert json.loads((full_run / "round_0" / "calibration.json").read_text())["eng-Latn"]["held_out"] == 0
    # a language with no seed patches is labelled and reported with a reason, never a crash
    assert khm["seed_patches"] == 0 and "no seed patches" in khm["note"] and khm["labelled"] > 0
    assert (full_run / "report.png").stat().st_size > 1000
    md = (full_run / "report.md").read_text()
    assert "| 0 | eng-Latn |" in md and ("| reads (" in md or "| does NOT read (" in md)
    assert "| 0 | eng-Latn | unseen words (" in md  # the reading-controls table
    assert (full_run / "round_0" / "train" / "model" / "config.json").is_file()  # the round's model
    rows = _labels(full_run)
    assert all(("reason" in r and "confidence" in r) for r in rows)


def test_kill_9_mid_round_then_resume_gives_same_result(full_run, base):
    out = base / "run"
    log = base / "killed_run.log"
    labels = out / "round_0" / "labels.jsonl"
    deadline = time.time() + 900
    with open(log, "wb") as sink:
        proc = subprocess.Popen(_cmd(out), cwd=ROOT, env=_env(), stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:  # kill as soon as the first label batch is committed (the round is half done)
        while time.time() < deadline and proc.poll() is None:
            if labels.is_file() and labels.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)  # batches of the tiny run take a fraction of a second
        if proc.poll() is not None:
            pytest.fail(f"the run to kill ended (exit {proc.returncode}) before its first label batch; "
                        f"last output:\n{_tail(log.read_text(errors='replace'))}")
        if time.time() >= deadline:
            pytest.fail(f"no label batch within 900 s; last output:\n{_tail(log.read_text(errors='replace'))}")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (out / "round_0" / "report.json").exists()
    n_before = labels.read_text().count("\n")
    _run_flywheel(out, "the resumed flywheel run")
    assert (out / "round_0" / "TRAINED").is_file()
    assert _labels(out) == _labels(full_run)  # same texts, confidences and verdicts
    assert _accepted(out) == _accepted(full_run)
    assert labels.read_text().count("\n") == len({json.loads(x)["batch"] for x in labels.read_text().splitlines()})
    assert n_before >= 1  # committed batches were kept, not redone


def test_bad_input_clear_errors(tmp_path):
    from omegaconf import OmegaConf

    from train.flywheel import run_flywheel

    cfg = OmegaConf.load(ROOT / "conf" / "flywheel" / "default.yaml")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no PDF files"):
        run_flywheel({"out": str(tmp_path / "o"), "flywheel": {**OmegaConf.to_container(cfg), "input": str(empty)}})
    with pytest.raises(ValueError, match="languages is empty"):
        run_flywheel({"out": str(tmp_path / "o"), "flywheel": {**OmegaConf.to_container(cfg), "languages": []}})


def test_config_schema_defaults_and_errors():
    from hydra import compose, initialize_config_dir

    from train.flywheel.config import ConfigError, FlywheelAppConfig, register, typed

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = typed(compose(config_name="flywheel"), FlywheelAppConfig)
        assert [lp.lang for lp in cfg.flywheel.languages] == ["eng-Latn", "hin-Deva"]
        assert (cfg.flywheel.recognizer.kind, cfg.flywheel.recognizer.experiment) == ("ppocr", None)
        with pytest.raises(ConfigError, match="executor=ray reads with the paper model only"):
            typed(compose(config_name="flywheel", overrides=["flywheel.label.executor=ray"]), FlywheelAppConfig)
        with pytest.raises(ConfigError, match="flywheel.label.batch_size must be >= 1"):
            typed(compose(config_name="flywheel", overrides=["flywheel.label.batch_size=0"]), FlywheelAppConfig)
        with pytest.raises(ConfigError, match="flywheel.languages"):
            typed(compose(config_name="flywheel", overrides=["flywheel.languages=[{lang: eng-Xxxx}]"]),
                  FlywheelAppConfig)
        assert (cfg.flywheel.patches, cfg.flywheel.label.executor, cfg.flywheel.label.ray_address) == ("lines", "local", None)
        with pytest.raises(ConfigError, match="flywheel.patches must be one of"):
            typed(compose(config_name="flywheel", overrides=["flywheel.patches=paragraphs"]), FlywheelAppConfig)
        with pytest.raises(ConfigError, match="flywheel.label.executor must be one of"):
            typed(compose(config_name="flywheel", overrides=["flywheel.label.executor=dask"]), FlywheelAppConfig)
        with pytest.raises(ConfigError, match="lines_per_block"):
            typed(compose(config_name="flywheel", overrides=["flywheel.lines_per_block=[3,1]"]), FlywheelAppConfig)


def test_accepted_labels_feed_page_labels_and_next_round(full_run, tmp_path):
    """Verdict rows (here: the ground truth as label, accepted) -> accepted patch shard ->
    page-level fine labels in engine shard format -> round 1's training shards."""
    import shutil

    from data_engine.flywheel.patches import read_patch_shard
    from data_engine.flywheel.reassemble import page_labels, write_page_shard
    from data_engine.labels import parse_fine_label
    from data_engine.shards import iter_samples
    from train.flywheel.config import as_app_config
    from train.flywheel.rounds import RoundRunner

    out = tmp_path / "copy"
    shutil.copytree(full_run / "data", out / "data")
    cfg = as_app_config({"out": str(out), "flywheel": {"languages": [{"lang": "eng-Latn"}, {"lang": "khm-Khmr"}]}})
    runner = RoundRunner(cfg.flywheel, out, ["eng-Latn", "khm-Khmr"], log=lambda m: None)
    pool = list(read_patch_shard(out / "data" / "pool" / "eng_Latn.tar"))
    rows = [{"key": p.key, "lang": p.lang, "text": runner.truth[p.key], "confidence": -0.01, "finished": True,
             "reason": None} for p in pool if p.key in runner.truth]
    assert rows
    runner.write_accepted(0, pool, rows)
    acc = list(read_patch_shard(out / "round_0" / "accepted" / "eng_Latn.tar"))
    assert [p.key for p in acc] == sorted(r["key"] for r in rows)
    assert all(p.extra == {"round": 0, "confidence": -0.01} and p.text for p in acc)
    assert out / "round_0" / "accepted" / "eng_Latn.tar" in runner.training_shards(1)
    assert out / "round_0" / "accepted" / "khm_Khmr.tar" not in runner.training_shards(1)  # empty
    assert runner.accepted_before(1)["eng-Latn"][0].key == acc[0].key
    n = write_page_shard(tmp_path / "pages.tar", page_labels(acc), root=full_run)  # paths relative to the run
    pages = list(iter_samples(str(tmp_path / "pages.tar")))
    assert n == len(pages) >= 1
    meta = pages[0]["meta"]
    assert meta["source"] == "flywheel" and meta["labels"]["fine"]["prompt"].endswith("markdown.")
    texts = [b["text"] for b in parse_fine_label(meta["labels"]["fine"]["text"])]
    assert texts and set(texts) <= {runner.truth[p.key] for p in acc}
    # a page label holds every line found on its page, accepted, except the lines it erased
    labels, counts = runner.complete_pages(runner.accepted_before(1))
    c = counts["eng"]
    assert c["complete"] + c["erased"] == len(labels) and c["complete"] + c["erased"] + c["partial"] <= c["pages"]
    for (doc, page), lab in labels.items():
        erased = lab.get("erase", [])
        found = {runner.truth[p.key] for p in pool if (p.doc_id, p.page) == (doc, page)
                 and not any(e[0] <= p.bbox[0] and e[1] <= p.bbox[1] and p.bbox[2] <= e[2] and p.bbox[3] <= e[3]
                             for e in erased)}
        assert found <= {b["text"] for b in parse_fine_label(lab["text"])}


def test_moved_run_directory_still_works(full_run, tmp_path):
    """A finished run moved elsewhere: its round redone from the moved files (page labels
    reopen the PDFs relative to the run directory), with the same report."""
    import shutil

    from hydra import compose, initialize_config_dir

    from data_engine.shards import iter_samples
    from train.flywheel import run_flywheel
    from train.flywheel.config import register

    shutil.copytree(full_run, tmp_path / "before")
    (tmp_path / "before").rename(tmp_path / "after")  # the move: nothing is left at the old path
    moved = tmp_path / "after"
    for f in ("report.json", "round_0/report.json", "round_0/pages/flywheel-000000.tar"):
        (moved / f).unlink()
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="flywheel", overrides=[f"out={moved}", *TINY])
    rep = run_flywheel(cfg, log=lambda m: None)
    ref = json.loads((full_run / "report.json").read_text())
    for key in ("accepted", "labelled", "pages"):
        assert rep["rounds"][0]["languages"]["eng-Latn"][key] == ref["rounds"][0]["languages"]["eng-Latn"][key]
    pages = list(iter_samples(str(moved / "round_0" / "pages" / "flywheel-000000.tar")))
    assert len(pages) == rep["rounds"][0]["pages_reassembled"]
    assert all(not Path(p["meta"]["source_path"]).is_absolute() for p in pages)


def test_calibration_status_sets_each_language_threshold(full_run, tmp_path):
    """A round's calibration.json -> the threshold each language's labels are judged by: the
    calibrated value, nothing (unreachable: no label accepted) or the fixed min_confidence."""
    import shutil

    from data_engine.flywheel.accept import judge
    from train.flywheel.config import as_app_config
    from train.flywheel.rounds import RoundRunner

    out = tmp_path / "copy"
    shutil.copytree(full_run / "data", out / "data")
    cfg = as_app_config({"out": str(out), "flywheel": {"languages": [{"lang": "eng-Latn"}, {"lang": "khm-Khmr"}]}})
    runner = RoundRunner(cfg.flywheel, out, ["eng-Latn", "khm-Khmr"], log=lambda m: None)
    runner.rdir(3).mkdir(parents=True)
    (runner.rdir(3) / "calibration.json").write_text(json.dumps(
        {"eng-Latn": {"status": "calibrated", "threshold": -0.8, "by_source": {
            "detector": {"status": "calibrated", "threshold": -0.2}, "textlayer_box": {"status": "too_few"}}},
         "khm-Khmr": {"status": "unreachable", "threshold": None}}))
    # a source calibrated on its own lines gets its own threshold; too few lines: the language's
    assert runner.min_confidence(3) == {"eng-Latn": {"*": -0.8, "detector": -0.2}, "khm-Khmr": {"*": float("inf")}}
    ok = dict(finished=True, bbox=(0, 0, 200, 20), cfg=cfg.flywheel.accept)
    assert judge("abc defg hij", confidence=-0.5, script="Latn", min_confidence=-0.8, **ok) is None  # fixed -0.35 would reject
    assert judge("ខ្មែរ ភាសា", confidence=-0.001, script="Khmr", min_confidence=float("inf"), **ok) == "low_confidence"
    (runner.rdir(3) / "calibration.json").write_text(json.dumps({"eng-Latn": {"status": "too_few", "threshold": None}}))
    assert runner.min_confidence(3) == {"eng-Latn": {"*": -0.35}, "khm-Khmr": {"*": -0.35}}  # the fixed threshold


def test_torn_label_line_is_cut_off(tmp_path):
    from train.flywheel.rounds import read_label_batches

    path = tmp_path / "labels.jsonl"
    path.write_text('{"batch": 0, "rows": [{"key": "a"}]}\n{"batch": 1, "ro')
    assert read_label_batches(path) == {0: [{"key": "a"}]}
    assert path.read_text().endswith("}\n")  # the next batch starts on its own line
