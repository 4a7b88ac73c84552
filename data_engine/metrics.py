"""Text metrics shared by the engine report, the evaluation and the tests.

Character error rate (CER) = edit distance / reference length, on text normalised so that
layout-only differences (whitespace, line breaks, the HTML wrapping of table ground truth,
compatibility forms) do not count as errors.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

_TABLE_TAGS = re.compile(r"</?(?:table|thead|tbody|tr|td|th)\b[^>]*>")
_SPACE = re.compile(r"\s+")


def levenshtein_dp(a: Sequence, b: Sequence) -> int:
    """Edit distance (insert / delete / substitute, cost 1) by plain dynamic programming."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def levenshtein(a: Sequence, b: Sequence) -> int:
    """Edit distance; RapidFuzz's C implementation when installed (pages of thousands of chars)."""
    try:
        from rapidfuzz.distance import Levenshtein
    except ImportError:
        return levenshtein_dp(a, b)
    return Levenshtein.distance(a, b)


def normalize_for_cer(text: str) -> str:
    """NFKC, table tags and all whitespace removed: compares characters, not layout."""
    text = _TABLE_TAGS.sub("", text)
    return _SPACE.sub("", unicodedata.normalize("NFKC", text))


def cer_counts(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance, reference length) after normalisation: sum these over pages for a CER."""
    ref, hyp = normalize_for_cer(reference), normalize_for_cer(hypothesis)
    return levenshtein(ref, hyp), len(ref)


def corpus_cer(pairs) -> float | None:
    """CER over (reference, hypothesis) pairs: summed edit distances / summed reference lengths
    (None without reference characters)."""
    e = n = 0
    for ref, hyp in pairs:
        a, b = cer_counts(ref, hyp)
        e, n = e + a, n + b
    return e / n if n else None


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 for empty ones)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
