"""Scene text (paper section 3.4): images labelled by PaddleOCR's PP-OCRv4 detector + recognizer.

The models are the zh/en PP-OCRv4 det/rec (+ direction classifier) ONNX files shipped inside
``rapidocr-onnxruntime==1.4.4`` (run offline with onnxruntime). Each image gets both prompt
variants, as the paper's prompts control whether boxes are output:

* ``fine`` ("<image>\\n<|grounding|>OCR this image."): one grounded block per text line,
  ``<|ref|>text<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>`` + its text (boxes in 0-999 bins);
* ``coarse`` ("<image>\\nFree OCR."): the lines' text, one per line, in reading order.

Input: ``--input`` a folder of images or webdataset/img2dataset tar shards (a LAION subset...).
An image that cannot be decoded (``bad_image``) or in which nothing is read (``no_text``) is
recorded and skipped. Without input, the embedded default places words (English signs and
Chinese phrases, Noto fonts) on natural images that matplotlib ships (a photograph and two
relief maps), randomly cropped, flipped and re-lit; the label is still PP-OCR's reading (the
placed words are kept in the sample's ``extra`` to measure how well the labeller reads).
"""

from __future__ import annotations

import random
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from data_engine.sources.base import GeneratedSample, Skip, Source, hash16, require
from data_engine.sources.inputs import ImageInputs, decode_image
from models.prompts import PROMPT_COARSE, PROMPT_OCR_GROUNDED, format_grounded_block

EN_WORDS = ("OPEN", "SALE", "EXIT", "STOP", "CAFE", "Coffee & Tea", "Welcome", "BOOKS", "Bakery", "Main St",
            "PARKING", "No Entry", "Hotel", "Station", "Pharmacy", "Fresh Fruit", "50% OFF", "Since 1987",
            "Gate 12", "Bus 42", "Open 24 Hours", "Museum", "Library", "Platform 3", "Ticket Office")
ZH_WORDS = ("欢迎光临", "出口", "停车场", "咖啡", "书店", "营业中", "地铁站", "超市", "禁止吸烟", "新鲜水果",
            "图书馆", "火车站", "售票处", "面包店", "药店")
FONTS_LATN = ("NotoSans-Bold.ttf", "NotoSerif-Bold.ttf", "NotoSans-Regular.ttf", "DejaVuSans-Bold.ttf")
FONTS_HANI = ("NotoSansCJK-Bold.ttc", "NotoSansCJK-Regular.ttc", "NotoSerifCJK-Bold.ttc")


@lru_cache(maxsize=1)
def backgrounds() -> tuple:
    """Natural images shipped with matplotlib: a photograph and two shaded relief maps."""
    import matplotlib
    from matplotlib import cbook
    from matplotlib.colors import LightSource

    out = [Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")]
    for name, cmap in (("topobathy.npz", "gist_earth"), ("jacksboro_fault_dem.npz", "terrain")):
        d = np.load(cbook.get_sample_data(name, asfileobj=False))
        z = d["topo"] if "topo" in d else d["elevation"]
        rgb = LightSource(azdeg=315, altdeg=45).shade(z.astype(float), cmap=matplotlib.colormaps[cmap],
                                                      blend_mode="soft", vert_exag=0.05)
        out.append(Image.fromarray((rgb[..., :3] * 255).astype(np.uint8)))
    return tuple(out)


def embedded_scene(rng: random.Random) -> tuple[Image.Image, list[str]]:
    """A natural image (crop, flip, re-lit) with 1-4 words placed on it; returns (image, words)."""
    from data_engine.sources.fonts import truetype

    bg = rng.choice(backgrounds())
    w, h = bg.size
    cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = bg.crop((x0, y0, x0 + cw, y0 + ch))
    side = rng.randint(480, 800)
    scale = side / max(img.size)
    img = img.resize((max(32, int(img.width * scale)), max(32, int(img.height * scale))), Image.BICUBIC)
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.2))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.8, 1.2))
    d = ImageDraw.Draw(img)
    placed, taken = [], []
    for _ in range(rng.randint(1, 4)):
        zh = rng.random() < 0.35
        word = rng.choice(ZH_WORDS if zh else EN_WORDS)
        font = truetype(rng.choice(FONTS_HANI if zh else FONTS_LATN), rng.randint(26, 56))
        if font is None:
            continue
        box = d.textbbox((0, 0), word, font=font)
        tw, th = box[2] - box[0], box[3] - box[1]
        if tw + 20 >= img.width or th + 20 >= img.height:
            continue
        for _ in range(20):  # a free spot (no overlap with earlier words)
            x, y = rng.randint(10, img.width - tw - 10), rng.randint(10, img.height - th - 10)
            r = (x - 6, y - 6, x + tw + 6, y + th + 6)
            if all(r[2] < t[0] or r[0] > t[2] or r[3] < t[1] or r[1] > t[3] for t in taken):
                break
        else:
            continue
        light = rng.random() < 0.5
        fill = tuple(rng.randint(220, 255) for _ in range(3)) if light else tuple(rng.randint(0, 40) for _ in range(3))
        stroke = (0, 0, 0) if light else (255, 255, 255)
        if rng.random() < 0.4:  # a sign plate behind the text
            plate = tuple(rng.randint(0, 60) for _ in range(3)) if light else tuple(rng.randint(200, 255) for _ in range(3))
            d.rectangle(r, fill=plate)
        d.text((x - box[0], y - box[1]), word, font=font, fill=fill, stroke_width=rng.choice((0, 1, 2)), stroke_fill=stroke)
        taken.append(r)
        placed.append(word)
    return img, placed


