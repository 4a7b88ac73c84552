"""Plane geometry in the style of Slow Perception (OCR 2.0, paper section 3.4).

Figures of named points, line segments and circles (triangles with cevians, quadrilaterals
with diagonals, circles with radii and chords, polylines) drawn on a square canvas. Label
(prompt "Parse the figure."): a JSON dictionary of the segments, their endpoints and the
circles, coordinates in 0-999 bins of the image (``x / W * 999``, rounded):

    {"segments": [{"name": "AB", "endpoints": [[x1, y1], [x2, y2]]}, ...],
     "points": {"A": [x, y], ...},
     "circles": [{"center": [x, y], "radius": r}, ...]}

Translation augmentation (as in the paper): items come in groups of ``translations``; item
``g * translations + t`` is figure ``g`` moved by offset ``t`` (offset 0 = where it was drawn
first), so the model sees the same figure at several places with labels that move with it.
"""

from __future__ import annotations

import json
import math
import random
import string

from PIL import Image, ImageDraw, ImageFont

from data_engine.sources.base import GeneratedSample, Source, stable_rng
from models.prompts import PROMPT_FIGURE

TEMPLATES = ("triangle", "quad", "circle", "polyline", "star")
BINS = 999


def _names(rng: random.Random, n: int) -> list[str]:
    letters = [c for c in string.ascii_uppercase if c not in "IO"]
    start = rng.randrange(len(letters) - n) if rng.random() < 0.5 else 0
    return letters[start:start + n]


def _spread_angles(rng: random.Random, n: int) -> list[float]:
    """n angles around a circle, evenly spread with jitter (no degenerate slivers)."""
    a0, step = rng.uniform(0, 2 * math.pi), 2 * math.pi / n
    return [a0 + step * (i + rng.uniform(-0.3, 0.3)) for i in range(n)]


