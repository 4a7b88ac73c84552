"""The flywheel's default recognizer: PP-OCRv4 rec (``models/ppocr_rec.py``) fine-tuned with CTC on patch shards.

``train_ppocr(cfg)`` is a trainer of the project's stack: the ``Config`` schema (recipe
``conf/experiment/flywheel_ppocr.yaml``: optim, deepspeed, logging, train groups; ``data.shards``
the patch shards), one DeepSpeed engine (ZeRO-0 on one CPU process; data-parallel ranks read
disjoint slices), ``train.checkpoints`` (``train.resume=auto`` continues a killed run at
its exact data position and RNG state), ``metrics.jsonl`` + wandb (offline by default) through
``MetricsLogger``. It starts from the shipped ONNX weights (``model.init_from`` null) or a
previous round's export, and ends by exporting ``<train.out_dir>/model/`` (``model.safetensors``,
``charset.json``), which ``load_ppocr`` reads.

Text handling (one place: ``label_ids``):

* Labels are NFC code points: CTC emits one class per code point. A Devanagari conjunct (क्ष =
  क + ्  + ष) or a lam-alef ligature is one glyph but several classes; CTC emits them on
  consecutive frames (one frame is 8 px of a 48-px line, 3-4 per glyph), and the SVTR neck's
  global attention lets a frame see its neighbours, so a pre-base matra (ि, drawn left of its
  consonant, stored after it) is emitted in logical order. Arabic joining forms are one class
  per base letter (the contextual shapes are the model's business; presentation forms U+FExx
  never reach the labels, which are NFC base letters).
* Right-to-left lines (``canvas.is_rtl``) are mirrored before the model sees them, so CTC's
  left-to-right order is the logical order of the text and no bidi reordering is needed.
* The charset grows with each language's characters (every code point of the training labels
  plus the script's letters and marks, ``script_chars``): new output rows start from a
  look-alike's row (``LOOKALIKE``: Cyrillic/Greek letters that share a Latin glyph, NFKD base
  letters for accented ones), else from the mean row with a lowered bias (``PPOCRRec.extend_charset``).
* BatchNorm stays frozen (eval statistics) while fine-tuning: ``PPOCRRec.train``.
* The backbone stays frozen (``train.freeze_encoder``, the recipe's default): only the SVTR neck
  and the CTC head train, at a high lr (new output rows start far from their letters). A line's
  backbone features are then fixed, so they are computed once, without gradients, and kept
  (``BackboneFeatures``): a step after the first epoch costs the neck and head alone (~0.5 CPU-s
  for 16 lines instead of ~5).
* The CTC softmax of a line is restricted to its script's classes (``script_mask``, plus its
  label's characters), as reading restricts it: look-alike letters of other scripts (Latin o,
  Cyrillic о, Greek ο) and the 6,623 CJK classes take no probability mass to be unlearned.

Reading (``read_ppocr``): greedy CTC; the confidence is the mean log-probability of the emitted
characters (the scale of the acceptance threshold, ``accept.py``), with the minimum probability beside it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path

# oneDNN caches a compiled kernel set per input shape; line crops come in every width, and the
# cache grew a training run past 12 GB (OOM-killed) and a reading process by ~200 MB per width.
# Without the cache memory stays flat (~0.5 GB) and a forward pass is no slower on CPU.
# Read once, at oneDNN's first use: set before any convolution runs in this process.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "0")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from data_engine.flywheel.canvas import is_rtl  # noqa: E402
from data_engine.flywheel.trust import text_layer_pattern  # noqa: E402
from models.ppocr_rec import (PPOCRRec, PPOCRRecConfig, ctc_greedy, frame_pool, ppocr_rec_from_onnx,  # noqa: E402
                              preprocess)

from .ctc_constrained import decode_with_text_layer  # noqa: E402

log = logging.getLogger(__name__)

EXPORT_DIR = "model"
FRAME_PX = 8  # input pixels per CTC frame (PP-LCNetV3: /4, then avg-pool /2)
WIDTH_MULTIPLE = 64  # batch widths are padded to a multiple of this (models.ppocr_rec.preprocess)

# Cyrillic and Greek letters drawn like a Latin letter: their new output row starts as that letter's
_LOOKALIKE_PAIRS = ("аa еe оo рp сc уy хx ѕs іi јj ԁd ӏl АA ВB ЕE КK МM НH ОO РP СC ТT ХX ЅS ІI ЈJ "
                    "οo ιi κk νv ρp τt υu χx ΑA ΒB ΕE ΖZ ΗH ΙI ΚK ΜM ΝN ΟO ΡP ΤT ΥY ΧX")
LOOKALIKE = {pair[0]: pair[1] for pair in _LOOKALIKE_PAIRS.split()}


def script_chars(script: str) -> list[str]:
    """Letters and combining marks of a script's ranges (``data_engine.scripts``), NFC-stable ones only."""
    from data_engine.scripts import script_info

    out = []
    for lo, hi in script_info(script).ranges:
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            cat = unicodedata.category(ch)
            if (cat.startswith("L") and cat != "Lm" or cat.startswith("M")) and unicodedata.normalize("NFC", ch) == ch:
                out.append(ch)
    return out


