"""Second readings of a page whose text layer MuPDF reads as unmapped glyphs (U+FFFD).

MuPDF answers U+FFFD for a glyph whose font has no usable ToUnicode entry. Two other readings
often recover the text, and each is kept only when it clearly reads better (the page passes
`CoarseFilter.check` where MuPDF's reading did not):

1. **Character codes.** With `TEXT_CID_FOR_UNKNOWN_UNICODE` MuPDF gives such glyphs their
   character codes. For single-byte TeX fonts that is a legacy code page read as Latin-1 (Thai
   TIS-620 in lshort-thai, cp1251 in Russian manuals); the reading is accepted only when a code
   page repair applies (`coarse.repair_mojibake`), since raw codes of other fonts are noise.
2. **poppler.** `pdftotext` (olmOCR keeps it as its fallback too) maps glyph names and
   embedded cmaps MuPDF ignores. Used when installed; a page it reads is recorded as such.

The page's record says which reading its label came from (`text_source` in the unit record).
"""

from __future__ import annotations

import shutil
import subprocess

import pymupdf

from data_engine import coarse, render

CODES = "mupdf_char_codes"
POPPLER = "pdftotext"
POPPLER_TIMEOUT_S = 10.0  # one page; a slower poppler run costs the fallback, not the page


def needs_fallback(check: tuple) -> bool:
    """A page rejected as garbled because of unmapped glyphs (U+FFFD)."""
    return check[1] == coarse.GARBLED_TEXT and "U+FFFD" in (check[2] or "")


def poppler_text(page: pymupdf.Page) -> str | None:
    """pdftotext's text of `page` (None without poppler or a path to give it)."""
    path = page.parent.name
    if not path or shutil.which("pdftotext") is None:
        return None
    n = page.number + 1
    try:
        out = subprocess.run(["pdftotext", "-q", "-enc", "UTF-8", "-f", str(n), "-l", str(n), path, "-"],
                             capture_output=True, timeout=POPPLER_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.decode("utf-8", errors="replace") if out.returncode == 0 else None


def recover(page: pymupdf.Page, flt: coarse.CoarseFilter, sort: bool = False):
    """(text dict or None, check tuple, source) of the first second reading that passes the
    filter, or None when neither does. The text dict is None for poppler's reading (no glyph
    boxes: the page gets no fine label)."""
    flags = render.TEXT_FLAGS | pymupdf.TEXT_CID_FOR_UNKNOWN_UNICODE
    try:
        tdict = page.get_text("rawdict", flags=flags, sort=sort)
        check = flt.check(coarse.text_from_dict(tdict))
        if check[1] is None and coarse.MOJIBAKE_FIXED in (check[2] or ""):
            return tdict, check, CODES
    except (SystemError, ValueError):
        pass
    text = poppler_text(page)
    if text:
        check = flt.check(coarse.normalize_text(text))
        if check[1] is None:
            return None, check, POPPLER
    return None


def page_check(page: pymupdf.Page, flt: coarse.CoarseFilter, sort: bool = False):
    """(check tuple, text dict or None, source or None) of a page as the engine labels it:
    MuPDF's glyph-level text, or a second reading when that is unmapped glyphs."""
    tdict = render.extract_text(page, sort=sort)
    check = flt.check(coarse.text_from_dict(tdict))
    if needs_fallback(check):
        got = recover(page, flt, sort)
        if got is not None:
            return got[1], got[0], got[2]
    return check, tdict, None
