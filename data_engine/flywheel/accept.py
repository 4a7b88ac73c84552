"""Acceptance filters for recognizer labels: each rejected patch gets one reason.

Checks, in order (the first failing one is the reason; the order puts cheap, certain
failures first):

* ``empty``: no letter or digit decoded.
* ``unfinished``: decoding hit ``max_new_tokens`` before the end-of-sequence token.
* ``repetition``: the output falls into a loop (a unit of 1..``max_unit`` characters repeated
  ``min_repeats`` or more times in a row covering at least ``loop_share`` of the text), the
  typical failure of autoregressive OCR on hard crops.
* ``bad_chars`` / ``wrong_script`` / ``invalid_sequence``: the text is not plausible for the
  page's script (``trust.line_problem``, per line of a block), e.g. Latin letters on a
  Devanagari page.
* ``text_layer_mismatch``: a refused text-layer line whose label does not fit its garbled text
  (``trust.fits_text_layer``: the intact letters in order, a few code points per garbled glyph).
* ``length_mismatch``: characters per box width (in box heights) outside the range seen on
  this language's seed patches (widened by ``length_slack``), or the defaults without seeds.
* ``low_confidence``: mean token log-probability below the language's threshold: calibrated
  per round on held-out seed lines (``calibrate``) where there are enough of them, else
  ``min_confidence``.

Calibration: the recognizer reads ``calibration_lines`` seed lines per language that it was not
trained on (whole documents held out, ``dataset.split_calibration``); the threshold is the lowest
confidence at which the labels at or above it (among those passing the other filters) have a CER
of at most ``target_cer``. A fixed threshold cannot serve every language and round: the same
``min_confidence`` accepted Latin labels at CER 0.175 and Devanagari labels at 0.78-0.86
(docs/flywheel.md), and training on those teaches the recognizer its own errors.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from data_engine.config import Schema, setting
from data_engine.flywheel.trust import fits_text_layer, line_problem
from data_engine.metrics import cer_counts

EMPTY, UNFINISHED, REPETITION = "empty", "unfinished", "repetition"
LENGTH_MISMATCH, LOW_CONFIDENCE, TEXT_LAYER_MISMATCH = "length_mismatch", "low_confidence", "text_layer_mismatch"


@dataclass
class AcceptConfig(Schema):
    """Settings of the filters (the ``flywheel.accept`` config group; one default per key)."""

    _key: ClassVar[str] = "flywheel.accept"

    min_confidence: float = -0.35     # mean log-prob per token (exp(-0.35) ~ 0.70 per token); used where not calibrated
    calibration_lines: int = setting(32, ge=0)  # seed lines per language held out (whole documents) to calibrate the threshold; 0: off
    target_cer: float = setting(0.10, gt=0, le=1)  # calibrated: accepted labels' CER aimed at on the held-out lines
    cer_bound_z: float = setting(1.0, ge=0)  # calibrated: the held-out CER's upper bound (this many standard errors) must reach target_cer; 0: the CER itself
    min_calibration: int = setting(8, ge=1)  # fewer held-out lines passing the other filters: min_confidence instead
    min_repeats: int = setting(4, ge=2)  # a loop: one unit repeated at least this often ...
    max_unit: int = setting(10, ge=1)  # ... a unit of up to this many characters ...
    loop_share: float = setting(0.5, gt=0, le=1)  # ... covering at least this share of the text
    length_slack: float = setting(1.5, ge=1)  # seed chars-per-height range widened to [lo / slack, hi * slack]
    default_chars_per_height: list[float] = setting([0.4, 4.0], ge=0)  # the range without seed patches

    def check(self) -> None:
        lo_hi = self.default_chars_per_height
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
            from data_engine.config import ConfigError

            raise ConfigError(f"flywheel.accept.default_chars_per_height must be [lo, hi], got {lo_hi}")


def loop_span(text: str, max_unit: int = 10, min_repeats: int = 4) -> int:
    """Length of the longest run of one unit (1..max_unit chars) repeated >= min_repeats times."""
    best, n = 0, len(text)
    for unit in range(1, max_unit + 1):
        i = 0
        while i + unit * min_repeats <= n:
            u, k = text[i:i + unit], 1
            while text[i + k * unit:i + (k + 1) * unit] == u:
                k += 1
            if k >= min_repeats and u.strip():
                best = max(best, k * unit)
                i += k * unit
            else:
                i += 1
    return best


def chars_per_height(text: str, bbox) -> float:
    """Visible characters per box height of width (a script's typical glyph aspect). A block's
    text (lines joined by newlines) is measured per line: its L lines share the box height
    (each h / L) and hold n / L characters each, hence the division by L squared."""
    w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
    n = sum(1 for c in text if not c.isspace() and unicodedata.category(c) not in ("Mn", "Mc"))
    n_lines = max(1, sum(1 for line in text.split("\n") if line.strip()))
    return n / max(w / max(h, 1e-6), 1e-6) / n_lines ** 2


def length_range(samples: Iterable[tuple[str, tuple]], slack: float) -> tuple[float, float] | None:
    """5th..95th percentile of chars_per_height over (text, bbox) seed samples, widened."""
    vals = sorted(chars_per_height(t, b) for t, b in samples if t.strip())
    if len(vals) < 5:
        return None
    lo, hi = vals[int(0.05 * (len(vals) - 1))], vals[int(0.95 * (len(vals) - 1))]
    return lo / slack, hi * slack


def cer_bound(counts: list[tuple[int, int]], z: float) -> float:
    """Upper confidence bound of the CER of lines with (edits, reference characters) ``counts``:
    the ratio estimate sum(e) / sum(n) plus ``z`` of its standard error over lines (the ratio
    estimator's: the spread of e_i - CER * n_i, lines drawn at random). ``z`` 0: the CER itself."""
    e_sum, n_sum, m = sum(e for e, _ in counts), sum(n for _, n in counts), len(counts)
    if not n_sum:
        return float("inf")
    cer = e_sum / n_sum
    if z <= 0 or m < 2:
        return cer
    var = sum((e - cer * n) ** 2 for e, n in counts) * m / (m - 1)
    return cer + z * var ** 0.5 / n_sum


def calibrate(rows: Iterable[tuple[float, str, str]], target_cer: float, min_lines: int, z: float = 0.0) -> dict:
    """The confidence threshold from held-out lines' (confidence, truth, read) that pass the
    other filters: the lowest confidence c such that the lines read at confidence >= c have a
    CER <= ``target_cer`` (at least 3 lines, so that one lucky line does not set it), or, with
    ``z`` > 0, a CER whose upper bound (``cer_bound``: ``z`` standard errors over the lines
    above c) is <= ``target_cer``: a few dozen calibration lines estimate the CER of the pool's
    labels at the threshold with an error of ~0.02, so a threshold at the target itself lets
    half the rounds' pool labels come out above it.
    ``status``: ``calibrated`` (``threshold`` = c), ``unreachable`` (no such c: accept nothing)
    or ``too_few`` (fewer than ``min_lines`` rows: the caller uses its fixed threshold)."""
    rows = sorted(rows, key=lambda r: -r[0])
    out = {"status": "too_few", "threshold": None, "lines": len(rows), "cer_at_threshold": None, "share": 0.0}
    if len(rows) < min_lines:
        return out
    out["status"] = "unreachable"
    counts = []
    for i, (conf, truth, read) in enumerate(rows):
        counts.append(cer_counts(truth, read))
        # lines of equal confidence are accepted together: only a boundary between two values counts
        last_of_tie = i + 1 == len(rows) or rows[i + 1][0] < conf
        if i >= 2 and last_of_tie and (bound := cer_bound(counts, z)) <= target_cer:
            out.update(status="calibrated", threshold=conf, cer_at_threshold=round(cer_bound(counts, 0.0), 4),
                       cer_bound=round(bound, 4), share=round((i + 1) / len(rows), 3))
    return out


def threshold_of(calibration: dict | None, fixed: float) -> float:
    """The confidence threshold a ``calibrate`` result sets: its threshold when calibrated,
    +inf (accept nothing) when unreachable, else (too few lines, or none) the ``fixed`` one."""
    status = (calibration or {}).get("status")
    if status == "calibrated":
        return calibration["threshold"]
    return float("inf") if status == "unreachable" else fixed


def judge(text: str, *, confidence: float, finished: bool, bbox, script: str, cfg: AcceptConfig,
          length_bounds: tuple[float, float] | None = None, min_confidence: float | None = None,
          text_layer: str | None = None) -> str | None:
    """None (accept) or the rejection reason of one recognizer label (``min_confidence``: the
    calibrated threshold, default ``cfg.min_confidence``; ``text_layer``: the garbled text-layer
    text of a refused line, which the label must fit)."""
    if not any(unicodedata.category(c)[0] in "LN" for c in text):
        return EMPTY
    if not finished:
        return UNFINISHED
    if loop_span(text, cfg.max_unit, cfg.min_repeats) >= cfg.loop_share * len(text.strip()):
        return REPETITION
    # per line: a block's newlines are line breaks, not control characters
    problem = next(filter(None, (line_problem(line, script) for line in text.split("\n") if line.strip())), None)
    if problem:
        return problem
    if text_layer and not fits_text_layer(text, text_layer, script):
        return TEXT_LAYER_MISMATCH
    lo, hi = length_bounds or cfg.default_chars_per_height
    if not lo <= chars_per_height(text, bbox) <= hi:
        return LENGTH_MISMATCH
    if confidence < (cfg.min_confidence if min_confidence is None else min_confidence):
        return LOW_CONFIDENCE
    return None
