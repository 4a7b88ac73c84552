"""Is a line of text plausible for its language's script? Per line, with a reason.

Used twice: to decide which text-layer lines may become seed labels (a garbled line must not
cost the page's good lines), and by acceptance to reject recognizer output in the wrong script.

Checks, in order (the first failing one is the reason):

* ``empty``: no letters or digits.
* ``bad_chars``: U+FFFD (glyph without a ToUnicode entry), private-use or control characters.
* ``wrong_script``: letters (and signs) outside the expected script; the common / inherited
  characters (digits, punctuation, ZWJ, ...) are allowed. Complex-shaping fonts often map
  glyphs such as Devanagari's reordered i-sign to IPA or Latin letters when the text layer is
  extracted: exactly what this catches.
* ``invalid_sequence``: a combining sign (Unicode categories Mn/Mc) that does not follow a
  letter of the script, e.g. a vowel sign at the start of a word, as happens when a reordered
  glyph is read back in visual order. In a script whose text layer does not round-trip
  (``ScriptInfo.exact`` false: complex shaping), also a symbol or number form glued to one of
  its letters (``·पुद``, ``¾नऑ``, ``×ख``): what a conjunct's glyph without a Unicode mapping
  comes back as (3 % of the characters of otherwise plausible Devanagari words were such
  stand-ins in the embedded default's text layer).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from data_engine.scripts import SCRIPTS, script_info
from data_engine.synthetic import _NAME_TO_SCRIPT

# Characters whose Unicode name starts with one of these words belong to no particular script.
_COMMON_CATEGORIES = ("N", "P", "S", "Z")
# Scripts sharing letters: the text of the key may contain letters of the values.
_SHARED = {"Jpan": {"Hans", "Jpan"}, "Hant": {"Hans"}, "Hani": {"Hans"}, "Hang": {"Hans"}}
# Names whose first word is not the script's (e.g. Devanagari's "VEDIC" signs are rare).
_EXTRA_WORDS = {"KANGXI": "Hans", "IDEOGRAPHIC": "Hans", "CJK": "Hans"}

EMPTY, BAD_CHARS, WRONG_SCRIPT, INVALID_SEQUENCE = "empty", "bad_chars", "wrong_script", "invalid_sequence"


@lru_cache(maxsize=4096)
def char_script(ch: str) -> str | None:
    """ISO 15924 code of a letter or sign; None for common characters (digits, punctuation, space)."""
    cat = unicodedata.category(ch)
    if cat.startswith(_COMMON_CATEGORIES) or ch in "\u200c\u200d":
        return None
    word = unicodedata.name(ch, "UNKNOWN").split(" ")[0]
    return _NAME_TO_SCRIPT.get(word) or _EXTRA_WORDS.get(word) or word.title()


def _stand_in(ch: str) -> bool:
    """A symbol, number form (½, ²) or Latin-1 punctuation sign (·, ¶): what an unmapped glyph
    of a complex script is extracted as; never part of one of its words."""
    cat = unicodedata.category(ch)
    return cat.startswith("S") or cat == "No" or (cat == "Po" and "\u00a1" <= ch <= "\u00bf")


def _is_bad(ch: str) -> bool:
    cat = unicodedata.category(ch)
    return ch == "\ufffd" or cat == "Co" or (cat == "Cc" and ch not in "\t")


@lru_cache(maxsize=64)
def _exact(script: str) -> bool:
    return script_info(script).exact if script in SCRIPTS else True


def line_problem(text: str, script: str) -> str | None:
    """None when ``text`` is plausible for ``script``, else the reason (see module docstring)."""
    text = unicodedata.normalize("NFC", text)
    if not any(unicodedata.category(c)[0] in "LN" for c in text):
        return EMPTY
    if any(_is_bad(c) for c in text):
        return BAD_CHARS
    allowed = {script} | _SHARED.get(script, set())
    shaped = not _exact(script)
    for i, ch in enumerate(text):
        s = char_script(ch)
        if s is not None and s not in allowed:
            return WRONG_SCRIPT
        prev = text[i - 1] if i else None
        if unicodedata.category(ch) in ("Mn", "Mc") and (prev is None or char_script(prev) not in allowed):
            return INVALID_SEQUENCE
        # a symbol inside a word (e.g. "×" where a conjunct's glyph had no Unicode mapping)
        nxt = text[i + 1] if i + 1 < len(text) else None
        if (unicodedata.category(ch).startswith("S") and prev and nxt
                and char_script(prev) in allowed and char_script(nxt) in allowed):
            return INVALID_SEQUENCE
        if shaped and _stand_in(ch) and any(c and char_script(c) in allowed for c in (prev, nxt)):
            return INVALID_SEQUENCE
    return None


GLYPH_CODE_POINTS = 6  # at most this many code points behind one garbled glyph (स्त्र: 5)


def text_layer_pattern(text_layer: str, script: str) -> list[str | None]:
    """A garbled text-layer line as a pattern: its intact characters (letters of ``script``,
    digits, punctuation) in order, None for each garbled glyph (U+FFFD, a private-use, stand-in
    or other-script character), which stands for 1 to ``GLYPH_CODE_POINTS`` code points of the
    true text; spaces are left out (MuPDF splits words at garbled glyphs)."""
    allowed = {script} | _SHARED.get(script, set()) | {None}
    return [ch if not _is_bad(ch) and not _stand_in(ch) and char_script(ch) in allowed else None
            for ch in unicodedata.normalize("NFC", text_layer) if not ch.isspace()]


def fits_text_layer(read: str, text_layer: str, script: str) -> bool:
    """Does a recognizer label fit the garbled text-layer text of the same line
    (``text_layer_pattern``)? A refused line's text layer is wrong only where it is garbled, so a
    label that drops or changes one of its intact characters is wrong."""
    import re

    regex = "".join(re.escape(c) if c is not None else f".{{1,{GLYPH_CODE_POINTS}}}"
                    for c in text_layer_pattern(text_layer, script))
    label = "".join(c for c in unicodedata.normalize("NFC", read) if not c.isspace())
    return re.fullmatch(regex, label, flags=re.DOTALL) is not None


# Presentation forms (Latin / Armenian / Hebrew ligatures U+FB00-U+FB4F, Arabic forms A U+FB50-U+FDFF
# and B U+FE70-U+FEFF): MuPDF extracts shaped Arabic as these (the glyph's form, e.g. U+FEFB for
# lam-alef); NFKC maps them to their base letters. Only these ranges: NFKC elsewhere would also
# change real text (superscripts, full-width forms, compatibility Han).
_PRESENTATION_FORMS = ((0xFB00, 0xFDFF), (0xFE70, 0xFEFF))


def base_text(text: str) -> str:
    """``text`` in base letters, NFC: what every label, truth and text-layer line is compared and
    trained as (presentation forms NFKC-normalised, ``_PRESENTATION_FORMS``; the rest NFC)."""
    if any(lo <= ord(c) <= hi for c in text for lo, hi in _PRESENTATION_FORMS):
        text = "".join(unicodedata.normalize("NFKC", c) if any(lo <= ord(c) <= hi for lo, hi in _PRESENTATION_FORMS)
                       else c for c in text)
    return unicodedata.normalize("NFC", text)


def script_share(text: str, script: str) -> float:
    """Fraction of the script-bearing characters of ``text`` that belong to ``script``."""
    allowed = {script} | _SHARED.get(script, set())
    scripts = [s for s in map(char_script, text) if s is not None]
    return sum(s in allowed for s in scripts) / len(scripts) if scripts else 0.0
