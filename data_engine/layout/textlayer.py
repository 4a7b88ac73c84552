"""Rule-based layout from the PDF's own structure (PyMuPDF), no model weights.

Per page: tables from ``page.find_tables()`` (optional, slow) or from a detector's table
regions (``regions()``, overridden by the ``picodet`` source; cell text then comes whole from
the text layer's words, ``table_from_words``), images from ``page.get_image_info()`` plus a
detector's figure regions, text blocks from the per-character text dict (each line's text as
``coarse`` assembles it: word gaps, composed accents, logical RTL order), classified by simple,
documented rules (a running head's label first, then a detector's label for a block, when it
has one; a detector's heading takes its level, title or sub_title, from these rules):

* text inside a figure (chart labels, annotations) is part of the figure, not a block.
* header / footer: the block lies inside the top / bottom margin band (``band`` x page height),
  or is a bare page number near the top / bottom, or is a running head: a short block near
  the top / bottom whose text (digits aside) a page at most two pages away has at the same
  height (``running_heads``).
* caption: right below or above an image / table (gap <= ``caption_gap`` x body size, any
  horizontal overlap) and either starts with a caption word ("Figure", "Fig.", "Table", "Tab.",
  "图", "表", ...) or is set smaller or italic compared to the body text.
* equation: more than half of the block's characters in math fonts (CMMI, CMSY, ... Math).
* title / sub_title: dominant span size >= ``title_ratio`` x body size (the largest on the page
  with >= 1.6x is the title), or short bold lines at >= 1.1x, or a short bold block at body
  size that does not read as a sentence. A title MuPDF split over several blocks is merged first.
* list: first line starts with a bullet (with or without a space after it) or an enumerator
  ("1.", "a)", "(iv)").
* otherwise text. Lines are joined with a space; a word hyphenated at a line end is re-joined.

The body size is the character-weighted most common span size. Display formulas: blocks
labelled equation and the short blocks touching them (limits, a superscript set apart, the
equation number) become one equation block (``merge_equation_pieces``). Reading order: header,
then the body as bands split by blocks crossing a column gutter, each band read column by
column (right to left for RTL pages; ``layout.columns``), then footer. A block whose lines
alternate between two columns is split into one block per column first.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import pymupdf

from data_engine.layout import LayoutBlock
from data_engine.layout.columns import TEXT_LABELS, gutters, is_rtl, split_interleaved
from data_engine.layout.running_heads import RunningHeads

CAPTION_WORDS = re.compile(
    r"^\s*(fig(ure|\.)?|table|tab\.|chart|plate|abb(ildung|\.)|tabelle|tableau|tabla|tabella|"
    r"figura|grafik|рис(унок|\.)?|таблица|图|圖|表|図)\s*[\dIVXivx\-.:：]?",
    re.I,
)
# Symbol bullets mark a list item with or without a space after them; enumerators need one.
LIST_MARK = re.compile(r"^\s*([•◦▪▫‣⁃●○■□➢►✓]\s*(?=\S)|([\-–—*·]|\(?\d{1,3}[.)]|\(?[a-zA-Z][.)]|\([ivxIVX]+\))\s)")
MATH_FONTS = ("CMMI", "CMSY", "CMEX", "MSAM", "MSBM", "Math", "STIX", "Symbol", "rsfs", "EUSM")
_HYPHENATED = re.compile(r"\w-$")
PAGE_NUMBER = re.compile(r"^\W*(\d{1,4}|[ivxlcdm]{1,6})\W*$", re.I)


def _wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def join_lines(lines: list[str]) -> str:
    """Join a block's lines: no separator between CJK characters, a space otherwise; a word
    hyphenated at a line end ("super-" + "vised") is joined without the hyphen."""
    out = ""
    for ln in (x.strip() for x in lines):
        if not ln:
            continue
        if out and _HYPHENATED.search(out) and ln[0].islower():
            out = out[:-1]
        elif out and not (_wide(out[-1]) and _wide(ln[0])):
            out += " "
        out += ln
    return out


def table_from_words(page: pymupdf.Page, rect: pymupdf.Rect) -> str:
    """HTML table of the words inside `rect`: rows where the words' vertical centres jump, columns
    at vertical white gaps shared by every row. Word text comes whole from the text layer, so a
    cell reads "-0,41" (cell-by-character assignment can scramble it)."""
    words = [w for w in page.get_text("words", clip=rect) if w[4].strip()]
    if not words:
        return "<table></table>"
    words.sort(key=lambda w: ((w[1] + w[3]) / 2, w[0]))
    height = sorted(w[3] - w[1] for w in words)[len(words) // 2]
    rows, last = [], None
    for w in words:
        yc = (w[1] + w[3]) / 2
        if last is None or yc - last > 0.6 * height:
            rows.append([])
        rows[-1].append(w)
        last = yc
    spans = sorted((w[0], w[2]) for w in words)  # x coverage of all words -> column gaps
    cols, (c0, c1) = [], spans[0]
    for x0, x1 in spans[1:]:
        if x0 > c1 + 0.8 * height:
            cols.append((c0, c1))
            c0, c1 = x0, x1
        else:
            c1 = max(c1, x1)
    cols.append((c0, c1))

    def col_of(w):
        xc = (w[0] + w[2]) / 2
        return min(range(len(cols)), key=lambda i: 0 if cols[i][0] <= xc <= cols[i][1] else
                   min(abs(xc - cols[i][0]), abs(xc - cols[i][1])))

    grid = []
    for row in rows:
        cells = [[] for _ in cols]
        for w in sorted(row, key=lambda w: w[0]):
            cells[col_of(w)].append(w[4])
        grid.append([" ".join(c) for c in cells])
    return table_html(grid)


def _merge_title_lines(texts: list[list], min_size: float) -> list[list]:
    """A title broken over lines that MuPDF put in separate blocks becomes one block: adjacent
    blocks of the same large size and weight, one right below the other, overlapping in x."""
    out: list[list] = []
    for t in texts:
        if out:
            p = out[-1]
            r, pr = t[0], p[0]
            if (t[2] >= min_size and abs(t[2] - p[2]) < 0.05 * t[2] and t[3] == p[3] and p[5] + t[5] <= 3
                    and 0 <= r.y0 - pr.y1 < 0.8 * t[2] and min(r.x1, pr.x1) > max(r.x0, pr.x0)):
                p[0] = pr | r
                p[1] = join_lines([p[1], t[1]])
                p[5] += t[5]
                continue
        out.append(t)
    return out


def reading_order(items: list[tuple], page_w: float, rtl: bool = False) -> list[tuple]:
    """Order ``(label, rect, ...)`` items: headers, body bands by column, footers.

    Columns are found from the body's gutters (``columns.gutters``: white strips that little
    text crosses): a block crossing a gutter (a title, a wide figure) ends the band, and a
    band is read column by column (right to left for RTL pages), each column top to bottom.
    A page without gutters is split at the body's centre line instead."""
    head = sorted((b for b in items if b[0] == "header"), key=lambda b: (b[1].y0, b[1].x0))
    foot = sorted((b for b in items if b[0] == "footer"), key=lambda b: (b[1].y0, b[1].x0))
    body = sorted((b for b in items if b[0] not in ("header", "footer")), key=lambda b: (b[1].y0, b[1].x0))
    if not body:
        return head + foot
    gaps = gutters([b[1] for b in body if b[0] in TEXT_LABELS], page_w)
    left = min(b[1].x0 for b in body)
    right = max(b[1].x1 for b in body)
    mid, full = (left + right) / 2, 0.6 * (right - left)
    tol = 0.02 * (right - left)

    def column(b) -> int:
        xc = (b[1].x0 + b[1].x1) / 2
        col = sum(xc > (g0 + g1) / 2 for g0, g1 in gaps) if gaps else int(xc >= mid)
        return -col if rtl else col

    def spans(b) -> bool:
        r = b[1]
        if gaps:
            return any(r.x0 < g0 and r.x1 > g1 for g0, g1 in gaps)
        # A wide block, or one crossing the centre line (a centred heading or caption on a
        # one-column page), belongs to no column: it ends the band. Otherwise it would be
        # sorted into a column and read after later blocks of the same band.
        return r.width >= full or (r.x0 < mid - tol and r.x1 > mid + tol)

    out, band = [], []
    for b in body:
        if spans(b):
            out.extend(sorted(band, key=lambda b: (column(b), b[1].y0)))
            band.clear()
            out.append(b)
        else:
            band.append(b)
    out.extend(sorted(band, key=lambda b: (column(b), b[1].y0)))
    return head + out + foot


