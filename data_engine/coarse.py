"""Coarse labels: the page's text layer in reading order, normalised, plus quality filters.

Paper section 3.4: OCR 1.0 coarse labels are "text extracted with fitz" from every page. We
take the text dict extracted once per page (see render.extract_text), join spans -> lines ->
blocks, normalise whitespace (NFC; one line per text line, a blank line between blocks) and
decide whether the page is usable, returning a reason when it is not.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

# Skip reasons (also used as report keys).
NO_TEXT_LAYER = "no_text_layer"
GARBLED_TEXT = "garbled_text"
TOO_LITTLE_TEXT = "too_little_text"
TOO_MANY_TOKENS = "too_many_tokens"

_SPACES = re.compile(r"[^\S\n]+")  # any whitespace except newline
_BLANK_RUNS = re.compile(r"\n{3,}")


def normalize_text(text: str) -> str:
    """NFC, whitespace runs inside a line -> one space, lines stripped, <= 1 blank line in a row.

    Applied to labels and usable on any reference text, so tests compare like with like.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def text_from_dict(page_dict: dict) -> str:
    """Text of a `page.get_text("dict")` result: spans joined, one line per line, blocks split by a blank line."""
    blocks = []
    for block in page_dict.get("blocks", ()):
        if block.get("type", 0) != 0:  # image blocks carry no text
            continue
        lines = ["".join(span["text"] for span in line["spans"]) for line in block["lines"]]
        blocks.append("\n".join(lines))
    return normalize_text("\n\n".join(blocks))


def _is_bad_char(ch: str) -> bool:
    # U+FFFD: MuPDF's output for glyphs without a ToUnicode mapping. Private-use code points:
    # custom font encodings mapped nowhere meaningful. Control characters other than line
    # breaks/tabs: broken encodings. All three mean the text layer cannot be a label.
    if ch == "\ufffd":
        return True
    cat = unicodedata.category(ch)
    return cat == "Co" or (cat == "Cc" and ch not in "\n\t")


def _char_counts(text: str) -> tuple[int, int]:
    """(non-space chars, bad chars); Counter runs in C, the checks run once per distinct char."""
    non_space = bad = 0
    for ch, n in Counter(text).items():
        if not ch.isspace():
            non_space += n
            bad += n if _is_bad_char(ch) else 0
    return non_space, bad


def bad_char_ratio(text: str) -> float:
    non_space, bad = _char_counts(text)
    return bad / non_space if non_space else 0.0


def _is_wide(ch: str) -> bool:
    # Han, kana, Hangul and fullwidth forms: BPE vocabularies spend about one token per char.
    return unicodedata.east_asian_width(ch) in ("W", "F")


def estimate_tokens(text: str) -> int:
    """Cheap token estimate: 1 per wide (CJK) char + UTF-8 bytes / 4 for the rest.

    Byte-level BPE (DeepSeek's 129k vocabulary) averages ~4 bytes per token on English and
    ~2 Cyrillic/Greek letters (4 bytes) per token; CJK is ~1 char per token. It errs slightly
    high, which is the safe side for a max-length filter.
    """
    # Per distinct character (Counter runs in C). Wide characters outside the BMP (CJK
    # extension B+, emoji) take 4 UTF-8 bytes, not 3, so their real byte length is removed:
    # the estimate then never exceeds len(text), which CoarseFilter.too_many_tokens relies on.
    wide = wide_bytes = 0
    for ch, n in Counter(text).items():
        if _is_wide(ch):
            wide += n
            wide_bytes += n * len(ch.encode("utf-8"))
    other_bytes = len(text.encode("utf-8")) - wide_bytes
    return wide + math.ceil(other_bytes / 4)


@dataclass
class CoarseFilter:
    min_chars: int = 10            # non-space characters below which a page is "too little text"
    max_bad_char_ratio: float = 0.01
    max_tokens: int = 7168         # 8192 context - up to ~1000 vision tokens (Gundam) - prompt
    tokenizer: object | None = None  # optional: anything with .encode(text) -> ids

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is None:
            return estimate_tokens(text)
        ids = self.tokenizer.encode(text)
        return len(getattr(ids, "ids", ids))  # tokenizers.Encoding or a plain list

    def too_many_tokens(self, text: str) -> bool:
        # The estimate never exceeds len(text), so short texts skip it; a real tokenizer can
        # spend several byte tokens on one rare character, so it always runs.
        return (self.tokenizer is not None or len(text) > self.max_tokens) and self.count_tokens(text) > self.max_tokens

    def reason(self, text: str) -> str | None:
        """Why `text` cannot be a coarse label, or None when it can."""
        n_chars, n_bad = _char_counts(text)
        if n_chars == 0:
            return NO_TEXT_LAYER
        if n_bad / n_chars > self.max_bad_char_ratio:
            return GARBLED_TEXT
        if n_chars < self.min_chars:
            return TOO_LITTLE_TEXT
        if self.too_many_tokens(text):
            return TOO_MANY_TOKENS
        return None
