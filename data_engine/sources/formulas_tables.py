"""Formulas and tables: what the paper takes from Word documents (layout-free pairs).

* ``formulas``: random LaTeX formulas (fractions, roots, sums, integrals, limits, scripts,
  accents, Greek letters, delimiters) rendered with matplotlib's mathtext (a LaTeX subset, no
  TeX install) in five math font sets. Label (prompt "Free OCR."): exactly the LaTeX string
  that was rendered (the image is ``mathtext("$" + label + "$")``; tests re-render the label).
* ``tables``: random HTML tables (header rows, merged cells via colspan/rowspan, numbers,
  words, several languages, border and padding styles) rendered with PyMuPDF's HTML Story.
  Label (prompt "Free OCR."): the table's minimal HTML (``htmltable.html_table``); the
  styling CSS is not part of it.
* ``docx``: a user's Word documents (see ``data_engine/sources/docx.py``).
"""

from __future__ import annotations

import io
import random

from PIL import Image, ImageOps

from data_engine.sources.base import GeneratedSample, Skip, Source
from data_engine.sources.htmltable import html_table
from models.prompts import PROMPT_COARSE

GREEK = r"\alpha \beta \gamma \delta \epsilon \theta \lambda \mu \pi \rho \sigma \phi \omega \Omega \Delta \Sigma".split()
LETTERS = list("abcdnxyzkmt") + GREEK
FUNCS = r"\sin \cos \tan \log \ln \exp".split()
RELS = ["=", r"\leq", r"\geq", r"\neq", r"\approx", "<", ">"]
OPS = ["+", "-", r"\cdot", r"\times", r"\pm"]
ACCENTS = [r"\hat", r"\bar", r"\vec", r"\tilde", r"\dot"]
INF = r"\infty"
UPPER = ["n", "N", INF]
MATH_FONTSETS = ("dejavusans", "dejavuserif", "cm", "stix", "stixsans")


def _atom(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        return rng.choice(LETTERS)
    if r < 0.7:
        return str(rng.choice((rng.randint(0, 9), rng.randint(10, 99), round(rng.uniform(0, 10), 1))))
    if r < 0.85:
        return f"{rng.choice(LETTERS)}_{{{rng.choice(['i', 'j', 'n', '0', '1', '2', 'k'])}}}"
    return f"{rng.choice(ACCENTS)}{{{rng.choice('xyzuv')}}}"


def _expr(rng: random.Random, depth: int) -> str:
    if depth <= 0:
        return _atom(rng)
    r = rng.random()
    sub = lambda: _expr(rng, depth - 1)  # noqa: E731
    if r < 0.18:
        return rf"\frac{{{sub()}}}{{{sub()}}}"
    if r < 0.28:
        return rf"\sqrt{{{sub()}}}" if rng.random() < 0.7 else rf"\sqrt[{rng.choice('3n')}]{{{sub()}}}"
    if r < 0.40:
        return f"{_atom(rng)}^{{{sub()}}}"
    if r < 0.48:
        return rf"{rng.choice(FUNCS)}{{\left({sub()}\right)}}"
    if r < 0.55:
        return rf"\left({sub()} {rng.choice(OPS)} {sub()}\right)"
    if r < 0.60:
        v, top = rng.choice("ikn"), rng.choice(UPPER)
        return rf"\sum_{{{v}=1}}^{{{top}}} {sub()}"
    if r < 0.65:
        lo, hi, dv = rng.choice(["0", "a", "-1"]), rng.choice(["1", "b", INF]), rng.choice("xt")
        return rf"\int_{{{lo}}}^{{{hi}}} {sub()} \, d{dv}"
    if r < 0.69:
        v, lim = rng.choice("xnh"), rng.choice(["0", INF])
        return rf"\lim_{{{v} \to {lim}}} {sub()}"
    return f"{sub()} {rng.choice(OPS)} {sub()}"


def random_formula(rng: random.Random) -> str:
    lhs = _expr(rng, rng.randint(1, 3))
    if rng.random() < 0.6:
        return f"{rng.choice(LETTERS)} {rng.choice(RELS)} {lhs}"
    return lhs


def render_formula(latex: str, fontset: str, size: float, dpi: int, color: str = "black") -> Image.Image:
    """RGB image of ``$latex$`` (mathtext); raises ``ValueError`` for LaTeX outside its subset."""
    import matplotlib
    from matplotlib import mathtext
    from matplotlib.font_manager import FontProperties

    buf = io.BytesIO()
    with matplotlib.rc_context({"mathtext.fontset": fontset}):
        mathtext.math_to_image(f"${latex}$", buf, prop=FontProperties(size=size), dpi=dpi, format="png", color=color)
    img = Image.open(io.BytesIO(buf.getvalue())).convert("RGBA")
    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, img).convert("RGB")


def pad(img: Image.Image, rng: random.Random, bg=(255, 255, 255)) -> Image.Image:
    m = rng.randint(4, 24)
    out = Image.new("RGB", (img.width + 2 * m, img.height + 2 * m), bg)
    out.paste(img, (m, m))
    return out


class FormulaSource(Source):
    name = "formulas"

    def make(self, index, rng):
        for _ in range(10):
            latex = random_formula(rng)
            style = {"fontset": rng.choice(MATH_FONTSETS), "size": rng.choice((14, 16, 18, 22, 26)),
                     "dpi": rng.choice((100, 120, 150)), "margin_seed": rng.randrange(2 ** 31)}
            try:
                img = render_formula(latex, style["fontset"], style["size"], style["dpi"])
            except ValueError:  # outside mathtext's subset: draw another
                continue
            img = pad(img, random.Random(style["margin_seed"]))
            return GeneratedSample(image=img, labels={"coarse": {"prompt": PROMPT_COARSE, "text": latex}},
                                   source_path=f"generated:{self.name}", extra={"math": style})
        raise Skip("render_error", "no renderable formula in 10 draws")


