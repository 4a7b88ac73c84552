"""The flywheel's recognizer: the project's own DeepSeek-OCR, trained and run on line patches.

Training is ``train.api.train`` on a recipe (default ``conf/experiment/flywheel_recognizer.yaml``:
the tiny-wide preset, stage 2 on one process) with the round's patch shards as data, in the
resolution mode ``flywheel.recognizer.mode`` (default ``micro``, 256 px) that the patch canvases
are drawn for; the paper's size is the same recipe with ``model.preset=deepseek-ocr`` on GPUs.
The trainer checkpoints and resumes on its own (``train.resume=auto``), so a killed round continues its training where it stopped.

Labelling is batched greedy decoding (``models.generation.generate``: KV cache, left padding,
no-repeat n-gram processor) with a confidence per patch: the mean log-probability of the
emitted tokens (end-of-sequence included) under the model's raw distribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from data_engine.flywheel.patches import BLOCK, LINE, PROMPT, patch_canvas


def recognizer_config(experiment: str, overrides: Sequence[str], *, shards: Sequence[str], tokenizer: str,
                      out_dir: str | Path, steps: int, seed: int, init_from: str | None = None,
                      mode: str = "micro"):
    """The training config of one round (``train.api.compose`` + the round's settings); the
    recognizer trains in ``mode`` only (the canvases are drawn at its side)."""
    from train.api import compose

    shard_list = "[" + ",".join(str(s) for s in shards) + "]"
    cfg = compose(experiment, [
        *overrides,
        f"data.shards={shard_list}", f"model.tokenizer={tokenizer}", f"train.out_dir={out_dir}",
        f"train.steps={steps}", f"train.seed={seed}", f"model.init_from={init_from or 'null'}",
    ])
    cfg.data.mode_weights = {mode: 1.0}  # replaces the default as a whole
    return cfg


def canvas_side(mode: str) -> int:
    """The side of the patch canvases for a recognizer reading in ``mode`` (its base size)."""
    from models.config import get_mode

    m = get_mode(mode)
    if m.tiled:
        raise ValueError(f"the recognizer reads one square view; {mode!r} is a tiled (Gundam) mode")
    return m.base_size


def train_recognizer(cfg) -> dict:
    """Train (or resume) one round's recognizer; returns the trainer's result (``export_dir``)."""
    from train.api import train

    return train(cfg)


def load_recognizer(model_dir: str | Path, tokenizer_dir: str | Path, device: str = "cpu"):
    from models.checkpoint import import_checkpoint
    from models.tokenizer import load_tokenizer

    return import_checkpoint(model_dir, device=device, dtype=torch.float32), load_tokenizer(tokenizer_dir)


class _TokenLogProbs:
    """A pass-through logits processor recording the log-probability of each emitted token."""

    def __init__(self):
        self.prev: torch.Tensor | None = None  # (B, V) log-probs of the last step
        self.chosen: list[torch.Tensor] = []  # per step (B,)

    def __call__(self, generated: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:
            self.chosen.append(self.prev.gather(1, generated[:, -1:])[:, 0])
        self.prev = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, n_new) log-probs aligned with ``sequences``."""
        if self.prev is not None:
            self.chosen.append(self.prev.gather(1, sequences[:, -1:])[:, 0])
        return torch.stack(self.chosen, dim=1)


def _tidy(text: str, kind: str) -> str:
    """Whitespace runs -> one space; a block keeps its (non-empty) lines."""
    if kind == BLOCK:
        return "\n".join(" ".join(line.split()) for line in text.split("\n") if line.strip())
    return " ".join(text.split())


def _patch_images(crops: Sequence, kinds: Sequence[str], mode: str, stretch: float, rtl: Sequence[bool]) -> list:
    """Each crop on its canvas (``patch_canvas``: the side of ``mode``), preprocessed for ``mode``."""
    from models.image_processing import preprocess_image

    side = canvas_side(mode)
    return [preprocess_image(patch_canvas(c, side, kind=k, stretch=stretch, rtl=r), mode)
            for c, k, r in zip(crops, kinds, rtl)]


@torch.no_grad()
def read_patches(model, tokenizer, crops: Sequence, *, batch_size: int = 16, max_new_tokens: int = 48,
                 no_repeat_ngram: int = 8, window: int = 48, mode: str = "micro", stretch: float = 1.0,
                 kinds: Sequence[str] | None = None,
                 rtl: Sequence[bool] | None = None) -> list[tuple[str, float, bool]]:
    """(text, confidence, finished) per crop (PIL images of lines, or of blocks where ``kinds``
    says so; ``rtl``: lines of right-to-left scripts), in order, ``batch_size`` at a time."""
    from models.generation import NoRepeatNGramLogitsProcessor, generate

    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    kinds = list(kinds) if kinds is not None else [LINE] * len(crops)
    rtl = list(rtl) if rtl is not None else [False] * len(crops)
    out: list[tuple[str, float, bool]] = []
    for i in range(0, len(crops), batch_size):
        chunk = crops[i:i + batch_size]
        images = _patch_images(chunk, kinds[i:i + batch_size], mode, stretch, rtl[i:i + batch_size])
        ids = [tokenizer.encode_prompt(PROMPT, [img]) for img in images]
        T = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), T), pad, dtype=torch.long)
        mask = torch.zeros(len(ids), T, dtype=torch.long)
        for r, x in enumerate(ids):  # left padding
            input_ids[r, T - len(x):] = torch.tensor(x)
            mask[r, T - len(x):] = 1
        rec = _TokenLogProbs()
        procs = [rec] + ([NoRepeatNGramLogitsProcessor(no_repeat_ngram, max(window, no_repeat_ngram))]
                         if no_repeat_ngram else [])
        res = generate(model, input_ids.to(device), attention_mask=mask.to(device),
                       images=[img.to(device) for img in images], max_new_tokens=max_new_tokens,
                       eos_token_id=eos, pad_token_id=pad, logits_processors=procs)
        logp = rec.finish(res.sequences)  # (B, n_new)
        for r in range(len(chunk)):
            seq = res.sequences[r].tolist()
            n = seq.index(eos) + 1 if eos in seq else len(seq)  # tokens up to and incl. EOS
            conf = float(logp[r, :n].mean()) if n else float("-inf")
            text = tokenizer.decode(seq[:n], skip_special_tokens=True)
            out.append((_tidy(text, kinds[i + r]), conf, bool(res.finished[r])))
    return out


