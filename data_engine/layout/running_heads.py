"""Running heads: text a document repeats at the top or bottom of its pages (OmniDocBench's
page-header / page-footer), found by comparing a page with its neighbours.

A single page cannot tell a running head from a short first line of text: the margin band
rule of the text-layer layout (``band`` x page height) misses heads set lower than it, and
those came out as plain text. Here a short block (<= ``MAX_LINES`` lines) near the top or
bottom (``HEAD_BAND`` x page height) is a running head when a page at most two pages away
(``NEIGHBOURS``: books alternate their heads between left and right pages) has a block with
the same text at the same height (``Y_TOL``). Texts are compared by `signature`: case,
spaces and punctuation dropped, every digit run one ``#``, so "Chapter 2 · 14" on one page
matches "Chapter 2 · 16" two pages on, and bare page numbers match each other.

Each neighbour's blocks are read once per document (``page.get_text("blocks")``, ~2-3 ms a
page) and its band blocks kept for the pages after it.
"""

from __future__ import annotations

import re
import unicodedata

import pymupdf

HEAD_BAND = 0.15        # x page height: top and bottom bands where running heads are looked for
NEIGHBOURS = (-2, -1, 1, 2)
MAX_LINES = 2
MAX_CHARS = 200
Y_TOL = 0.015           # x page height: the same head sits at the same height on every page
_DIGITS = re.compile(r"\d+")


def signature(text: str) -> str:
    """`text` as running heads are compared: NFKC, lower case, digit runs -> '#', nothing but
    letters, digits and '#'."""
    text = _DIGITS.sub("#", unicodedata.normalize("NFKC", text).lower())
    return "".join(ch for ch in text if ch.isalnum() or ch == "#")


class RunningHeads:
    """Per document (reset when another document's page comes), the band blocks of its pages."""

    def __init__(self):
        self._doc = None  # the document the cache is for (held, so no other can take its id)
        self._bands: dict[int, list[tuple[str, float, float]]] = {}

    def _band_blocks(self, doc: pymupdf.Document, number: int) -> list[tuple[str, float, float]]:
        """(signature, y0, y1) of the short blocks in the top and bottom bands of page `number`."""
        if number not in self._bands:
            page = doc.load_page(number)
            r = page.rect
            top, bottom = r.y0 + HEAD_BAND * r.height, r.y1 - HEAD_BAND * r.height
            self._bands[number] = [
                (signature(text), y0, y1) for x0, y0, x1, y1, text, _, kind in page.get_text("blocks")
                if kind == 0 and (y1 <= top or y0 >= bottom) and text.count("\n") <= MAX_LINES and len(text) <= MAX_CHARS]
        return self._bands[number]

    def classify(self, page: pymupdf.Page, blocks: list[tuple]) -> dict[int, str]:
        """{index: "header" | "footer"} for the blocks of `page` (``(rect, text, n_lines)``) that
        are running heads."""
        doc = page.parent
        if doc is not self._doc:
            self._doc, self._bands = doc, {}
        n, h = page.number, page.rect.height
        for old in [k for k in self._bands if k < n + min(NEIGHBOURS)]:
            del self._bands[old]  # pages are labelled in order: earlier ones are not asked again
        top, bottom = page.rect.y0 + HEAD_BAND * h, page.rect.y1 - HEAD_BAND * h
        found = {}
        for k, (r, text, n_lines) in enumerate(blocks):
            kind = "header" if r.y1 <= top else "footer" if r.y0 >= bottom else None
            sig = signature(text) if kind else ""
            if not sig or n_lines > MAX_LINES or len(text) > MAX_CHARS:
                continue
            for d in NEIGHBOURS:
                if 0 <= n + d < doc.page_count and any(
                        s == sig and abs(y0 - r.y0) <= Y_TOL * h for s, y0, _ in self._band_blocks(doc, n + d)):
                    found[k] = kind
                    break
        return found