def _normalise(pts, circles):
    """Scale and centre the figure (circles included) into the unit box [0.05, 0.95]^2."""
    xs = [p[0] for p in pts] + [pts[c][0] + s * r for c, r in circles for s in (-1, 1)]
    ys = [p[1] for p in pts] + [pts[c][1] + s * r for c, r in circles for s in (-1, 1)]
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1e-6)
    k, cx, cy = 0.9 / span, (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    return ([(0.5 + (x - cx) * k, 0.5 + (y - cy) * k) for x, y in pts], [(c, r * k) for c, r in circles])


def random_figure(rng: random.Random) -> dict:
    """Points (in a unit box), segments and circles of one figure, before placement."""
    t = rng.choice(TEMPLATES)
    pts: list[tuple[float, float]] = []
    segs: list[tuple[int, int]] = []
    circles: list[tuple[int, float]] = []  # (center point index, radius in unit-box units)
    if t in ("triangle", "quad", "polyline", "star"):
        n = {"triangle": 3, "quad": 4, "polyline": rng.randint(3, 5), "star": rng.randint(4, 6)}[t]
        angles = _spread_angles(rng, n)
        if t == "star":
            pts = [(0.5, 0.5)] + [(0.5 + 0.45 * math.cos(a), 0.5 + 0.45 * math.sin(a)) for a in angles]
            segs = [(0, i) for i in range(1, n + 1)]
        else:
            pts = [(0.5 + rng.uniform(0.3, 0.5) * math.cos(a), 0.5 + rng.uniform(0.3, 0.5) * math.sin(a)) for a in angles]
            segs = [(i, (i + 1) % n) for i in range(n if t != "polyline" else n - 1)]
        if t == "triangle" and rng.random() < 0.7:  # a cevian: vertex -> point on the opposite side
            v = rng.randrange(3)
            a, b = pts[(v + 1) % 3], pts[(v + 2) % 3]
            s = 0.5 if rng.random() < 0.5 else rng.uniform(0.25, 0.75)
            pts.append((a[0] + s * (b[0] - a[0]), a[1] + s * (b[1] - a[1])))
            segs.append((v, 3))
        if t == "quad" and rng.random() < 0.8:
            segs.append((0, 2))
            if rng.random() < 0.5:
                segs.append((1, 3))
    else:  # circle with center, radius/diameter and chords
        r = rng.uniform(0.3, 0.45)
        pts = [(0.5, 0.5)]
        k = rng.randint(2, 4)
        angles = _spread_angles(rng, k)
        pts += [(0.5 + r * math.cos(a), 0.5 + r * math.sin(a)) for a in angles]
        circles.append((0, r))
        segs.append((0, 1))
        segs += [(i, i + 1) for i in range(1, k)]
    pts, circles = _normalise(pts, circles)
    return {"template": t, "points": pts, "segments": segs, "circles": circles, "names": _names(rng, len(pts))}


def random_style(rng: random.Random) -> dict:
    return {"size": rng.choice((384, 448, 512, 576)), "scale": rng.uniform(0.45, 0.7),
            "width": rng.choice((1, 2, 2, 3)), "ink": rng.choice(((0, 0, 0), (20, 20, 90), (60, 60, 60))),
            "bg": rng.choice(((255, 255, 255), (255, 255, 255), (250, 248, 240))), "dots": rng.random() < 0.7,
            "font_size": rng.choice((14, 16, 18, 22)), "font": rng.choice(("DejaVuSans.ttf", "DejaVuSerif.ttf"))}


def place(fig: dict, style: dict, offset: tuple[float, float]) -> dict:
    """Pixel coordinates of the figure's points for a canvas and an offset (in pixels)."""
    S, sc = style["size"], style["scale"]
    ox, oy = offset
    pix = [((x - 0.5) * sc * S + S / 2 + ox, (y - 0.5) * sc * S + S / 2 + oy) for x, y in fig["points"]]
    return {"points": pix, "radii": [r * sc * S for _, r in fig["circles"]]}


def translation(rng: random.Random, fig: dict, style: dict) -> tuple[int, int]:
    """A whole-pixel offset keeping the figure and its letters inside the canvas."""
    S, sc = style["size"], style["scale"]
    xs = [p[0] for p in fig["points"]] + [fig["points"][c][0] + s * r for c, r in fig["circles"] for s in (-1, 1)]
    ys = [p[1] for p in fig["points"]] + [fig["points"][c][1] + s * r for c, r in fig["circles"] for s in (-1, 1)]
    margin = style["font_size"] * 2
    lo_x, hi_x = margin - ((min(xs) - 0.5) * sc * S + S / 2), S - margin - ((max(xs) - 0.5) * sc * S + S / 2)
    lo_y, hi_y = margin - ((min(ys) - 0.5) * sc * S + S / 2), S - margin - ((max(ys) - 0.5) * sc * S + S / 2)
    return (int(rng.uniform(min(lo_x, 0), max(hi_x, 0))), int(rng.uniform(min(lo_y, 0), max(hi_y, 0))))


def to_bin(v: float, size: int) -> int:
    return min(BINS, max(0, int(round(v / size * BINS))))


def label_dict(fig: dict, placed: dict, size: int) -> dict:
    pts = [[to_bin(x, size), to_bin(y, size)] for x, y in placed["points"]]
    names = fig["names"]
    return {"segments": [{"name": names[a] + names[b], "endpoints": [pts[a], pts[b]]} for a, b in fig["segments"]],
            "points": {names[i]: p for i, p in enumerate(pts)},
            "circles": [{"center": pts[c], "radius": to_bin(r, size)} for (c, _), r in zip(fig["circles"], placed["radii"])]}


def draw(fig: dict, placed: dict, style: dict) -> Image.Image:
    from data_engine.sources.fonts import truetype

    S = style["size"]
    img = Image.new("RGB", (S, S), tuple(style["bg"]))
    d = ImageDraw.Draw(img)
    ink, w = tuple(style["ink"]), style["width"]
    P = placed["points"]
    for a, b in fig["segments"]:
        d.line([P[a], P[b]], fill=ink, width=w)
    for (c, _), r in zip(fig["circles"], placed["radii"]):
        cx, cy = P[c]
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=ink, width=w)
    font = truetype(style["font"], style["font_size"]) or ImageFont.load_default()
    cx = sum(p[0] for p in P) / len(P)
    cy = sum(p[1] for p in P) / len(P)
    for name, (x, y) in zip(fig["names"], P):
        if style["dots"]:
            d.ellipse([x - w - 1, y - w - 1, x + w + 1, y + w + 1], fill=ink)
        dx, dy = x - cx, y - cy
        n = math.hypot(dx, dy) or 1.0
        off = style["font_size"] * 0.9
        d.text((x + dx / n * off, y + dy / n * off), name, fill=ink, font=font, anchor="mm")
    return img


class GeometrySource(Source):
    name = "geometry"

    def __init__(self, translations: int = 4, **options):
        super().__init__(translations=translations, **options)
        if translations < 1:
            raise ValueError(f"translations must be >= 1, got {translations}")
        self.translations = translations

    def render(self, index: int) -> tuple[Image.Image, dict, dict]:
        """(image, label dict, details) of item ``index``: figure ``index // translations``."""
        group, t = divmod(index, self.translations)
        rng = stable_rng(self.seed, self.name, "figure", group)
        fig, style = random_figure(rng), random_style(rng)
        offset = (0, 0) if t == 0 else translation(stable_rng(self.seed, self.name, "shift", group, t), fig, style)
        placed = place(fig, style, offset)
        return draw(fig, placed, style), label_dict(fig, placed, style["size"]), {"group": group, "offset": list(offset),
                                                                                  "template": fig["template"], "width": style["width"]}

    def make(self, index, rng):
        image, label, details = self.render(index)
        text = json.dumps(label, separators=(", ", ": "))
        return GeneratedSample(image=image, labels={"figure": {"prompt": PROMPT_FIGURE, "text": text}},
                               source_path=f"generated:{self.name}", extra=details)
