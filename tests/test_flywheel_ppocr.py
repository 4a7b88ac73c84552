"""train/flywheel/ppocr.py: CTC fine-tuning of PP-OCRv4 rec on patch shards through the DeepSpeed trainer.

A few steps on a handful of Cyrillic lines (fitz-rendered, Noto Sans) must lower the CTC loss,
checkpoint, resume at the saved step, export a model that ``load_ppocr`` reads, and extend the
charset without touching the pretrained rows. With the backbone's front frozen (the recipe's
default: all but its last 4 blocks) the front stays bit-identical and the cached features are
its own output.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx", reason="reading the ONNX weights needs the onnx package (pyproject dependency)")
pytest.importorskip("deepspeed")

from data_engine.flywheel.patches import Patch, crop, render_page, write_patch_shard  # noqa: E402
from models.ppocr_rec import ppocr_rec_path  # noqa: E402
from train.flywheel.ppocr import (BackboneFeatures, NeckHead, init_rows, label_ids, load_ppocr,  # noqa: E402
                                  ppocr_config, read_ppocr, script_chars, script_mask, train_ppocr)

LINES = ["привет мир", "Москва река", "жёлтый дом", "чай и хлеб"]


@pytest.fixture(scope="module")
def shipped():
    try:
        ppocr_rec_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return load_ppocr(None)


def _line_patches(lines: list[str], script: str, lang: str) -> list[Patch]:
    """One fitz-rendered line patch per text (Noto Sans, 16 pt, 144 dpi), labelled by the text layer."""
    import pymupdf

    from data_engine.scripts import find_font, script_info

    font = find_font(script_info(script).font)
    if font is None:
        pytest.skip("Noto Sans not found: scripts/setup_fonts.sh")
    doc = pymupdf.open()
    page = doc.new_page(width=300, height=40 * len(lines) + 20)
    page.insert_font(fontname="noto", fontfile=str(font))
    for i, text in enumerate(lines):
        page.insert_text((10, 40 + 40 * i), text, fontsize=16, fontname="noto")
    img = render_page(page, dpi=144)
    patches = []
    for i, line in enumerate(ln for b in page.get_text("dict")["blocks"] for ln in b.get("lines", [])):
        text = "".join(s["text"] for s in line["spans"])
        patches.append(Patch(f"{lang}_00000_{i:03d}", lang, 0, tuple(line["bbox"]), lang, script, "textlayer", text,
                             image=crop(img, page.rect, line["bbox"])))
    assert [p.text for p in patches] == lines
    return patches


@pytest.fixture(scope="module")
def cyrillic_shard(tmp_path_factory, shipped):
    patches = _line_patches(LINES, "Cyrl", "rus")
    path = tmp_path_factory.mktemp("shards") / "rus_Cyrl.tar"
    write_patch_shard(path, patches)
    return path, patches


def test_dictionary_extension_keeps_old_rows_bit_identical(shipped):
    model = load_ppocr(None)
    w, b, n = model.head.weight.detach().clone(), model.head.bias.detach().clone(), len(model.charset)
    wanted = script_chars("Cyrl") + ["ё"]
    added = model.extend_charset(wanted, init_rows(wanted, model.charset))
    assert "ж" in added and "И" not in added  # И is in the shipped charset already
    assert torch.equal(model.head.weight[:n], w) and torch.equal(model.head.bias[:n], b)
    assert model.charset[n:] == added and model.head.out_features == n + len(added)
    index = {c: i for i, c in enumerate(model.charset)}
    # a look-alike starts from its Latin twin's row; a letter without one from the mean row
    assert torch.equal(model.head.weight[index["р"]], w[index["p"]])
    assert torch.allclose(model.head.weight[index["ж"]], w[1:n].mean(0))
    assert label_ids("жёлтый", index) is not None and label_ids("ж\u0435\u0308", index) == label_ids("жё", index)
    # a Latin line may emit p but not its Cyrillic twin р (same glyph), nor Han; blank, space, digits always
    latin, cyrillic = script_mask(model.charset, "Latn"), script_mask(model.charset, "Cyrl")
    assert latin[index["p"]] and not latin[index["р"]] and not latin[index["中"]] and cyrillic[index["р"]]
    assert all(m[0] and m[index[" "]] and m[index["7"]] for m in (latin, cyrillic))


def test_ctc_fine_tune_lowers_the_loss_resumes_and_exports(tmp_path, cyrillic_shard):
    shard, patches = cyrillic_shard
    out = tmp_path / "run"
    common = ["train.micro_batch_size=4", "train.global_batch_size=4", "optim.lr=1e-3", "optim.warmup_steps=0",
              "train.save_every=2", "logging.log_every=1"]
    cfg = ppocr_config(common, shards=[str(shard)], out_dir=out, steps=2, seed=0)
    first = train_ppocr(cfg)
    assert first["steps"] == 2 and first["charset_added"] > 0 and first["patches"] == len(LINES)
    assert (out / "checkpoints" / "latest").is_file()
    # same out_dir, more steps: resumes at step 2 (train.resume=auto), data position included
    second = train_ppocr(ppocr_config(common, shards=[str(shard)], out_dir=out, steps=7, seed=0))
    assert second["steps"] == 7 and len(second["losses"]) == 5
    losses = first["losses"] + second["losses"]
    assert sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2, losses
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))
    model = load_ppocr(second["export_dir"])
    assert "ж" in model.charset
    assert not model.backbone.stem_bn.training
    # the recipe freezes the backbone's front: stem and blocks 0-9 are the shipped ones, bit for
    # bit (recorded in the export); its last 4 blocks and the neck moved
    stock = load_ppocr(None)
    front = [k for k in stock.backbone.state_dict() if not any(k.startswith(f"blocks.{i}.") for i in range(10, 14))]
    mine, theirs = model.backbone.state_dict(), stock.backbone.state_dict()
    assert model.cfg.shipped_blocks == 10 and all(torch.equal(mine[k], theirs[k]) for k in front)
    assert not torch.equal(model.backbone.blocks[13].pw.conv.weight, stock.backbone.blocks[13].pw.conv.weight)
    assert not torch.equal(model.neck.conv1.conv.weight, stock.neck.conv1.conv.weight)
    reads = read_ppocr(model, [p.image for p in patches])
    assert all(isinstance(t, str) and conf <= 0 and 0 <= pmin <= 1 for t, conf, pmin in reads)


@pytest.mark.parametrize("split", [None, 12])
def test_cached_features_read_as_the_whole_model(shipped, cyrillic_shard, split):
    """The neck and head (and with ``split`` 12 the two tail blocks) on cached features of the
    backbone's frozen front (what trains) give the whole model's logits on the line alone,
    padding included, up to the cache's fp16 rounding."""
    from models.ppocr_rec import preprocess
    from train.flywheel.ppocr import WIDTH_MULTIPLE

    _, patches = cyrillic_shard
    items = [(p.image, [1], False, "Cyrl") for p in patches]
    keys = [("test-line", split, i) for i in range(len(items))]
    feats = BackboneFeatures(shipped.backbone, split)
    with torch.no_grad():
        cached = NeckHead(shipped, split)(feats.batch(keys, items))  # (B, T, V)
        for j, p in enumerate(patches):
            whole = shipped(preprocess([p.image], width_multiple=WIDTH_MULTIPLE))[0]  # (T', V)
            t = min(whole.shape[0], cached.shape[1])
            assert (whole[:t].argmax(-1) == cached[j, :t].argmax(-1)).float().mean() > 0.95
            assert torch.allclose(whole[:t].softmax(-1), cached[j, :t].softmax(-1), atol=0.05)
    assert all(k in feats.cache for k in keys)
    # the same front in another trainer (the next flywheel round) finds them; another front does not
    assert all(k in BackboneFeatures(load_ppocr(None).backbone, split).cache for k in keys)
    other = load_ppocr(None).backbone
    with torch.no_grad():
        other.blocks[13].pw.conv.weight.mul_(1.01)  # the tail: not in a front of 12 blocks
    assert all(k in BackboneFeatures(other, split).cache for k in keys) == (split == 12)
    with torch.no_grad():
        other.stem.weight.mul_(1.01)
    assert not any(k in BackboneFeatures(other, split).cache for k in keys)


