"""Coarse labels: the page's text layer in reading order, normalised, plus quality filters.

Paper section 3.4: OCR 1.0 coarse labels are "text extracted with fitz" from every page. We
take the per-character dict extracted once per page (see render.extract_text), build each line
from its glyphs (`text_assembly`: word gaps, TeX spacing accents, right-to-left order), join
lines -> blocks, normalise whitespace (NFC; one line per text line, a blank line between
blocks) and decide whether the page is usable (`CoarseFilter.check`): text layers that are
single-byte mojibake (cp1251 Russian read as Latin-1) are repaired or rejected, and a few
unmapped glyphs (U+FFFD from a math delimiter) cost those glyphs, not the page.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from data_engine.layout.columns import split_interleaved
from data_engine.text_assembly import rawdict_lines

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


def _grid_rows(blocks: dict[int, list[tuple]]) -> tuple[set[int], dict[int, list[str]]]:
    """(ids of the blocks that form a grid, {block id: the rows emitted in its place}) for table cells MuPDF emits as
    one-row blocks: Excel/Word tables come out one block per cell, often column by column, or
    one block per row with a line per cell. Lines of single-row blocks that share a baseline
    are a row (cells left to right, one space apart), emitted where its first block was; two
such rows make a grid. Paragraphs
    (blocks of several rows) never take part, so text columns keep their order."""
    cells = []  # (baseline, x0, height, block id, text) of single-row blocks' lines
    for bid, lines in blocks.items():
        tops = [ln[0][3] for ln in lines]
        height = max(ln[0][3] - ln[0][1] for ln in lines) or 1.0
        if max(tops) - min(tops) <= 0.3 * height:
            cells += [(ln[0][3], ln[0][0], height, bid, ln[1]) for ln in lines if ln[1].strip()]
    cells.sort()
    rows, cur = [], []
    for c in cells:
        if cur and c[0] - cur[0][0] > 0.3 * min(c[2], cur[0][2]):
            rows.append(cur)
            cur = []
        cur.append(c)
    if cur:
        rows.append(cur)
    rows = [r for r in rows if len(r) >= 2]
    if len(rows) < 2:
        return set(), {}
    order = {bid: k for k, bid in enumerate(blocks)}
    at: dict[int, list[str]] = {}  # each row goes where its first block (content order) was
    for r in rows:
        first = min((c[3] for c in r), key=order.__getitem__)
        at.setdefault(first, []).append(" ".join(c[4] for c in sorted(r, key=lambda c: c[1])))
    return {c[3] for r in rows for c in r}, at


def _vertical_column(lines: list[tuple]) -> str | None:
    """The text of a block that is one column of vertical CJK writing (MuPDF makes every
    character its own line, one under the other), else None."""
    if len(lines) < 3 or any(len(t) > 2 or not t or not all(_is_wide(ch) for ch in t) for _, t in lines):
        return None
    width = max(b[2] - b[0] for b, _ in lines) or 1.0
    x_mid = (lines[0][0][0] + lines[0][0][2]) / 2
    for (a, _), (b, _) in zip(lines, lines[1:]):
        if b[1] < a[1] or abs((b[0] + b[2]) / 2 - x_mid) > 0.6 * width:
            return None
    return "".join(t for _, t in lines)


def text_from_dict(page_dict: dict) -> str:
    """Text of a `page.get_text("rawdict")` (or "dict") result: each line assembled from its
    glyphs (`text_assembly.line_text`), one line per line, blocks split by a blank line; table
    cells MuPDF emits as separate blocks are put back in rows (`_grid_rows`); a column of
    vertical CJK writing is one line (`_vertical_column`); a block whose lines alternate between
    side-by-side columns is read column by column (`layout.columns.split_interleaved`)."""
    for _ in rawdict_lines(page_dict):  # sets each line's "text"
        pass
    # a block whose lines alternate between side-by-side columns: one block per column (the
    # dict is changed in place, so the fine labels of the page read the same blocks)
    page_dict["blocks"] = split_interleaved(page_dict.get("blocks", []), page_dict.get("width", 612.0))
    blocks: dict[int, list[tuple]] = {}
    for block in page_dict["blocks"]:
        if block.get("type", 0) == 0 and block.get("lines"):
            blocks[id(block)] = [(ln["bbox"], ln["text"]) for ln in block.get("lines", ())]
    grid, rows = _grid_rows(blocks) if len(blocks) > 2 else (set(), {})
    out, prev_row = [], False
    for bid, lines in blocks.items():
        if bid in grid and bid not in rows:
            continue
        is_row = bid in grid
        if out:  # rows of one grid follow each other line by line; blocks are a blank line apart
            out.append("\n" if is_row and prev_row else "\n\n")
        if is_row:
            out.append("\n".join(rows[bid]))
        else:
            out.append(_vertical_column(lines) or "\n".join(ln[1] for ln in lines))
        prev_row = is_row
    return normalize_text("".join(out))


def page_text(page, sort: bool = False) -> tuple[str, dict]:
    """(coarse text, the per-character dict it came from) of a PyMuPDF page. The dict's spans
    also carry "text", so layout code can share it (one extraction per page)."""
    from data_engine.render import extract_text

    raw = extract_text(page, sort=sort)
    return text_from_dict(raw), raw


def _is_bad_char(ch: str) -> bool:
    # U+FFFD: MuPDF's output for glyphs without a ToUnicode mapping. Private-use code points:
    # custom font encodings mapped nowhere meaningful. Control characters other than line
    # breaks/tabs: broken encodings. None of them can be part of a label.
    if ch == "\ufffd":
        return True
    cat = unicodedata.category(ch)
    return cat == "Co" or (cat == "Cc" and ch not in "\n\t")


def _char_counts(counts: Counter) -> tuple[int, int]:
    """(non-space chars, bad chars) of a text's ``Counter``: Counter runs in C, the checks run
    once per distinct char."""
    non_space = bad = 0
    for ch, n in counts.items():
        if not ch.isspace():
            non_space += n
            bad += n if _is_bad_char(ch) else 0
    return non_space, bad


def bad_char_ratio(text: str) -> float:
    non_space, bad = _char_counts(Counter(text))
    return bad / non_space if non_space else 0.0


@dataclass
class Garble:
    """Bad characters of a text: how many, how many stand alone (one unmapped glyph between
    good ones: a math delimiter, a dingbat), and the most common ones for the report."""
    chars: int
    bad: int
    isolated: int
    examples: list

    @property
    def ratio(self) -> float:
        return self.bad / self.chars if self.chars else 0.0

    def detail(self) -> str:
        ex = ", ".join(f"U+{ord(c):04X} x{n}" for c, n in self.examples)
        return f"{self.bad}/{self.chars} bad chars ({self.ratio:.1%}, {self.isolated} isolated): {ex}"


def garble(text: str) -> Garble:
    counts = Counter(text)
    non_space, bad = _char_counts(counts)
    if not bad:
        return Garble(non_space, 0, 0, [])
    bad_chars = [ch for ch in counts if _is_bad_char(ch)]  # first-occurrence order, as Counter keeps it
    # a bad character with no bad neighbour (one regex pass instead of a loop over the text)
    cls = "[" + "".join(re.escape(ch) for ch in bad_chars) + "]"
    isolated = len(re.findall(f"(?<!{cls}){cls}(?!{cls})", text))
    examples = Counter({ch: counts[ch] for ch in bad_chars}).most_common(3)
    return Garble(non_space, bad, isolated, examples)


def strip_bad_chars(text: str) -> str:
    return normalize_text("".join(ch for ch in text if not _is_bad_char(ch)))


# Single-byte code pages whose text, decoded as Latin-1/cp1252, is the classic mojibake; each
# with the script its real text is in (repair is accepted only when that script results).
# cp874 (TIS-620): Thai TeX fonts without ToUnicode (lshort-thai) read as Latin-1.
# Several of them turn the same bytes into letters of their script (0xC0-0xFF are letters in
# cp1251, KOI8-R and cp1253 alike): `_best_codepage` then picks the reading that spells words.
_CODEPAGES = (("cp1251", "Cyrl"), ("koi8_r", "Cyrl"), ("cp1253", "Grek"), ("iso8859_7", "Grek"),
              ("cp1255", "Hebr"), ("cp1256", "Arab"), ("cp874", "Thai"))
# A run of Latin letters and Latin-1 symbols/letters (cp1251 "ч" is "÷", TIS-620 Thai letters
# start at 0xA1): the unit a partial repair decodes.
_LATIN1_RUN = re.compile("[A-Za-z\u00a1-\u00ff]{3,}")
MOJIBAKE_WORD_SHARE = 0.8  # Latin-1 (0xA1-0xFF) share of a run that makes it a mojibake word
MOJIBAKE_MIN_LETTERS = 20  # mojibake letters on a page below which nothing is decided


MOJIBAKE_FIXED = "mojibake repaired: "


def apply_repair(text: str, detail: str | None) -> str:
    """Apply to another text of the same page (e.g. its fine label) the repair that
    `CoarseFilter.check` made to its coarse text (named in `detail`)."""
    for step in (detail or "").split("; "):  # in the order check() applied them
        if step.startswith("dropped "):
            text = "".join(ch for ch in text if not _is_bad_char(ch))
        elif step.startswith(MOJIBAKE_FIXED + "Latin-1 -> "):
            text = redecode(text, step.rsplit(" ", 1)[1])
        elif step.startswith(MOJIBAKE_FIXED + "words Latin-1 -> "):
            text = redecode_words(text, step.rsplit(" ", 1)[1])
        elif step == MOJIBAKE_FIXED + "ftfy":
            import ftfy

            text = ftfy.fix_encoding(text)
    return text


def _redecode_map(text: str, codec: str) -> dict[str, str]:
    """Per distinct non-ASCII character: the character its cp1252 byte means in `codec`
    (characters outside cp1252 stay as they are; bytes `codec` leaves undefined give U+FFFD)."""
    out = {}
    for ch in set(text):
        if ord(ch) < 0x80:
            continue
        try:
            new = ch.encode("cp1252").decode(codec, errors="replace")
        except UnicodeEncodeError:
            new = ch
        # ISO 8859 code pages put C1 controls where cp1252 has quotes and dashes: keep those
        out[ch] = ch if unicodedata.category(new) == "Cc" else new
    return out


def redecode(text: str, codec: str) -> str:
    table = _redecode_map(text, codec)
    return "".join(table.get(ch, ch) for ch in text)


def _is_mojibake_word(word: str) -> bool:
    return sum("\u00a1" <= ch for ch in word) >= MOJIBAKE_WORD_SHARE * len(word)


_ANY_RUN = re.compile("[A-Za-z\u00a1-\u00ff]+")


def redecode_words(text: str, codec: str) -> str:
    """Re-decode only the mojibake words of `text` (a page that quotes Russian in English), and
    on their lines the short words made only of Latin-1 letters ("ïî", "è": Russian "по", "и")."""
    def line(ln: str) -> str:
        if not any(_is_mojibake_word(w) for w in _LATIN1_RUN.findall(ln)):
            return ln
        return _ANY_RUN.sub(lambda m: redecode(m.group(), codec) if (
            _is_mojibake_word(m.group()) if len(m.group()) >= 3 else all(ch >= "\u00a1" for ch in m.group()))
            else m.group(), ln)

    return "\n".join(line(ln) for ln in text.split("\n"))


# Final letter forms, which a real word has only at its end (Greek final sigma, Hebrew finals).
_FINAL_FORMS = set("\u03c2\u05da\u05dd\u05df\u05e3\u05e5")


def misread_words(words: list[str]) -> int:
    """How many of `words` no language spells so: a capital letter after a small one inside the
    word ("мзчбнЮ": Greek with accents read as cp1251; "щРН": Russian read as KOI8-R), or a
    final letter form before another letter ("έςξ": Russian read as cp1253)."""
    bad = 0
    for w in words:
        prev = ""
        for ch in w:
            if prev and ch.isalpha() and ((ch.isupper() and prev.islower()) or prev in _FINAL_FORMS):
                bad += 1
                break
            prev = ch if ch.isalpha() else ""
    return bad


CODEPAGE_SHARE = 0.9  # share of the mojibake characters a code page must turn into its script


def _best_codepage(chars: Counter, words: list[str] = ()) -> tuple[str | None, float]:
    """(code page, share) for mojibake characters `chars` (Latin-1 characters with counts) from
    the mojibake `words`, (None, 0.0) when no code page fits: of the code pages that turn more
    than `CODEPAGE_SHARE` of them into letters/marks of their script (one that leaves any
    undefined is out), the one whose reading of `words` has the fewest misread words
    (`misread_words`), then the largest share, then the first listed. Greek in a legacy 8-bit
    font is letters in cp1251 too, but misspelt there."""
    from fontTools.unicodedata import script as char_script

    total = sum(chars.values()) or 1
    ranked = []
    for k, (codec, script) in enumerate(_CODEPAGES):
        table = _redecode_map("".join(chars), codec)
        if any(v == "\ufffd" for v in table.values()):
            continue
        share = sum(n for ch, n in chars.items() if char_script(table[ch]) == script) / total
        if share > CODEPAGE_SHARE:
            misread = misread_words(["".join(table.get(ch, ch) for ch in w) for w in words])
            ranked.append((misread, -share, k, codec))
    if not ranked:
        return None, 0.0
    misread, neg_share, _, codec = min(ranked)
    return codec, -neg_share


def repair_mojibake(text: str, min_share: float = 0.5) -> tuple[str | None, str | None]:
    """(repaired text, how) for a text layer that is a single-byte code page read as Latin-1,
    (None, why) when it is such mojibake but no code page repairs it, (text, None) when clean.

    No living language writes more than ~20% of its letters with Latin-1's accented block
    (Vietnamese comes closest), and none writes whole words of them; cp1251 Russian read as
    Latin-1 ("Íå î÷åíü") is ~95%, in every word. Mojibake words are runs of >= 3 letters with at
    least `MOJIBAKE_WORD_SHARE` of them in 0xA1-0xFF; once a page has `MOJIBAKE_MIN_LETTERS` of
    them, the code page that turns > 90% of their characters into its script repairs them:
    the whole text when they are over `min_share` of its letters, else those words only (an
    English page quoting Russian). UTF-8 read as cp1252 ("Ã©") is left to ftfy's detector."""
    counts = Counter(text)
    n_letters = sum(n for ch, n in counts.items() if ch.isalpha())
    n_latin1 = sum(n for ch, n in counts.items() if "\u00a1" <= ch <= "\u00ff")
    if n_latin1 >= MOJIBAKE_MIN_LETTERS:
        words = [w for w in _LATIN1_RUN.findall(text) if _is_mojibake_word(w)]
        moji = Counter(ch for w in words for ch in w if ch >= "\u00a1")
        n_moji = sum(moji.values())
        if n_moji >= MOJIBAKE_MIN_LETTERS:
            codec, share = _best_codepage(moji, words)
            whole = n_latin1 > min_share * n_letters
            if codec is not None and share > CODEPAGE_SHARE:
                if whole:
                    return redecode(text, codec), f"{MOJIBAKE_FIXED}Latin-1 -> {codec}"
                return redecode_words(text, codec), f"{MOJIBAKE_FIXED}words Latin-1 -> {codec}"
            if whole:
                return None, "mojibake: mostly Latin-1 accented letters, no code page repairs it"
    if not any("\u00c2" <= ch <= "\u00f4" for ch in counts):
        return text, None  # UTF-8 read as cp1252 always holds a lead byte 0xC2-0xF4
    import ftfy

    if ftfy.is_bad(text):
        fixed = ftfy.fix_encoding(text)
        if fixed != text:
            return fixed, MOJIBAKE_FIXED + "ftfy"
    return text, None


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
    max_bad_char_ratio: float = 0.01  # bad characters in runs (unmapped words) per non-space char
    max_tokens: int = 7168         # 8192 context - up to ~1000 vision tokens (Gundam) - prompt
    tokenizer: object | None = None  # optional: anything with .encode(text) -> ids
    max_isolated_bad_ratio: float = 0.05  # lone bad characters (a delimiter glyph) are dropped up to this

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
        return self.check(text)[1]

    def check(self, text: str) -> tuple[str, str | None, str | None]:
        """(label text, reason it cannot be a label or None, detail) for a page's text.

        The label text differs from `text` when the page is usable after a repair: mojibake
        decoded with its real code page, or isolated unmapped glyphs (U+FFFD, private use,
        control characters) dropped. Garbled means more than `max_bad_char_ratio` of the
        characters are bad in runs (whole words unmapped), or more than
        `max_isolated_bad_ratio` are bad at all."""
        g = garble(text)
        if g.chars == 0:
            return text, NO_TEXT_LAYER, None
        details = []
        if g.bad:
            if (g.bad - g.isolated) / g.chars > self.max_bad_char_ratio or g.ratio > self.max_isolated_bad_ratio:
                return text, GARBLED_TEXT, g.detail()
            text = strip_bad_chars(text)
            details.append(f"dropped {g.detail()}")
        fixed, how = repair_mojibake(text)
        if fixed is None:
            return text, GARBLED_TEXT, how
        if how:
            text = fixed
            details.append(how)
        detail = "; ".join(details) or None
        n_chars = g.chars - g.bad
        if n_chars < self.min_chars:
            return text, TOO_LITTLE_TEXT, detail
        if self.too_many_tokens(text):
            return text, TOO_MANY_TOKENS, detail
        return text, None, detail
