"""Reading pages: drawn pages that can only be read, not matched against a template.

The easy pages (``data_engine/easy_pages.py``) put one Courier-Bold capital in each 64-px
vision-token column; a model trained on them learns where each letter sits and what it looks
like in that one font, and fails on a shifted page or another font. Reading pages draw text

* in many fonts: the installed DejaVu, Noto and Liberation families, the PDF base-14 Courier,
  Times and Helvetica, matplotlib's STIX; serif, sans and mono; regular, bold and italic
  (``FAMILIES``);
* anywhere on the page: each line at its own random offset over the whole free width and
  height (offsets of one or more 64-px tokens), so letters straddle token borders;
* at a range of sizes and line spacings, with a varying number of letters and lines;
* as random capitals and digits (``kind="caps"``, rung A of the ladder in docs/training.md) or
  as real words from a word list (``kind="words"``, rung B: ``wordfreq``'s English list, case
  mixed: lower, Capitalised, UPPER).

What is held out is decided by construction, never by sampling: ``HELDOUT_FAMILIES`` (one sans,
one serif, one mono design, each with its metric clones) are never drawn on training pages;
``heldout_sizes`` lie outside the training size range; the word list is split by a hash of
the word (``word_split``), so no held-out word appears on a training page. A split is a
``ReadingSpec``; ``splits(spec)`` derives the held-out ones from a training spec.

Each page is a born-digital PDF page (one text-show operation per line, so the text layer holds
each line exactly) that goes through the real engine (PyMuPDF render -> coarse labels ->
shards) like every other page; the drawn text is written beside each PDF as ``<doc>.gt.json``.

CLI: ``python -m data_engine.reading_pages --out DIR --kind caps --train-pages 4000``
builds the training split, the held-out splits and a tokenizer (``build_reading_dataset``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import pymupdf

# capitals and digits without look-alikes (I/1, O/0/Q), so a reading error is a reading error
CAPS_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ23456789"

# family -> (design, {style: font}); a font is a PDF base-14 name or a font file name looked up in
# the system and matplotlib font folders. Metric clones share a design (Liberation Sans is drawn
# to Helvetica's widths): a held-out design is held out with all its clones.
FAMILIES: dict[str, tuple[str, dict[str, str]]] = {
    "Courier": ("courier", {"regular": "cour", "bold": "cobo", "italic": "coit", "bold-italic": "cobi"}),
    "Times": ("times", {"regular": "tiro", "bold": "tibo", "italic": "tiit", "bold-italic": "tibi"}),
    "Liberation Serif": ("times", {"regular": "LiberationSerif-Regular.ttf", "bold": "LiberationSerif-Bold.ttf",
                                   "italic": "LiberationSerif-Italic.ttf",
                                   "bold-italic": "LiberationSerif-BoldItalic.ttf"}),
    "STIX General": ("stix", {"regular": "STIXGeneral.ttf", "bold": "STIXGeneralBol.ttf",
                              "italic": "STIXGeneralItalic.ttf", "bold-italic": "STIXGeneralBolIta.ttf"}),
    "DejaVu Sans": ("dejavu-sans", {"regular": "DejaVuSans.ttf", "bold": "DejaVuSans-Bold.ttf",
                                    "italic": "DejaVuSans-Oblique.ttf", "bold-italic": "DejaVuSans-BoldOblique.ttf",
                                    "condensed": "DejaVuSansCondensed.ttf",
                                    "condensed-bold": "DejaVuSansCondensed-Bold.ttf"}),
    "DejaVu Serif": ("dejavu-serif", {"regular": "DejaVuSerif.ttf", "bold": "DejaVuSerif-Bold.ttf",
                                      "italic": "DejaVuSerif-Italic.ttf", "bold-italic": "DejaVuSerif-BoldItalic.ttf",
                                      "condensed": "DejaVuSerifCondensed.ttf"}),
    "DejaVu Sans Mono": ("dejavu-mono", {"regular": "DejaVuSansMono.ttf", "bold": "DejaVuSansMono-Bold.ttf",
                                         "italic": "DejaVuSansMono-Oblique.ttf",
                                         "bold-italic": "DejaVuSansMono-BoldOblique.ttf"}),
    "Noto Sans": ("noto-sans", {"regular": "NotoSans-Regular.ttf", "bold": "NotoSans-Bold.ttf",
                                "italic": "NotoSans-Italic.ttf", "bold-italic": "NotoSans-BoldItalic.ttf"}),
    # held out (HELDOUT_FAMILIES)
    "Helvetica": ("helvetica", {"regular": "helv", "bold": "hebo", "italic": "heit", "bold-italic": "hebi"}),
    "Liberation Sans": ("helvetica", {"regular": "LiberationSans-Regular.ttf", "bold": "LiberationSans-Bold.ttf",
                                      "italic": "LiberationSans-Italic.ttf",
                                      "bold-italic": "LiberationSans-BoldItalic.ttf"}),
    "Noto Serif": ("noto-serif", {"regular": "NotoSerif-Regular.ttf", "bold": "NotoSerif-Bold.ttf",
                                  "italic": "NotoSerif-Italic.ttf", "bold-italic": "NotoSerif-BoldItalic.ttf"}),
    "Noto Serif Display": ("noto-serif", {"regular": "NotoSerifDisplay-Regular.ttf",
                                          "bold": "NotoSerifDisplay-Bold.ttf"}),
    "Liberation Mono": ("liberation-mono", {"regular": "LiberationMono-Regular.ttf", "bold": "LiberationMono-Bold.ttf",
                                            "italic": "LiberationMono-Italic.ttf",
                                            "bold-italic": "LiberationMono-BoldItalic.ttf"}),
}
# one sans, one serif and one mono design, never drawn on a training page
HELDOUT_DESIGNS = ("helvetica", "noto-serif", "liberation-mono")
HELDOUT_FAMILIES = tuple(f for f, (d, _) in FAMILIES.items() if d in HELDOUT_DESIGNS)
TRAIN_FAMILIES = tuple(f for f in FAMILIES if f not in HELDOUT_FAMILIES)
BASE14 = {"cour", "cobo", "coit", "cobi", "tiro", "tibo", "tiit", "tibi", "helv", "hebo", "heit", "hebi"}


# Debian's fonts-liberation and fonts-dejavu-core folders (scripts/setup_fonts.sh installs them);
# then the Noto folders (OCRFLOW_FONT_DIRS) and matplotlib's bundled DejaVu and STIX
SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/liberation", "/usr/share/fonts/truetype/dejavu")


@lru_cache(maxsize=None)
def font_file(name: str) -> str | None:
    """Path of a font file by file name, None when it is not installed."""
    from data_engine.sources.fonts import font_path

    for d in SYSTEM_FONT_DIRS:
        if (Path(d) / name).is_file():
            return str(Path(d) / name)
    return font_path(name)


def available_faces(families: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(family, style, font) of every installed face of ``families``; a missing file is left out."""
    faces = [(fam, style, f) for fam in families for style, f in FAMILIES[fam][1].items()
             if f in BASE14 or font_file(f)]
    if not faces:
        raise RuntimeError(f"none of the fonts of {families} is installed (scripts/setup_fonts.sh)")
    return faces