WORDS = {"eng": "total item price count north south rate share value year".split(),
         "deu": "Summe Artikel Preis Anzahl Nord Süd Anteil Wert Jahr".split(),
         "fra": "total article prix nombre nord sud taux part valeur année".split(),
         "zho": "合计 项目 价格 数量 北部 南部 比率 份额 数值 年份".split()}
FONT_FILES = {"eng": ["NotoSans-Regular.ttf", "NotoSerif-Regular.ttf", "DejaVuSans.ttf"],
              "deu": ["NotoSans-Regular.ttf", "NotoSerif-Regular.ttf", "DejaVuSans.ttf"],
              "fra": ["NotoSans-Regular.ttf", "DejaVuSerif.ttf"], "zho": ["NotoSansCJK-Regular.ttc"]}


def random_table(rng: random.Random) -> tuple[list[list], str]:
    """(rows with (text, colspan, rowspan) cells, language) of a random table."""
    lang = rng.choice(list(WORDS))
    words = WORDS[lang]
    n_rows, n_cols = rng.randint(2, 7), rng.randint(2, 5)
    decimals = rng.choice((0, 1, 2))
    occupied: set[tuple[int, int]] = set()
    rows: list[list] = []
    for r in range(n_rows):
        row, c = [], 0
        while c < n_cols:
            if (r, c) in occupied:
                c += 1
                continue
            cs = rs = 1
            if r == 0 and rng.random() < 0.15 and c + 1 < n_cols and (r, c + 1) not in occupied:
                cs = 2
            elif c == 0 and r > 0 and rng.random() < 0.15 and r + 1 < n_rows:
                rs = 2
            if r == 0 or c == 0:
                text = rng.choice(words) + (f" {rng.randint(1, 9)}" if rng.random() < 0.3 else "")
            else:
                text = f"{rng.uniform(0, 10 ** rng.randint(1, 4)):.{decimals}f}" if rng.random() < 0.8 else rng.choice(words)
            for dr in range(rs):
                for dc in range(cs):
                    occupied.add((r + dr, c + dc))
            row.append((text, cs, rs))
            c += cs
        rows.append(row)
    return rows, lang


def render_table(table_html: str, lang: str, rng: random.Random, words: list | None = None) -> Image.Image:
    """The table drawn by PyMuPDF's HTML Story with a random style, cropped to its bounds.

    ``words``, when given, receives the drawn page's words inside the crop (MuPDF's text layer)."""
    import pymupdf

    from data_engine.sources.fonts import font_path

    font = font_path(rng.choice(FONT_FILES[lang])) or font_path("DejaVuSans.ttf")
    size = rng.choice((8, 9, 10, 11, 12))
    border = rng.choice(("1px solid black", "0.5pt solid #444", "none", "1pt solid #225"))
    head_bg = rng.choice(("#ffffff", "#e8e8e8", "#dde6f5"))
    css = (f"@font-face {{font-family: tb; src: url({font});}}\n"
           f"* {{font-family: tb; font-size: {size}pt;}}\n"
           f"table {{border-collapse: collapse;}}\n"
           f"td {{border: {border}; padding: {rng.choice((2, 3, 5))}pt {rng.choice((4, 6, 8))}pt;"
           f" text-align: {rng.choice(('left', 'center', 'right'))};}}\n"
           f"tr:first-child td {{background-color: {head_bg}; font-weight: bold;}}\n")
    import os

    archive = pymupdf.Archive(os.path.dirname(font))
    css = css.replace(f"url({font})", f"url({os.path.basename(font)})")
    story = pymupdf.Story(f"<body>{table_html}</body>", user_css=css, archive=archive)
    buf = io.BytesIO()
    writer = pymupdf.DocumentWriter(buf)
    rect = pymupdf.Rect(0, 0, 595, 842)
    dev = writer.begin_page(rect)
    more, filled = story.place(rect + (20, 20, -20, -20))
    if more:
        writer.end_page()
        writer.close()
        raise Skip("table_too_large", "the table does not fit on one page")
    story.draw(dev)
    writer.end_page()
    writer.close()
    doc = pymupdf.open("pdf", buf.getvalue())
    clip = pymupdf.Rect(filled) & rect
    if words is not None:
        words.extend(w[4] for w in doc[0].get_text("words", clip=clip))
    pix = doc[0].get_pixmap(dpi=rng.choice((96, 120, 144)), clip=clip, alpha=False)
    img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    box = ImageOps.invert(img.convert("L")).getbbox()  # the drawn table (text and borders)
    if box is None:
        raise Skip("render_error", "the table rendered empty")
    m = rng.randint(6, 20)
    return img.crop((max(0, box[0] - m), max(0, box[1] - m), min(img.width, box[2] + m), min(img.height, box[3] + m)))


class TableSource(Source):
    name = "tables"

    def make(self, index, rng):
        rows, lang = random_table(rng)
        label = html_table(rows)
        img = render_table(label, lang, rng)
        return GeneratedSample(image=img, labels={"coarse": {"prompt": PROMPT_COARSE, "text": label}},
                               source_path=f"generated:{self.name}", lang=lang,
                               script="Hani" if lang == "zho" else "Latn")
