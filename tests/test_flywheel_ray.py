"""Flywheel labelling on Ray actors (``flywheel.label.executor=ray``) against the local path.

A freshly initialised tiny recognizer (peaked output layer, so greedy decoding has no near-ties)
labels line and block patches of a synthetic page in fixed batches: 2 CPU actors on a local Ray
instance that the labeller starts and stops itself write the same ``labels.jsonl``, byte for
byte, as this process does; a run cut after its first batch resumes on Ray to the same bytes.
The test is about identical outputs, not reading quality.
"""

from __future__ import annotations

import json
import shutil

import pytest

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
torch = pytest.importorskip("torch")

from data_engine.scripts import find_font  # noqa: E402

pytestmark = pytest.mark.skipif(find_font("NotoSans-Regular.ttf") is None,
                                reason="Noto fonts missing (scripts/setup_fonts.sh)")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import pymupdf

    from data_engine.flywheel.dataset import _write_json, train_flywheel_tokenizer
    from data_engine.flywheel.linepages import LineLanguage, make_line_document, truth_blocks
    from data_engine.flywheel.patches import BLOCK, cut_boxes, render_page, write_patch_shard
    from models.checkpoint import export_checkpoint
    from models.config import get_preset
    from models.deepseek_ocr import DeepseekOCRForCausalLM
    from models.tokenizer import load_tokenizer

    base = tmp_path_factory.mktemp("fwray")
    gt = make_line_document(LineLanguage.parse("eng-Latn"), base / "scan.pdf", kind="scan", seed=5,
                            lines_per_block=(1, 3))
    page = pymupdf.open(base / "scan.pdf")[0]
    img, lines = render_page(page), gt["pages"][0]["blocks"]
    blocks = [b for b in truth_blocks(lines) if b["lines"] > 1][:1]
    common = dict(doc_id="scan", page=0, lang="eng", script="Latn", source="detector")
    pool = cut_boxes(img, page.rect, [ln["bbox"] for ln in lines[:6]], **common) + \
        cut_boxes(img, page.rect, [b["bbox"] for b in blocks], kind=BLOCK, **common)
    pool.sort(key=lambda p: p.key)
    assert len(pool) == 7

    data = base / "run" / "data"
    train_flywheel_tokenizer(data / "tokenizer", [ln["text"] for ln in lines], ["Latn"], 300)
    write_patch_shard(data / "seed" / "eng_Latn.tar", [])
    _write_json(data / "pool_truth.json", {})
    tok = load_tokenizer(data / "tokenizer")
    torch.manual_seed(0)
    cfg = get_preset("tiny").with_vocab(tok.vocab_size, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id, image_token_id=tok.image_token_id)
    model = DeepseekOCRForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(std=0.5)
    model_dir = export_checkpoint(model, base / "model", dtype=None)
    return base, pool, model_dir


def _runner(out, executor: str):
    from train.flywheel.config import as_app_config
    from train.flywheel.rounds import RoundRunner

    cfg = as_app_config({"out": str(out), "flywheel": {
        "languages": [{"lang": "eng-Latn"}], "threads": 1, "recognizer": {"kind": "paper"},
        "label": {"batch_size": 2, "max_new_tokens": 5, "executor": executor, "actors": 2}}})
    return RoundRunner(cfg.flywheel, out, ["eng-Latn"], log=lambda m: None)


def _label(out, executor: str, pool, model_dir) -> bytes:
    from train.flywheel.recognizer import load_recognizer

    runner = _runner(out, executor)
    runner.rdir(0).mkdir(parents=True, exist_ok=True)
    model, tok = load_recognizer(model_dir, out / "data" / "tokenizer")
    rows = runner.label(0, model, tok, pool, model_dir)
    assert [r["key"] for r in rows] == [p.key for p in pool]
    return (runner.rdir(0) / "labels.jsonl").read_bytes()


def test_ray_actors_label_exactly_like_the_local_path(setup):
    base, pool, model_dir = setup
    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    torch.set_num_threads(1)  # the actors run with flywheel.threads=1 too
    shutil.copytree(base / "run", base / "ray")
    shutil.copytree(base / "run", base / "resumed")
    before = {p.pid for p in psutil.Process().children(recursive=True)}

    local = _label(base / "run", "local", pool, model_dir)
    assert local.count(b"\n") == 4  # 7 patches in batches of 2
    rows = [r for line in local.splitlines() for r in json.loads(line)["rows"]]
    assert len({r["text"] for r in rows}) > 1 and len({r["confidence"] for r in rows}) > 3, rows  # not a constant output
    assert _label(base / "ray", "ray", pool, model_dir) == local
    assert not ray.is_initialized()  # the labeller started Ray here, and stopped it

    # resume: the first batch is committed, the others are read on Ray
    first = local.split(b"\n")[0] + b"\n"
    labels = base / "resumed" / "round_0" / "labels.jsonl"
    labels.parent.mkdir(parents=True)
    labels.write_bytes(first + b'{"batch": 1, "ro')  # killed mid-write of batch 1
    assert _label(base / "resumed", "ray", pool, model_dir) == local

    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    _, alive = psutil.wait_procs(started, timeout=15)
    for p in alive:  # Ray's agents may linger after shutdown: end what this test started
        p.kill()
