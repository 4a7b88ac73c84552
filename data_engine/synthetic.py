"""Synthetic multilingual PDF pages with exact ground truth (text + layout boxes).

Running text from a corpus (``<lang>.txt`` files, optionally an ``index.tsv`` with columns
code, iso639_3, script, direction, name, chars, as in the UDHR corpus) -- or, with no corpus,
pseudo-text drawn from each script's Unicode letters -- is typeset with the system's Noto fonts
through PyMuPDF's HTML ``Story`` engine (HarfBuzz shaping, so Arabic/Hebrew/Indic render
correctly). Pages vary: one or two columns, titles, sub-titles, list items, ruled tables,
figures with captions, running headers and page-number footers, font sizes, page margins.

The ground truth is what the generator placed, not what is extracted afterwards: each block's
rect comes from ``Story.element_positions`` (one-line blocks are narrowed to the measured text
width), its text is the source text. It is written beside each PDF as ``<doc>.gt.json``:
``{"doc_id", "lang", "script", "direction", "pages": [{"page", "page_size", "blocks":
[{"label", "bbox" (PDF points), "text", "lang", "script"}]}]}``. Tables' text is HTML
(``<table><tr><td>..``), as in the fine labels. Generation is deterministic given the seed.

CLI: ``python -m data_engine.synthetic --out DIR [--corpus DIR] [--languages a,b] ...``
"""

from __future__ import annotations

import argparse
import html
import io
import json
import random
import string
import tempfile
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pymupdf

from data_engine.scripts import (
    DEFAULT_LANG, SCRIPTS, find_font, letters, require_fonts, script_info, subset_collection_face,
)

PAGE_SIZES = {"a4": (595.0, 842.0), "letter": (612.0, 792.0), "a5": (420.0, 595.0)}
HEADER_BAND = 0.07  # header/footer live in the top/bottom 7% of the page (textlayer default)


# --------------------------------------------------------------------------------------
# Text sources
# --------------------------------------------------------------------------------------


@dataclass
class Language:
    code: str  # corpus key (file stem) or script code for pseudo-text
    lang: str  # ISO 639-3 ("und" unknown)
    script: str  # ISO 15924
    direction: str = "ltr"
    paragraphs: list[str] = field(default_factory=list)  # empty -> pseudo-text

    @property
    def pseudo(self) -> bool:
        return not self.paragraphs


def read_corpus(corpus_dir: str | Path, languages: list[str] | None = None) -> list[Language]:
    """Languages of a corpus directory. With ``index.tsv`` its metadata is used; otherwise
    every ``<lang>.txt`` is a language whose script is guessed from its letters."""
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"corpus directory not found: {corpus_dir}")
    meta: dict[str, dict] = {}
    index = corpus_dir / "index.tsv"
    if index.is_file():
        lines = index.read_text(encoding="utf-8").splitlines()
        head = lines[0].split("\t")
        for line in lines[1:]:
            row = dict(zip(head, line.split("\t")))
            meta[row["code"]] = row
    codes = languages or sorted(meta) or sorted(p.stem for p in corpus_dir.glob("*.txt"))
    out = []
    for code in codes:
        path = corpus_dir / f"{code}.txt"
        if not path.is_file():
            raise FileNotFoundError(f"language {code!r}: {path} not found in the corpus")
        paras = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        row = meta.get(code, {})
        script = row.get("script") or guess_script("".join(paras[:20]))
        direction = row.get("direction") or script_info(script).direction
        out.append(Language(code, row.get("iso639_3", code), script, direction, paras))
    return out


_NAME_TO_SCRIPT = {
    "LATIN": "Latn", "CYRILLIC": "Cyrl", "GREEK": "Grek", "ARMENIAN": "Armn", "GEORGIAN": "Geor",
    "ETHIOPIC": "Ethi", "CHEROKEE": "Cher", "CANADIAN": "Cans", "VAI": "Vaii", "YI": "Yiii",
    "TIFINAGH": "Tfng", "HEBREW": "Hebr", "CJK": "Hans", "HIRAGANA": "Jpan", "KATAKANA": "Jpan",
    "HANGUL": "Hang", "ARABIC": "Arab", "SYRIAC": "Syrc", "THAANA": "Thaa", "ADLAM": "Adlm",
    "DEVANAGARI": "Deva", "BENGALI": "Beng", "GURMUKHI": "Guru", "GUJARATI": "Gujr",
    "ORIYA": "Orya", "TAMIL": "Taml", "TELUGU": "Telu", "KANNADA": "Knda", "MALAYALAM": "Mlym",
    "SINHALA": "Sinh", "THAI": "Thai", "LAO": "Laoo", "TIBETAN": "Tibt", "MYANMAR": "Mymr",
    "KHMER": "Khmr", "TAI": "Tavt", "JAVANESE": "Java", "CHAKMA": "Cakm", "GRANTHA": "Gran",
    "MONGOLIAN": "Mong",
}


