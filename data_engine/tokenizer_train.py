"""Train the embedded byte-level BPE tokenizer on the data engine's label text.

The published DeepSeek-OCR tokenizer (129,280 entries) cannot be downloaded in the embedded
default run, so the engine trains a small byte-level BPE (``tokenizers``) on the labels it
produced: coarse text, fine (grounded) text and the prompts. The nine DeepSeek-OCR special
tokens get ids 0..8 in the order of ``models.tokenizer.SPECIAL_TOKENS`` (docs/INTERFACES.md),
so ``models.tokenizer.load_tokenizer`` resolves bos/eos/pad/<image>/grounding markers. Byte-level
means every string (any script) round-trips even if the merges never saw it.

CLI: ``python -m data_engine.tokenizer_train --shards 'out/shards/*.tar' --out DIR --vocab-size 4096``
"""

from __future__ import annotations

import argparse
import glob
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from models.prompts import PROMPTS
from models.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS


def texts_from_shards(urls: str | list[str]) -> Iterator[str]:
    """Label texts (every kind present, plus its prompt) of all samples in the shards."""
    from data_engine.shards import iter_samples

    if isinstance(urls, str) and any(c in urls for c in "*?[") and "{" not in urls:
        urls = sorted(glob.glob(urls))
        if not urls:
            raise FileNotFoundError("no shard matches the pattern")
    for s in iter_samples(urls):
        for lab in s["meta"].get("labels", {}).values():
            if lab.get("text"):
                yield lab["text"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> Tokenizer:
    """Byte-level BPE with the special tokens at ids 0..8."""
    n_special = len(SPECIAL_TOKENS)
    if vocab_size < n_special + 256:
        raise ValueError(f"vocab_size must be >= {n_special + 256} (specials + 256 bytes), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    # use_regex=True: GPT-2 style split (letters / digits / punctuation runs) before bytes.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    prompts = list(PROMPTS.values())
    tok.train_from_iterator(_with_prompts(texts, prompts), trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):  # the contract: ids 0..8, in this order
        if tok.token_to_id(t) != i:
            raise RuntimeError(f"special token {t!r} got id {tok.token_to_id(t)}, expected {i}")
    return tok


def _with_prompts(texts: Iterable[str], prompts: list[str]) -> Iterator[str]:
    yield from prompts
    for t in texts:
        yield t


def save_tokenizer(tok: Tokenizer, out_dir: str | Path) -> Path:
    """Write ``tokenizer.json`` (+ ``tokenizer_config.json`` naming bos/eos/pad) to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "tokenizer.json"
    tok.save(str(path))
    cfg = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN,
           "model_max_length": 8192, "tokenizer_class": "PreTrainedTokenizerFast"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Train the embedded byte-level BPE on shard labels.")
    ap.add_argument("--shards", required=True, action="append",
                    help="shard glob ('out/shards/*.tar') or brace pattern; repeat for more shard sets")
    ap.add_argument("--out", required=True, help="output folder for tokenizer.json")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--min-frequency", type=int, default=2)
    a = ap.parse_args(argv)
    texts = (t for pattern in a.shards for t in texts_from_shards(pattern))
    tok = train_tokenizer(texts, a.vocab_size, a.min_frequency)
    path = save_tokenizer(tok, a.out)
    print(f"wrote {path} (vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main()