def test_loss_over_the_batch_classes_equals_the_masked_loss_over_all():
    """``batch_classes``: the head's rows of the classes the batch's lines may emit give the same CTC
    loss and the same gradients as the masked loss over the whole charset (random weights)."""
    from models.ppocr_rec import PPOCRRec, PPOCRRecConfig
    from train.flywheel.ppocr import batch_classes, ctc_loss

    torch.manual_seed(0)
    charset = ["<blank>"] + [chr(0x4E00 + i) for i in range(300)] + list("abcdefgh") + list("жзий") + [" "]
    model = PPOCRRec(PPOCRRecConfig(num_classes=len(charset), charset=charset))
    head = NeckHead(model)
    feats = torch.randn(3, 480, 1, 40)
    index = {c: i for i, c in enumerate(charset)}
    texts = ["abc", "жзи й", "hag"]
    targets = torch.tensor([index[c] for t in texts for c in t])
    lengths = torch.tensor([len(t) for t in texts])
    allowed = torch.zeros(3, 1, len(charset), dtype=torch.bool)
    allowed[:, :, 0] = allowed[:, :, index[" "]] = True
    allowed[[0, 2], :, index["a"]:index["h"] + 1] = True
    allowed[1, :, index["ж"]:index["й"] + 1] = True
    full = ctc_loss(head(feats), targets, lengths, allowed)
    full.backward()
    grads = [p.grad.clone() for p in head.neck.parameters()]
    head.zero_grad()
    classes, sub_allowed, sub_targets = batch_classes(allowed, targets)
    assert classes[0] == 0 and len(classes) == 1 + 8 + 4 + 1
    sub = ctc_loss(head(feats, classes), sub_targets, lengths, sub_allowed)
    sub.backward()
    assert torch.allclose(full, sub, atol=1e-5)
    assert all(torch.allclose(g, p.grad, atol=1e-5, rtol=1e-4) for g, p in zip(grads, head.neck.parameters()))


