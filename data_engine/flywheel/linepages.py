"""Synthetic line pages with line-level ground truth, for flywheel runs and benchmarks.

Each page holds a few short text lines set with the script's Noto font through MuPDF's HTML
engine (HarfBuzz shaping). The ground truth is what was placed: per line its text and its ink
box (measured on the rendered page, so it is exact for complex-shaping scripts too). Two kinds:

* ``digital``: a born-digital PDF with its text layer (seed pages: the text layer may be exact,
  as for Latin, or garbled, as for Devanagari with vowel signs);
* ``scan``: the same kind of page rasterised and stored as an image-only PDF (no text layer),
  the pages the flywheel exists to label.

The sidecar ``<doc>.gt.json`` has the schema of ``data_engine.synthetic`` (``pages[].blocks[]``
with label ``text``, ``bbox`` in PDF points, ``text``, ``lang``, ``script``) plus ``kind``.
With ``lines_per_block`` above 1 lines are set as paragraphs (one HTML box, explicit line
breaks, which MuPDF's text layer returns as one block); each entry then also has ``block``,
the paragraph's number on its page (``truth_blocks`` gives the paragraphs' boxes and texts).
A paragraph line's ink box is measured on a copy of the paragraph whose other lines are white.

Text is real words of the language (``Vocabulary(source="wordfreq")``, ``words.py``: the
package's frequency lists, no copied sentences) or, as a fallback for languages it lacks,
pseudo-text from the script's own letters: a lexicon of pseudo-words, where scripts with
dependent vowel signs get syllables (consonant + optional sign, conjuncts by virama). MuPDF's
HTML engine shapes the text with HarfBuzz, as a real PDF producer would (conjuncts, reordered
vowel signs, Arabic joining forms and lam-alef: ``tests/test_flywheel_data.py`` checks the
shaped glyph runs), and its text layer comes back as such PDFs' does: Devanagari conjuncts as
stand-in symbols, Arabic as presentation forms (normalised by ``trust.base_text``).
"""

from __future__ import annotations

import json
import random
import unicodedata
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pymupdf

from data_engine.flywheel.words import held_out, real_words
from data_engine.scripts import DEFAULT_LANG, find_font, letters, require_fonts, script_info

# Dependent vowel signs / final marks per script (others: letters only). Values are code points.
SYLLABLE_SIGNS = {
    "Deva": [0x93E, 0x93F, 0x940, 0x941, 0x942, 0x947, 0x948, 0x94B, 0x94C, 0x902],
    "Beng": [0x9BE, 0x9BF, 0x9C0, 0x9C1, 0x9C7, 0x9CB, 0x982],
    "Taml": [0xBBE, 0xBBF, 0xBC0, 0xBC1, 0xBC6, 0xBCA],
    "Sinh": [0xDCF, 0xDD0, 0xDD2, 0xDD4, 0xDD9, 0xDDC],
    "Khmr": [0x17B6, 0x17B7, 0x17BB, 0x17C1, 0x17C4, 0x17C6],
    "Thai": [0xE30, 0xE32, 0xE34, 0xE35, 0xE38, 0xE40, 0xE48],
    "Mymr": [0x102C, 0x102D, 0x102F, 0x1031, 0x1036],
}
# Virama / coeng: joins two consonants into a conjunct (shaped into one glyph cluster).
VIRAMA = {"Deva": 0x94D, "Beng": 0x9CD, "Taml": 0xBCD, "Sinh": 0xDCA, "Khmr": 0x17D2, "Mymr": 0x1039}
# Vowel signs drawn left of the consonant they follow in the text (pre-base matras): shaping
# reorders them, and with the virama's conjuncts they are the glyphs a PDF text layer garbles.
PRE_BASE = {"Deva": [0x93F], "Beng": [0x9BF, 0x9C7, 0x9C8], "Taml": [0xBC6, 0xBC7, 0xBC8],
            "Sinh": [0xDD9, 0xDDA, 0xDDB], "Khmr": [0x17C1, 0x17C2, 0x17C3], "Mymr": [0x1031]}
