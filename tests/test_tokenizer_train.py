"""The embedded byte-level BPE: specials at ids 0..8, multi-script round trip, shard input."""

from __future__ import annotations

import io
import json

import pytest
import webdataset as wds
from PIL import Image

from data_engine.labels import fine_label
from data_engine.layout import LayoutBlock
from data_engine.tokenizer_train import save_tokenizer, texts_from_shards, train_tokenizer
from models.prompts import PROMPT_FINE
from models.tokenizer import SPECIAL_TOKENS, load_tokenizer

SAMPLES = [
    "All human beings are born free and equal in dignity and rights.",
    "Все люди рождаются свободными и равными в своем достоинстве и правах.",
    "Όλοι οι άνθρωποι γεννιούνται ελεύθεροι και ίσοι στην αξιοπρέπεια.",
    "人人生而自由，在尊严和权利上一律平等。",
    "すべての人間は、生まれながらにして自由であり、かつ、尊厳と権利とについて平等である。",
    "모든 인간은 태어날 때부터 자유로우며 그 존엄과 권리에 있어 동등하다.",
    "يولد جميع الناس أحراراً متساوين في الكرامة والحقوق.",
    "כל בני האדם נולדו בני חורין ושווים בערכם ובזכויותיהם.",
    "सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतन्त्रता प्राप्त है।",
    "มนุษย์ทั้งหลายเกิดมามีอิสระและเสมอภาคกันในเกียรติศักดิ์และสิทธิ",
    "ყველა ადამიანი იბადება თავისუფალი და თანასწორი",
    "Mọi người sinh ra đều được tự do và bình đẳng về nhân phẩm và quyền.",
]


def corpus_texts():
    for i, s in enumerate(SAMPLES * 3):
        label, _ = fine_label([LayoutBlock("title", (10, 10, 200, 30), s[:12]),
                               LayoutBlock("text", (10, 40, 400, 200 + i), s)], 595, 842)
        yield label
        yield s


def test_specials_and_round_trip(tmp_path):
    tok = train_tokenizer(corpus_texts(), vocab_size=600, min_frequency=2)
    save_tokenizer(tok, tmp_path)
    ocr = load_tokenizer(tmp_path)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert ocr.tokenizer.token_to_id(t) == i
    assert (ocr.bos_token_id, ocr.eos_token_id, ocr.pad_token_id) == (0, 1, 2)
    assert 256 + len(SPECIAL_TOKENS) < ocr.vocab_size <= 600
    unseen = "Ünïcödé ✓ ẞ ŉ 𝔘𝔫𝔦 🙂 ጤና ᏣᎳᎩ"  # bytes never merged still round-trip
    for s in SAMPLES + [unseen, PROMPT_FINE]:
        assert ocr.decode(ocr.encode(s)) == s
    # markers are single tokens, so grounded labels tokenize to their special ids
    ids = ocr.encode("<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>")
    assert ids[0] == 5 and 6 in ids and 7 in ids and ids[-1] == 8
    # merges were learned: frequent text compresses below one token per byte
    s = SAMPLES[1]
    assert len(ocr.encode(s)) < 0.6 * len(s.encode("utf-8"))


def test_vocab_too_small():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=100)


def test_texts_from_shards(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buf, format="png")
    path = tmp_path / "t-000000.tar"
    with wds.TarWriter(str(path)) as w:
        for i, s in enumerate(SAMPLES[:4]):
            meta = {"labels": {"coarse": {"prompt": "<image>\nFree OCR.", "text": s},
                               "fine": {"prompt": PROMPT_FINE, "text": f"<|ref|>text<|/ref|><|det|>[[0, 0, 9, 9]]<|/det|>\n{s}", "boxes": []}}}
            w.write({"__key__": f"{i:016d}_00000", "png": buf.getvalue(), "json": json.dumps(meta).encode()})
    texts = list(texts_from_shards(str(tmp_path / "*.tar")))
    assert len(texts) == 8 and SAMPLES[0] in texts
    tok = train_tokenizer(texts, vocab_size=400, min_frequency=1)
    assert tok.token_to_id("<|det|>") == 7
