"""Held-out pages and greedy OCR of them (real or blank images), decoding length from the reference.

The token budget of a page is ``ceil(factor * reference tokens) + margin`` (capped by
``max_new_tokens`` and the model's positions): a good model stops at EOS long before it; a
model that falls into a loop is cut where a loop can be told from a long page, and nothing is
truncated because a fixed budget was too small for a long reference.

Decoding is ``models.generation.generate`` (greedy, KV cache, the paper's no-repeat n-gram
processor: n=20 over a 90-token window by default) for both stage-1 and DeepSeek-OCR models.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

BLANK_COLOR = (255, 255, 255)  # an empty white page of the same size: the image-blind control


@dataclass
class Page:
    key: str
    image: Image.Image
    lang: str
    script: str
    labels: dict  # kind -> {"prompt", "text", ("boxes")}
    meta: dict = field(default_factory=dict)


def shard_urls(shards: str | Sequence[str]) -> list[str]:
    """The shard files a glob (or a list of globs) names, sorted per glob; an error if none."""
    urls = sorted(glob.glob(shards)) if isinstance(shards, str) else [u for s in shards for u in sorted(glob.glob(s))]
    if not urls:
        raise FileNotFoundError(f"no shards match {shards!r}")
    return urls


def heldout_pages(shards: str | Sequence[str], n: int | None, label_kinds: Sequence[str] = ("coarse",)) -> list[Page]:
    """The first ``n`` pages (all when None) carrying at least one of ``label_kinds``."""
    from data_engine.shards import iter_samples

    urls = shard_urls(shards)
    pages: list[Page] = []
    for s in iter_samples(urls):
        labels = {k: v for k, v in s["meta"].get("labels", {}).items()
                  if k in label_kinds and isinstance(v, dict) and v.get("text")}
        if not labels:
            continue
        m = s["meta"]
        pages.append(Page(s["key"], s["image"], str(m.get("lang", "und")), str(m.get("script", "Zyyy")), labels,
                          {k: m[k] for k in ("source", "dpi", "doc_id") if k in m}))
        if n is not None and len(pages) == n:
            break
    if not pages:
        raise ValueError(f"no page with a {' or '.join(label_kinds)} label in {urls}")
    return pages


def plain_text(label: dict) -> str:
    """A label's page text without layout markup: a fine label's blocks joined, else its text."""
    from models.prompts import BLOCK_SEPARATOR

    boxes = label.get("boxes") or []
    return BLOCK_SEPARATOR.join(b["text"] for b in boxes) if boxes else label["text"]


def label_texts(shards: str | Sequence[str], label_kinds: Sequence[str], n: int | None = None) -> dict[str, list[str]]:
    """kind -> plain label texts (``plain_text``) of the first ``n`` samples of ``shards`` (all when
    None), read from the JSON members only: the training labels of the constant-output baseline."""
    import json

    import webdataset as wds

    urls = shard_urls(shards)
    out: dict[str, list[str]] = {k: [] for k in label_kinds}
    for i, s in enumerate(wds.WebDataset(urls, shardshuffle=False, empty_check=False).select(lambda x: "json" in x)):
        if n is not None and i == n:
            break
        labels = json.loads(s["json"]).get("labels", {})
        for k in label_kinds:
            if isinstance(labels.get(k), dict) and labels[k].get("text"):
                out[k].append(plain_text(labels[k]))
    return {k: v for k, v in out.items() if v}


def token_budget(ref_tokens: int, factor: float = 1.5, margin: int = 16, cap: int | None = None) -> int:
    b = math.ceil(factor * ref_tokens) + margin
    return max(1, min(b, cap) if cap else b)


def blank_like(image: Image.Image) -> Image.Image:
    return Image.new("RGB", image.size, BLANK_COLOR)


@torch.no_grad()
def ocr(model, tokenizer, items: Sequence[tuple[Image.Image, str, int]], mode: str, *, batch_size: int = 4,
        no_repeat_ngram: int = 20, window: int = 90, max_positions: int | None = None) -> list[dict]:
    """Greedy OCR of (image, prompt, budget) items. Returns per item: ``pred`` (decoded text),
    ``finished`` (EOS within the budget), ``new_tokens``, ``budget``, ``vision_tokens``
    (without newlines/separator, the paper's count). Items are batched by similar budgets."""
    from models.generation import NoRepeatNGramLogitsProcessor, generate
    from models.image_processing import preprocess_image

    device = next(model.parameters()).device
    procs = [NoRepeatNGramLogitsProcessor(no_repeat_ngram, max(window, no_repeat_ngram))] if no_repeat_ngram else []
    order = sorted(range(len(items)), key=lambda i: items[i][2])
    out: list[dict | None] = [None] * len(items)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        images = [preprocess_image(items[i][0], mode) for i in idx]
        ids = [tokenizer.encode_prompt(items[i][1], [img]) for i, img in zip(idx, images)]
        budgets = [items[i][2] for i in idx]
        if max_positions:
            budgets = [max(1, min(b, max_positions - len(x))) for b, x in zip(budgets, ids)]
        T = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), T), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(ids), T, dtype=torch.long)
        for r, x in enumerate(ids):  # left padding: the last position is real in every row
            input_ids[r, T - len(x):] = torch.tensor(x)
            mask[r, T - len(x):] = 1
        res = generate(model, input_ids.to(device), attention_mask=mask.to(device),
                       images=[img.to(device) for img in images], max_new_tokens=max(budgets),
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       logits_processors=procs)
        for r, i in enumerate(idx):
            seq = res.sequences[r, :budgets[r]].tolist()  # a row's own budget (the batch ran to the max)
            eos = tokenizer.eos_token_id
            finished = eos in seq
            n_new = seq.index(eos) + 1 if finished else len(seq)
            vt = images[r].content_tokens
            out[i] = {"pred": tokenizer.decode(seq[:n_new], skip_special_tokens=True).strip(),
                      "finished": finished, "new_tokens": n_new, "budget": budgets[r], "vision_tokens": vt}
    return out  # type: ignore[return-value]
