"""Line text from PyMuPDF's per-character output (`page.get_text("rawdict")`), in logical order.

MuPDF's own span text (`get_text("dict")`) is what many tools use, and on real born-digital
PDFs it carries three systematic defects that the glyph positions resolve (poppler's
`pdftotext` applies the same kind of geometry, which is why it gets these right):

* **Word breaks made by positioning.** Producers that set inter-word space by moving the pen
  (xdvipdfmx for Korean, pdfTeX at font/accent changes) draw no space glyph, and MuPDF often
  synthesises none. A gap wider than `SPACE_GAP` x the font size between two glyphs of a line
  is a word break. Between two Han/kana characters (scripts written without spaces) a gap is
  justification, not a break, unless wider than `CJK_SPACE_GAP`.
* **Spacing accents drawn as separate glyphs.** TeX's `\\accent` (OT1/LGR fonts) draws the
  accent (´ ˛ ¸ ˜ ...) as its own glyph over the letter; the text layer reads "preparaci´on".
  An accent whose box overlaps a letter's box by more than half its width is moved onto that
  letter as the combining mark (from its compatibility decomposition), then NFC composes it.
* **Right-to-left lines.** Glyph clusters (a ligature such as lam-alef maps to two characters
  that MuPDF emits around a zero-width box; combining marks follow their base) are put back in
  visual order by position and reordered to logical order by the Unicode bidi algorithm's
  rules for resolved levels (UAX #9 W/N/I rules reduced to what a line of text needs, then
  L2). `tests/test_text_assembly.py` checks it against python-bidi's reference
  implementation. Kashida (U+0640, a stretching stroke, not a letter) is dropped after letters.

Everything here works on plain dicts (`{"c", "bbox", "size"}`), so it is cheap to test.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from itertools import compress, count, repeat
from operator import and_, gt, itemgetter, methodcaller, mul, not_, sub

SPACE_GAP = 0.1         # x font size: poppler's minWordBreakSpace; tight justified RTL lines go down to ~0.14 em
CJK_SPACE_GAP = 1.0     # between Han/kana: justification stretches gaps, words are not spaced
ACCENT_OVERLAP = 0.5    # share of the accent's width over the letter that makes it that letter's accent
KASHIDA = "\u0640"
# Spacing accents without a compatibility decomposition (TeX fonts map their accent glyphs to these).
_EXTRA_ACCENTS = {"\u02c7": "\u030c", "\u02c6": "\u0302", "^": "\u0302", "`": "\u0300", "~": "\u0303"}
_NUMERIC_SEP = set(".,:/-+\u066b\u066c\u060c")  # separators inside a number keep its direction


@lru_cache(maxsize=None)
def combining_form(ch: str) -> str | None:
    """The combining mark(s) of a spacing accent ('´' -> U+0301), None for anything else."""
    if ch in _EXTRA_ACCENTS:
        return _EXTRA_ACCENTS[ch]
    d = unicodedata.normalize("NFKD", ch)
    if len(d) >= 2 and d[0] == " " and all(unicodedata.combining(c) for c in d[1:]):
        return d[1:]
    return None


@lru_cache(maxsize=None)
def _kind(ch: str) -> str:
    """'R' right-to-left letter, 'L' left-to-right letter, 'D' digit, 'S' number separator,
    'W' whitespace, 'N' other neutral, 'M' combining mark."""
    if unicodedata.category(ch) in ("Mn", "Me"):
        return "M"
    b = unicodedata.bidirectional(ch)
    if b in ("R", "AL"):
        return "R"
    if b == "L":
        return "L"
    if b in ("EN", "AN"):
        return "D"
    if b == "WS" or ch.isspace():
        return "W"
    return "S" if ch in _NUMERIC_SEP else "N"


@lru_cache(maxsize=None)
def _unspaced(ch: str) -> bool:
    """Han, kana and CJK punctuation: written without spaces between words."""
    if not ch or unicodedata.east_asian_width(ch) not in ("W", "F"):
        return False
    return not ("\uac00" <= ch <= "\ud7a3" or "\u1100" <= ch <= "\u11ff" or "\u3130" <= ch <= "\u318f")


class _Glyph:
    __slots__ = ("text", "x0", "x1", "size")

    def __init__(self, text, x0, x1, size):
        self.text, self.x0, self.x1, self.size = text, x0, x1, size


def _compose_accents(chars: list[tuple]) -> list[tuple]:
    """Move spacing accents drawn over a letter onto that letter (as combining marks)."""
    out: list = list(chars)
    for i, (c, ax0, ax1, _) in enumerate(chars):
        mark = combining_form(c)
        if mark is None or ax1 - ax0 <= 0:
            continue
        width = ax1 - ax0
        for j in (i + 1, i - 1, i + 2, i - 2):  # the letter drawn next (TeX) or just before
            if not 0 <= j < len(chars) or out[j] is None or not chars[j][0][:1].isalpha():
                continue
            lx0, lx1 = chars[j][1], chars[j][2]
            if min(ax1, lx1) - max(ax0, lx0) > ACCENT_OVERLAP * width:
                base = out[j][0]
                if base == "\u0131" and unicodedata.combining(mark[0]) == 230:
                    base = "i"  # dotless i under an accent above is TeX's way of writing í
                elif base == "\u0237" and unicodedata.combining(mark[0]) == 230:
                    base = "j"
                out[j] = (base + mark,) + tuple(out[j][1:])
                out[i] = None
                break
    return [c for c in out if c is not None]


def _clusters(chars: list[tuple]) -> list[_Glyph]:
    """Characters -> glyph clusters: combining marks join the preceding non-space glyph; the
    extra characters of a ligature glyph (zero-width boxes at the glyph's edge) join it in their
    original order."""
    out: list[_Glyph] = []
    pending: list[tuple] = []  # zero-width characters waiting for the glyph they belong to
    for ch in chars:
        c, x0, x1, size = ch
        if _kind(c[0]) == "M":
            host = next((g for g in reversed(out) if not g.text.isspace()), None)
            if host is not None:
                host.text += c
                continue
        if x1 - x0 <= 1e-3 and _kind(c[0]) not in ("W", "M"):
            if out and abs(out[-1].x1 - x0) < 0.05 and not out[-1].text.isspace() and not pending:
                out[-1].text += c  # LTR ligature: base first, its extra characters after
                continue
            pending.append(ch)
            continue
        g = _Glyph(c, x0, x1, size)
        if pending:
            if all(abs(p[1] - x1) < 0.05 for p in pending):
                # emitted before their glyph (RTL lines): the glyph's own text comes first
                g.text += "".join(p[0] for p in reversed(pending))
            else:
                out.extend(_Glyph(*p) for p in pending)
            pending = []
        out.append(g)
    out.extend(_Glyph(*p) for p in pending)
    return out


def _gap_is_break(a: _Glyph, b: _Glyph, gap: float) -> bool:
    size = min(a.size, b.size) or 1.0
    if _unspaced(a.text[-1]) and _unspaced(b.text[0]):
        return gap > CJK_SPACE_GAP * size
    return gap > SPACE_GAP * size


def _with_spaces(glyphs: list[_Glyph], rtl: bool) -> list[_Glyph]:
    """Insert a space glyph wherever two neighbours are further apart than a word gap.
    `glyphs` are in visual order when `rtl`, else in the line's (left-to-right) order."""
    out: list[_Glyph] = []
    for g in glyphs:
        if out:
            p = out[-1]
            if not p.text.isspace() and not g.text.isspace():
                gap = g.x0 - p.x1
                if _gap_is_break(p, g, gap):
                    out.append(_Glyph(" ", p.x1, g.x0, g.size))
        out.append(g)
    return out


def _levels(kinds: list[str], base: int) -> list[int]:
    """Resolved embedding levels of a line without explicit embeddings (UAX #9 W1-W7, N1-N2,
    I1-I2, reduced): digits and their separators/marks take the number's level, neutrals between
    two runs of the same direction take it, other neutrals take the base level."""
    n = len(kinds)
    k = list(kinds)
    for i in range(n):  # W4: a separator between two digits is part of the number
        if k[i] == "S" and 0 < i < n - 1 and k[i - 1] == "D" and k[i + 1] == "D":
            k[i] = "D"
    # W7: a number right after left-to-right text belongs to that text (nearest letters on
    # each side, found in one pass each way)
    left_strong, last = [None] * n, None
    for i in range(n):
        left_strong[i] = last
        if k[i] in ("L", "R"):
            last = k[i]
    right_strong, last = [None] * n, None
    for i in range(n - 1, -1, -1):
        right_strong[i] = last
        if k[i] in ("L", "R"):
            last = k[i]
    for i in range(n):
        if k[i] == "D":
            left, right = left_strong[i], right_strong[i]
            if left == "L" or (left is None and base == 0 and right != "R"):
                k[i] = "L"
    strong = ["R" if x in ("R", "D") else ("L" if x == "L" else None) for x in k]  # N1: numbers act as R
    lvl = [0] * n
    for i, x in enumerate(k):
        if x == "R":
            lvl[i] = 1
        elif x == "L":
            lvl[i] = 2 if base == 1 else 0
        elif x == "D":
            lvl[i] = 2
    i = 0
    while i < n:  # N1/N2: a neutral run between the same strong direction takes it, else the base
        if strong[i] is not None:
            i += 1
            continue
        j = i
        while j < n and strong[j] is None:
            j += 1
        before = strong[i - 1] if i > 0 else ("R" if base else "L")
        after = strong[j] if j < n else ("R" if base else "L")
        d = before if before == after else ("R" if base else "L")
        for t in range(i, j):
            lvl[t] = (1 if base == 0 else base) if d == "R" else (2 if base == 1 else 0)
        i = j
    return lvl


def _reorder(items: list, levels: list[int]) -> list:
    """UAX #9 rule L2: from the highest level down to the lowest odd one, reverse every run at
    that level or higher. The same permutation maps visual to logical order and back."""
    items = list(items)
    if not levels:
        return items
    top = max(levels)
    low = min(lv for lv in levels if lv % 2) if any(lv % 2 for lv in levels) else top + 1
    lv = list(levels)
    for level in range(top, low - 1, -1):
        i = 0
        while i < len(items):
            if lv[i] >= level:
                j = i
                while j < len(items) and lv[j] >= level:
                    j += 1
                items[i:j] = items[i:j][::-1]
                lv[i:j] = lv[i:j][::-1]
                i = j
            else:
                i += 1
    return items


def visual_to_logical(units: list[str], base: int | None = None) -> list[str]:
    """Text units (glyph clusters) in left-to-right visual order -> logical order.
    `base` 1 = right-to-left paragraph; None: right-to-left when its letters are mostly RTL."""
    kinds = [_kind(u[0]) if u else "N" for u in units]
    if base is None:
        n_r, n_l = kinds.count("R"), kinds.count("L")
        base = 1 if n_r >= n_l and n_r else 0
    kinds = ["W" if x == "M" else x for x in kinds]
    return _reorder(units, _levels(kinds, base))


def _drop_kashida(text: str) -> str:
    if KASHIDA not in text:
        return text
    out = []
    for ch in text:
        if ch == KASHIDA and out and _kind(out[-1]) in ("R", "M"):
            continue
        out.append(ch)
    return "".join(out)


def _simple_line(chars: list[tuple]) -> str:
    """Left-to-right line without spacing accents: characters in order, a space at word gaps."""
    out = []
    pc, px1, psize = " ", 0.0, 0.0
    for c, x0, x1, size in chars:
        if not c.isspace() and not pc.isspace():
            gap, s = x0 - px1, min(size, psize) or 1.0
            if gap > SPACE_GAP * s and (gap > CJK_SPACE_GAP * s or not (_unspaced(pc[-1]) and _unspaced(c[0]))):
                out.append(" ")
        out.append(c)
        pc, px1, psize = c, x1, size
    return "".join(out)


def line_text(chars: list) -> str:
    """The text of one line from its characters in MuPDF's order: `(c, x0, x1, size)` tuples
    or rawdict-like dicts `{"c", "bbox", "size"}`."""
    if not chars:
        return ""
    if isinstance(chars[0], dict):
        chars = [(c["c"], c["bbox"][0], c["bbox"][2], c.get("size", 10.0)) for c in chars]
    plain = "".join(c[0] for c in chars)
    special = _special_chars()
    if not any(ch in special for ch in set(plain)):
        return unicodedata.normalize("NFC", _simple_line(chars))
    chars = _compose_accents(chars)
    glyphs = _clusters(chars)
    rtl = any(_kind(g.text[0]) == "R" for g in glyphs)
    if rtl:
        visual = sorted(glyphs, key=lambda g: (g.x0 + g.x1) / 2)
        visual = _with_spaces(visual, True)
        glyphs = visual_to_logical([g.text for g in visual])
        text = _drop_kashida("".join(glyphs))
    else:
        text = "".join(g.text for g in _with_spaces(glyphs, False))
    return unicodedata.normalize("NFC", text)


class _SpecialChars:
    """Membership test for characters that need the full (slow) path: right-to-left letters
    and spacing accents; cached per distinct character."""

    def __init__(self):
        self.cache: dict[str, bool] = {}

    def __contains__(self, ch: str) -> bool:
        v = self.cache.get(ch)
        if v is None:
            v = self.cache[ch] = _kind(ch) == "R" or combining_form(ch) is not None
        return v


@lru_cache(maxsize=1)
def _special_chars() -> _SpecialChars:
    return _SpecialChars()


def _along(line: dict, d) -> list[tuple]:
    """(c, t0, t1, size) of a rotated line's characters, t measured along the direction `d`."""
    dx, dy = d
    out = []
    for span in line["spans"]:
        size = span.get("size", 10.0)
        for c in span.get("chars") or [{"c": span["text"], "bbox": span["bbox"]}]:
            x0, y0, x1, y1 = c["bbox"]
            ts = (x0 * dx + y0 * dy, x1 * dx + y1 * dy, x0 * dx + y1 * dy, x1 * dx + y0 * dy)
            out.append((c["c"], min(ts), max(ts), size))
    return out


LETTER_SPACED_SHARE = 0.6  # share of a run's glyph gaps above the word gap that makes it letter-spaced
LETTER_SPACED_WORD = 0.3   # x font size beyond the run's usual letter gap: a word break there
LETTER_SPACED_SYNTHETIC = 0.3  # share of a line's characters that are MuPDF's synthetic spaces: letter-spaced


_PLAIN: set[str] = set()  # characters known to need no special handling (grows per process)


def _is_plain_text(text: str) -> bool:
    """No right-to-left letter or spacing accent in `text` (set operations in C; each new
    character is classified once)."""
    if _PLAIN.issuperset(text):
        return True
    special = _special_chars()
    new = set(text) - _PLAIN
    if any(ch in special for ch in new):
        return False
    _PLAIN.update(new)
    return True


_CHAR, _BBOX, _X0, _X1 = itemgetter("c"), itemgetter("bbox"), itemgetter(0), itemgetter(2)
_SYNTHETIC = methodcaller("get", "synthetic", False)


def _fast_line(spans: list) -> str | None:
    """The text of a left-to-right line without right-to-left letters or spacing accents, a
    space at word gaps; None when the line needs the full path (`line_text`). Quantities over
    the line's glyphs are `map`s of C functions (`operator`, `itertools`), not per-glyph Python
    code (a per-glyph loop costs ~2 us a glyph). A letter-spaced line (most
    gaps word-wide: monospace code drawn glyph by glyph, tracked headings) breaks only where a
    gap exceeds its usual letter gap by `LETTER_SPACED_WORD` x the font size."""
    chars, sizes, lens = [], [], []
    for span in spans:
        sc = span.get("chars")
        if sc is None:
            return None
        chars += sc
        sizes += [span.get("size", 10.0) or 1.0] * len(sc)
        lens.append(len(sc))
    text = "".join(map(_CHAR, chars))
    pos = 0
    for span, n in zip(spans, lens):
        span["text"] = text[pos:pos + n]
        pos += n
    if len(text) != len(chars) or not _is_plain_text(text):
        return None
    # MuPDF's synthetic characters are spaces: a line with few spaces has few of them
    n_space = text.count(" ")
    if (n_space >= 3 and n_space > LETTER_SPACED_SYNTHETIC * len(chars)
            and (n_syn := sum(map(_SYNTHETIC, chars))) >= 3 and n_syn > LETTER_SPACED_SYNTHETIC * len(chars)):
        # MuPDF put a synthetic space between most letters: a letter-spaced line, whose real
        # word gaps are found below. (Elsewhere its synthetic spaces are kept: it places them
        # by pen position, which finds breaks that glyph boxes alone can miss.)
        keep = list(compress(count(), map(not_, map(_SYNTHETIC, chars))))
        chars, sizes = [chars[i] for i in keep], [sizes[i] for i in keep]
        text = "".join(map(_CHAR, chars))
    if len(chars) < 2:
        return text
    boxes = list(map(_BBOX, chars))
    x0s, x1s = list(map(_X0, boxes)), list(map(_X1, boxes))
    gaps = list(map(sub, x0s[1:], x1s))  # gaps[i - 1]: between glyphs i - 1 and i
    # a break candidate where the gap exceeds SPACE_GAP x the smaller of the two font sizes
    if sizes.count(sizes[0]) == len(sizes):  # one size (most lines): one threshold
        cand = list(compress(count(1), map((SPACE_GAP * sizes[0]).__lt__, gaps)))
    else:
        cand = list(compress(count(1), map(gt, gaps, map(mul, repeat(SPACE_GAP), map(min, sizes, sizes[1:])))))
    if not cand:
        return text
    if len(cand) >= 3:
        # letter-spaced: most gaps between two letters/digits are word-wide (leader dots
        # ". . . ." in a table of contents are spaced too, but are not letters)
        alnum = list(map(str.isalnum, text))
        pairs = list(compress(count(1), map(and_, alnum, alnum[1:])))
        wide = set(cand).intersection(pairs)
        if len(wide) >= 3 and len(wide) > LETTER_SPACED_SHARE * len(pairs):
            usual = sorted(gaps[i - 1] for i in pairs)[len(pairs) // 2]
            cand = [i for i in cand if gaps[i - 1] > usual + LETTER_SPACED_WORD * sizes[i]]
    out, last = [], 0
    for i in cand:
        a, b = text[i - 1], text[i]
        if a.isspace() or b.isspace():
            continue
        if _unspaced(a) and _unspaced(b) and x0s[i] - x1s[i - 1] <= CJK_SPACE_GAP * min(sizes[i - 1], sizes[i]):
            continue
        out.append(text[last:i])
        out.append(" ")
        last = i
    out.append(text[last:])
    return "".join(out)


def rawdict_lines(page_raw: dict):
    """Yield (block, line, text) for every text line of a `get_text("rawdict")` result; also
    sets each span's "text" (as `get_text("dict")` has it) and each line's "text" so layout code
    can read them."""
    for block in page_raw.get("blocks", ()):
        if block.get("type", 0) != 0:
            continue
        for line in block.get("lines", ()):
            d = line.get("dir", (1.0, 0.0))
            if abs(d[1]) < 1e-3 and d[0] > 0:
                text = _fast_line(line["spans"])
                if text is not None:
                    line["text"] = text = unicodedata.normalize("NFC", text)
                    yield block, line, text
                    continue
            chars = []
            for span in line["spans"]:
                size = span.get("size", 10.0)
                span_chars = span.get("chars")
                if span_chars is None:  # already a "dict" span: one unit per span
                    x0, _, x1, _ = span["bbox"]
                    chars.append((span["text"], x0, x1, size))
                    continue
                span["text"] = "".join(c["c"] for c in span_chars)
                chars.extend((c["c"], c["bbox"][0], c["bbox"][2], size) for c in span_chars)
            if not (abs(d[1]) < 1e-3 and d[0] > 0) and chars and all(len(c) == 4 for c in chars):
                chars = _along(line, d)  # rotated line: positions along its writing direction
            line["text"] = text = line_text(chars)
            yield block, line, text