@torch.no_grad()
def reference_nll(model, tokenizer, crops: Sequence, texts: Sequence[str], *, batch_size: int = 16,
                  mode: str = "micro", stretch: float = 1.0, kinds: Sequence[str] | None = None,
                  rtl: Sequence[bool] | None = None) -> float:
    """Mean teacher-forced cross-entropy (nats per token, EOS included) of the reference texts
    given the crops. With blank crops this is the image-blind control: a recognizer that reads
    has a clearly lower loss with the real crops, long before its greedy output is right."""
    from models.deepseek_ocr import causal_lm_loss

    device = next(model.parameters()).device
    kinds = list(kinds) if kinds is not None else [LINE] * len(crops)
    rtl = list(rtl) if rtl is not None else [False] * len(crops)
    total, count = 0.0, 0
    for i in range(0, len(crops), batch_size):
        images = _patch_images(crops[i:i + batch_size], kinds[i:i + batch_size], mode, stretch, rtl[i:i + batch_size])
        rows = []
        for img, text in zip(images, texts[i:i + batch_size]):
            prompt = tokenizer.encode_prompt(PROMPT, [img])
            target = tokenizer.encode(text) + [tokenizer.eos_token_id]
            rows.append((prompt + target, [-100] * len(prompt) + target))
        T = max(len(r[0]) for r in rows)
        ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), T), -100, dtype=torch.long)
        mask = torch.zeros(len(rows), T, dtype=torch.long)
        for r, (x, y) in enumerate(rows):  # right padding: positions stay 0.. per row
            ids[r, :len(x)], labels[r, :len(y)], mask[r, :len(x)] = torch.tensor(x), torch.tensor(y), 1
        out = model(ids.to(device), images=[img.to(device) for img in images], attention_mask=mask.to(device))
        n = int((labels[:, 1:] != -100).sum())
        total += float(causal_lm_loss(out.logits, labels.to(device))) * n
        count += n
    return total / max(count, 1)