EQUATION_NUMBER = re.compile(r"^\(\s*[\w.\-]{1,8}\s*\)$")  # "(1)", "(2.3a)" at a display's right
PIECE_CHARS, PIECE_LINES = 40, 2   # a block this short can be a piece of a display formula
PIECE_GAP_Y = 0.35                 # x body size: pieces stacked closer than this (limits, fractions)
PIECE_GAP_X = 2.0                  # x body size: pieces side by side closer than this (sub/superscripts)


def _formula_neighbours(a: tuple, b: tuple, body: float) -> bool:
    """Two blocks that are parts of one display formula when at least one of them is one:
    stacked with (almost) no gap and overlapping in x (limits over a sum, a fraction's parts),
    side by side on one line (a sub/superscript set as its own block), or `b` the equation
    number on `a`'s line."""
    ra, rb = a[1], b[1]
    x_overlap = min(ra.x1, rb.x1) - max(ra.x0, rb.x0)
    y_overlap = min(ra.y1, rb.y1) - max(ra.y0, rb.y0)
    if x_overlap > 0 and -y_overlap <= PIECE_GAP_Y * body:
        return True
    if y_overlap > 0.3 * min(ra.height, rb.height) and -x_overlap <= PIECE_GAP_X * body:
        return True
    yc = (rb.y0 + rb.y1) / 2
    return a[0] == "equation" and bool(EQUATION_NUMBER.match(b[2])) and ra.y0 <= yc <= ra.y1