def init_rows(chars: Sequence[str], charset: Sequence[str]) -> dict[str, str]:
    """For each new character, the existing character whose row it starts from (when there is one)."""
    have, out = set(charset), {}
    for c in chars:
        base = LOOKALIKE.get(c) or unicodedata.normalize("NFKD", c)[:1]
        if base != c and base in have:
            out[c] = base
    return out


def label_ids(text: str, index: dict[str, int]) -> list[int] | None:
    """CTC targets of a label (NFC code points, whitespace runs -> one space); None if a
    character is not in the charset."""
    text = " ".join(unicodedata.normalize("NFC", text).split())
    ids = [index.get(c) for c in text]
    return None if not ids or None in ids else ids


def _oriented(img, rtl: bool):
    from PIL import ImageOps

    img = img.convert("RGB")
    return ImageOps.mirror(img) if rtl else img


# ------------------------------------------------------------------------------------------ model io
def export_ppocr(model: PPOCRRec, out_dir: str | Path) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {} if model.cfg.shipped_blocks is None else {"shipped_blocks": str(model.cfg.shipped_blocks)}
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(out / "model.safetensors"),
              metadata=meta)
    (out / "charset.json").write_text(json.dumps(model.charset, ensure_ascii=False), encoding="utf-8")
    return out


def load_ppocr(model_dir: str | Path | None = None, device: str = "cpu") -> PPOCRRec:
    """An exported fine-tuned model (``export_ppocr``), or the shipped one when ``model_dir`` is None."""
    if model_dir is None:
        return ppocr_rec_from_onnx().to(device)
    from safetensors import safe_open
    from safetensors.torch import load_file

    d = Path(model_dir)
    if not (d / "model.safetensors").is_file() or not (d / "charset.json").is_file():
        raise FileNotFoundError(f"{d} is not an exported PP-OCR recognizer (model.safetensors + charset.json)")
    charset = json.loads((d / "charset.json").read_text(encoding="utf-8"))
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        shipped = (f.metadata() or {}).get("shipped_blocks")
    model = PPOCRRec(PPOCRRecConfig(num_classes=len(charset), charset=charset,
                                    shipped_blocks=int(shipped) if shipped is not None else None))
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    return model.to(device).eval()


def script_mask(charset: Sequence[str], script: str) -> torch.Tensor:
    """(V,) True for the classes a line of ``script`` may emit: the blank, the script's characters
    and common ones (digits, punctuation, space). Look-alikes of other scripts (Latin o, Cyrillic
    о, Greek ο) are the same glyph: only the line's known script tells them apart."""
    from data_engine.flywheel.trust import char_script

    return torch.tensor([i == 0 or char_script(c) in (None, script) for i, c in enumerate(charset)])


