"""Line and block patches: cut from rendered pages, shown to the recognizer on a square canvas, sharded.

* ``visual_lines(text_dict)``: the text layer's lines merged into visual lines (MuPDF splits a
  line where shaping or font changes break it), each with its box and text in reading order.
* ``cut_text_layer(page, ...)``: one ``Patch`` per visual line whose text passes the per-line
  trust check (``trust.line_problem``), plus the refused lines with their reasons: one garbled
  line never costs its page's good lines. With ``kinds`` including ``block`` it also cuts block
  patches (``blocks.py``: a text-layer block's trusted lines, newline-joined).
* ``cut_boxes(page, boxes, ...)``: patches at given boxes (a detector's, or ground truth's).
* ``patch_canvas(crop, size, kind, stretch)`` (``canvas.py``): the square image the recognizer
  reads, the side of its resolution mode: a line at one x-height, wrapped between words into
  64 px token rows; a block scaled to fit.
* ``write_patch_shard`` / ``read_patch_shard``: webdataset tars in the engine's shard format
  (``png`` = the canvas, ``json`` = metadata with ``labels.coarse`` when the patch has a label),
  so the trainers read patch shards like page shards. Metadata per patch: doc_id, page, bbox
  (PDF points), lang, script, source (textlayer | detector | gold), kind (line | block),
  source_path and, for recognizer labels, ``flywheel`` {round, confidence}.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pymupdf
from PIL import Image

from data_engine.flywheel.canvas import BLOCK, CANVAS, LINE, ROW, is_rtl, patch_canvas  # noqa: F401 (re-exported)
from data_engine.flywheel.trust import base_text, line_problem
from data_engine.render import extract_text
from data_engine.shards import SampleTarWriter, encode_meta
from data_engine.text_assembly import rawdict_lines
from models.prompts import PROMPT_COARSE

PROMPT = PROMPT_COARSE  # patches carry coarse labels: the recognizer is asked for plain text


@dataclass
class Patch:
    key: str  # {doc_id}_{page:05d}_{index:03d}: unique, sortable, stable across runs
    doc_id: str
    page: int
    bbox: tuple[float, float, float, float]  # PDF points
    lang: str
    script: str
    source: str  # textlayer | textlayer_box | detector | gold | drawn
    text: str = ""  # label ("" = unlabelled)
    source_path: str = ""
    page_size: tuple[float, float] = (0.0, 0.0)  # PDF points (for page-level fine labels)
    extra: dict = field(default_factory=dict)  # e.g. {"round": k, "confidence": c}
    image: Image.Image | None = field(default=None, repr=False, compare=False)  # the crop
    kind: str = LINE  # line | block (a block's text holds its lines joined by "\n")

    def meta(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("image", "key", "text", "extra")}
        d.update(self.extra)
        d["bbox"] = [round(v, 2) for v in self.bbox]
        d["page_size"] = [round(v, 2) for v in self.page_size]
        if self.text:
            d["labels"] = {"coarse": {"prompt": PROMPT, "text": self.text}}
        return d


def _join(pieces: list[tuple[pymupdf.Rect, str]], rtl: bool) -> str:
    """Join the pieces of one visual line in reading order; a space where there is a gap."""
    pieces = sorted(pieces, key=lambda p: -p[0].x1 if rtl else p[0].x0)
    out, last = "", None
    for r, t in pieces:
        if last is not None and t and out and not out.endswith(" ") and not t.startswith(" "):
            gap = (last.x0 - r.x1) if rtl else (r.x0 - last.x1)
            if gap > 0.2 * r.height:
                out += " "
        out += t
        last = r
    return " ".join(out.split())


def visual_lines(text_dict: dict, rtl: bool = False) -> list[tuple[pymupdf.Rect, str]]:
    """Text-layer lines merged when they overlap vertically by more than half their height."""
    raw = []
    # the engine's own line text (glyph-gap word breaks, composed accents, bidi order), from
    # the rawdict that extract_text returns
    for _block, ln, t in rawdict_lines(text_dict):
        if t.strip():
            raw.append((pymupdf.Rect(ln["bbox"]), t))
    groups: list[list[tuple[pymupdf.Rect, str]]] = []
    for r, t in sorted(raw, key=lambda x: (x[0].y0, x[0].x0)):
        for g in groups:
            u = g[0][0]
            overlap = min(u.y1, r.y1) - max(u.y0, r.y0)
            if overlap > 0.5 * min(u.height, r.height):
                g.append((r, t))
                break
        else:
            groups.append([(r, t)])
    out = []
    for g in groups:
        box = pymupdf.Rect(g[0][0])
        for r, _ in g[1:]:
            box |= r
        out.append((box, base_text(_join(g, rtl))))  # presentation forms (Arabic) -> base letters, NFC
    return sorted(out, key=lambda x: (x[0].y0, x[0].x0))


def relative_source(path: str | Path, root: str | Path) -> str:
    """A source file's path as patches store it: relative to the run directory ``root`` when it
    lies inside it (a moved run directory keeps working), else absolute (inputs of your own)."""
    path, root = Path(path).resolve(), Path(root).resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def resolve_source(source_path: str, root: str | Path | None) -> Path:
    """The file a stored ``source_path`` names (``relative_source``'s inverse)."""
    p = Path(source_path)
    return p if p.is_absolute() or root is None else Path(root) / p


def render_page(page: pymupdf.Page, dpi: int = 144) -> Image.Image:
    pix = page.get_pixmap(dpi=dpi, colorspace=pymupdf.csRGB, alpha=False)
    return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)