def test_trained_tail_blocks_train_and_the_front_stays_shipped(tmp_path, cyrillic_shard):
    """``train.trained_tail_blocks=2``: blocks 12-13 move (at the encoder's lr scale), the stem and
    blocks 0-11 stay the shipped ones bit for bit; the export records the split, its reader caches
    that front and reads as the whole model does."""
    from data_engine.metrics import corpus_cer
    from train.flywheel.ppocr import frozen_split

    shard, patches = cyrillic_shard
    cfg = ppocr_config(["train.micro_batch_size=4", "train.global_batch_size=4", "optim.warmup_steps=0",
                        "train.trained_tail_blocks=2", "optim.encoder_lr_scale=0.1"],
                       shards=[str(shard)], out_dir=tmp_path / "run", steps=4, seed=0)
    result = train_ppocr(cfg)
    model, stock = load_ppocr(result["export_dir"]), load_ppocr(None)
    assert model.cfg.shipped_blocks == 12 and frozen_split(model) == 12 and frozen_split(stock) == 14
    same = [torch.equal(model.backbone.blocks[i].pw.conv.weight, stock.backbone.blocks[i].pw.conv.weight)
            for i in range(14)]
    assert same == [True] * 12 + [False] * 2
    assert torch.equal(model.backbone.stem.weight, stock.backbone.stem.weight)
    crops = [p.image for p in patches]
    whole = read_ppocr(model, crops, scripts=["Cyrl"] * len(crops))
    cached = read_ppocr(model, crops, scripts=["Cyrl"] * len(crops), cached=True)
    assert corpus_cer((w[0], c[0]) for w, c in zip(whole, cached)) <= 0.05, (whole, cached)
    with pytest.raises(ValueError, match="trained_tail_blocks"):
        frozen_split(stock, 9)


