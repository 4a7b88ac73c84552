"""Offline language and script identification for page text.

Language: `py3langid` (a numpy port of Lui & Baldwin's langid.py, 2012). We pick it over
`lingua-language-detector` and fastText's lid.176 because its naive-Bayes model ships inside
the wheel (no download at run time, which the data engine forbids), it depends on numpy only,
it covers ~100 languages (close to the paper's ~100-language OCR 1.0 set) and it classifies a
2k-character page in well under a millisecond, which matters at 50+ pages/s per core. Its
labels mix ISO 639-1 and 639-3 codes; we map them to ISO 639-3 with `pycountry`.

py3langid 0.4's model (142 labels) also has regional and historical varieties that pull
modern text away from its language: Mandarin pages come out as Wu (`wuu`) or Cantonese,
polytonic Modern Greek as Ancient Greek (`grc`), Hebrew as Biblical Hebrew, code listings as
"no language" (`zxx`). The classifier is restricted to `LANGUAGES` (the modern written
languages of the model, ~130) and varieties are mapped to their ISO 639-3 macrolanguage
(`MACROLANGUAGE`: Chinese varieties -> `zho`, Arabic dialects -> `ara`, ...).

Script: letters are counted per writing system, not per Unicode script: Han joins kana
(Japanese, `Jpan`) or Hangul (Korean, `Kore`; Hangul alone `Hang`), as ISO 15924 defines those
composite codes, and then the largest writing system wins. Joining first matters: a Japanese
page quoting some English has more Latin letters than kana or Han alone.
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


# Model labels never returned: historical languages and "no language" (they attract modern
# text written with the same letters); the page gets the modern language or `und`.
EXCLUDED = frozenset({"grc", "hbo", "zxx"})
# Varieties -> ISO 639-3 macrolanguage, for labels the model has as separate classes.
MACROLANGUAGE = {"wuu": "zho", "yue": "zho", "zh": "zho", "ary": "ara", "arz": "ara", "ar": "ara",
                 "uzs": "uzb", "uz": "uzb", "gug": "grn", "fuv": "ful", "sdh": "kur", "gom": "kok",
                 "sr": "srp"}


@functools.lru_cache(maxsize=1)
def _identifier():
    # Loaded lazily once per process (each worker pays ~0.2 s once, never per page).
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ident.set_languages(sorted(set(ident.nb_classes) - EXCLUDED))
    return ident


def languages() -> list[str]:
    """ISO 639-3 codes the identifier can return (after macrolanguage mapping)."""
    return sorted({to_iso639_3(MACROLANGUAGE.get(c, c)) for c in _identifier().nb_classes})


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
    return to_iso639_3(MACROLANGUAGE.get(code, code)), prob


def script_histogram(text: str) -> Counter:
    """Counts of ISO 15924 scripts over the letters of (a prefix of) `text`."""
    counts: Counter = Counter()
    # Count characters in C first, then look up each distinct character once (~100 per page).
    for ch, n in Counter(text[:MAX_CHARS]).items():
        sc = _char_script(ch)
        if sc not in _IGNORED_SCRIPTS:
            counts[sc] += n
    return counts


def writing_systems(counts: Counter) -> Counter:
    """Script histogram -> writing-system histogram: Han joins kana (Jpan) or Hangul (Kore)."""
    ws = Counter({k: v for k, v in counts.items() if k not in ("Hani", "Hira", "Kana", "Hang")})
    han, kana, hangul = counts["Hani"], counts["Hira"] + counts["Kana"], counts["Hang"]
    if kana:  # Japanese mixes Han and kana; kana alone is still Japanese
        ws["Jpan"] = han + kana + hangul
    elif hangul:
        ws["Kore" if han else "Hang"] = han + hangul
    elif han:
        ws["Hani"] = han
    return ws


def detect_script(text: str) -> str:
    """Dominant writing system (ISO 15924) of `text`'s letters (`Zyyy` when it has none)."""
    counts = writing_systems(script_histogram(text))
    if not counts:
        return NO_SCRIPT
    return counts.most_common(1)[0][0]
