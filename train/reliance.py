"""Vision reliance: is the model reading the image, or only its language prior?

Every ``train.reliance.every`` optimizer steps both trainers compute the loss of a FIXED
held-out set of micro-batches twice: with their real images and with blank (white) pages in
their place, everything else (prompt, vision token count, labels) equal. Logged as

* ``reliance/loss_real``, ``reliance/loss_blank``: mean next-token loss over label tokens,
* ``reliance/gap`` = loss_blank - loss_real (nats per token): what the image is worth,
* ``reliance/ratio`` = loss_real / loss_blank (1.0 = image-blind).

A model that memorises the label distribution has gap ~ 0 however far its training loss
falls; a reading model has a large gap. When the relative gap stays below
``train.reliance.min_gap`` for ``patience`` consecutive measurements (after the first
``train.reliance.start`` steps), a warning says the run is image-blind.

Blank pages: every pixel becomes white (+1.0 after the mean = std = 0.5 normalisation), except
the mode's grey padding bars (Base / Large / Gundam global views keep their aspect: whole rows
or columns of the padding grey), which stay as they were, so the blank page has the real
page's size and padding. Tiles are never padded and become all white.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import torch

from models.image_processing import PAD_COLOR, ImageInput

log = logging.getLogger(__name__)

WHITE = 1.0  # normalised white: (255 / 127.5) - 1
_PAD = PAD_COLOR[0] / 127.5 - 1.0  # normalised padding grey


def blank_image(img: ImageInput) -> ImageInput:
    """The same view(s) as ``img`` with the page replaced by white (padding kept)."""

    g = img.global_view  # (3, S, S)
    grey = (g - _PAD).abs() < 1e-3
    bars = grey.all(dim=0).all(dim=0)[None, :] | grey.all(dim=0).all(dim=1)[:, None]  # (S, S)
    view = torch.where(bars, g, torch.full_like(g, WHITE))
    return dataclasses.replace(img, global_view=view, tiles=torch.full_like(img.tiles, WHITE))


def blank_batch(batch):
    """A ``PackedBatch`` whose images are blank pages (see ``blank_image``)."""
    return dataclasses.replace(batch, images=[blank_image(im) for im in batch.images])


def heldout_batches(rcfg, data_cfg, tokenizer, *, seq_len: int, micro_batch_size: int,
                    seed: int) -> list:
    """``rcfg.batches`` packed micro-batches of OCR pages (no text-only samples) from
    ``rcfg.shards`` (default ``data.shards``), built by the training loader itself so
    tokenisation, modes and packing equal training's. Every rank gets the same batches."""
    from .config import DataConfig, typed
    from .data import build_train_loader

    d = typed(data_cfg, DataConfig)
    d = dataclasses.replace(d, shards=list(rcfg.shards or d.shards), vision_shards=[], text_shards=[],
                            text_corpus=None, source_weights={"ocr": 1.0, "vision": 0.0, "text": 0.0},
                            num_workers=0, pack_buffer=1, seed=seed)
    loader = build_train_loader(d, tokenizer, seq_len=seq_len, micro_batch_size=micro_batch_size,
                                seed=seed, rank=0, world_size=1)
    it = iter(loader)
    return [next(it) for _ in range(rcfg.batches)]


class VisionReliance:
    """Measures and logs vision reliance (``rcfg``: ``train.reliance``, train/config.py); ``loss_fn(batch) -> (loss_sum, n_tokens)`` runs the
    model (in eval mode, no grad) the way the trainer does (a DeepSpeed engine, a pipeline)."""

    def __init__(self, rcfg, batches: list,
                 loss_fn: Callable[[Any], tuple[float, int]], device=None) -> None:
        self.cfg, self.loss_fn = rcfg, loss_fn
        self.real = [b.to(device) if device is not None else b for b in batches]
        self.blank = [blank_batch(b) for b in self.real]
        self.blind_streak = 0
        self.history: list[dict[str, float]] = []

    def due(self, step: int, total: int) -> bool:
        e = self.cfg.every
        return e > 0 and (step % e == 0 or step == total)

    def _loss(self, batches) -> float:
        s, n = 0.0, 0
        for b in batches:
            ls, ln = self.loss_fn(b)
            s, n = s + ls, n + ln
        return s / max(n, 1)

    def measure(self, step: int) -> dict[str, float]:
        real, blank = self._loss(self.real), self._loss(self.blank)
        m = {"reliance/loss_real": real, "reliance/loss_blank": blank,
             "reliance/gap": blank - real, "reliance/ratio": real / blank if blank > 0 else 1.0}
        self.history.append({"step": step, **m})
        rel_gap = 1.0 - m["reliance/ratio"]
        self.blind_streak = self.blind_streak + 1 if rel_gap < self.cfg.min_gap else 0
        if step >= self.cfg.start and self.blind_streak == self.cfg.patience:
            log.warning(
                "vision reliance: held-out loss with real images %.4f vs blank images %.4f "
                "(ratio %.3f) for %d measurements: the model is not reading the image (it "
                "predicts the label text from its prior). See docs/training.md, 'Vision reliance'.",
                real, blank, m["reliance/ratio"], self.blind_streak)
        return m