def test_cached_reading_reads_as_the_whole_model(shipped, cyrillic_shard):
    """``read_ppocr(cached=True)`` (the flywheel's reads: backbone features from the process's
    cache) gives the whole model's text; a second read finds every line in the cache."""
    from data_engine.metrics import corpus_cer
    from train.flywheel.ppocr import _FEATURES, crop_key

    _, patches = cyrillic_shard
    crops = [p.image for p in patches]
    whole = read_ppocr(shipped, crops, scripts=["Cyrl"] * len(crops))
    cached = read_ppocr(shipped, crops, scripts=["Cyrl"] * len(crops), cached=True)
    assert all(crop_key(c, False) in _FEATURES["cache"] for c in crops)
    assert corpus_cer((w[0], c[0]) for w, c in zip(whole, cached)) <= 0.05, (whole, cached)
    assert read_ppocr(shipped, crops, scripts=["Cyrl"] * len(crops), cached=True) == cached


def test_decoding_on_the_garbled_text_layer_keeps_its_intact_letters():
    """A refused line is decoded on its text layer: greedy CTC drops the faint `a`, the
    constrained prefix search must emit the text layer's intact `a` and `c` and fills the
    garbled glyph from the recognizer; a pattern the frames cannot give is None."""
    from data_engine.flywheel.trust import fits_text_layer, text_layer_pattern
    from models.ppocr_rec import ctc_greedy
    from train.flywheel.ctc_constrained import decode_with_text_layer

    charset = ["<blank>", "a", "b", "c", "x", " "]
    frames = [{0: 0.55, 1: 0.45}, {2: 0.9, 4: 0.1}, {0: 1.0}, {3: 1.0}, {0: 1.0}]  # (T=5, V=6) probabilities
    probs = torch.full((5, 6), 1e-6)
    for t, row in enumerate(frames):
        for c, q in row.items():
            probs[t, c] = q
    logp = probs.log().log_softmax(-1)
    garbled = "a\ufffdc"
    assert ctc_greedy(logp[None], charset)[0][0] == "bc" and not fits_text_layer("bc", garbled, "Latn")
    text, conf = decode_with_text_layer(logp, charset, text_layer_pattern(garbled, "Latn"))
    assert text == "abc" and fits_text_layer(text, garbled, "Latn") and conf < 0
    assert decode_with_text_layer(logp, charset, text_layer_pattern("xyz", "Latn")) is None


def test_report_row_carries_the_reading_controls(shipped, tmp_path):
    """A round's report gives, per line set, the recognizer's CER beside its controls: the same
    lines as blank images, each prediction against another line's reference, one constant
    output, and word accuracy against chance. The shipped PP-OCRv4 reads English lines, so it
    reads; the controls score as reading-free ones do."""
    from train.flywheel.config import FlywheelConfig
    from train.flywheel.recognizers import PPOCRRecognizer
    from train.flywheel.report import controls_table
    from train.flywheel.rounds import line_reading

    lines = ["river stone bridge", "morning light falls", "seven quiet houses", "winter garden path", "yellow paper kite"]
    patches = _line_patches(lines, "Latn", "eng")
    res = line_reading(PPOCRRecognizer(FlywheelConfig(), tmp_path), shipped, None, patches,
                       train_labels=["the old road", "the old road", "a new day"])
    rd = res["reading"]
    assert rd["cer"] <= 0.05 and rd["word_accuracy"] >= 0.8 and rd["reads"], rd["verdict"]
    assert rd["blank"]["cer"] >= 0.9 and rd["wrong_page"]["cer"] >= 0.5 and rd["constant"]["cer"] >= 0.5
    assert rd["constant"]["label"] == "the old road" and rd["constant"]["source"] == "training labels"
    assert res["cer_blind"] == rd["blank"]["cer"]
    row = {"round": 0, "languages": {"eng-Latn": {"recognizer": {"gold_n": 5, "reading": rd, "unseen_n": 5,
                                                                 "reading_unseen": rd}}}}
    table = controls_table([row]).splitlines()
    cells = f"{rd['cer']:.3f} | {rd['blank']['cer']:.3f} | {rd['wrong_page']['cer']:.3f} | {rd['constant']['cer']:.3f}"
    assert [ln for ln in table if cells in ln and ln.endswith("reads |")] == [
        ln for ln in table[2:]] and len(table) == 4  # gold and unseen-word rows, every control filled