def filled_in_confidence(mean_logp: float, pattern: Sequence[str | None], text: str) -> float:
    """The confidence of a label decoded on its text layer: its mean log-probability per character
    times the share of its characters that fill in garbled glyphs (garbled glyphs / characters).
    The intact characters are the text layer's, so a line's errors come from its fill-ins: of the
    518 Devanagari pool lines decoded on their text layer in round 0 (CER 0.107), the half ranked
    first by this confidence had CER 0.068, by the mean log-probability alone 0.092
    (docs/flywheel.md)."""
    chars = sum(1 for c in text if not c.isspace())
    return mean_logp * sum(item is None for item in pattern) / max(1, chars)


@torch.no_grad()
def read_ppocr(model: PPOCRRec, crops: Sequence, *, rtl: Sequence[bool] | None = None,
               scripts: Sequence[str] | None = None, batch_size: int = 16,
               cached: bool = False, text_layers: Sequence[str | None] | None = None) -> list[tuple[str, float, float]]:
    """(text, mean log-prob of the emitted characters, min prob) per crop (PIL line images), in
    order; crops of similar width are batched together (less padding), as RapidOCR does.
    ``scripts``: each line's script; its output is restricted to that script (``script_mask``).
    ``cached``: the backbone's features come from (and go to) the process's feature cache
    (``BackboneFeatures``), as in training: the flywheel reads its gold, calibration and pool
    lines again every round with the same frozen backbone.
    ``text_layers``: per crop the garbled text-layer text of a refused line (or None): such a
    line is decoded on its text layer (``ctc_constrained``), the recognizer filling in only the
    garbled glyphs; its confidence is then ``filled_in_confidence`` and min prob 0."""
    rtl = list(rtl) if rtl is not None else [False] * len(crops)
    masks = {s: script_mask(model.charset, s) for s in set(scripts or ())}
    device = next(model.parameters()).device
    order = sorted(range(len(crops)), key=lambda i: crops[i].width / max(1, crops[i].height))
    out: list[tuple[str, float, float]] = [("", float("-inf"), 0.0)] * len(crops)
    was_training = model.training
    model.eval()
    features = BackboneFeatures(model.backbone, frozen_split(model)) if cached else None
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        if features is not None:
            x = features.batch([crop_key(crops[i], rtl[i]) for i in idx], [(crops[i], rtl[i]) for i in idx])
            logits = model.head(model.neck(features.rest(x.to(device))))  # (B, T, V)
        else:
            x = preprocess([_oriented(crops[i], rtl[i]) for i in idx], width_multiple=WIDTH_MULTIPLE).to(device)
            logits = model(x)  # (B, T, V)
        if scripts is not None:
            for j, i in enumerate(idx):
                logits[j, :, ~masks[scripts[i]].to(logits.device)] = float("-inf")
        logp = logits.float().log_softmax(-1)
        for j, (i, (text, _, pmin)) in enumerate(zip(idx, ctc_greedy(logits, model.charset))):
            best, cls = logp[j].max(-1)  # (T,)
            keep = (cls != 0) & torch.cat([torch.ones(1, dtype=torch.bool, device=cls.device), cls[1:] != cls[:-1]])
            conf = float(best[keep].mean()) if bool(keep.any()) else float("-inf")
            out[i] = (text, conf, pmin)
            if text_layers is not None and text_layers[i]:
                pattern = text_layer_pattern(text_layers[i], scripts[i] if scripts else "")
                fit = decode_with_text_layer(logp[j], model.charset, pattern)
                if fit is not None:
                    out[i] = (fit[0], filled_in_confidence(fit[1], pattern, fit[0]), 0.0)
    model.train(was_training)
    return out


