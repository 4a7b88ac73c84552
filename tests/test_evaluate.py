"""The evaluation suite (train/eval/, ``python -m train.evaluate``).

* Fixed predictions with known answers: edit distances and CER, a looping output counted as
  repetition (and a reference's own dotted leader not), a Fox bin table and a block table
  computed by hand.
* Decoding: the stage-1 model decodes through ``models.generation.generate`` with the cache
  equal to the uncached path and batched (left padding) equal to one page at a time; the
  image-blind control really ignores the page.
* End to end: a tiny stage-1 model trained for a few steps by the real trainer (DeepSpeed,
  initialised from locally saved random SAM/CLIP transformers models) is evaluated from its run
  directory by the CLI: before/after/image-blind rows, the reading verdict with its controls
  (wrong-page reference, constant training label, chance), Fox compression table per mode, block
  table for fine labels, per language, report.json / report.md / PNG plots.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from models.prompts import PROMPT_COARSE, PROMPT_FINE, format_grounded_page
from train.eval.decode import Page
from train.eval.metrics import find_loop, is_repetition, length_ratio, match_blocks, page_scores
from train.eval.report import aggregate, block_table, build_report, fox_table
from train.eval.suite import score_prediction
from test_pretrained_init import hf_clip, hf_sam  # noqa: F401  (fixtures: random SAM / CLIP saved locally)

WORDS = "ocr page text line table figure vision token encoder decoder layout title".split()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Token-by-token decoding of tiny models: one thread (two threads only spin-wait on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ fixed predictions


def test_known_edit_distances_and_cer():
    s = page_scores("kitten", "sitting")
    assert s["ned"] == pytest.approx(3 / 7) and (s["cer_edits"], s["cer_len"]) == (3, 7)
    assert page_scores("", "")["ned"] == 0.0 and page_scores("abc", "")["ned"] == 1.0
    # CER ignores layout: line breaks / spaces are not characters to read
    assert (page_scores("a b\nc", "abc")["cer_edits"], page_scores("a b\nc", "abc")["ned"]) == (0, pytest.approx(2 / 5))
    assert page_scores("the cat the cat", "the cat sat")["precision"] == pytest.approx(2 / 4)
    assert length_ratio("ab", "abcd") == 0.5 and length_ratio("", "") == 0.0
    # CER over pages = summed edits / summed reference characters (not a mean of ratios)
    rows = [{**page_scores("kitten", "sitting"), "finished": True},
            {**page_scores("abc", "abc"), "finished": False}]
    agg = aggregate(rows)
    assert agg["cer"] == pytest.approx(3 / 10) and agg["ned"] == pytest.approx(3 / 14)
    assert agg["unfinished_rate"] == 0.5 and agg["pages"] == 2


def test_looping_output_is_repetition():
    ref = "the quick brown fox jumps over the lazy dog"
    looping = "the quick brown fox " + "jumps over " * 6
    loop = find_loop(looping)
    # the period is "jumps over " (11 chars); the space before the first "jumps" belongs to the loop too
    assert loop is not None and loop.unit == "jumps over " and loop.span == 67 and loop.repeats >= 6
    assert is_repetition(looping, ref) and page_scores(looping, ref)["repetition"]
    assert not is_repetition(ref, ref)  # a normal sentence
    assert not is_repetition("aaaa", "x")  # too short to call a loop
    toc = "Contents ........................ 3"
    assert not is_repetition("Contents ........................", toc)  # the reference's own leader
    assert is_repetition("x" + "ab" * 40, "xab")
    rows = [{**page_scores(p, ref), "finished": f} for p, f in ((looping, False), (ref, True), (ref[:10], True))]
    assert aggregate(rows)["repetition_rate"] == pytest.approx(1 / 3)


def _row(variant, tokens, precision, ned, vision=64, kind="coarse"):
    return {"variant": variant, "mode": "tiny", "kind": kind, "ref_tokens": tokens, "vision_tokens": vision,
            "precision": precision, "ned": ned}


def test_fox_bin_table_by_hand():
    rows = [_row("trained", 120, 1.0, 0.0), _row("trained", 180, 0.5, 0.4),
            _row("trained", 250, 0.8, 0.2), _row("trained", 260, 0.6, 0.3),
            _row("blind", 120, 0.1, 0.9), _row("blind", 180, 0.3, 0.7),
            _row("blind", 250, 0.0, 1.0), _row("blind", 260, 0.2, 0.8)]
    table = fox_table(rows)  # 100-token bins
    assert [r["bin"] for r in table] == [[100, 200], [200, 300]]
    a, b = table
    assert a["pages"] == 2 and a["text_tokens"] == 150 and a["vision_tokens"] == 64
    assert a["compression"] == pytest.approx((120 / 64 + 180 / 64) / 2)  # 2.34x
    assert a["trained"] == {"precision": pytest.approx(0.75), "ned": pytest.approx(0.2)}
    assert a["blind"] == {"precision": pytest.approx(0.2), "ned": pytest.approx(0.8)}
    assert b["compression"] == pytest.approx(255 / 64) and b["trained"]["precision"] == pytest.approx(0.7)
    # the paper's bins, given explicitly: 120 falls outside [150, 300)
    t2 = fox_table(rows, edges=[150, 200, 300])
    assert [(r["bin"], r["pages"]) for r in t2] == [([150, 200], 1), ([200, 300], 2)]


def test_blocks_matched_by_iou_per_type_by_hand():
    ref = [{"label": "title", "bbox": [0, 0, 100, 100], "text": "Hello"},
           {"label": "text", "bbox": [0, 200, 500, 400], "text": "body text"},
           {"label": "text", "bbox": [600, 600, 900, 900], "text": "missed"}]
    pred = format_grounded_page([("title", [0, 0, 100, 50], "Hello"), ("text", [0, 200, 500, 400], "body test"),
                                 ("figure", [0, 900, 10, 910], "x")])
    page = Page("k", Image.new("RGB", (8, 8)), "eng", "Latn",
                {"fine": {"prompt": PROMPT_FINE, "text": format_grounded_page([(b["label"], b["bbox"], b["text"])
                                                                                for b in ref]), "boxes": ref}})
    row = score_prediction(pred, page, "fine")
    got = {b["type"]: b for b in row["blocks"]["blocks"][:2]}
    assert got["title"]["iou"] == pytest.approx(0.5) and got["title"]["ned"] == 0.0
    assert got["text"]["iou"] == 1.0 and got["text"]["ned"] == pytest.approx(1 / 9)
    assert row["blocks"]["blocks"][2] == {"type": "text", "ned": 1.0, "iou": 0.0, "label_ok": False}
    t = block_table([row])
    assert t["per_type"]["text"] == {"blocks": 2, "ned": pytest.approx((1 / 9 + 1) / 2), "iou": 0.5,
                                     "recall@0.5": 0.5}
    o = t["overall"]
    assert (o["ref_blocks"], o["pred_blocks"]) == (3, 3)
    assert o["box_recall@0.5"] == pytest.approx(2 / 3) and o["box_precision@0.5"] == pytest.approx(2 / 3)
    assert o["label_accuracy"] == pytest.approx(2 / 3)
    # the page text (blocks joined) is scored too: 2 edits ("s" for "x" + the missed block)
    assert row["ned"] > 0 and row["cer_len"] == len("Hellobodytextmissed")
    assert match_blocks([], ref)["hits"] == 0


# ------------------------------------------------------------------ decoding


def _tokenizer(tmp_path: Path, texts: list[str]):
    from test_stage1 import train_tiny_tokenizer

    from models.tokenizer import load_tokenizer

    return load_tokenizer(train_tiny_tokenizer(tmp_path / "tok", texts + [PROMPT_FINE]))


def test_stage1_decoding_cache_and_batching_agree(tmp_path):
    from omegaconf import OmegaConf

    from models.generation import generate
    from models.image_processing import preprocess_image
    from train.eval.loading import Stage1Generator
    from train.stage1 import build_stage1_model

    tok = _tokenizer(tmp_path, [" ".join(WORDS)] * 4)
    cfg = OmegaConf.create({"model": {"preset": "tiny", "stage1_lm": {"hidden_size": 64, "num_layers": 2,
                                                                      "num_heads": 4, "ffn_dim": 128}}})
    torch.manual_seed(0)
    s1 = build_stage1_model(cfg, tok.vocab_size, special_ids={
        "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
        "image_token_id": tok.image_token_id}, seq_len=512).eval()
    gen = Stage1Generator(s1, tok.eos_token_id, tok.pad_token_id)
    imgs = [preprocess_image(Image.new("RGB", (64, 80), c), "tiny") for c in ("white", "black")]
    prompts = [tok.encode_prompt(PROMPT_COARSE, [imgs[0]]), tok.encode_prompt(PROMPT_FINE, [imgs[1]])]
    T = max(map(len, prompts))
    ids = torch.full((2, T), tok.pad_token_id)
    mask = torch.zeros(2, T, dtype=torch.long)
    for r, x in enumerate(prompts):
        ids[r, T - len(x):], mask[r, T - len(x):] = torch.tensor(x), 1
    kw = dict(max_new_tokens=12, eos_token_id=-1, pad_token_id=tok.pad_token_id)
    cached = generate(gen, ids, attention_mask=mask, images=imgs, **kw).sequences
    uncached = generate(gen, ids, attention_mask=mask, images=imgs, use_cache=False, **kw).sequences
    assert torch.equal(cached, uncached)
    for r, x in enumerate(prompts):  # one page alone, no padding
        alone = generate(gen, torch.tensor([x]), images=[imgs[r]], **kw).sequences
        assert torch.equal(alone[0], cached[r])


# ------------------------------------------------------------------ end to end


def write_pages(out: Path, n: int, seed: int) -> tuple[str, list[str]]:
    """Pages with a title and 2-3 text lines, coarse + fine labels (boxes in 0-999 bins)."""
    from data_engine.shards import encode_meta, open_shard_writer

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    W, H, texts = 320, 400, []
    with open_shard_writer(str(out / "pages-%06d.tar"), max_count=n) as w:
        for i in range(n):
            lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(2, 3))]
            img = Image.new("RGB", (W, H), "white")
            draw = ImageDraw.Draw(img)
            blocks = []
            for j, line in enumerate(lines):
                x, y = 20, 20 + 40 * j
                draw.text((x, y), line, fill="black")
                x2, y2 = draw.textbbox((x, y), line)[2:]
                box = [int(x * 999 / W), int(y * 999 / H), int(x2 * 999 / W), int(y2 * 999 / H)]
                blocks.append(("title" if j == 0 else "text", box, line))
            coarse = "\n".join(lines)
            texts.append(coarse)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            meta = {"doc_id": f"{seed:04x}{i:012x}", "source_path": f"synthetic/{i}.pdf", "page": 0, "num_pages": 1,
                    "lang": "eng" if i % 2 else "deu", "script": "Latn", "dpi": 72, "page_size": [W, H],
                    "image_size": [W, H], "source": "synthetic", "data_source": "ocr",
                    "labels": {"coarse": {"prompt": PROMPT_COARSE, "text": coarse},
                               "fine": {"prompt": PROMPT_FINE, "text": format_grounded_page(blocks),
                                        "boxes": [{"label": lb, "bbox": bx, "text": tx} for lb, bx, tx in blocks]}}}
            w.write({"__key__": f"{seed:04x}{i:012x}_00000", "png": buf.getvalue(), "json": encode_meta(meta)})
    return str(out / "pages-*.tar"), texts


def test_stage1_run_report_with_compression_table_and_plots(tmp_path, capsys, hf_sam, hf_clip):
    from test_stage1 import stage1_cfg

    from train.eval.cli import main
    from train.stage1 import run_stage1

    train_glob, texts = write_pages(tmp_path / "train", 8, seed=0)
    held_glob, held = write_pages(tmp_path / "heldout", 4, seed=1)
    tok_dir = tmp_path / "tok"
    _tokenizer(tmp_path, texts + held)
    cfg = stage1_cfg({"shards": train_glob, "tokenizer": str(tok_dir)}, tmp_path / "run", steps=3, save_every=3,
                     resume="null")
    # stage 1 from locally saved (random) transformers SAM and CLIP models
    cfg.model.sam_from, cfg.model.clip_from = str(hf_sam[1]), str(hf_clip[1])
    result = run_stage1(cfg)
    assert result["pretrained"][0].startswith("sam_model <- ") and "vision_model <- " in result["pretrained"][1]

    res = main(["--model", str(tmp_path / "run"), "--shards", held_glob, "--pages", "4", "--modes", "tiny,small",
                "--labels", "coarse", "--untrained", "--out", str(tmp_path / "eval"), "--budget-factor", "1.2"])
    out = capsys.readouterr().out
    assert "before training" in out and "after training" in out and "image-blind" in out
    rep = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert rep["model"]["kind"] == "stage1" and rep["variants"] == ["untrained", "trained", "blind"]
    for mode in ("tiny", "small"):
        assert set(rep["summary"][mode]["coarse"]) == {"untrained", "trained", "blind"}
        assert all(v["pages"] == 4 for v in rep["summary"][mode]["coarse"].values())
    # the compression table, checked against the per-page rows it is made of
    rows = [r for r in res["rows"] if r["kind"] == "coarse" and r["variant"] == "trained"]
    for mode, vision in (("tiny", 64), ("small", 100)):
        table = rep["fox"]["table"][mode]
        assert sum(r["pages"] for r in table) == 4 and all(r["vision_tokens"] == vision for r in table)
        mine = [r for r in rows if r["mode"] == mode]
        assert sum(r["compression"] * r["pages"] for r in table) == pytest.approx(
            sum(r["ref_tokens"] / vision for r in mine))
    assert set(rep["by_language"]["tiny"]["coarse"]) == {"deu", "eng"}
    # budgets follow the reference length: 1.2 x reference tokens + 16
    assert all(r["budget"] == int(-(-1.2 * r["ref_tokens"] // 1)) + 16 for r in res["rows"])
    md = (tmp_path / "eval" / "report.md").read_text()
    assert "Compression (Fox-style" in md and "tiny (64 vision tokens) precision blind" in md
    # the reading verdict and its controls, in the table, report.json and report.md
    for words in ("word acc", "1st letter", "wrong-page reference", "constant output (most frequent training label)",
                  "word accuracy by chance", "verdict: "):
        assert words in out, words
    reading = rep["reading"]["tiny"]["coarse"]
    trained_rows = [r for r in rows if r["mode"] == "tiny"]
    assert reading["pages"] == 4 and reading["constant"]["source"] == "training labels"  # the run's data.shards
    assert reading["constant"]["label"] in [t.strip() for t in texts]
    assert reading["word_accuracy"] == rep["summary"]["tiny"]["coarse"]["trained"]["word_accuracy"] == pytest.approx(
        sum(r["words_right"] for r in trained_rows) / sum(r["ref_words"] for r in trained_rows))
    assert reading["blank"]["cer"] == pytest.approx(rep["summary"]["tiny"]["coarse"]["blind"]["cer"])
    assert not reading["reads"]  # 3 steps from random encoders do not read
    ratios = [r["reliance/ratio"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "reliance/ratio" in r]
    assert ratios and reading["loss_ratio"] == ratios[-1]  # the run's last held-out loss ratio, reported
    assert "Reading verdict per mode and label kind" in md and "wrong-page reference" in md
    for name in ("cer", "compression", "languages", "reading", "length_ratio"):
        with Image.open(tmp_path / "eval" / f"{name}.png") as im:
            assert im.format == "PNG" and im.width > 200


def test_checkpoint_dir_fine_labels_and_blind_control(tmp_path):
    """A stage-2 style export loads; fine labels give the block table; the image-blind
    variant's output cannot depend on the page."""
    from models.checkpoint import export_checkpoint
    from models.config import get_preset
    from models.deepseek_ocr import DeepseekOCRForCausalLM
    from train.eval.decode import heldout_pages
    from train.eval.suite import evaluate_model
    from train.eval.loading import load_model

    glob_, texts = write_pages(tmp_path / "pages", 2, seed=3)
    tok = _tokenizer(tmp_path, texts)
    cfg = get_preset("tiny").with_vocab(tok.vocab_size, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id, image_token_id=tok.image_token_id)
    torch.manual_seed(0)
    export_checkpoint(DeepseekOCRForCausalLM(cfg), tmp_path / "export", dtype=torch.float32)
    m = load_model(tmp_path / "export", tmp_path / "tok")
    assert m.kind == "checkpoint"
    pages = heldout_pages(glob_, None, ("coarse",))
    same = [Page(p.key, p.image if i == 0 else p.image.transpose(Image.Transpose.ROTATE_180), p.lang, p.script,
                 {"coarse": pages[0].labels["coarse"]}) for i, p in enumerate(pages)]  # two images, one label
    res = evaluate_model(m, same, progress=None, no_repeat_ngram=0)
    blind = [r["pred"] for r in res["rows"] if r["variant"] == "blind"]
    assert len(blind) == 2 and blind[0] == blind[1]

    fine = evaluate_model(m, heldout_pages(glob_, None, ("fine",)), label_kinds=("fine",), progress=None,
                          budget_factor=1.0)["report"]
    assert set(fine["summary"]["tiny"]["fine"]) == {"trained", "blind"}
    per_type = fine["blocks"]["tiny"]["trained"]["per_type"]
    assert set(per_type) == {"title", "text"} and per_type["title"]["blocks"] == 2