# Independent vowels / letters that do not take a sign (their ranges start with them).
_NO_SIGN = {"Deva": range(0x904, 0x915), "Beng": range(0x985, 0x995), "Taml": range(0xB85, 0xB95),
            "Sinh": range(0xD85, 0xD9A)}


@dataclass(frozen=True)
class LineLanguage:
    """A language of a flywheel run: ISO 639-3 code + ISO 15924 script (pseudo-text)."""

    lang: str
    script: str

    @classmethod
    def parse(cls, spec: str) -> "LineLanguage":
        """``"eng-Latn"`` (BCP 47 style; ``"eng:Latn"`` too), or a bare script code (``"Deva"``)
        with its default language."""
        lang, _, script = spec.replace(":", "-").partition("-")
        if not script:
            lang, script = DEFAULT_LANG.get(spec, "und"), spec
        return cls(lang, script)


@lru_cache(maxsize=None)
def lexicon(script: str, size: int = 300, seed: int = 0) -> tuple[str, ...]:
    """``size`` distinct pseudo-words of ``script`` (deterministic)."""
    rng = random.Random(zlib.crc32(f"lexicon:{script}:{seed}".encode()))
    info = script_info(script)
    alpha = [c for c in letters(script) if script != "Latn" or c.isascii()]
    if script == "Latn":
        alpha = [c for c in alpha if c.islower()]
    signs = [chr(c) for c in SYLLABLE_SIGNS.get(script, [])]
    no_sign = {chr(c) for c in _NO_SIGN.get(script, ())}
    lo, hi = (2, 7) if script == "Latn" else ((1, 3) if signs or not info.spaced else (2, 5))
    words: set[str] = set()
    while len(words) < size:
        parts = []
        for _ in range(rng.randint(lo, hi)):
            c = rng.choice(alpha)
            if script in VIRAMA and c not in no_sign and rng.random() < 0.2:
                nxt = rng.choice(alpha)
                if nxt not in no_sign:  # a conjunct: consonant + virama + consonant
                    c += chr(VIRAMA[script]) + nxt
            if signs and c[-1] not in no_sign and rng.random() < 0.5:
                c += rng.choice(signs)
            parts.append(c)
        words.add(unicodedata.normalize("NFC", "".join(parts)))
    return tuple(sorted(words))


@dataclass(frozen=True)
class Vocabulary:
    """The words lines draw from. ``source="wordfreq"``: real words of the language
    (``words.real_words``: its ``size`` most frequent words; seed 0 = the training words,
    ``UNSEEN`` = the held-out ones, a fixed per-word split), falling back to pseudo-words for a
    language wordfreq lacks. ``source="pseudo"``: lexicon ``seed`` of ``size`` pseudo-words;
    another seed gives words none of its (same size) words are. Either way the ``UNSEEN``
    words are none of the training words: the CER on them measures reading letters, not
    recognising the training pages' words."""

    size: int = 300
    seed: int = 0
    source: str = "pseudo"  # wordfreq | pseudo
    shaped: bool = False  # only the words with a shaped sign (``shaped_signs``: pre-base vowel sign, virama)

    def real(self, lang: str, script: str) -> bool:
        """Does ``lang`` get real words (else pseudo-words)?"""
        return self.source == "wordfreq" and real_words(lang, script, self.size) is not None

    def words(self, script: str, lang: str = "") -> tuple[str, ...]:
        if self.real(lang, script):
            words = (_pool_words(lang, script, self.size) if self.seed == POOL
                     else _split_words(lang, script, self.size, self.seed == UNSEEN))
        else:
            words = _vocabulary_words(script, self.size, self.seed)
        if self.shaped:
            signs = shaped_signs(script)
            words = tuple(w for w in words if signs.intersection(w))
        return words