@torch.no_grad()
def reference_ctc_nll(model: PPOCRRec, crops: Sequence, texts: Sequence[str], *, rtl: Sequence[bool] | None = None,
                      batch_size: int = 16) -> float | None:
    """Mean CTC loss per reference character of ``texts`` given ``crops`` (with blank crops: the
    image-blind control); lines the charset cannot write are left out (None if none is left)."""
    rtl = list(rtl) if rtl is not None else [False] * len(crops)
    index = {c: i for i, c in enumerate(model.charset)}
    rows = [(img, ids, r, "") for img, t, r in zip(crops, texts, rtl) if (ids := label_ids(t, index))]
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for s in range(0, len(rows), batch_size):
        x, targets, lengths = ctc_batch(rows[s:s + batch_size])
        logp = model(x).float().log_softmax(-1).transpose(0, 1)  # (T, B, V)
        frames = torch.full((x.shape[0],), logp.shape[0], dtype=torch.long)
        total += float(F.ctc_loss(logp, targets, frames, lengths, blank=0, reduction="sum", zero_infinity=True))
        count += int(lengths.sum())
    model.train(was_training)
    return total / count if count else None


# ------------------------------------------------------------------------------------------ data
class PatchLines:
    """Labelled line patches of patch shards in memory, served in seeded random order with an
    exact resume position (``state_dict``). Unusable patches (a block, no label, a character
    outside the charset, a label too long for the crop's CTC frames) are logged and skipped."""

    def __init__(self, shards: Sequence[str], *, rank: int = 0, world: int = 1, seed: int = 0):
        from data_engine.flywheel.patches import LINE, read_patch_shard

        self.items, self.keys, self.skipped = [], [], {}
        for shard in shards:
            try:
                patches = list(read_patch_shard(shard))
            except Exception as e:  # noqa: BLE001 - a damaged shard costs its patches, not the run
                log.error("skipping shard %s: %s: %s", shard, type(e).__name__, e)
                self.skipped["bad_shard"] = self.skipped.get("bad_shard", 0) + 1
                continue
            for p in patches:
                if p.kind != LINE or not p.text.strip() or p.image is None:
                    self._skip("not a labelled line", p.key)
                    continue
                self.items.append((p.image, p.text, is_rtl(p.script), p.script))
                self.keys.append(crop_key(p.image, is_rtl(p.script)))  # the feature cache's key
        self.items, self.keys = self.items[rank::world], self.keys[rank::world]
        self.seed, self.epoch, self.pos = seed, 0, 0
        self._order = self._perm()

    def _skip(self, why: str, key: str) -> None:
        if not self.skipped.get(why):
            log.warning("skipping patch %s: %s (further ones counted)", key, why)
        self.skipped[why] = self.skipped.get(why, 0) + 1

    def texts(self) -> list[str]:
        return [t for _, t, _, _ in self.items]

    def scripts(self) -> list[str]:
        return sorted({s for _, _, _, s in self.items})

    def keep_encodable(self, index: dict[str, int]) -> None:
        """Drop patches whose label the charset cannot write or whose crop has too few CTC frames."""
        kept, keys = [], []
        for (img, text, rtl, script), key in zip(self.items, self.keys):
            ids = label_ids(text, index)
            frames = max(320, 48 * img.width // max(1, img.height)) // FRAME_PX
            if ids is None:
                self._skip("character outside the charset", text[:20])
            elif len(ids) + sum(a == b for a, b in zip(ids, ids[1:])) > frames:  # a frame per label, one between repeats
                self._skip("label too long for the crop", text[:20])
            else:
                kept.append((img, ids, rtl, script))
                keys.append(key)
        self.items, self.keys = kept, keys
        self._order = self._perm()

    def _perm(self) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def next_keyed_batch(self, n: int) -> tuple[list[tuple], list[tuple]]:
        """The next ``n`` items in the seeded order, with their crops' keys (the feature cache's)."""
        if not self.items:
            raise ValueError("no usable labelled line patches in the training shards")
        keys = []
        while len(keys) < n:
            if self.pos >= len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._perm()
            keys.append(self._order[self.pos])
            self.pos += 1
        return [self.keys[k] for k in keys], [self.items[k] for k in keys]

    def next_batch(self, n: int) -> list[tuple]:
        return self.next_keyed_batch(n)[1]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._perm()


def ctc_batch(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (B, 3, 48, W), flat targets, target lengths) of ``PatchLines`` items."""
    x = preprocess([_oriented(img, rtl) for img, _, rtl, _ in batch], width_multiple=WIDTH_MULTIPLE)
    targets = torch.tensor([i for _, ids, _, _ in batch for i in ids], dtype=torch.long)
    lengths = torch.tensor([len(ids) for _, ids, _, _ in batch], dtype=torch.long)
    return x, targets, lengths


def ctc_loss(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor,
             allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Mean CTC loss per target character (blank = class 0) over logits (B, T, V); ``allowed``
    (B, 1, V): the softmax runs over these classes only (``line_masks``)."""
    logits = logits.float()
    if allowed is not None:  # finite: CTC's backward turns -inf log-probabilities into NaN gradients
        logits = logits.masked_fill(~allowed, -1.0e4)
    logp = logits.log_softmax(-1).transpose(0, 1)  # (T, B, V)
    frames = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long)
    return F.ctc_loss(logp, targets, frames, lengths, blank=0, reduction="mean", zero_infinity=True)


