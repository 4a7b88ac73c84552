"""Offline language and script identification for page text.

Language: `py3langid` (a numpy port of Lui & Baldwin's langid.py, 2012). We pick it over
`lingua-language-detector` and fastText's lid.176 because its naive-Bayes model ships inside
the wheel (no download at run time, which the data engine forbids), it depends on numpy only,
it covers ~100 languages (close to the paper's ~100-language OCR 1.0 set) and it classifies a
2k-character page in well under a millisecond, which matters at 50+ pages/s per core. Its
labels mix ISO 639-1 and 639-3 codes; we map them to ISO 639-3 with `pycountry`.

Script: the majority Unicode script (ISO 15924, from `fontTools.unicodedata.script`, which
ships the UCD Scripts.txt table) among letters, ignoring Common/Inherited characters
(digits, punctuation). Han mixed with kana is reported as `Jpan`, Han mixed with Hangul as
`Kore`, as ISO 15924 defines those composite codes.
"""

from __future__ import annotations

import functools
from collections import Counter

import pycountry
from fontTools.unicodedata import script as _char_script

# Characters looked at per page: enough for a stable decision, cheap at any page length.
MAX_CHARS = 2000
# langid's feature counting is a Python loop (~3 us/char): 500 chars from the middle of the page
# (away from running headers and page numbers) are a confident sample at ~1.5 ms.
LANG_CHARS = 500
UNDETERMINED = "und"
NO_SCRIPT = "Zyyy"  # ISO 15924 "Common": no letters at all
_IGNORED_SCRIPTS = {"Zyyy", "Zinh", "Zzzz"}


@functools.cache
def to_iso639_3(code: str) -> str:
    """ISO 639-1/639-3 code -> ISO 639-3 (macrolanguage codes kept, e.g. 'zh' -> 'zho')."""
    code = code.lower()
    lang = pycountry.languages.get(alpha_2=code) if len(code) == 2 else pycountry.languages.get(alpha_3=code)
    return lang.alpha_3 if lang is not None else UNDETERMINED


@functools.lru_cache(maxsize=1)
def _identifier():
    # Loaded lazily once per process (each worker pays ~0.2 s once, never per page).
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str, min_prob: float = 0.5, min_chars: int = 20) -> tuple[str, float]:
    """Return (ISO 639-3 code, probability); `und` when too short or not confident."""
    start = max(0, len(text) // 2 - LANG_CHARS // 2)
    sample = text[start:start + LANG_CHARS]
    if len(sample) - sum(n for c, n in Counter(sample).items() if c.isspace()) < min_chars:
        return UNDETERMINED, 0.0
    code, prob = _identifier().classify(sample)
    prob = float(prob)
    if prob < min_prob:
        return UNDETERMINED, prob
    return to_iso639_3(code), prob


def script_histogram(text: str) -> Counter:
    """Counts of ISO 15924 scripts over the letters of (a prefix of) `text`."""
    counts: Counter = Counter()
    # Count characters in C first, then look up each distinct character once (~100 per page).
    for ch, n in Counter(text[:MAX_CHARS]).items():
        sc = _char_script(ch)
        if sc not in _IGNORED_SCRIPTS:
            counts[sc] += n
    return counts


def detect_script(text: str) -> str:
    """Dominant ISO 15924 script of `text` (`Zyyy` when it has no letters)."""
    counts = script_histogram(text)
    if not counts:
        return NO_SCRIPT
    top = counts.most_common(1)[0][0]
    han, kana, hangul = counts["Hani"], counts["Hira"] + counts["Kana"], counts["Hang"]
    if top in ("Hani", "Hira", "Kana") and kana:
        return "Jpan"  # Japanese mixes Han and kana; kana alone is still Japanese
    if top in ("Hani", "Hang") and hangul and han:
        return "Kore"
    return top