def merge_equation_pieces(items: list[tuple], body: float) -> list[tuple]:
    """One block per display formula. MuPDF splits a display into blocks at every change of
    baseline (a sum's limits, a fraction's numerator, a superscript set apart, the equation
    number), so one formula came out as 3-6 boxes, most of them tiny. Blocks labelled
    `equation`, and short text blocks (`PIECE_CHARS`, `PIECE_LINES`) touching them
    (`_formula_neighbours`), become one `equation` block: the union of their boxes, their texts
    left to right. Items are ``(label, rect, text, n_lines)``."""
    cand = [k for k, it in enumerate(items) if it[0] == "equation" or (
        it[0] in ("text", "list") and (it[3] or 1) <= PIECE_LINES and len(it[2]) <= PIECE_CHARS)]
    if not any(items[k][0] == "equation" for k in cand):
        return items
    parent = {k: k for k in cand}

    def root(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i, a in enumerate(cand):
        for b in cand[i + 1:]:
            if (_formula_neighbours(items[a], items[b], body) or _formula_neighbours(items[b], items[a], body)):
                parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for k in cand:
        groups.setdefault(root(k), []).append(k)
    merged, out = set(), []
    first_of = {}
    for members in groups.values():
        if len(members) > 1 and any(items[k][0] == "equation" for k in members):
            merged.update(members)
            first_of[min(members)] = members
    for k, it in enumerate(items):
        if k in first_of:
            parts = sorted((items[m] for m in first_of[k]), key=lambda p: (p[1].x0, p[1].y0))
            rect = pymupdf.Rect(parts[0][1])
            for p in parts[1:]:
                rect |= p[1]
            out.append(("equation", rect, " ".join(p[2] for p in parts), sum(p[3] or 1 for p in parts)))
        elif k not in merged:
            out.append(it)
    return out


def table_html(rows: list[list[str | None]]) -> str:
    def cell(c):
        return join_lines((c or "").split("\n")).replace("<", "&lt;").replace(">", "&gt;")

    return "<table>" + "".join(
        "<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows
    ) + "</table>"


class TextLayerLayout:
    def __init__(self, band: float = 0.07, title_ratio: float = 1.2, caption_gap: float = 2.0,
                 find_tables: bool = True, min_image_area: float = 0.002, running_heads: bool = True):
        self.band, self.title_ratio, self.caption_gap = band, title_ratio, caption_gap
        self.find_tables, self.min_image_area = find_tables, min_image_area
        # text repeated at the top/bottom of neighbouring pages: header/footer (layout.running_heads)
        self.running_heads = RunningHeads() if running_heads else None

    def regions(self, page: pymupdf.Page, td: dict) -> list[tuple[str, pymupdf.Rect]]:
        """Layout regions from a detector: (label, rect). None here (rules only); the
        ``picodet`` source overrides it."""
        return []

    def blocks(self, page: pymupdf.Page, text_dict: dict | None = None) -> list[LayoutBlock]:
        td = text_dict if text_dict is not None else page.get_text("dict")
        W, H = page.rect.width, page.rect.height
        items: list[tuple] = []  # (label, Rect, text, extra)
        hints = [(lb, r & page.rect) for lb, r in self.regions(page, td)]

        tables = []
        if self.find_tables:
            for t in page.find_tables().tables:
                r = pymupdf.Rect(t.bbox)
                tables.append(r)
                items.append(("table", r, table_html(t.extract()), None))
        for lb, r in hints:
            if lb == "table" and not any(r.intersects(t) for t in tables):
                tables.append(r)
                items.append(("table", r, table_from_words(page, r), None))
        images, figure_areas = [], []
        for info in page.get_image_info():
            r = pymupdf.Rect(info["bbox"]) & page.rect
            if r.is_empty or r.get_area() < self.min_image_area * W * H:
                continue
            if not any(r.intersects(i) and (r & i).get_area() > 0.8 * r.get_area() for i in images):
                images.append(r)
                items.append(("image", r, "", None))
        for lb, r in hints:
            if lb == "image" and not any(r.intersects(i) and (r & i).get_area() > 0.5 * r.get_area() for i in images):
                images.append(r)
                items.append(("image", r, "", None))
        # Text drawn inside a figure (axis labels, chart annotations) belongs to the figure;
        # a page-sized background image holds the page's text, not a figure's.
        figure_areas = [i for i in images if i.get_area() < 0.5 * W * H]

        texts = []
        sizes: Counter = Counter()
        for b in split_interleaved(td.get("blocks", []), W):  # (a no-op on coarse's already split dict)
            if b.get("type", 0) != 0:
                continue
            r = pymupdf.Rect(b["bbox"])
            c = r.tl + (r.br - r.tl) * 0.5
            if any(c in t for t in tables) or any(c in f for f in figure_areas):
                continue
            lines, spans = [], []
            for ln in b.get("lines", []):
                lines.append(ln["text"] if "text" in ln else "".join(s["text"] for s in ln["spans"]))
                spans.extend(s for s in ln["spans"] if s["text"].strip())
            text = join_lines(lines)
            if not text:
                continue
            by_size: Counter = Counter()
            for s in spans:
                by_size[round(s["size"], 1)] += len(s["text"])
                sizes[round(s["size"], 1)] += len(s["text"])
            size = by_size.most_common(1)[0][0]
            n = sum(len(s["text"]) for s in spans) or 1
            bold = sum(len(s["text"]) for s in spans if s["flags"] & 16 or "Bold" in s["font"]) > 0.6 * n
            italic = sum(len(s["text"]) for s in spans if s["flags"] & 2 or "Italic" in s["font"]) > 0.6 * n
            math = sum(len(s["text"]) for s in spans if any(m in s["font"] for m in MATH_FONTS)) > 0.5 * n
            texts.append([r, text, size, bold, italic, len(lines), math])
        body = sizes.most_common(1)[0][0] if sizes else 10.0
        texts = _merge_title_lines(texts, self.title_ratio * body)
        max_size = max((t[2] for t in texts), default=body)

        running = self.running_heads.classify(page, [(t[0], t[1], t[5]) for t in texts]) if self.running_heads else {}
        for k, (r, text, size, bold, italic, n_lines, math) in enumerate(texts):
            rule = self._classify(r, text, size, bold, italic, n_lines, body, max_size, W, H, images, tables, math)
            hinted = self._hinted(r, hints)
            if hinted == "title":
                # A detector's title is any heading (CDLA has one heading class); its level comes
                # from the rules' font sizes, so headings get the same label on pages with and
                # without a detector call.
                hinted = rule if rule in ("title", "sub_title") else "sub_title"
            items.append((running.get(k) or hinted or rule, r, text, n_lines))
        items = merge_equation_pieces(items, body)

        rtl = self._rtl(texts)
        ordered = reading_order(items, W, rtl)
        return [LayoutBlock(lb, tuple(round(v, 2) for v in r), t) for lb, r, t, _ in ordered]

    @staticmethod
    def _hinted(r: pymupdf.Rect, hints) -> str | None:
        """A detector's label for a text block it covers (more than half of the block's area);
        plain text/reference regions leave the block to the rules."""
        best = None
        for lb, h in hints:
            if lb in ("text", "table", "image") or not r.intersects(h):
                continue
            share = (r & h).get_area() / max(r.get_area(), 1e-6)
            if share > 0.5 and (best is None or share > best[1]):
                best = (lb, share)
        return best[0] if best else None

    def _classify(self, r, text, size, bold, italic, n_lines, body, max_size, W, H, images, tables, math=False):
        if r.y1 <= self.band * H or (PAGE_NUMBER.match(text) and r.y1 <= 0.15 * H):
            return "header"
        if r.y0 >= (1 - self.band) * H or (PAGE_NUMBER.match(text) and r.y0 >= 0.85 * H):
            return "footer"
        gap = self.caption_gap * body
        near = None
        for kind, objs in (("image", images), ("table", tables)):
            for o in objs:
                # any horizontal overlap: a short caption set flush left under a centred figure counts
                overlap_x = min(r.x1, o.x1) - max(r.x0, o.x0) > 0
                dy = min(abs(r.y0 - o.y1), abs(o.y0 - r.y1))
                if overlap_x and dy <= gap and (near is None or dy < near[1]):
                    near = (kind, dy)
        if near and n_lines <= 4 and (CAPTION_WORDS.match(text) or size < 0.95 * body or italic):
            return f"{near[0]}_caption"
        if math and n_lines <= 4:  # set mostly in math fonts: a display equation, whatever its size
            return "equation"
        if n_lines <= 3 and len(text) <= 200:
            if size >= self.title_ratio * body:
                return "title" if size >= max(1.6 * body, max_size - 0.01) else "sub_title"
            if bold and size >= 1.1 * body:
                return "sub_title"
        # A heading set in bold at body size (\subsubsection, \paragraph on its own line): a
        # short bold block that does not read as a sentence.
        if bold and n_lines <= 2 and len(text) <= 120 and size >= 0.95 * body and not text.rstrip().endswith((".", ",", ";")):
            return "sub_title"
        if LIST_MARK.match(text):
            return "list"
        return "text"

    @staticmethod
    def _rtl(texts) -> bool:
        return is_rtl(t[1] for t in texts)
