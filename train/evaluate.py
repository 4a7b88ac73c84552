"""Quick OCR evaluation: greedy generation on held-out pages, edit distance + word precision.

Metrics (paper section 4):
* normalized edit distance = Levenshtein(pred, ref) / max(len(pred), len(ref)) on characters
  (OmniDocBench style; 0 = exact, 1 = nothing right),
* word precision = |pred words ∩ ref words| (multiset) / |pred words| (Fox-style precision).

Pages come from webdataset shards in the contract format (a label kind's prompt + text); the
model is an exported checkpoint directory (``models.checkpoint.import_checkpoint``) and
decoding is ``models.generation.generate`` (greedy, KV cache, no-repeat n-gram processor).

CLI: ``python -m train.evaluate --model runs/demo/export --tokenizer runs/demo/tokenizer
--shards 'runs/demo/heldout/shards/*.tar' --pages 8 --mode tiny``
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from data_engine.metrics import levenshtein


def normalized_edit_distance(pred: str, ref: str) -> float:
    if not pred and not ref:
        return 0.0
    return levenshtein(pred, ref) / max(len(pred), len(ref))


def word_precision(pred: str, ref: str) -> float:
    """Fraction of predicted words found in the reference (counted with multiplicity)."""
    pw, rw = pred.split(), Counter(ref.split())
    if not pw:
        return 0.0
    return sum((Counter(pw) & rw).values()) / len(pw)


def heldout_pages(shards: str | list[str], n: int, label_kind: str = "coarse") -> list[dict]:
    """First ``n`` pages having ``label_kind``: dicts with key, image (PIL), prompt, text."""
    import glob

    from data_engine.shards import iter_samples

    urls = sorted(glob.glob(shards)) if isinstance(shards, str) else list(shards)
    if not urls:
        raise FileNotFoundError(f"no shards match {shards!r}")
    pages = []
    for s in iter_samples(urls):
        lab = s["meta"].get("labels", {}).get(label_kind)
        if isinstance(lab, dict) and lab.get("text"):
            pages.append({"key": s["key"], "image": s["image"], "prompt": lab["prompt"], "text": lab["text"]})
            if len(pages) == n:
                break
    if not pages:
        raise ValueError(f"no page with a {label_kind!r} label in {urls}")
    return pages


@torch.no_grad()
def ocr_pages(model, tokenizer, pages: Iterable[dict], mode: str = "tiny", max_new_tokens: int = 512,
              batch_size: int = 4, no_repeat_ngram: int = 20, window: int = 90) -> list[str]:
    """Greedy OCR of each page (``prompt`` + ``image``); returns the decoded texts."""
    from models.generation import NoRepeatNGramLogitsProcessor, generate
    from models.image_processing import preprocess_image

    device = next(model.parameters()).device
    pages = list(pages)
    procs = [NoRepeatNGramLogitsProcessor(no_repeat_ngram, max(window, no_repeat_ngram))] if no_repeat_ngram else []
    outs: list[str] = []
    for i in range(0, len(pages), batch_size):
        chunk = pages[i:i + batch_size]
        images = [preprocess_image(p["image"], mode) for p in chunk]
        ids = [tokenizer.encode_prompt(p["prompt"], [img]) for p, img in zip(chunk, images)]
        T = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), T), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(ids), T, dtype=torch.long)
        for r, x in enumerate(ids):  # left padding: the last position is real in every row
            input_ids[r, T - len(x):] = torch.tensor(x)
            mask[r, T - len(x):] = 1
        out = generate(model, input_ids.to(device), attention_mask=mask.to(device),
                       images=[img.to(device) for img in images], max_new_tokens=max_new_tokens,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       logits_processors=procs)
        for r in range(len(chunk)):
            outs.append(tokenizer.decode(out.sequences[r].tolist(), skip_special_tokens=True).strip())
    return outs


def score(preds: Sequence[str], refs: Sequence[str]) -> dict:
    rows = [{"edit_distance": normalized_edit_distance(p, r), "word_precision": word_precision(p, r)}
            for p, r in zip(preds, refs)]
    n = max(len(rows), 1)
    return {"pages": len(rows),
            "edit_distance": sum(x["edit_distance"] for x in rows) / n,
            "word_precision": sum(x["word_precision"] for x in rows) / n,
            "per_page": rows}


def evaluate(model_dir: str | Path, tokenizer_dir: str | Path, shards: str | list[str], *,
             pages: int = 8, mode: str = "tiny", label_kind: str = "coarse",
             max_new_tokens: int = 256, device: str = "cpu", out_file: str | Path | None = None) -> dict:
    """Load an exported checkpoint, OCR ``pages`` held-out pages, score them (and save JSON)."""
    from models.checkpoint import import_checkpoint
    from models.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    model = import_checkpoint(model_dir, device=device, dtype=torch.float32)
    data = heldout_pages(shards, pages, label_kind)
    preds = ocr_pages(model, tok, data, mode=mode, max_new_tokens=max_new_tokens)
    result = score(preds, [p["text"] for p in data])
    result.update(mode=mode, label_kind=label_kind, model_dir=str(model_dir),
                  samples=[{"key": p["key"], "ref": p["text"][:200], "pred": y[:200]}
                           for p, y in zip(data, preds)])
    if out_file:
        Path(out_file).parent.mkdir(parents=True, exist_ok=True)
        Path(out_file).write_text(json.dumps(result, ensure_ascii=False, indent=1))
    return result


def format_report(result: dict, examples: int = 2) -> str:
    lines = [f"evaluation: {result['pages']} held-out pages, mode {result.get('mode')}, "
             f"{result.get('label_kind')} labels",
             f"  normalized edit distance  {result['edit_distance']:.3f}   (0 = exact)",
             f"  word precision            {result['word_precision']:.3f}   (1 = every word right)"]
    for s in result.get("samples", [])[:examples]:
        lines.append(f"  [{s['key']}] ref:  {s['ref'][:90]!r}")
        lines.append(f"  {' ' * (len(s['key']) + 2)} pred: {s['pred'][:90]!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="exported checkpoint dir (config.json + safetensors)")
    ap.add_argument("--tokenizer", required=True, help="dir with tokenizer.json")
    ap.add_argument("--shards", required=True, help="held-out shard glob")
    ap.add_argument("--pages", type=int, default=8)
    ap.add_argument("--mode", default="tiny")
    ap.add_argument("--label-kind", default="coarse", choices=["coarse", "fine"])
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="write the full result as JSON here")
    a = ap.parse_args(argv)
    res = evaluate(a.model, a.tokenizer, a.shards, pages=a.pages, mode=a.mode, label_kind=a.label_kind,
                   max_new_tokens=a.max_new_tokens, device=a.device, out_file=a.out)
    print(format_report(res))


if __name__ == "__main__":
    main()