@lru_cache(maxsize=64)
def _font(name: str) -> pymupdf.Font:
    return pymupdf.Font(name) if name in BASE14 else pymupdf.Font(fontfile=font_file(name))


@lru_cache(maxsize=1)
def english_words(n: int = 20000) -> tuple[str, ...]:
    """The ``n`` most frequent English words of ``wordfreq`` that are plain letters, 2-10 long."""
    from wordfreq import top_n_list

    return tuple(w for w in top_n_list("en", n) if w.isascii() and w.isalpha() and 2 <= len(w) <= 10)


def word_split(word: str) -> str:
    """"train" or "heldout" by a hash of the lower-cased word: one in eight words is held out."""
    return "heldout" if hashlib.sha1(word.lower().encode()).digest()[0] % 8 == 0 else "train"


@lru_cache(maxsize=2)
def split_words(split: str) -> tuple[str, ...]:
    """The words of ``english_words`` in one split (built once: a page draws from it)."""
    return tuple(w for w in english_words() if word_split(w) == split)


CAPS_LINE_GAP, WORDS_LINE_GAP = (0.85, 1.5), (1.1, 1.8)
# a line's ink below its top, in em: cap height (~0.75) for capitals and digits, + descenders for words
CAPS_EXTENT, WORDS_EXTENT = 0.8, 1.1


