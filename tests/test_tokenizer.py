"""Tokenizer loading / special tokens / <image> expansion, and the grounded prompt format."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from models.prompts import (
    PROMPT_COARSE,
    PROMPT_FINE,
    format_grounded_block,
    format_grounded_page,
    locate_prompt,
    parse_grounded_output,
)
from models.tokenizer import SPECIAL_TOKENS, load_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Convert the document to markdown. Free OCR.",
    "Tous les êtres humains naissent libres et égaux en dignité et en droits.",
    "人人生而自由，在尊严和权利上一律平等。",
    "| a | b |\n|---|---|\n| 1 | 2 |",
] * 4


def _train_bpe(specials=SPECIAL_TOKENS) -> Tokenizer:
    """A small byte-level BPE with the specials first (ids 0..8), like the engine's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    _train_bpe().save(str(d / "tokenizer.json"))
    return d


@dataclass
class FakeImage:  # anything with num_tokens works (ImageInput in practice)
    num_tokens: int


def test_specials_resolve_in_engine_order(tok_dir):
    for p in (tok_dir, tok_dir / "tokenizer.json"):
        tok = load_tokenizer(p)
        assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(9))
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.image_token_id) == (0, 1, 2, 3)
        assert tok.vocab_size == 400


def test_missing_specials_error_names_each_one(tmp_path):
    keep = [s for s in SPECIAL_TOKENS if s not in ("<|det|>", "<|/ref|>")]
    _train_bpe(keep).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError) as e:
        load_tokenizer(tmp_path)
    msg = str(e.value)
    assert "'<|det|>'" in msg and "'<|/ref|>'" in msg and "2 required" in msg
    assert str(tmp_path) in msg
    assert "'<|ref|>'" not in msg.split("DeepSeek-OCR needs")[0]  # present ones are not listed


def test_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)


def test_tokenizer_config_overrides_bos_eos_pad(tmp_path):
    # Official-style config renaming bos/eos/pad (AddedToken dict and plain string forms).
    _train_bpe(("<s>", "</s>", "<pad>") + SPECIAL_TOKENS[3:]).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>", "pad_token": "<pad>",
    }))
    tok = load_tokenizer(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)


def test_encode_prompt_expands_images(tok_dir):
    tok = load_tokenizer(tok_dir)
    prompt = "<image>\nFree OCR. <image>"
    ids = tok.encode_prompt(prompt, [FakeImage(273), FakeImage(893)])
    assert ids[0] == tok.bos_token_id
    assert ids.count(tok.image_token_id) == 273 + 893
    # Layout: bos, 273 image ids, text, 893 image ids (at the end).
    assert ids[1:274] == [tok.image_token_id] * 273 and ids[274] != tok.image_token_id
    assert ids[-893:] == [tok.image_token_id] * 893
    text_ids = [i for i in ids[1:] if i != tok.image_token_id]
    assert tok.decode(text_ids) == "\nFree OCR. "
    assert tok.encode_prompt(PROMPT_COARSE, [FakeImage(3)], add_bos=False)[:3] == [3, 3, 3]
    with pytest.raises(ValueError, match="1 <image> placeholder"):
        tok.encode_prompt(PROMPT_FINE, [])
    with pytest.raises(ValueError, match="2 image"):
        tok.encode_prompt(PROMPT_FINE, [FakeImage(1), FakeImage(1)])


def test_round_trip_and_special_handling(tok_dir):
    tok = load_tokenizer(tok_dir)
    for text in CORPUS[:5] + ["unseen: Ωμέγα ünïcode 123 😀"]:
        assert tok.decode(tok.encode(text)) == text
    block = format_grounded_block("title", [1, 2, 300, 40], "Hello")
    ids = tok.encode(block)
    for s in ("<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>"):
        assert ids.count(tok.token_to_id(s)) == 1  # specials are atomic tokens
    assert tok.decode(ids) == block
    with_eos = [tok.bos_token_id] + ids + [tok.eos_token_id, tok.pad_token_id]
    assert tok.decode(with_eos, skip_special_tokens=True) == block  # markup kept, bos/eos/pad dropped
    assert tok.batch_decode([ids, ids[:1]]) == [block, "<|ref|>"]


# ------------------------------------------------------------------------------- prompts


def test_grounded_block_format_is_exact():
    assert format_grounded_block("text", [10, 20.4, 999, 30], "a b") == (
        "<|ref|>text<|/ref|><|det|>[[10, 20, 999, 30]]<|/det|>\na b"
    )
    assert locate_prompt("the cat") == "<image>\nLocate <|ref|>the cat<|/ref|> in the image."
    for bad in ([0, 0, 1000, 5], [5, 0, 4, 9], [1, 2, 3], [-1, 0, 2, 2]):
        with pytest.raises(ValueError):
            format_grounded_block("text", bad, "")
    with pytest.raises(ValueError, match="marker"):
        format_grounded_block("text", [0, 0, 1, 1], "x <|ref|> y")


def test_parse_round_trip_and_tolerance():
    blocks = [("title", [0, 0, 999, 50], "# Heading"), ("text", [5, 60, 990, 400], "line 1\nline 2"),
              ("image", [100, 420, 800, 900], ""), ("table", [1, 2, 3, 4], "| a |\n|---|")]
    page = format_grounded_page(blocks)
    assert parse_grounded_output(page) == blocks
    # Several boxes in one det, odd spacing, leading junk, truncated tail header.
    out = ("junk<|ref|>fig<|/ref|> <|det|>[[1,2,3,4], [5, 6 ,7,8]]<|/det|>\ncap\n\n"
           "<|ref|>text<|/ref|><|det|>[[9, 9, 10.6, 11]]<|/det|>body<|ref|>te")
    assert parse_grounded_output(out) == [
        ("fig", [1, 2, 3, 4], "cap"), ("fig", [5, 6, 7, 8], "cap"), ("text", [9, 9, 11, 11], "body"),
    ]
    assert parse_grounded_output("<|ref|>x<|/ref|><|det|>[[1, 2") == []
    assert parse_grounded_output("plain text, no blocks") == []
