"""General vision data (paper: caption, detection, grounding; 20% of the training mix).

* ``captions``: a reader for caption data users already have in img2dataset's webdataset
  format (``<key>.jpg`` + ``<key>.txt`` and/or ``<key>.json`` with a ``caption`` field), or a
  folder of images with ``<stem>.txt`` captions beside them. Label kind ``caption``, prompt
  "<image>\\nDescribe this image in detail.". An undecodable image (``bad_image``) or a missing
  or empty caption (``no_caption``) is recorded and skipped.
* ``grounding``: grounding / detection samples made from the engine's own layout boxes (shards
  with ``fine`` labels, docs/INTERFACES.md). Per page one query, figures and tables preferred:
  prompt "<image>\\nLocate <|ref|>table<|/ref|> in the image." (``models.prompts.locate_prompt``),
  label ``<|ref|>table<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>`` with every box of that
  class on the page (0-999 bins, as the fine label has them). Label kind ``locate``.
"""

from __future__ import annotations

import json
from pathlib import Path

from data_engine.sources.base import GeneratedSample, Skip, hash16
from data_engine.sources.inputs import ImageInputSource, decode_image
from models.prompts import DET_END, DET_START, PROMPT_DESCRIBE, REF_END, REF_START, locate_prompt

PREFERRED = ("image", "figure", "table", "chart", "formula")  # "boxes of figures and tables"


def caption_of(rec: dict) -> str | None:
    if rec.get("txt"):
        return rec["txt"].strip() or None
    if rec.get("json"):
        try:
            meta = json.loads(rec["json"])
        except ValueError:
            return None
        cap = meta.get("caption") if isinstance(meta, dict) else None
        return cap.strip() if isinstance(cap, str) and cap.strip() else None
    path = rec.get("path")
    if path and not path.endswith(".tar"):
        side = Path(path).with_suffix(".txt")
        if side.is_file():
            return side.read_text(encoding="utf-8", errors="replace").strip() or None
    return None


class CaptionSource(ImageInputSource):
    name = "captions"
    data_source = "vision"
    image_format = "jpg"
    input_help = "img2dataset shards (jpg + txt/json) or an image folder with .txt captions"

    def make(self, index, rng):
        rec = self.inputs.read(index)
        caption = caption_of(rec)
        if caption is None:
            raise Skip("no_caption", "no txt member / json caption / .txt sidecar")
        img = decode_image(rec["image"], self.describe(index))
        return GeneratedSample(image=img, labels={"caption": {"prompt": PROMPT_DESCRIBE, "text": " ".join(caption.split())}},
                               source_path=self.describe(index), doc_id=hash16(rec["image"], caption), kind="image")


def locate_label(query: str, boxes: list[list[int]]) -> str:
    det = "[" + ", ".join(f"[{b[0]}, {b[1]}, {b[2]}, {b[3]}]" for b in boxes) + "]"
    return f"{REF_START}{query}{REF_END}{DET_START}{det}{DET_END}"


class GroundingSource(ImageInputSource):
    name = "grounding"
    data_source = "vision"
    image_format = "jpg"
    input_help = "engine shards with fine labels (data_engine labels=[coarse,fine])"

    def __init__(self, input=None, preferred: float = 0.7, **options):
        super().__init__(input=input, preferred=preferred, **options)

    def make(self, index, rng):
        rec = self.inputs.read(index)
        try:
            meta = json.loads(rec["json"] or b"")
            boxes = meta["labels"]["fine"]["boxes"]
        except (ValueError, KeyError, TypeError):
            raise Skip("no_layout", "the page has no fine label boxes") from None
        by_class: dict[str, list[list[int]]] = {}
        for b in boxes:
            if isinstance(b, dict) and isinstance(b.get("label"), str) and len(b.get("bbox") or ()) == 4:
                by_class.setdefault(b["label"], []).append([int(v) for v in b["bbox"]])
        if not by_class:
            raise Skip("no_layout", "no usable box")
        classes = sorted(by_class)
        pref = [c for c in classes if any(p in c for p in PREFERRED)]
        cls = rng.choice(pref if pref and rng.random() < self.options["preferred"] else classes)
        query = cls.replace("_", " ")
        img = decode_image(rec["image"], self.describe(index))
        return GeneratedSample(
            image=img, labels={"locate": {"prompt": locate_prompt(query), "text": locate_label(query, by_class[cls])}},
            source_path=meta.get("source_path", self.describe(index)), doc_id=hash16(rec["image"], cls),
            kind="page", lang=meta.get("lang", "und"), script=meta.get("script", "Zyyy"))