@dataclass(frozen=True)
class ReadingSpec:
    kind: str = "caps"  # "caps": random capitals and digits; "words": words of the word list
    size: float = 256.0  # page side in points (= pixels at 72 dpi): the micro view
    chars: tuple[int, int] = (4, 16)  # caps: letters per page
    words: tuple[int, int] = (2, 6)  # words: words per page
    max_lines: int = 4
    font_sizes: tuple[float, float] = (20.0, 40.0)  # points (= pixels) per em
    line_gap: tuple[float, float] | None = None  # baseline-to-baseline in em; None: by kind (CAPS_/WORDS_LINE_GAP)
    families: tuple[str, ...] = TRAIN_FAMILIES
    word_split: str = "train"
    alphabet: str = CAPS_ALPHABET
    # "free": each line anywhere, letters at the font's own advance; "grid" (caps only, the
    # curriculum's first step): one letter per ``cell``-px vision token, each line moved by up
    # to ``jitter`` px in x (the page's lines together in y), letters a space apart in the text (so the label has them too);
    # "rows" (caps only, between the two): letters at the font's own advance, each line anywhere
    # along its row of tokens but centred in it (moved by up to ``jitter`` px in y, the page's lines together)
    layout: str = "free"
    cell: float = 64.0
    jitter: float = 20.0
    pitch: float | None = None  # grid: letter pitch along a line (None: the cell; 32: two letters per token)

    def __post_init__(self) -> None:
        if self.kind not in ("caps", "words"):
            raise ValueError(f"reading pages are 'caps' or 'words', got {self.kind!r}")
        if self.layout not in ("free", "grid", "rows") or (self.layout != "free" and self.kind != "caps"):
            raise ValueError(f"layout is 'free', 'grid' or 'rows' (caps only), got {self.layout!r} for {self.kind!r}")
        if self.layout != "free" and not (0 <= self.jitter < self.cell / 2 and self.cell <= self.size):
            raise ValueError(f"grid jitter must lie in [0, cell/2) and the cell fit the page, got "
                             f"jitter {self.jitter}, cell {self.cell}, page {self.size}")
        if not (1 <= self.chars[0] <= self.chars[1]) or not (1 <= self.words[0] <= self.words[1]):
            raise ValueError(f"letter and word counts need 1 <= min <= max, got {self.chars}, {self.words}")
        top = 1.25 * self.cell if self.layout != "free" else self.size / 2  # a grid letter fills its cell
        if not (4 <= self.font_sizes[0] <= self.font_sizes[1] <= top):
            raise ValueError(f"font sizes must lie in [4, {top:g}] ({'1.25 x cell' if self.layout != 'free' else 'size/2'}), "
                             f"got {self.font_sizes}")
        if self.line_gap is None:  # capitals have no descenders: their lines may sit closer
            object.__setattr__(self, "line_gap", CAPS_LINE_GAP if self.kind == "caps" else WORDS_LINE_GAP)
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown font families {unknown}; known: {sorted(FAMILIES)}")


def page_spec(kind: str = "caps", size: float = 256.0, **kw) -> ReadingSpec:
    """The training spec of a page side: font sizes from size / 12.8 to size / 6.4 (20-40 pt on a
    256 pt page) unless given."""
    kw.setdefault("font_sizes", (size / 12.8, size / 6.4))
    return ReadingSpec(kind=kind, size=size, **kw)


