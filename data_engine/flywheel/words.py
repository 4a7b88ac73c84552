"""Real words of a language for the generated flywheel corpus, split into training and held-out words.

The words come from ``wordfreq`` (3.1.1: frequency lists of ~40 languages, among them hi, ar,
fa, ur, bn, ta, ru, el, he), which ships them inside the wheel: no download at run time, and
the project holds no copied text. A language's list is its ``size`` most frequent words,
kept only when every character is a letter or sign of the page's script (digits, apostrophes,
words in another script and modifier letters such as the Arabic tatweel U+0640 are dropped),
NFC-normalised. Lines draw these words uniformly, so the pages have the language's real
letter sequences, clusters (conjuncts, lam-alef) and word lengths, not its word frequencies.

The split is by the word itself (``held_out``: CRC-32 of the word, one in ``HELD_OUT_EVERY``),
so it is the same in every run and every list size: training, pool and seen-word gold pages
use the other words, the ``gold_unseen`` pages only held-out ones, and their CER is the
recognizer's reading of words it never saw.

A language wordfreq does not have (or whose list holds fewer than ``MIN_WORDS`` words of the
script) gets None: the corpus then falls back to pseudo-words (``linepages.lexicon``).
"""

from __future__ import annotations

import unicodedata
import zlib
from functools import lru_cache

from data_engine.flywheel.trust import char_script

HELD_OUT_EVERY = 8  # one word in 8 is held out of training (the unseen-word gold draws from them)
MIN_WORDS = 100  # fewer real words of the script than this: pseudo-words instead


def held_out(word: str) -> bool:
    """Is ``word`` one of the words no training page may hold (deterministic)?"""
    return zlib.crc32(word.encode("utf-8")) % HELD_OUT_EVERY == 0


def wordfreq_code(lang: str) -> str | None:
    """The wordfreq language of an ISO 639-3 code (``hin`` -> ``hi``, ``arb`` -> ``ar``), or None
    (wordfreq would otherwise answer an unknown language with its nearest match, English)."""
    try:
        import langcodes
        import wordfreq
    except ImportError:
        return None
    code = langcodes.standardize_tag(lang, macro=True)
    return code if code in wordfreq.available_languages() else None


def _of_script(word: str, script: str) -> bool:
    if not word or any(unicodedata.category(c)[0] not in "LM" for c in word):
        return False
    if any(unicodedata.category(c) == "Lm" for c in word):  # tatweel and other spacing modifiers
        return False
    return all(char_script(c) == script for c in word)


def _final_sigma(word: str) -> str:
    """wordfreq folds the Greek final sigma into σ (``τησ``): written text has ς at a word's end."""
    return word[:-1] + "ς" if word.endswith("σ") else word


@lru_cache(maxsize=None)
def real_words(lang: str, script: str, size: int) -> tuple[str, ...] | None:
    """The ``size`` most frequent wordfreq words of ``lang`` written in ``script`` (frequency
    order), or None when wordfreq has too few of them (see module doc)."""
    code = wordfreq_code(lang)
    if code is None:
        return None
    import wordfreq

    out, seen = [], set()
    for w in wordfreq.top_n_list(code, 4 * size):
        w = unicodedata.normalize("NFC", w)
        if script == "Grek":
            w = _final_sigma(w)
        if w not in seen and _of_script(w, script):
            seen.add(w)
            out.append(w)
            if len(out) == size:
                break
    return tuple(out) if len(out) >= min(MIN_WORDS, size) else None