_OCR: dict = {}


def ocr_engine():
    """The PP-OCRv4 engine (one per process, single-threaded so workers do not oversubscribe)."""
    if "engine" not in _OCR:
        rapidocr = require("rapidocr_onnxruntime", "rapidocr-onnxruntime==1.4.4", "sources")
        _OCR["engine"] = rapidocr.RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)
    return _OCR["engine"]


def read_text(img: Image.Image, min_score: float = 0.5) -> list[tuple[list[float], str, float]]:
    """PP-OCRv4 lines: [(axis-aligned box in px, text, score)] in reading order."""
    result, _ = ocr_engine()(np.asarray(img))
    lines = []
    for quad, text, score in result or []:
        text = " ".join(str(text).split())
        if not text or float(score) < min_score:
            continue
        xs, ys = [p[0] for p in quad], [p[1] for p in quad]
        lines.append(([min(xs), min(ys), max(xs), max(ys)], text, float(score)))
    lines.sort(key=lambda t: (round(t[0][1] / 16), t[0][0]))  # rows of ~16 px, then left to right
    return lines


def scene_labels(img: Image.Image, lines) -> dict:
    from data_engine.labels import to_bins

    w, h = img.size
    blocks = [format_grounded_block("text", to_bins(b, w, h), t) for b, t, _ in lines]
    return {"fine": {"prompt": PROMPT_OCR_GROUNDED, "text": "\n\n".join(blocks),
                     "boxes": [{"label": "text", "bbox": to_bins(b, w, h), "text": t} for b, t, _ in lines]},
            "coarse": {"prompt": PROMPT_COARSE, "text": "\n".join(t for _, t, _ in lines)}}


class SceneTextSource(Source):
    name = "scene"
    image_format = "jpg"

    def __init__(self, input=None, min_score: float = 0.5, **options):
        super().__init__(input=input, min_score=min_score, **options)
        ocr_engine()  # fail now, naming the package, when rapidocr is missing
        self.inputs = ImageInputs(input) if input else None

    def num_items(self):
        return None if self.inputs is None else len(self.inputs)

    def describe(self, index):
        return self.inputs.describe(index) if self.inputs is not None else super().describe(index)

    def make(self, index, rng):
        extra = {}
        if self.inputs is None:
            img, placed = embedded_scene(rng)
            path, doc_id = f"generated:{self.name}", None
            extra["placed"] = placed
        else:
            rec = self.inputs.read(index)
            img = decode_image(rec["image"], self.describe(index))
            path, doc_id = self.describe(index), hash16(rec["image"])
        lines = read_text(img, self.options["min_score"])
        if not lines:
            raise Skip("no_text", "PP-OCR read no text line above the score threshold")
        extra["scores"] = [round(s, 4) for _, _, s in lines]
        return GeneratedSample(image=img, labels=scene_labels(img, lines), source_path=path, doc_id=doc_id,
                               kind="generated" if self.inputs is None else "image", extra=extra)
