"""Per-page OCR metrics of the evaluation suite (pure functions; no model, no I/O).

* ``normalized_edit_distance``: Levenshtein / max(len(pred), len(ref)) on characters,
  OmniDocBench's page metric (0 = exact, 1 = nothing right).
* ``word_precision``: Fox's precision, predicted words found in the reference (multiset)
  over predicted words.
* CER: ``data_engine.metrics.cer_counts`` (edit distance over reference length after removing
  whitespace and NFKC), summed over pages. One edit-distance implementation for the whole
  project: ``data_engine.metrics.levenshtein`` (RapidFuzz when installed).
* word / first-letter hits in place (``data_engine.reading_metrics.word_hits``), summed over
  pages into word and first-letter accuracy; the reading verdict and its controls (wrong-page
  reference, constant output, chance) come from ``data_engine.reading_metrics.reading_scores``.
* ``repetition``: does an output end in a loop (the paper's repetition failure)? The tail of
  the text is periodic with >= 3 copies of a unit and the looping span is not in the reference.
* ``match_blocks``: grounded output vs fine-label blocks, matched by box IoU (OmniDocBench
  style per block type), with box IoU / recall / precision at IoU 0.5.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data_engine.metrics import box_iou, cer_counts, levenshtein
from data_engine.reading_metrics import word_hits

__all__ = [
    "normalized_edit_distance", "word_precision", "cer_counts", "Loop", "find_loop", "is_repetition",
    "length_ratio", "box_iou", "match_blocks", "page_scores",
]


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


# ------------------------------------------------------------------------------ loops


@dataclass(frozen=True)
class Loop:
    unit: str  # the repeated text
    repeats: float  # copies of the unit in the looping tail (>= min_repeats)
    span: int  # characters of the looping tail


def find_loop(text: str, *, max_period: int = 256, min_repeats: int = 3, min_span: int = 12) -> Loop | None:
    """The longest periodic tail of ``text``: a unit (period 1..max_period) repeated at least
    ``min_repeats`` times covering at least ``min_span`` characters; None if there is none.

    For each period p, the tail run where text[i] == text[i - p] has length m; the tail is
    then periodic over m + p characters ((m + p) / p copies). Vectorised per period.
    """
    n = len(text)
    if n < min_span:
        return None
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    best: Loop | None = None
    for p in range(1, min(max_period, n // min_repeats) + 1):
        eq = codes[p:] == codes[:-p]  # eq[j] <=> text[j + p] == text[j]
        if not eq[-1]:
            continue
        breaks = np.flatnonzero(~eq)
        m = len(eq) - (int(breaks[-1]) + 1 if len(breaks) else 0)  # trailing run of equalities
        span = int(m + p)
        if span >= min_span and span / p >= min_repeats and (best is None or span > best.span):
            best = Loop(text[n - p:], span / p, span)
    return best


def is_repetition(pred: str, ref: str, **kw) -> bool:
    """``pred`` ends in a loop that the reference does not contain (a real repeated row of
    the reference, e.g. a dotted leader, is not a failure)."""
    loop = find_loop(pred, **kw)
    return loop is not None and pred[len(pred) - loop.span:] not in ref


def length_ratio(pred: str, ref: str) -> float:
    """Characters out / characters in the reference (whitespace ignored); 0 for an empty
    reference with an empty output."""
    p, r = len("".join(pred.split())), len("".join(ref.split()))
    return p / r if r else float(p > 0)


# ------------------------------------------------------------------------------ blocks


def match_blocks(pred: Sequence[tuple[str, Sequence[int], str]],
                 ref: Sequence[dict], iou_hit: float = 0.5) -> dict:
    """Match predicted blocks (``models.prompts.parse_grounded_output``) to reference blocks
    (fine-label ``boxes``: {label, bbox, text}) greedily by IoU (highest first, IoU > 0).

    Per reference block: its type, the NED of the matched prediction's text (1.0 when
    unmatched: OmniDocBench scores a missed block as fully wrong), the IoU (0 unmatched), and
    whether the predicted label agrees. Box precision counts predictions matched at ``iou_hit``.
    """
    pairs = sorted(((box_iou(p[1], r["bbox"]), i, j) for i, p in enumerate(pred) for j, r in enumerate(ref)),
                   reverse=True)
    used_p: set[int] = set()
    match: dict[int, tuple[int, float]] = {}
    for iou, i, j in pairs:
        if iou <= 0:
            break
        if i in used_p or j in match:
            continue
        used_p.add(i)
        match[j] = (i, iou)
    blocks = []
    for j, r in enumerate(ref):
        i, iou = match.get(j, (None, 0.0))
        text = pred[i][2] if i is not None else ""
        blocks.append({"type": r["label"], "ned": normalized_edit_distance(text, r["text"]), "iou": iou,
                       "label_ok": i is not None and pred[i][0] == r["label"]})
    hits = sum(b["iou"] >= iou_hit for b in blocks)
    return {"blocks": blocks, "pred_blocks": len(pred), "ref_blocks": len(ref), "hits": hits}


def page_scores(pred: str, ref: str) -> dict:
    """Every per-page text metric of one prediction (aggregated by ``train.eval.report``)."""
    edits, ref_len = cer_counts(ref, pred)
    words_right, first_right, ref_words = word_hits(pred, ref)
    return {"ned": normalized_edit_distance(pred, ref), "precision": word_precision(pred, ref),
            "cer_edits": edits, "cer_len": ref_len, "words_right": words_right, "first_letters_right": first_right,
            "ref_words": ref_words, "repetition": is_repetition(pred, ref), "length_ratio": length_ratio(pred, ref)}