def guess_script(text: str) -> str:
    """Majority script of the letters of ``text`` (by Unicode character names)."""
    counts: dict[str, int] = {}
    for ch in text:
        if unicodedata.category(ch).startswith("L"):
            word = unicodedata.name(ch, "UNKNOWN").split(" ")[0]
            code = _NAME_TO_SCRIPT.get(word)
            if code:
                counts[code] = counts.get(code, 0) + 1
    if counts.get("Jpan"):  # kana anywhere makes Han text Japanese
        counts["Jpan"] += counts.pop("Hans", 0)
    return max(counts, key=counts.get) if counts else "Latn"


def pseudo_languages(scripts: list[str] | None = None) -> list[Language]:
    """One pseudo-text language per script (scripts whose font is installed by default)."""
    codes = scripts or [s for s in SCRIPTS if find_font(SCRIPTS[s].font) is not None]
    return [Language(s, DEFAULT_LANG.get(s, "und"), s, script_info(s).direction) for s in codes]


class TextSource:
    """Paragraphs and short phrases in one language, deterministic given ``rng``."""

    def __init__(self, lang: Language, rng: random.Random):
        self.lang, self.rng = lang, rng
        self.info = script_info(lang.script)
        self.pos = rng.randrange(len(lang.paragraphs)) if lang.paragraphs else 0

    def _words(self, n: int) -> list[str]:
        if self.lang.pseudo:
            alpha = letters(self.lang.script)
            lo, hi = (1, 3) if not self.info.spaced else (2, 8)
            return ["".join(self.rng.choice(alpha) for _ in range(self.rng.randint(lo, hi)))
                    for _ in range(n)]
        words = self._next_para().split()
        # CJK, and Thai/Lao/Khmer/Myanmar lines (no spaces between words): character runs.
        if not self.info.spaced or sum(map(len, words)) > 15 * len(words):
            text = "".join(words)
            k = self.rng.randint(0, max(0, len(text) - 2 * n))
            return list(text[k:k + 2 * n])
        k = self.rng.randint(0, max(0, len(words) - n))
        return words[k:k + n]

    def _next_para(self) -> str:
        p = self.lang.paragraphs[self.pos % len(self.lang.paragraphs)]
        self.pos += 1
        return p

    def join(self, words: list[str]) -> str:
        return ("" if not self.info.spaced else " ").join(words)

    def phrase(self, lo: int = 2, hi: int = 7) -> str:
        text = self.join(self._words(self.rng.randint(lo, hi))).strip() or "x"
        return text[:60].strip()  # titles/cells must fit a line-wrappable width

    def paragraph(self, max_chars: int) -> str:
        if self.lang.pseudo:
            n_sent = self.rng.randint(1, 4)
            sents = [self.join(self._words(self.rng.randint(4, 12))) for _ in range(n_sent)]
            text = (("。" if not self.info.spaced else ". ").join(sents)) + ("。" if not self.info.spaced else ".")
        else:
            text = self._next_para()
        if len(text) > max_chars:  # cut long paragraphs at a word boundary
            cut = text.rfind(" ", 0, max_chars) if self.info.spaced else max_chars
            text = text[: cut if cut > max_chars // 2 else max_chars]
        return text.strip()


# --------------------------------------------------------------------------------------
# Page layout
# --------------------------------------------------------------------------------------


@dataclass
class Block:
    label: str  # title, sub_title, text, list, table, table_caption, image, image_caption
    text: str  # source text (tables: HTML)
    html: str = ""  # its HTML element (id filled in at layout time)
    cells: list[list[str]] | None = None  # tables
    height: float = 0.0  # images: reserved height
    keep_with_next: bool = False  # captions above tables stay with them


def _table_html(rows: list[list[str]]) -> str:
    return "<table>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    ) + "</table>"


def _blocks_for_page(src: TextSource, rng: random.Random, col_w: float, first: bool, n: list[int]):
    """A stream of candidate blocks for one page (more than fit; the rest is dropped)."""
    blocks = []
    if first:
        blocks.append(Block("title", src.phrase(2, 6)))
    for _ in range(40):
        r = rng.random()
        if r < 0.55:
            blocks.append(Block("text", src.paragraph(rng.choice([200, 400, 700]))))
        elif r < 0.67:
            blocks.append(Block("sub_title", src.phrase(2, 5)))
        elif r < 0.77:
            numbered = rng.random() < 0.5
            for i in range(rng.randint(2, 4)):
                mark = f"{i + 1}." if numbered else "•"
                blocks.append(Block("list", f"{mark} {src.paragraph(rng.choice([60, 120]))}"))
        elif r < 0.88:
            n[0] += 1
            n_rows, n_cols = rng.randint(2, 4), rng.randint(2, 3 if col_w < 300 else 4)
            rows = [[src.phrase(1, 2) for _ in range(n_cols)] for _ in range(n_rows)]
            cap = src.phrase(3, 8)
            if rng.random() < 0.5:
                cap = f"Table {n[0]}: {cap}"
            blocks.append(Block("table_caption", cap, keep_with_next=True))
            blocks.append(Block("table", _table_html(rows), cells=rows))
        else:
            n[1] += 1
            blocks.append(Block("image", "", height=rng.uniform(0.25, 0.5) * col_w))
            cap = src.phrase(3, 8)
            if rng.random() < 0.5:
                cap = f"Figure {n[1]}: {cap}"
            blocks.append(Block("image_caption", cap))
    return blocks


_TAG = {"title": "h1", "sub_title": "h2", "text": "p", "list": "p", "table_caption": "p",
        "image_caption": "p"}


def _element(b: Block, bid: str) -> str:
    if b.label == "table":
        cells = "".join(
            "<tr>" + "".join(f'<td id="{bid}c{i}_{j}">{html.escape(c)}</td>' for j, c in enumerate(r)) + "</tr>"
            for i, r in enumerate(b.cells)
        )
        return f'<table id="{bid}">{cells}</table>'
    if b.label == "image":
        return f'<div id="{bid}" style="height:{b.height:.1f}pt"></div>'
    cls = ' class="cap"' if b.label.endswith("caption") else ""
    return f'<{_TAG[b.label]} id="{bid}"{cls}>{html.escape(b.text)}</{_TAG[b.label]}>'


class PageWriter:
    """Lays blocks into rects with one ``Story`` per rect; records element rects."""

    def __init__(self, lang: Language, body_size: float, archive: pymupdf.Archive,
                 regular: str, bold: str | None):
        faces = f"@font-face {{font-family: body; src: url({regular});}}\n"
        if bold:
            faces += f"@font-face {{font-family: body; font-weight: bold; src: url({bold});}}\n"
        # Under dir="rtl" MuPDF treats text-align left/right as start/end (it flips them), so
        # RTL pages rely on the natural start alignment (right) instead of an explicit value.
        align = "" if lang.direction == "rtl" else " text-align: left;"
        s = body_size
        self.css = faces + (
            f"* {{font-family: body; margin: 0; padding: 0; font-size: {s}pt; line-height: 1.3;{align}}}\n"
            f"h1 {{font-size: {1.8 * s:.1f}pt; font-weight: bold; margin-bottom: {s}pt;}}\n"
            f"h2 {{font-size: {1.3 * s:.1f}pt; font-weight: bold; margin-bottom: {0.5 * s}pt;}}\n"
            f"p {{margin-bottom: {0.6 * s}pt;}}\n"
            f"p.cap {{font-size: {0.85 * s:.1f}pt; font-style: italic; margin-bottom: {0.8 * s}pt;}}\n"
            f"table {{border-collapse: collapse; margin-bottom: {0.8 * s}pt;}}\n"
            f"td {{padding: 3pt; font-size: {0.9 * s:.1f}pt;}}\n"
            f"div {{margin-bottom: {0.3 * s}pt;}}\n"
        )
        self.dir_attr = ' dir="rtl"' if lang.direction == "rtl" else ""
        self.archive = archive

    def _story(self, blocks: list[Block], ids: list[str], center: bool = False) -> pymupdf.Story:
        body = "".join(_element(b, i) for b, i in zip(blocks, ids))
        css = self.css + ("* {text-align: center;}" if center else "")  # MuPDF: no inheritance
        return pymupdf.Story(f"<body{self.dir_attr}>{body}</body>", user_css=css, archive=self.archive)

    def _fits(self, rect: pymupdf.Rect, blocks: list[Block], prefix: str) -> bool:
        story = self._story(blocks, [f"{prefix}{k}" for k in range(len(blocks))])
        more, _ = story.place(rect)
        if more:
            return False
        # MuPDF places an unsplittable box (a fixed-height figure div) past the rect's bottom
        # without reporting overflow: check every element's rect too.
        bottoms = []
        story.element_positions(lambda p: bottoms.append(p.rect[3]) if p.id else None, {})
        return all(b <= rect.y1 + 0.5 for b in bottoms)

    def fit(self, rect: pymupdf.Rect, blocks: list[Block], prefix: str) -> int:
        """How many leading blocks fit entirely in ``rect`` (captions stay with their table)."""
        lo, hi = 0, min(len(blocks), 30)
        while lo < hi:  # binary search over the prefix length: placement is monotone
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self._fits(rect, blocks[:mid], prefix) else (lo, mid - 1)
        while lo > 0 and blocks[lo - 1].keep_with_next:
            lo -= 1
        return lo

    def draw(self, dev, rect: pymupdf.Rect, blocks: list[Block], prefix: str,
             center: bool = False) -> dict[str, pymupdf.Rect]:
        ids = [f"{prefix}{k}" for k in range(len(blocks))]
        story = self._story(blocks, ids, center)
        story.place(rect)
        pos: dict[str, pymupdf.Rect] = {}

        def cb(p):
            if p.id and p.open_close & 2:
                pos[p.id] = pymupdf.Rect(p.rect)

        story.element_positions(cb, {})
        story.draw(dev)
        return pos


def _tight(rect: pymupdf.Rect, text: str, font: pymupdf.Font, size: float, rtl: bool, center=False):
    """Narrow a one-line block's rect to its measured text width (the element spans the column)."""
    w = font.text_length(text, fontsize=size)
    if w >= rect.width:
        return rect
    if center:
        x0 = rect.x0 + (rect.width - w) / 2
        return pymupdf.Rect(x0, rect.y0, x0 + w, rect.y1)
    if rtl:
        return pymupdf.Rect(rect.x1 - w, rect.y0, rect.x1, rect.y1)
    return pymupdf.Rect(rect.x0, rect.y0, rect.x0 + w, rect.y1)


def _figure_png(rng: random.Random, w: int, h: int) -> bytes:
    """A simple synthetic chart-like picture (bars on a tinted background)."""
    pix = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, w, h), False)
    pix.set_rect(pix.irect, tuple(rng.randint(200, 250) for _ in range(3)))
    n = rng.randint(3, 8)
    bw = max(1, w // (2 * n + 1))
    for i in range(n):
        bh = rng.randint(h // 6, h - 4)
        color = tuple(rng.randint(30, 200) for _ in range(3))
        pix.set_rect(pymupdf.IRect((2 * i + 1) * bw, h - bh, (2 * i + 2) * bw, h), color)
    return pix.tobytes("png")


def make_document(lang: Language, out_path: Path, n_pages: int, seed: int,
                  page_size: tuple[float, float] = PAGE_SIZES["a4"]) -> dict:
    """Typeset one document; write the PDF and ``<stem>.gt.json``; return the ground truth."""
    require_fonts([lang.script])
    rng = random.Random(seed)
    info = script_info(lang.script)
    W, H = page_size
    src = TextSource(lang, rng)
    body_size = rng.choice([9.0, 10.0, 11.0, 12.0]) * min(1.0, W / 595.0 + 0.15)
    rtl = lang.direction == "rtl"
    doc_title = src.phrase(2, 5)
    counters = [0, 0]
    # Page geometry and candidate blocks first: a font collection is subset to their text.
    plans = []
    for pno in range(n_pages):
        mx, my = rng.uniform(0.07, 0.11) * W, rng.uniform(0.085, 0.11) * H
        n_cols = 2 if W >= 400 and rng.random() < 0.4 else 1
        gap = 0.04 * W
        col_w = (W - 2 * mx - (n_cols - 1) * gap) / n_cols
        plans.append((mx, my, n_cols, gap, col_w, _blocks_for_page(src, rng, col_w, pno == 0, counters)))

    with tempfile.TemporaryDirectory() as tmp:
        regular, bold = find_font(info.font), find_font(info.bold) if info.bold else None
        if regular.suffix.lower() == ".ttc":
            text = doc_title + "".join(b.text for p in plans for b in p[5]) + string.printable
            sub = subset_collection_face(regular, info.face, text, Path(tmp))
            if sub is not None:
                regular = sub
        archive = pymupdf.Archive()
        for d in {p.parent for p in (regular, bold) if p is not None}:
            archive.add(str(d))
        writer = PageWriter(lang, body_size, archive, regular.name, bold.name if bold else None)
        font = pymupdf.Font(fontfile=str(regular))
        buf = io.BytesIO()
        dw = pymupdf.DocumentWriter(buf)
        pages, deferred = [], []  # deferred: tables to rule and images to paint after writing
        for pno, (mx, my, n_cols, gap, col_w, stream) in enumerate(plans):
            gt, dev = [], dw.begin_page(pymupdf.Rect(0, 0, W, H))
            # Running header (the doc title) in the top margin band, drawn first so that the
            # content stream (what text extraction follows) is in reading order like the GT.
            hb = pymupdf.Rect(mx, 0.015 * H, W - mx, my - 2)
            pos = writer.draw(dev, hb, [Block("text", doc_title)], f"p{pno}h")
            if f"p{pno}h0" in pos and pos[f"p{pno}h0"].height > 0:
                gt.append(("header", _tight(pos[f"p{pno}h0"], doc_title, font, body_size, rtl), doc_title))
            top = my
            if stream[0].label == "title":  # the document title spans all columns
                pos = writer.draw(dev, pymupdf.Rect(mx, top, W - mx, H - my), stream[:1], f"p{pno}t")
                tr = pos[f"p{pno}t0"]
                gt.append(("title", _tight(tr, stream[0].text, font, 1.8 * body_size, rtl), stream[0].text))
                top, stream = tr.y1 + body_size, stream[1:]
            for c in range(n_cols):
                x0 = (W - mx - col_w - c * (col_w + gap)) if rtl else (mx + c * (col_w + gap))
                rect = pymupdf.Rect(x0, top, x0 + col_w, H - my)
                k = writer.fit(rect, stream, f"p{pno}c{c}_")
                if k == 0 and stream:  # a block too large for an empty column: drop it
                    stream = stream[1:]
                    k = writer.fit(rect, stream, f"p{pno}c{c}_")
                placed, stream = stream[:k], stream[k:]
                pos = writer.draw(dev, rect, placed, f"p{pno}c{c}_")
                for i, b in enumerate(placed):
                    gt.append(_placed_block(b, f"p{pno}c{c}_{i}", pos, pno, deferred, rng, font, body_size, rtl))
            # Page-number footer inside the bottom margin band (the rect reaches past the text
            # so the paragraph's bottom margin never blocks it).
            foot = str(pno + 1)
            fb = pymupdf.Rect(W / 2 - 40, H - 0.06 * H, W / 2 + 40, H)
            pos = writer.draw(dev, fb, [Block("text", foot)], f"p{pno}f", center=True)
            if f"p{pno}f0" in pos and pos[f"p{pno}f0"].height > 0:
                gt.append(("footer", _tight(pos[f"p{pno}f0"], foot, font, body_size, rtl, center=True), foot))
            dw.end_page()
            pages.append({
                "page": pno, "page_size": [W, H],
                "blocks": [{"label": lb, "bbox": [round(v, 2) for v in r], "text": t,
                            "lang": lang.lang, "script": lang.script} for lb, r, t in gt],
            })
        dw.close()

    doc = pymupdf.open("pdf", buf.getvalue())
    for kind, pno, what in deferred:
        page = doc[pno]
        if kind == "image":
            page.insert_image(what, stream=_figure_png(rng, max(8, int(what.width)), max(8, int(what.height))))
        else:
            for cr in what:
                page.draw_rect(cr + (-3, -3, 3, 3), color=(0, 0, 0), width=0.6)
    if regular.suffix.lower() != ".otf" or not regular.name.endswith("-subset.otf"):
        doc.subset_fonts()  # MuPDF's subsetter (TrueType); collections were subset above
    out_path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(out_path, garbage=3, deflate=True)
    doc.close()
    gt = {"doc_id": out_path.stem, "lang": lang.lang, "script": lang.script,
          "direction": lang.direction, "corpus_code": lang.code, "pseudo_text": lang.pseudo,
          "pages": pages}
    out_path.with_suffix(".gt.json").write_text(json.dumps(gt, ensure_ascii=False, indent=1), encoding="utf-8")
    return gt


def _placed_block(b: Block, bid: str, pos: dict, pno: int, deferred: list, rng: random.Random,
                  font: pymupdf.Font, body_size: float, rtl: bool) -> tuple:
    """Ground truth (label, rect, text) of a block the Story placed; queue its drawing."""
    r = pos[bid]
    if b.label == "image":
        iw = r.width * rng.uniform(0.5, 0.95)
        ir = pymupdf.Rect(r.x0 + (r.width - iw) / 2, r.y0, r.x0 + (r.width + iw) / 2, r.y1)
        deferred.append(("image", pno, ir))
        return ("image", ir, "")
    if b.label == "table":
        cells = [pos[f"{bid}c{i}_{j}"] for i in range(len(b.cells)) for j in range(len(b.cells[0]))]
        deferred.append(("table", pno, cells))
        tr = pymupdf.Rect(cells[0])
        for cr in cells:
            tr |= cr + (-3, -3, 3, 3)  # the ruled box includes the cell padding
        return ("table", tr, b.text)
    size = {"title": 1.8, "sub_title": 1.3}.get(b.label, 0.85 if "caption" in b.label else 1.0)
    return (b.label, _tight(r, b.text, font, size * body_size, rtl), b.text)


def generate_corpus(out_dir: str | Path, corpus_dir: str | Path | None = None,
                    languages: list[str] | None = None, n_docs: int = 1, pages_per_doc: int = 2,
                    seed: int = 0, page_size: tuple[float, float] | str = "a4") -> list[Path]:
    """Write ``n_docs`` PDFs per language (+ ``.gt.json``) under ``out_dir``; return PDF paths.

    ``corpus_dir=None`` uses pseudo-text and ``languages`` are ISO 15924 script codes (default:
    every script whose Noto font is installed); otherwise ``languages`` are corpus file stems
    (default: all).
    """
    if isinstance(page_size, str):
        page_size = PAGE_SIZES[page_size.lower()]
    langs = read_corpus(corpus_dir, languages) if corpus_dir else pseudo_languages(languages)
    unknown = [lg.script for lg in langs if lg.script not in SCRIPTS] if not corpus_dir else []
    if unknown:
        raise ValueError(f"unknown script codes {unknown}; known: {sorted(SCRIPTS)}")
    out_dir = Path(out_dir)
    paths = []
    for lg in langs:
        for d in range(n_docs):
            # Seed per (language, doc) so adding a language does not change the others.
            s = zlib.crc32(f"{seed}:{lg.code}:{d}".encode())
            path = out_dir / f"{lg.code}_{d:04d}.pdf"
            make_document(lg, path, pages_per_doc, s, page_size)
            paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder for PDFs and .gt.json sidecars")
    ap.add_argument("--corpus", default=None, help="folder of <lang>.txt (+ optional index.tsv); "
                    "omitted: pseudo-text per script")
    ap.add_argument("--languages", default=None,
                    help="comma-separated corpus codes (or script codes without --corpus)")
    ap.add_argument("--docs", type=int, default=1, help="documents per language")
    ap.add_argument("--pages", type=int, default=2, help="pages per document")
    ap.add_argument("--page-size", default="a4", choices=sorted(PAGE_SIZES))
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    langs = a.languages.split(",") if a.languages else None
    paths = generate_corpus(a.out, a.corpus, langs, a.docs, a.pages, a.seed, a.page_size)
    print(f"wrote {len(paths)} documents to {a.out}")


if __name__ == "__main__":
    main()