def shaped_signs(script: str) -> frozenset[str]:
    """The signs whose glyphs shaping reorders or joins (pre-base vowel signs, the virama that
    makes conjuncts): the text layer of a shaped PDF returns them garbled, so trusted text-layer
    lines never hold them. Empty for scripts without them (Latin, Cyrillic, Greek, Arabic)."""
    return frozenset(chr(c) for c in PRE_BASE.get(script, []) + ([VIRAMA[script]] if script in VIRAMA else []))


UNSEEN = 1  # the lexicon seed of the unseen-word gold pages
# the lexicon seed of pages to label with words of their own (flywheel.pool_words=own): wordfreq's
# next ``size`` words after the training and unseen ones, held-out ones left out; pseudo-words
# of another lexicon
POOL = 2
WORD_SOURCES = ("wordfreq", "pseudo")
POOL_WORDS = ("seed", "own")  # flywheel.pool_words


@lru_cache(maxsize=None)
def _split_words(lang: str, script: str, size: int, unseen: bool) -> tuple[str, ...]:
    return tuple(w for w in real_words(lang, script, size) if held_out(w) == unseen)


@lru_cache(maxsize=None)
def _pool_words(lang: str, script: str, size: int) -> tuple[str, ...]:
    more = real_words(lang, script, 2 * size) or ()
    return tuple(w for w in more[size:] if not held_out(w)) or _split_words(lang, script, size, False)


@lru_cache(maxsize=None)
def _vocabulary_words(script: str, size: int, seed: int) -> tuple[str, ...]:
    words = lexicon(script, size, seed)
    # short pseudo-words of two lexicons can coincide: the training (and unseen) lexicons' are left out
    others = set(lexicon(script, size, 0)) | (set(lexicon(script, size, UNSEEN)) if seed == POOL else set())
    return words if seed == 0 else tuple(w for w in words if w not in others)


def make_line(rng: random.Random, script: str, lo: int = 2, hi: int = 4, vocab: Vocabulary = Vocabulary(),
              lang: str = "") -> str:
    words = vocab.words(script, lang)
    words = [rng.choice(words) for _ in range(rng.randint(lo, hi))]
    return (" " if script_info(script).spaced else "").join(words)


def _ink_box(pix: pymupdf.Pixmap, band: pymupdf.Rect, zoom: float, pad: float = 1.0) -> pymupdf.Rect | None:
    """Tight box (points) of the dark pixels of ``pix`` inside ``band`` (points)."""
    import numpy as np

    a = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, pix.n)[..., 0]
    y0, y1 = max(0, int(band.y0 * zoom)), min(pix.height, int(band.y1 * zoom) + 1)
    x0, x1 = max(0, int(band.x0 * zoom)), min(pix.width, int(band.x1 * zoom) + 1)
    ink = a[y0:y1, x0:x1] < 160
    if not ink.any():
        return None
    ys, xs = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    return pymupdf.Rect((x0 + xs[0]) / zoom - pad, (y0 + ys[0]) / zoom - pad,
                        (x0 + xs[-1] + 1) / zoom + pad, (y0 + ys[-1] + 1) / zoom + pad)


def truth_blocks(lines: list[dict]) -> list[dict]:
    """A page's ground-truth blocks from its line entries: lines sharing ``block`` form one
    block (box = union of the lines' boxes, text = their texts joined by newlines, in order);
    a line without ``block`` is a block of its own."""
    groups: dict = {}
    for i, ln in enumerate(lines):
        groups.setdefault(ln.get("block", ("line", i)), []).append(ln)
    out = []
    for g in groups.values():
        xs0, ys0, xs1, ys1 = zip(*(ln["bbox"] for ln in g))
        out.append({"label": "text", "bbox": [min(xs0), min(ys0), max(xs1), max(ys1)],
                    "text": "\n".join(ln["text"] for ln in g), "lines": len(g)})
    return out


_PARAGRAPH_LEADING = 1.4  # line-height of paragraph lines (MuPDF keeps them in one text block)


