"""Collage lines: new training lines composed from the words of trusted text-layer lines.

The recognizer memorises its seed lines long before it reads new ones: on the embedded
default's 2,710 Latin lines its training loss reached 0.89 nats at step 1,000 while the
held-out gold lines stood at 1.31 (docs/flywheel.md). A collage line is a random sequence of
words cut from the seed lines (each word where the text layer put it, so its label is the
text layer's, exactly) and set side by side on one baseline at the canvas's x-height: the
same glyphs, word sequences the recognizer has never seen, as many as asked for.

Words come from trusted lines whose text-layer words spell the line's text (a line whose words
do not match is skipped, never guessed) and from refused lines, word by word: a Devanagari line
is refused for one unmapped conjunct, but most of its words pass the trust check on their own
(75 % of the words against 30 % of the lines in the embedded default; ``refused_line_words``).
Scripts written without spaces have no word boxes to cut and get no collage lines.
"""

from __future__ import annotations

import random
import unicodedata
from dataclasses import dataclass, replace

import pymupdf
from PIL import Image

from data_engine.flywheel.canvas import X_HEIGHT, normalize_line
from data_engine.flywheel.patches import Patch
from data_engine.flywheel.trust import base_text, line_problem

WORD_GAP = 0.55  # x-heights between two words (Noto Sans: a space plus side bearings)
COLLAGE_WORDS = "trusted lines' words + refused lines' trusted words"  # recorded in data/VIEW


@dataclass
class WordPiece:
    """One word of a seed line at the canvas's x-height (``canvas.normalize_line``)."""

    image: Image.Image  # greyscale, the line's full height
    baseline: int  # row of the line's baseline in ``image``
    text: str


def line_word_boxes(page: pymupdf.Page, line: Patch,
                    words: list | None = None) -> list[tuple[float, float, str]] | None:
    """The text layer's words of ``line`` as (x0, x1, text) in PDF points, left to right, or
    None when they do not spell the line's text (then the line gives no pieces)."""
    inside = _words_in(line.bbox, page.get_text("words") if words is None else words)
    texts = line.text.split(" ")
    # compatibility-normalised: raw words keep ligature characters (U+FB02) the line's text spells out
    if len(inside) != len(texts) or _nfkc(" ".join(base_text(w[4]) for w in inside)) != _nfkc(line.text):
        return None
    return [(w[0], w[2], t) for w, t in zip(inside, texts)]


def refused_line_words(line: Patch, words: list) -> list[tuple[float, float, str]]:
    """The words of a refused text-layer line (``line.bbox``; its text is garbled somewhere)
    that pass the trust check on their own, as (x0, x1, text) in PDF points: ``words`` is the
    page's ``get_text("words")``."""
    out = [(w[0], w[2], base_text(w[4])) for w in _words_in(line.bbox, words)]  # MuPDF's Arabic: presentation forms
    return [w for w in out if line_problem(w[2], line.script) is None]


def _words_in(bbox, words: list) -> list:
    """The page's words (``get_text("words")`` tuples) of the line box ``bbox``, left to right:
    vertical centre inside the box, horizontally within it (1 pt of slack)."""
    x0, y0, x1, y1 = bbox
    return sorted((w for w in words if y0 <= (w[1] + w[3]) / 2 <= y1 and w[0] >= x0 - 1 and w[2] <= x1 + 1),
                  key=lambda w: w[0])


def _nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def word_pieces(page_img: Image.Image, page_rect: pymupdf.Rect, line: Patch,
                word_boxes: list[tuple[float, float, str]]) -> list[WordPiece]:
    """Cut the normalised line (``line.image``: its crop, ``patches.crop``) into its words (boxes
    in PDF points, as ``line_word_boxes``)."""
    sx = page_img.width / page_rect.width
    left = max(0, int((line.bbox[0] - 2.0) * sx))  # where ``crop`` started (its default padding)
    norm = normalize_line(line.image)
    out = []
    for wx0, wx1, text in word_boxes:
        a = max(0, int((wx0 * sx - left - norm.x0) * norm.scale) - 1)
        b = min(norm.image.width, int((wx1 * sx - left - norm.x0) * norm.scale) + 2)
        if b - a > 2:
            out.append(WordPiece(norm.image.crop((a, 0, b, norm.image.height)), norm.baseline, text))
    return out


def compose(pieces: list[WordPiece], gap: int) -> Image.Image:
    """The words side by side, ``gap`` px apart, on one baseline (white background)."""
    above = max(p.baseline for p in pieces)
    below = max(p.image.height - p.baseline for p in pieces)
    width = sum(p.image.width for p in pieces) + gap * (len(pieces) - 1)
    out = Image.new("L", (width, above + below), 255)
    x = 0
    for p in pieces:
        out.paste(p.image, (x, above - p.baseline))
        x += p.image.width + gap
    return out.convert("RGB")


def make_collages(pieces: list[WordPiece], n: int, *, seed: int, template: Patch,
                  words: tuple[int, int] = (1, 4)) -> list[Patch]:
    """``n`` collage line patches of ``words`` [lo, hi] random words each (deterministic in
    ``seed``), labelled with their words' text; metadata from ``template`` (language, script,
    source ``collage``), keyed ``{lang}_{script}_collage_{i:06d}``."""
    if not pieces or n <= 0:
        return []
    rng = random.Random(seed)
    gap = round(WORD_GAP * X_HEIGHT)
    out = []
    for i in range(n):
        chosen = [rng.choice(pieces) for _ in range(rng.randint(*words))]
        out.append(replace(template, key=f"{template.lang}_{template.script}_collage_{i:06d}",
                           doc_id=f"{template.lang}_{template.script}_collage", page=0, bbox=(0.0, 0.0, 0.0, 0.0),
                           source="collage", text=" ".join(p.text for p in chosen), source_path="",
                           page_size=(0.0, 0.0), extra={}, image=compose(chosen, gap + rng.randint(-2, 2))))
    return out