_FEATURES: dict = {"fingerprint": None, "cache": {}, "bytes": 0}  # this process's features of one frozen front
MAX_CACHED_BYTES = 3 * 1024 ** 3  # fp16 features kept (whole backbone: ~60 KB a line; 10-block front: ~0.5 MB); beyond it computed, not kept
MIN_SPLIT = 6  # the backbone's width is W/4 from block 6 on: a cached front must end there or later


def crop_key(img, rtl: bool) -> tuple:
    """A line crop's identity for the feature cache: its size, orientation and pixels' hash."""
    import hashlib

    return img.size, rtl, hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest()


def frozen_split(model: PPOCRRec, trained_tail: int = 0) -> int:
    """Backbone blocks whose weights are still the shipped ones: the model's own record
    (``cfg.shipped_blocks``, a fine-tuned tail) or all but ``trained_tail``, whichever is fewer."""
    n = len(model.backbone.blocks)
    if not 0 <= trained_tail <= n - MIN_SPLIT:
        raise ValueError(f"train.trained_tail_blocks={trained_tail}: 0 to {n - MIN_SPLIT} of PP-LCNetV3's {n} blocks")
    shipped = model.cfg.shipped_blocks if model.cfg.shipped_blocks is not None else n
    split = min(shipped, n - trained_tail)
    return split if split >= MIN_SPLIT else n  # a front no longer shipped: cache the whole backbone's output