def _paragraph_html(texts: list[str], rtl: bool, visible: int | None = None) -> str:
    """Lines joined by explicit breaks; with ``visible``, every other line is drawn white."""
    parts = [t if visible in (None, i) else f'<span style="color:#ffffff">{t}</span>' for i, t in enumerate(texts)]
    return f'<p dir="rtl">{"<br/>".join(parts)}</p>' if rtl else f'<p>{"<br/>".join(parts)}</p>'


def make_line_document(lang: LineLanguage, out_path: str | Path, *, kind: str = "digital",
                       n_pages: int = 1, seed: int = 0, page_size: tuple[float, float] = (420.0, 595.0),
                       lines_per_page: tuple[int, int] = (8, 12), scan_dpi: int = 144,
                       lines_per_block: tuple[int, int] = (1, 1), vocab: Vocabulary = Vocabulary()) -> dict:
    """Write one PDF of line pages (+ ``.gt.json``); return the ground truth. ``lines_per_block``
    (lo, hi): lines per paragraph; (1, 1) sets every line on its own (the default corpus).
    ``vocab``: the pseudo-words the lines draw from."""
    if kind not in ("digital", "scan"):
        raise ValueError(f"kind must be 'digital' or 'scan', got {kind!r}")
    require_fonts([lang.script])
    info = script_info(lang.script)
    font = find_font(info.font)
    rng = random.Random(seed)
    W, H = page_size
    rtl = info.direction == "rtl"
    css = (f"@font-face {{font-family: body; src: url({font.name});}}\n"
           f"* {{font-family: body; margin: 0; padding: 0; text-align: {'right' if rtl else 'left'};}}")
    archive = pymupdf.Archive(str(font.parent))
    fnt = pymupdf.Font(fontfile=str(font))
    doc = pymupdf.open()
    planned = []
    paragraphs = tuple(lines_per_block) != (1, 1)
    zoom = scan_dpi / 72.0
    for _ in range(n_pages):
        page = doc.new_page(width=W, height=H)
        lines, y = [], rng.uniform(30, 50)
        n = rng.randint(*lines_per_page)
        mx = rng.uniform(25, 40)
        while len(lines) < n:
            size = rng.uniform(13, 20)
            if y + 3 * size > H - 30:
                break
            if paragraphs:
                y = _add_paragraph(page, lines, rng, lang.script, rtl, fnt, css, archive, size, mx, y, W, H,
                                   min(rng.randint(*lines_per_block), n - len(lines)), zoom, vocab, lang.lang)
                continue
            text = make_line(rng, lang.script, vocab=vocab, lang=lang.lang)
            if fnt.text_length(text, fontsize=size) > 0.85 * (W - 2 * mx):
                continue  # keep every line on one visual line (shaping may widen it a little)
            # MuPDF's line box is taller than the glyphs: 3 x size always holds one line, and
            # bands that do not overlap keep each line's ink box its own.
            rect = pymupdf.Rect(mx, y, W - mx, y + 3.0 * size)
            html = f'<p dir="rtl">{text}</p>' if rtl else f"<p>{text}</p>"
            spare, _ = page.insert_htmlbox(rect, html, css=css + f"\n* {{font-size: {size:.1f}pt;}}",
                                           archive=archive, scale_low=1)
            y += rect.height + rng.uniform(0.0, 0.5) * size
            if spare >= 0:  # < 0: nothing was written (the width check above prevents it)
                lines.append((text, rect, None, None))
        planned.append(lines)

    pages, out_doc = [], doc if kind == "digital" else pymupdf.open()
    for pno, lines in enumerate(planned):
        pix = doc[pno].get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
        blocks = []
        for text, band, block, ink in lines:  # ink: a paragraph line's box, measured when it was set
            box = ink if block is not None else _ink_box(pix, band, zoom)
            if box is not None:
                blocks.append({"label": "text", "bbox": [round(v, 2) for v in box], "text": text,
                               "lang": lang.lang, "script": lang.script})
                if block is not None:
                    blocks[-1]["block"] = block
        pages.append({"page": pno, "page_size": [W, H], "blocks": blocks})
        if kind == "scan":  # image-only page: the rendered pixels, no text layer
            p = out_doc.new_page(width=W, height=H)
            p.insert_image(p.rect, stream=pix.tobytes("png"))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "digital":
        doc.subset_fonts()
    out_doc.save(out_path, garbage=3, deflate=True)
    out_doc.close()
    if out_doc is not doc:
        doc.close()
    gt = {"doc_id": out_path.stem, "lang": lang.lang, "script": lang.script,
          "direction": info.direction, "kind": kind, "pseudo_text": not vocab.real(lang.lang, lang.script),
          "pages": pages}
    out_path.with_suffix(".gt.json").write_text(json.dumps(gt, ensure_ascii=False, indent=1), encoding="utf-8")
    return gt


