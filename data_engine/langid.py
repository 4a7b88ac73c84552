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
page quoting some English has more Latin letters than kana or Han alone. A Han character or a
Hangul/Ethiopic syllable then counts as several letters (`SCRIPT_WEIGHTS`), and a page whose
second writing system has a fifth of the weight is recorded as mixed (`mixed_scripts`).
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pycountry
from fontTools.unicodedata import script as _fonttools_script

# Characters looked at per page: enough for a stable decision, cheap at any page length.
MAX_CHARS = 2000
# langid's feature counting is a Python loop (~3 us/char): 500 chars from the middle of the page
# (away from running headers and page numbers) are a confident sample at ~1.5 ms.
LANG_CHARS = 500
UNDETERMINED = "und"
NO_SCRIPT = "Zyyy"  # ISO 15924 "Common": no letters at all
_IGNORED_SCRIPTS = {"Zyyy", "Zinh", "Zzzz"}


# fontTools bisects its range table on every call; a page asks about the same ~100-2,000
# distinct characters again and again (each worker keeps the answers).
_char_script = functools.cache(_fonttools_script)


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
    # set_languages leaves the feature table column-major (a column selection); a page's score
    # gathers ~300 of its rows, which row-major storage makes contiguous (same values, ~1.5x faster)
    ident.nb_ptc = np.ascontiguousarray(ident.nb_ptc)
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


# Letters of these writing systems carry about a word each (a Han character, a Hangul or
# Ethiopic syllable): counted with this weight against alphabets' single letters, so a Chinese
# page that quotes LaTeX code is not "Latin" because the code has more letters.
SCRIPT_WEIGHTS = {"Hani": 3.0, "Jpan": 3.0, "Kore": 3.0, "Hang": 2.0, "Ethi": 2.0, "Yiii": 3.0}
MIXED_SHARE = 0.2  # a second writing system with this weighted share makes the page mixed


def script_shares(text: str) -> dict[str, float]:
    """Weighted share of each writing system among `text`'s letters, largest first ({} without
    letters). Shares are rounded to 0.01."""
    counts = writing_systems(script_histogram(text))
    weighted = {k: v * SCRIPT_WEIGHTS.get(k, 1.0) for k, v in counts.items()}
    total = sum(weighted.values())
    if not total:
        return {}
    return {k: round(v / total, 2) for k, v in sorted(weighted.items(), key=lambda kv: -kv[1])}


def mixed_scripts(shares: dict[str, float]) -> dict[str, float] | None:
    """The shares of a mixed page (a second writing system >= `MIXED_SHARE`), else None."""
    return shares if len(shares) > 1 and list(shares.values())[1] >= MIXED_SHARE else None


_MEMBERS = {"Jpan": {"Hani", "Hira", "Kana", "Hang"}, "Kore": {"Hani", "Hang"}}


def text_of_script(text: str, ws: str) -> str:
    """The characters of `text` written in writing system `ws` (and whitespace): what the
    language of a mixed page is decided on (LaTeX code on a Chinese page is not its language)."""
    members = _MEMBERS.get(ws, {ws})
    keep = {ch for ch in set(text) if ch.isspace() or _char_script(ch) in members}
    return "".join(ch for ch in text if ch in keep)


def page_language_and_script(text: str, min_prob: float = 0.5) -> tuple[str, str, dict | None]:
    """(ISO 639-3 language, dominant writing system, shares when mixed else None) of a page."""
    shares = script_shares(text)
    script = next(iter(shares), NO_SCRIPT)
    mixed = mixed_scripts(shares)
    lang, _ = detect_language(text_of_script(text, script) if mixed else text, min_prob)
    return lang, script, mixed


def detect_script(text: str) -> str:
    """Dominant writing system (ISO 15924) of `text`'s letters by weighted share
    (`SCRIPT_WEIGHTS`; `Zyyy` when it has none)."""
    shares = script_shares(text)
    return next(iter(shares), NO_SCRIPT)