class BackboneFeatures:
    """Features of the backbone's frozen front (stem + first ``split`` blocks) for ``PatchLines``
    items, computed once per line (no gradients) and kept in fp16. With the whole backbone frozen
    (``split`` = all 14 blocks) they are its pooled output, (480, 1, T) with T = the line's own CTC
    frames; with a trained tail, the front's output (C, H, 2T), which ``rest`` carries through
    the tail blocks and the pooling. A batch pads them with the front's response to padding (the
    gray 0 of ``preprocess``), which is what the rest sees beyond a short line's end when the whole
    model reads a batch.

    The cache lives as long as the process and is keyed by the crop's pixels (``crop_key``), for
    one front (a hash of its weights and the split): the flywheel's rounds keep the shipped front,
    so round k > 0 neither recomputes its training lines nor the gold and pool lines read before."""

    def __init__(self, backbone: torch.nn.Module, split: int | None = None):
        import hashlib

        n = len(backbone.blocks)
        self.split = n if split is None else split
        if not MIN_SPLIT <= self.split <= n:
            raise ValueError(f"BackboneFeatures split {self.split}: {MIN_SPLIT} to {n}")
        digest = hashlib.sha1(str(self.split).encode())
        front = [backbone.stem, backbone.stem_bn, *backbone.blocks[:self.split]]
        for t in (t for m in front for t in m.state_dict().values()):
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        if _FEATURES["fingerprint"] != digest.hexdigest():
            _FEATURES.update(fingerprint=digest.hexdigest(), cache={}, bytes=0)
        self.backbone, self.cache = backbone, _FEATURES["cache"]
        self.whole = self.split == n
        with torch.no_grad():
            blank = self.front(torch.zeros(1, 3, 48, 3 * WIDTH_MULTIPLE, device=next(backbone.parameters()).device))
            self.pad = blank[0, :, :, blank.shape[-1] // 2].clone()  # (C, H): a column well inside the padding

    def front(self, x: torch.Tensor) -> torch.Tensor:
        """What is cached: (B, 3, 48, W) -> (B, 480, 1, W/8) whole, else (B, C, H, W/4)."""
        f = self.backbone.front(x, self.split)
        return frame_pool(f) if self.whole else f

    def rest(self, feats: torch.Tensor) -> torch.Tensor:
        """Cached features -> the backbone's output (B, 480, 1, W/8)."""
        return feats if self.whole else self.backbone.rest(feats, self.split)

    @staticmethod
    def frames(img) -> int:
        return -(-max(320, -(-48 * img.width // max(1, img.height))) // FRAME_PX)

    @torch.no_grad()
    def batch(self, keys: Sequence, items: Sequence[tuple]) -> torch.Tensor:
        """(B, C, H, T') cached features of ``items`` ((image, ..., rtl, ...) as ``PatchLines``
        holds them, or (image, rtl)), kept under ``keys``."""
        found = {k: self.cache[k] for k in keys if k in self.cache}
        todo = [(k, it) for k, it in zip(keys, items) if k not in found]
        if todo:
            x = preprocess([_oriented(it[0], it[2] if len(it) > 2 else it[1]) for _, it in todo],
                           width_multiple=WIDTH_MULTIPLE)
            f = self.front(x.to(self.pad.device))
            per_frame = 1 if self.whole else 2  # the front's columns per CTC frame
            for j, (k, it) in enumerate(todo):
                found[k] = f[j, :, :, :per_frame * self.frames(it[0])].to(torch.float16).clone()
                size = found[k].numel() * 2
                if _FEATURES["bytes"] + size <= MAX_CACHED_BYTES:
                    self.cache[k] = found[k]
                    _FEATURES["bytes"] += size
        feats = [found[k] for k in keys]
        T = max(f.shape[-1] for f in feats)
        out = self.pad[None, :, :, None].expand(len(feats), -1, -1, T).clone()  # (B, C, H, T')
        for j, f in enumerate(feats):
            out[j, :, :, :f.shape[-1]] = f.float()
        return out


class NeckHead(torch.nn.Module):
    """The trained part of ``PPOCRRec`` when the backbone's front is frozen: cached features
    (``BackboneFeatures``) -> logits (B, T, V). With a trained tail its blocks are ``backbone.*``
    here (the optimizer gives them ``optim.encoder_lr_scale``)."""

    def __init__(self, model: PPOCRRec, split: int | None = None):
        super().__init__()
        split = len(model.backbone.blocks) if split is None else split
        self.backbone = torch.nn.Sequential(*model.backbone.blocks[split:])  # shared with ``model``
        self.neck, self.head = model.neck, model.head

    def forward(self, feats: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V), or (B, T, len(classes)) for the head's rows ``classes`` only."""
        if len(self.backbone):
            feats = frame_pool(self.backbone(feats))  # (B, 480, 1, T)
        h = self.neck(feats)  # (B, T, D)
        if classes is None:
            return self.head(h)
        return F.linear(h, self.head.weight[classes], self.head.bias[classes])


def batch_classes(allowed: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The classes any line of a batch may emit (``line_masks`` (B, 1, V), blank first), the
    masks over them and the targets renumbered into them. The CTC loss over these columns equals
    the masked loss over all V (a masked class has probability exp(-1e4) = 0 either way), at a
    fraction of the cost: the head and its softmax were ~2/3 of a step over the 6,600 classes."""
    classes = allowed.any(0).any(0).nonzero().squeeze(1)  # (V',) ascending: class 0 (blank) first
    index = torch.full((allowed.shape[-1],), -1, dtype=torch.long)
    index[classes] = torch.arange(len(classes))
    return classes, allowed[:, :, classes], index[targets]


def line_masks(batch: list[tuple], charset: Sequence[str], by_script: dict) -> torch.Tensor:
    """(B, 1, V) allowed classes per ``PatchLines`` item: its script's (``script_mask``) and its label's."""
    rows = []
    for _, ids, _, script in batch:
        if script not in by_script:
            by_script[script] = script_mask(charset, script)
        m = by_script[script].clone()
        m[torch.tensor(ids)] = True
        rows.append(m)
    return torch.stack(rows)[:, None, :]


# ------------------------------------------------------------------------------------------ trainer
def train_ppocr(cfg, on_step=None) -> dict:
    """Fine-tune (or resume) PP-OCRv4 rec on ``cfg.data.shards``; returns the trainer's summary
    (``export_dir``, ``steps``, ``final_loss``, ``losses``, ``charset_added``). ``on_step(step,
    model)``: called after every optimizer step (a benchmark's learning curve)."""
    from train.checkpoints import CKPT_DIRNAME, resume_if_requested, save_checkpoint
    from train.deepspeed_config import build_ds_config
    from train.distributed import init_distributed
    from train.lr_schedule import build_lr_scheduler
    from train.optimizer import build_optimizer, current_lrs
    from train.seeding import seed_everything
    from train.config import as_config
    from train.logging import MetricsLogger, library_prints, quiet_libraries

    cfg = as_config(cfg)
    quiet_libraries(cfg.logging.verbose)
    import deepspeed

    tcfg = cfg.train
    with library_prints(cfg.logging.verbose):
        rank, world, device = init_distributed(cfg)
        seed_everything(tcfg.seed)
        out_dir = Path(tcfg.out_dir)
        ckpt_dir = out_dir / CKPT_DIRNAME
        data = PatchLines(list(cfg.data.shards), rank=rank, world=world, seed=tcfg.seed)
        model = load_ppocr(cfg.model.init_from)
        # every rank extends the charset the same way: from all ranks' texts (same shards)
        all_texts = PatchLines(list(cfg.data.shards), seed=0).texts() if world > 1 else data.texts()
        wanted = [c for s in data.scripts() for c in script_chars(s)]
        wanted += sorted({c for t in all_texts for c in unicodedata.normalize("NFC", t) if not c.isspace()})
        added = model.extend_charset(wanted, init_rows(wanted, model.charset))
        data.keep_encodable({c: i for i, c in enumerate(model.charset)})
        model.to(device).train()
        # frozen backbone: the engine trains the neck and head on cached features (module docstring)
        features = None
        if tcfg.freeze_encoder:
            split = frozen_split(model, tcfg.trained_tail_blocks)
            model.backbone.requires_grad_(False).eval()
            model.backbone.blocks[split:].requires_grad_(True)
            model.cfg.shipped_blocks = split  # recorded in the export: its readers cache the same front
            features = BackboneFeatures(model.backbone, split)
        elif tcfg.trained_tail_blocks:
            raise ValueError("train.trained_tail_blocks needs train.freeze_encoder=true (the rest of the backbone frozen)")
        else:
            model.cfg.shipped_blocks = 0  # the whole model trains: no block stays the shipped one
        trained = NeckHead(model, features.split) if features else model
        ds_config = build_ds_config(cfg, world)
        accum = ds_config["gradient_accumulation_steps"]
        micro = ds_config["train_micro_batch_size_per_gpu"]
        optimizer = build_optimizer([(n, p) for n, p in trained.named_parameters() if p.requires_grad], cfg.optim)
        scheduler = build_lr_scheduler(optimizer, cfg.optim, tcfg.steps)
        engine, _, _, _ = deepspeed.initialize(model=trained, optimizer=optimizer, lr_scheduler=scheduler,
                                               config=ds_config)
        masks: dict = {}
    step, resumed = resume_if_requested(engine, tcfg, ckpt_dir, data)
    logger = MetricsLogger(cfg, out_dir, tcfg.steps, run_config=cfg, start_step=step)
    logger.info(f"flywheel ppocr: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
                f"{sum(p.numel() for p in trained.parameters() if p.requires_grad) / 1e6:.2f}M trained"
                + (f" (backbone frozen{'' if features.whole else f' up to block {features.split}'})" if features else "")
                + ", "
                f"{len(data.items)} line patches ({data.skipped or 'none'} skipped), charset {len(model.charset)} "
                f"(+{len(added)}), micro {micro} x accum {accum} x dp {world}, "
                f"ZeRO-{ds_config['zero_optimization']['stage']}"
                + (f", resumed at step {step} from {resumed}" if resumed else ""))
    losses = []
    while step < tcfg.steps:
        t0, cpu0 = time.perf_counter(), time.process_time()
        lrs = current_lrs(optimizer)
        loss_sum = 0.0
        for _ in range(accum):
            keys, batch = data.next_keyed_batch(micro)
            if features is not None:
                x = features.batch(keys, batch)
                targets = torch.tensor([i for _, ids, _, _ in batch for i in ids], dtype=torch.long)
                lengths = torch.tensor([len(ids) for _, ids, _, _ in batch], dtype=torch.long)
            else:
                x, targets, lengths = ctc_batch(batch)
            allowed = line_masks(batch, model.charset, masks)  # (B, 1, V)
            if features is not None:  # the head's rows of the classes some line of the batch may emit
                classes, allowed, targets = batch_classes(allowed, targets)
                logits = engine(x.to(device), classes.to(device))  # (B, T, V') with V' = len(classes)
            else:
                logits = engine(x.to(device))  # (B, T, V)
            loss = ctc_loss(logits, targets.to(device), lengths, allowed.to(device))
            engine.backward(loss)
            engine.step()
            loss_sum += float(loss.detach()) / accum
        step += 1
        losses.append(loss_sum)
        metrics = {"loss": loss_sum, **lrs, "step_time_s": time.perf_counter() - t0,
                   "step_cpu_s": time.process_time() - cpu0, "epoch": data.epoch}
        if features is not None:
            metrics["cached_lines"] = len(features.cache)
        gn = engine.get_global_grad_norm()
        if gn is not None:
            metrics["grad_norm"] = float(gn)
        logger.log(step, metrics)
        if on_step is not None:
            on_step(step, model)
        if (tcfg.save_every and step % tcfg.save_every == 0) or step == tcfg.steps:
            save_checkpoint(engine, ckpt_dir, step, {"data": data.state_dict()}, keep_last=tcfg.keep_last)
    export_dir = export_ppocr(model, out_dir / EXPORT_DIR) if rank == 0 else out_dir / EXPORT_DIR
    result = {"out_dir": str(out_dir), "export_dir": str(export_dir), "steps": step, "losses": losses,
              "final_loss": losses[-1] if losses else None, "charset_added": len(added),
              "patches": len(data.items), "skipped": data.skipped}
    logger.summary({"final_loss": result["final_loss"]})
    logger.close()
    return result


def ppocr_config(overrides: Sequence[str], *, shards: Sequence[str], out_dir: str | Path, steps: int, seed: int,
                 init_from: str | None = None, experiment: str = "flywheel_ppocr"):
    """The training config of one round (``train.api.compose`` of the recipe + the round's settings)."""
    from train.api import compose

    return compose(experiment, [*overrides, "data.shards=[" + ",".join(str(s) for s in shards) + "]",
                                f"train.out_dir={out_dir}", f"train.steps={steps}", f"train.seed={seed}",
                                f"model.init_from={init_from or 'null'}"])