def _add_paragraph(page, lines: list, rng: random.Random, script: str, rtl: bool, fnt, css: str, archive,
                   size: float, mx: float, y: float, W: float, H: float, k: int, zoom: float,
                   vocab: Vocabulary = Vocabulary(), lang: str = "") -> float:
    """Set up to ``k`` lines as one paragraph at ``y``; append (text, band, block, ink box) per
    line to ``lines``; return the next paragraph's ``y``."""
    lead = _PARAGRAPH_LEADING * size
    k = max(1, min(k, int((H - 30 - y - 3.0 * size) // lead) + 1))
    texts: list[str] = []
    while len(texts) < k:
        text = make_line(rng, script, vocab=vocab, lang=lang)
        if fnt.text_length(text, fontsize=size) <= 0.85 * (W - 2 * mx):
            texts.append(text)
    rect = pymupdf.Rect(mx, y, W - mx, y + (k - 1) * lead + 3.0 * size)
    style = css + f"\n* {{font-size: {size:.1f}pt; line-height: {_PARAGRAPH_LEADING};}}"
    spare, _ = page.insert_htmlbox(rect, _paragraph_html(texts, rtl), css=style, archive=archive, scale_low=1)
    if spare >= 0:
        block = 1 + max((b for _, _, b, _ in lines if b is not None), default=-1)
        scratch = pymupdf.open()
        for i, text in enumerate(texts):  # the same layout with only line i inked
            sp = scratch.new_page(width=W, height=H)
            sp.insert_htmlbox(rect, _paragraph_html(texts, rtl, visible=i), css=style, archive=archive, scale_low=1)
            own = sp.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
            lines.append((text, rect, block, _ink_box(own, rect, zoom)))
        scratch.close()
    return y + rect.height + rng.uniform(0.0, 0.5) * size


def make_line_corpus(out_dir: str | Path, plan: dict[str, dict[str, int]], *, pages_per_doc: int = 2,
                     seed: int = 0, lines_per_block: tuple[int, int] = (1, 1),
                     vocab: Vocabulary = Vocabulary()) -> list[Path]:
    """``plan`` = {language spec: {kind: number of documents}}; writes ``{lang}_{kind}_{i}.pdf``
    (lines drawn from ``vocab``).

    Seeds are per (seed, language, kind, index), so adding a language or documents changes
    nothing that was already planned. Files already there are kept (whatever their settings).
    """
    paths = []
    for spec, kinds in plan.items():
        lang = LineLanguage.parse(spec)
        for kind, n in kinds.items():
            for i in range(int(n)):
                s = zlib.crc32(f"{seed}:{lang.lang}:{lang.script}:{kind}:{i}".encode())
                path = Path(out_dir) / f"{lang.lang}_{lang.script}_{kind}_{i:04d}.pdf"
                if not (path.is_file() and path.with_suffix(".gt.json").is_file()):
                    make_line_document(lang, path, kind=kind, n_pages=pages_per_doc, seed=s,
                                       lines_per_block=lines_per_block, vocab=vocab)
                paths.append(path)
    return paths