def splits(base: ReadingSpec) -> dict[str, ReadingSpec]:
    """The ladder's splits of a training spec; held-out sizes lie below the training range."""
    lo, _ = base.font_sizes
    return {
        "train": base,
        "heldout_fonts": replace(base, families=HELDOUT_FAMILIES, word_split="heldout"),
        "heldout_seen_fonts": replace(base, word_split="heldout"),
        "heldout_sizes": replace(base, font_sizes=(0.7 * lo, 0.85 * lo), word_split="heldout"),
    }


def _line_width(text: str, font: str, fontsize: float) -> float:
    return _font(font).text_length(text, fontsize=fontsize)


def _page_lines(rng: random.Random, spec: ReadingSpec, font: str, fontsize: float) -> list[str] | None:
    """Text of one page broken into lines that fit the width, or None when it does not fit."""
    width = 0.92 * spec.size
    if spec.kind == "caps":
        n = rng.randint(*spec.chars)
        n_lines = rng.randint(1, min(spec.max_lines, n))
        cuts = sorted(rng.sample(range(1, n), n_lines - 1)) if n_lines > 1 else []
        text = "".join(rng.choice(spec.alphabet) for _ in range(n))
        lines = [text[a:b] for a, b in zip([0, *cuts], [*cuts, n])]
    else:
        vocab = split_words(spec.word_split)
        words = [_cased(rng, rng.choice(vocab)) for _ in range(rng.randint(*spec.words))]
        lines, cur = [], ""
        for w in words:  # greedy fill, then a random early break keeps line lengths varied
            cand = f"{cur} {w}" if cur else w
            if cur and (_line_width(cand, font, fontsize) > width or rng.random() < 0.25):
                lines.append(cur)
                cur = w
            else:
                cur = cand
        lines.append(cur)
    if len(lines) > spec.max_lines or any(_line_width(ln, font, fontsize) > width for ln in lines):
        return None
    return lines


def _cased(rng: random.Random, w: str) -> str:
    r = rng.random()
    return w.upper() if r < 0.15 else w.capitalize() if r < 0.5 else w


def _row_baseline(spec: ReadingSpec, row: int, fontsize: float, dy: float) -> float:
    """Baseline of capitals centred in token row ``row`` (cap height ~0.7 em), moved by ``dy``,
    kept on the page."""
    return min(max(row * spec.cell + spec.cell / 2 + 0.35 * fontsize + dy, 0.75 * fontsize), spec.size - 1.0)