def crop(page_img: Image.Image, page_rect: pymupdf.Rect, bbox, pad: float = 2.0) -> Image.Image:
    """The pixels of ``bbox`` (PDF points, padded) from the page's rendering."""
    sx, sy = page_img.width / page_rect.width, page_img.height / page_rect.height
    x0, y0, x1, y1 = bbox
    box = (max(0, int((x0 - pad) * sx)), max(0, int((y0 - pad) * sy)),
           min(page_img.width, int((x1 + pad) * sx) + 1), min(page_img.height, int((y1 + pad) * sy) + 1))
    return page_img.crop(box)


def cut_boxes(page_img: Image.Image, page_rect: pymupdf.Rect, boxes: Iterable, *, doc_id: str, page: int,
              lang: str, script: str, source: str, texts: Iterable[str] | None = None,
              source_path: str = "", start: int = 0, kind: str = LINE,
              extras: Iterable[dict] | None = None) -> list[Patch]:
    """One patch per box (PDF points); ``texts`` (same order) become labels when given,
    ``extras`` (same order) the patches' extra metadata.
    Keys: ``{doc_id}_{page:05d}_{i:03d}`` for lines, ``..._b{i:03d}`` for blocks."""
    boxes = list(boxes)
    texts = list(texts) if texts is not None else [""] * len(boxes)
    extras = list(extras) if extras is not None else [{} for _ in boxes]
    tag = "b" if kind == BLOCK else ""
    out = []
    for i, (b, t, x) in enumerate(zip(boxes, texts, extras), start):
        b = tuple(float(v) for v in b)
        if b[2] - b[0] < 2 or b[3] - b[1] < 2:
            continue
        out.append(Patch(f"{doc_id}_{page:05d}_{tag}{i:03d}", doc_id, page, b, lang, script, source, t,
                         source_path, (page_rect.width, page_rect.height), extra=dict(x),
                         image=crop(page_img, page_rect, b), kind=kind))
    return out


def cut_text_layer(page: pymupdf.Page, page_img: Image.Image, *, doc_id: str, lang: str, script: str,
                   rtl: bool = False, source_path: str = "", text_dict: dict | None = None,
                   kinds: Iterable[str] = (LINE,)) -> tuple[list[Patch], list[dict]]:
    """Trusted text-layer lines (and, with ``block`` in ``kinds``, blocks: ``blocks.cut_blocks``)
    as labelled patches; refused lines as {bbox, text, reason, kind: line} (always, whatever
    ``kinds``: trust is judged per line) plus, with blocks, refused runs of a block
    ({..., kind: block})."""
    td = text_dict if text_dict is not None else extract_text(page)
    kinds = tuple(kinds)
    good, refused = [], []
    for i, (r, t) in enumerate(visual_lines(td, rtl)):
        problem = line_problem(t, script)
        if problem:
            refused.append({"bbox": [round(v, 2) for v in r], "text": t, "reason": problem, "kind": LINE})
            continue
        if LINE in kinds:
            good += cut_boxes(page_img, page.rect, [tuple(r)], doc_id=doc_id, page=page.number, lang=lang,
                              script=script, source="textlayer", texts=[t], source_path=source_path, start=i)
    if BLOCK in kinds:
        from data_engine.flywheel.blocks import cut_blocks

        blocks, bad_blocks = cut_blocks(page, page_img, td, doc_id=doc_id, lang=lang, script=script, rtl=rtl,
                                        source_path=source_path, with_lines=LINE in kinds)
        good += blocks
        refused += bad_blocks
    return good, refused


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_patch_shard(path: str | Path, patches: Iterable[Patch], size: int = CANVAS, stretch: float = 1.0) -> int:
    """Patches (sorted by key) -> one tar; written to ``.tmp`` then renamed (all or nothing).
    ``png`` is the canvas (``patch_canvas(size, stretch)``: what the trainer reads), ``crop.png``
    the crop itself (what labelling and evaluation draw their canvases from)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "wb") as f:
        w = SampleTarWriter(f)
        for p in sorted(patches, key=lambda p: p.key):
            if p.image is None:
                raise ValueError(f"patch {p.key} has no image")
            w.write({"__key__": p.key, "png": _png(patch_canvas(p.image, size, kind=p.kind, stretch=stretch,
                                                                   rtl=is_rtl(p.script))), "crop.png": _png(p.image),
                     "json": encode_meta(p.meta())})
            n += 1
        w.close()
    os.replace(tmp, path)
    return n


def read_patch_shard(path: str | Path, images: bool = True) -> Iterator[Patch]:
    """Patches of a shard written by ``write_patch_shard`` (``image`` = the crop; None with
    ``images=False``, for what needs only texts and boxes: no pixels held in memory)."""
    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path, "r") as tf:
        for info in tf:
            key, _, ext = info.name.partition(".")
            members.setdefault(key, {})[ext] = tf.extractfile(info).read()
    for key in sorted(members):
        m = members[key]
        meta = json.loads(m["json"])
        text = meta.get("labels", {}).get("coarse", {}).get("text", "")
        extra = {k: v for k, v in meta.items() if k not in _FIELDS}
        img = Image.open(io.BytesIO(m.get("crop.png") or m["png"])).convert("RGB") if images else None
        yield Patch(key, meta["doc_id"], meta["page"], tuple(meta["bbox"]), meta["lang"], meta["script"],
                    meta["source"], text, meta.get("source_path", ""), tuple(meta.get("page_size", (0, 0))),
                    extra, img, meta.get("kind", LINE))


_FIELDS = ("doc_id", "page", "bbox", "lang", "script", "source", "source_path", "page_size", "labels", "kind")
