"""Rule-based layout from the PDF's own structure (PyMuPDF), no model weights.

Per page: tables from ``page.find_tables()`` (their text becomes HTML and is not repeated as
text blocks), images from ``page.get_image_info()``, text blocks from ``get_text("dict")``
classified by simple, documented rules:

* header / footer: the block lies inside the top / bottom margin band (``band`` x page height),
  or is a bare page number near the top / bottom.
* caption: right below or above an image / table (gap <= ``caption_gap`` x body size) and either
  starts with a caption word ("Figure", "Fig.", "Table", "Tab.", "图", "表", ...) or is set
  smaller or italic compared to the body text.
* title / sub_title: dominant span size >= ``title_ratio`` x body size (the largest on the page
  with >= 1.6x is the title), or short bold lines at >= 1.1x.
* list: first line starts with a bullet or an enumerator ("1.", "a)", "(iv)").
* otherwise text.

The body size is the character-weighted most common span size. Reading order: header, then the
body as horizontal bands split by full-width blocks, each band read column by column (right to
left for RTL pages), then footer. Single-page rules: repetition across pages is not used.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import pymupdf

from data_engine.layout import LayoutBlock

CAPTION_WORDS = re.compile(
    r"^\s*(fig(ure|\.)?|table|tab\.|chart|plate|abb(ildung|\.)|tabelle|tableau|tabla|tabella|"
    r"figura|grafik|рис(унок|\.)?|таблица|图|圖|表|図)\s*[\dIVXivx\-.:：]?",
    re.I,
)
LIST_MARK = re.compile(r"^\s*([•◦▪▫‣⁃●○■□\-–—*·]|\(?\d{1,3}[.)]|\(?[a-zA-Z][.)]|\([ivxIVX]+\))\s")
PAGE_NUMBER = re.compile(r"^\W*(\d{1,4}|[ivxlcdm]{1,6})\W*$", re.I)


def _wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def join_lines(lines: list[str]) -> str:
    """Join a block's lines: no separator between CJK characters, a space otherwise."""
    out = ""
    for ln in (x.strip() for x in lines):
        if not ln:
            continue
        if out and not (_wide(out[-1]) and _wide(ln[0])):
            out += " "
        out += ln
    return out


def reading_order(items: list[tuple], page_w: float, rtl: bool = False) -> list[tuple]:
    """Order ``(label, rect, ...)`` items: headers, body bands by column, footers."""
    head = sorted((b for b in items if b[0] == "header"), key=lambda b: (b[1].y0, b[1].x0))
    foot = sorted((b for b in items if b[0] == "footer"), key=lambda b: (b[1].y0, b[1].x0))
    body = sorted((b for b in items if b[0] not in ("header", "footer")), key=lambda b: (b[1].y0, b[1].x0))
    if not body:
        return head + foot
    left = min(b[1].x0 for b in body)
    right = max(b[1].x1 for b in body)
    mid, full = (left + right) / 2, 0.6 * (right - left)
    tol = 0.02 * (right - left)
    out, band = [], []

    def flush():
        # A band's blocks: one column after the other (x centre vs the body's centre line).
        first = [b for b in band if ((b[1].x0 + b[1].x1) / 2 >= mid) == rtl]
        second = [b for b in band if ((b[1].x0 + b[1].x1) / 2 >= mid) != rtl]
        out.extend(sorted(first, key=lambda b: b[1].y0) + sorted(second, key=lambda b: b[1].y0))
        band.clear()

    for b in body:
        # A wide block, or one crossing the centre line (a centred heading or caption on a
        # one-column page), belongs to no column: it ends the band. Otherwise it would be
        # sorted into a column and read after later blocks of the same band.
        if b[1].width >= full or (b[1].x0 < mid - tol and b[1].x1 > mid + tol):
            flush()
            out.append(b)
        else:
            band.append(b)
    flush()
    return head + out + foot


def table_html(rows: list[list[str | None]]) -> str:
    def cell(c):
        return join_lines((c or "").split("\n")).replace("<", "&lt;").replace(">", "&gt;")

    return "<table>" + "".join(
        "<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows
    ) + "</table>"