def _grid_page(rng: random.Random, spec: ReadingSpec, font: str, fontsize: float) -> list[tuple]:
    """Lines of a grid page: (x of the first letter, baseline, text, x of each letter). A line is
    a run of cells in one row of vision tokens, moved by up to ``jitter`` in x (its own) and y (the page's)."""
    pitch = spec.pitch or spec.cell
    cols, rows = int(spec.size // pitch), int(spec.size // spec.cell)
    n = min(rng.randint(*spec.chars), rows * cols, spec.max_lines * cols)
    n_lines = rng.randint(-(-n // cols), min(spec.max_lines, rows, n))
    parts = [1] * n_lines
    for _ in range(n - n_lines):  # the rest one by one to lines that still have a free cell
        parts[rng.choice([i for i, k in enumerate(parts) if k < cols])] += 1
    placed = []
    dy = rng.uniform(-spec.jitter, spec.jitter)  # one for the page: lines of adjacent rows stay a row apart
    for row, k in zip(sorted(rng.sample(range(rows), n_lines)), parts):
        c0 = rng.randint(0, cols - k)
        dx = rng.uniform(-spec.jitter, spec.jitter)
        letters = [rng.choice(spec.alphabet) for _ in range(k)]
        xs = [min(max((c0 + i) * pitch + (pitch - _line_width(ch, font, fontsize)) / 2 + dx, 1.0),
                  spec.size - _line_width(ch, font, fontsize) - 1.0) for i, ch in enumerate(letters)]
        baseline = _row_baseline(spec, row, fontsize, dy)
        placed.append((xs[0], baseline, " ".join(letters), xs))
    return placed


def _rows_page(rng: random.Random, spec: ReadingSpec, font: str, fontsize: float) -> list[tuple] | None:
    """Lines of a rows page: (x, baseline, text), each line in its own row of vision tokens,
    centred in it (the page's lines moved together by up to ``jitter`` in y) and anywhere along
    it; None when the letters do not fit."""
    rows = int(spec.size // spec.cell)
    lines = _page_lines(rng, replace(spec, max_lines=min(spec.max_lines, rows)), font, fontsize)
    if lines is None:
        return None
    dy = rng.uniform(-spec.jitter, spec.jitter)
    placed = []
    for row, ln in zip(sorted(rng.sample(range(rows), len(lines))), lines):
        w = _line_width(ln, font, fontsize)
        x = rng.uniform(0.02 * spec.size, 0.98 * spec.size - w)
        baseline = _row_baseline(spec, row, fontsize, dy)
        placed.append((x, baseline, ln))
    return placed


def draw_page(rng: random.Random, spec: ReadingSpec, faces: list[tuple[str, str, str]]) -> dict:
    """Pick a face, a size and a text that fits; place each line at its own random offset."""
    if spec.layout == "grid":
        family, style, font = rng.choice(faces)
        fontsize = rng.uniform(*spec.font_sizes)
        return {"family": family, "style": style, "font": font, "fontsize": round(fontsize, 2),
                "lines": _grid_page(rng, spec, font, fontsize)}
    if spec.layout == "rows":
        for _ in range(100):
            family, style, font = rng.choice(faces)
            fontsize = rng.uniform(*spec.font_sizes)
            lines = _rows_page(rng, spec, font, fontsize)
            if lines is not None:
                return {"family": family, "style": style, "font": font, "fontsize": round(fontsize, 2), "lines": lines}
        raise RuntimeError(f"no text fits a {spec.size:g} pt page at sizes {spec.font_sizes}: widen the page")
    for _ in range(100):
        family, style, font = rng.choice(faces)
        fontsize = rng.uniform(*spec.font_sizes)
        lines = _page_lines(rng, spec, font, fontsize)
        if lines is None:
            continue
        gap = rng.uniform(*spec.line_gap) * fontsize
        extent = CAPS_EXTENT if spec.kind == "caps" else WORDS_EXTENT
        height = (len(lines) - 1) * gap + extent * fontsize  # top of the first line to the last one's ink
        if height > 0.96 * spec.size:
            continue
        top = rng.uniform(0.02 * spec.size, 0.98 * spec.size - height)
        placed = []
        for i, ln in enumerate(lines):
            w = _line_width(ln, font, fontsize)
            x = rng.uniform(0.02 * spec.size, 0.98 * spec.size - w)
            placed.append((x, top + 0.85 * fontsize + i * gap, ln))
        return {"family": family, "style": style, "font": font, "fontsize": round(fontsize, 2), "lines": placed}
    raise RuntimeError(f"no text fits a {spec.size:g} pt page at sizes {spec.font_sizes}: widen the page")


def add_page(doc: pymupdf.Document, drawn: dict, spec: ReadingSpec) -> None:
    page = doc.new_page(width=spec.size, height=spec.size)
    font = drawn["font"]
    kw = {"fontname": font} if font in BASE14 else {"fontname": "F" + font.split(".")[0].replace("-", ""),
                                                    "fontfile": font_file(font)}
    for x, baseline, text, *xs in drawn["lines"]:
        if not xs:  # free layout: one text-show operation per line
            page.insert_text((x, baseline), text, fontsize=drawn["fontsize"], color=(0, 0, 0), **kw)
            continue
        letters = text.split(" ")
        for i, (ch, xi) in enumerate(zip(letters, xs[0])):  # grid: each letter in its cell, a space glyph after it
            page.insert_text((xi, baseline), ch if i == len(letters) - 1 else ch + " ", fontsize=drawn["fontsize"],
                             color=(0, 0, 0), **kw)


def write_reading_pdfs(out: str | Path, docs: int, pages: int, spec: ReadingSpec, seed: int = 0,
                       prefix: str = "reading") -> list[Path]:
    """``docs`` PDFs of ``pages`` pages each (+ ``.gt.json`` with each page's font); deterministic
    given ``seed``, so a PDF already there (with its ``.gt.json``, written last) is kept."""
    if docs < 1 or pages < 1:
        raise ValueError(f"docs and pages must be >= 1, got docs={docs}, pages={pages}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    faces = available_faces(spec.families)
    paths = []
    for d in range(docs):
        rng = random.Random(f"{seed}/{prefix}/{d}")
        doc_id = f"{prefix}-s{seed}-{d:04d}"
        pdf = out / f"{doc_id}.pdf"
        if pdf.is_file() and pdf.with_suffix(".gt.json").is_file():  # written by an earlier run: same bytes
            paths.append(pdf)
            continue
        doc = pymupdf.open()
        gt_pages = []
        for p in range(pages):
            drawn = draw_page(rng, spec, faces)
            add_page(doc, drawn, spec)
            lines = [ln[2] for ln in drawn["lines"]]
            gt_pages.append({"page": p, "lines": lines, "text": "\n".join(lines), "family": drawn["family"],
                             "style": drawn["style"], "fontsize": drawn["fontsize"]})
        tmp = pdf.with_suffix(".pdf.tmp")
        doc.save(tmp, garbage=3, deflate=True, no_new_id=True)
        doc.close()
        tmp.replace(pdf)
        # random capitals are no language ("zxx"); word pages are English
        gt = {"doc_id": doc_id, "lang": "eng" if spec.kind == "words" else "zxx", "script": "Latn",
              "pages": gt_pages}
        (out / f"{doc_id}.gt.json").write_text(json.dumps(gt, ensure_ascii=False, indent=1))
        paths.append(pdf)
    return paths


def build_reading_dataset(out: str | Path, spec: ReadingSpec, train_pages: int, heldout_pages: int = 100,
                          seed: int = 0, pages_per_doc: int = 100, vocab_size: int | None = None,
                          heldout: tuple[str, ...] = ("heldout_fonts", "heldout_seen_fonts", "heldout_sizes"),
                          workers: int | None = None) -> dict:
    """Reading-page PDFs of every split -> the data engine -> shards, + a byte-level BPE trained
    on the training labels. Returns {split: shard glob, "tokenizer": dir}; a re-run reuses the
    engine's finished work. Held-out splits draw from other seeds (pages never seen)."""
    from data_engine.easy_pages import engine_shards, train_labels_tokenizer

    out = Path(out)
    specs = splits(spec)
    paths = {}
    for i, name in enumerate(("train", *heldout)):
        n = train_pages if name == "train" else heldout_pages
        docs = -(-n // pages_per_doc)
        write_reading_pdfs(out / name / "pdfs", docs, min(n, pages_per_doc), specs[name], seed=seed + 1_000_003 * i,
                           prefix=name)
        paths[name] = engine_shards(out / name, workers)
    # caps: close to one token per letter (their pairs are too many and too rare to be tokens);
    # words: merges for frequent word pieces
    vocab = vocab_size or (300 if spec.kind == "caps" else 1024)
    paths["tokenizer"] = train_labels_tokenizer(paths["train"], out / "tokenizer", vocab)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--kind", choices=("caps", "words"), default="caps")
    ap.add_argument("--size", type=float, default=256.0, help="page side in points (256: the micro view)")
    ap.add_argument("--train-pages", type=int, default=4000)
    ap.add_argument("--heldout-pages", type=int, default=100, help="pages of each held-out split")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    paths = build_reading_dataset(a.out, page_spec(a.kind, a.size), a.train_pages, a.heldout_pages, a.seed)
    print("reading-page dataset: " + ", ".join(f"{k} {v}" for k, v in paths.items()))


if __name__ == "__main__":
    main()