class TextLayerLayout:
    def __init__(self, band: float = 0.07, title_ratio: float = 1.2, caption_gap: float = 2.0,
                 find_tables: bool = True, min_image_area: float = 0.002):
        self.band, self.title_ratio, self.caption_gap = band, title_ratio, caption_gap
        self.find_tables, self.min_image_area = find_tables, min_image_area

    def blocks(self, page: pymupdf.Page, text_dict: dict | None = None) -> list[LayoutBlock]:
        td = text_dict if text_dict is not None else page.get_text("dict")
        W, H = page.rect.width, page.rect.height
        items: list[tuple] = []  # (label, Rect, text, extra)

        tables = []
        if self.find_tables:
            for t in page.find_tables().tables:
                r = pymupdf.Rect(t.bbox)
                tables.append(r)
                items.append(("table", r, table_html(t.extract()), None))
        images = []
        for info in page.get_image_info():
            r = pymupdf.Rect(info["bbox"]) & page.rect
            if r.is_empty or r.get_area() < self.min_image_area * W * H:
                continue
            if not any(r.intersects(i) and (r & i).get_area() > 0.8 * r.get_area() for i in images):
                images.append(r)
                items.append(("image", r, "", None))

        texts = []
        sizes: Counter = Counter()
        for b in td.get("blocks", []):
            if b.get("type", 0) != 0:
                continue
            r = pymupdf.Rect(b["bbox"])
            c = r.tl + (r.br - r.tl) * 0.5
            if any(c in t for t in tables):  # already inside a table's HTML
                continue
            lines, spans = [], []
            for ln in b.get("lines", []):
                lines.append("".join(s["text"] for s in ln["spans"]))
                spans.extend(s for s in ln["spans"] if s["text"].strip())
            text = join_lines(lines)
            if not text:
                continue
            by_size: Counter = Counter()
            for s in spans:
                by_size[round(s["size"], 1)] += len(s["text"])
                sizes[round(s["size"], 1)] += len(s["text"])
            size = by_size.most_common(1)[0][0]
            bold = sum(len(s["text"]) for s in spans if s["flags"] & 16 or "Bold" in s["font"]) > 0.6 * len(text)
            italic = sum(len(s["text"]) for s in spans if s["flags"] & 2 or "Italic" in s["font"]) > 0.6 * len(text)
            texts.append((r, text, size, bold, italic, len(lines)))
        body = sizes.most_common(1)[0][0] if sizes else 10.0
        max_size = max((t[2] for t in texts), default=body)

        for r, text, size, bold, italic, n_lines in texts:
            label = self._classify(r, text, size, bold, italic, n_lines, body, max_size, W, H, images, tables)
            items.append((label, r, text, None))

        rtl = self._rtl(texts)
        ordered = reading_order(items, W, rtl)
        return [LayoutBlock(lb, tuple(round(v, 2) for v in r), t) for lb, r, t, _ in ordered]

    def _classify(self, r, text, size, bold, italic, n_lines, body, max_size, W, H, images, tables):
        if r.y1 <= self.band * H or (PAGE_NUMBER.match(text) and r.y1 <= 0.15 * H):
            return "header"
        if r.y0 >= (1 - self.band) * H or (PAGE_NUMBER.match(text) and r.y0 >= 0.85 * H):
            return "footer"
        gap = self.caption_gap * body
        near = None
        for kind, objs in (("image", images), ("table", tables)):
            for o in objs:
                overlap_x = min(r.x1, o.x1) - max(r.x0, o.x0) > 0.3 * min(r.width, o.width)
                dy = min(abs(r.y0 - o.y1), abs(o.y0 - r.y1))
                if overlap_x and dy <= gap and (near is None or dy < near[1]):
                    near = (kind, dy)
        if near and n_lines <= 4 and (CAPTION_WORDS.match(text) or size < 0.95 * body or italic):
            return f"{near[0]}_caption"
        if n_lines <= 3 and len(text) <= 200:
            if size >= self.title_ratio * body:
                return "title" if size >= max(1.6 * body, max_size - 0.01) else "sub_title"
            if bold and size >= 1.1 * body:
                return "sub_title"
        if LIST_MARK.match(text):
            return "list"
        return "text"

    @staticmethod
    def _rtl(texts) -> bool:
        n_rtl = n_all = 0
        for _, text, *_ in texts:
            for ch in text:
                bidi = unicodedata.bidirectional(ch)
                n_all += bidi in ("L", "R", "AL")
                n_rtl += bidi in ("R", "AL")
        return n_all > 0 and n_rtl > 0.5 * n_all
