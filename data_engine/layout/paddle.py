"""PP-DocLayout layout source (the paper's layout model for fine labels) via PaddleOCR.

``paddleocr.LayoutDetection(model_name=..., model_dir=<local dir>)`` is loaded lazily (optional
extra ``ocrflow[paddle]``); weights are never downloaded: ``model_dir`` must hold the exported
model. Per page: render at ``dpi``, ``predict``, map each detection of the documented result
structure ``res["boxes"] = [{"cls_id", "label", "score", "coordinate": [x1, y1, x2, y2]}]``
(pixels) back to PDF points, drop low scores, translate PP-DocLayout's class names to our
vocabulary (``PP_LABELS``), order them like the text layer does, and take each block's text from
the PDF text layer inside the box (tables as HTML via ``find_tables`` clipped to the box).
"""

from __future__ import annotations

from pathlib import Path

import pymupdf

from data_engine.layout import LayoutBlock
from data_engine.layout.textlayer import join_lines, reading_order, table_html

# PP-DocLayout(-L/-M/-S, plus) class names -> the fine-label vocabulary.
PP_LABELS = {
    "doc_title": "title", "paragraph_title": "sub_title", "text": "text", "abstract": "text",
    "content": "text", "reference": "text", "reference_content": "text", "footnote": "text",
    "aside_text": "text", "algorithm": "text", "vision_footnote": "text", "list": "list",
    "table": "table", "table_title": "table_caption", "image": "image", "figure": "image",
    "chart": "image", "seal": "image", "header_image": "header", "footer_image": "footer",
    "figure_title": "image_caption", "chart_title": "image_caption", "formula": "equation",
    "formula_number": "equation", "header": "header", "footer": "footer", "number": "footer",
}


def result_boxes(result) -> list[dict]:
    """The detection list of one predict result: a dict ``{"boxes": [...]}``, the saved JSON
    form ``{"res": {"boxes": [...]}}``, or a result object exposing either via ``.json``."""
    if not isinstance(result, dict) and hasattr(result, "json"):
        result = result.json
    if isinstance(result, dict) and "res" in result and "boxes" not in result:
        result = result["res"]
    try:
        return list(result["boxes"])
    except (KeyError, TypeError):
        raise ValueError(f"not a LayoutDetection result (no 'boxes'): {type(result).__name__}") from None


def map_detections(result, scale: float, page_rect: pymupdf.Rect, min_score: float = 0.5
                   ) -> list[tuple[str, pymupdf.Rect, float]]:
    """Detections in pixels -> ``(label, rect in points, score)``; ``scale`` = pixels per point.
    Unknown class names are kept as is (lower-cased) so nothing is silently dropped."""
    out = []
    for d in result_boxes(result):
        score = float(d.get("score", 1.0))
        if score < min_score:
            continue
        x1, y1, x2, y2 = (float(v) / scale for v in d["coordinate"])
        r = pymupdf.Rect(page_rect.x0 + x1, page_rect.y0 + y1, page_rect.x0 + x2, page_rect.y0 + y2)
        r = r & page_rect
        if r.is_empty:
            continue
        name = str(d.get("label", "")).lower()
        out.append((PP_LABELS.get(name, name or "text"), r, score))
    return out


def text_in(page: pymupdf.Page, rect: pymupdf.Rect, text_dict: dict) -> str:
    """Text-layer lines whose centre lies inside ``rect``, joined like the text layer source."""
    lines = []
    for b in text_dict.get("blocks", []):
        for ln in b.get("lines", []) if b.get("type", 0) == 0 else []:
            r = pymupdf.Rect(ln["bbox"])
            if (r.tl + (r.br - r.tl) * 0.5) in rect:
                lines.append(ln["text"] if "text" in ln else "".join(s["text"] for s in ln["spans"]))
    return join_lines(lines)


class PaddleLayout:
    def __init__(self, model_dir: str | Path, model_name: str = "PP-DocLayout-L", dpi: int = 144,
                 min_score: float = 0.5, device: str | None = None):
        model_dir = Path(model_dir) if model_dir else None
        if model_dir is None or not model_dir.is_dir():
            raise FileNotFoundError(
                f"PP-DocLayout needs a local model_dir (got {model_dir}); weights are never downloaded. "
                "Export/download the model once and pass its folder."
            )
        try:
            from paddleocr import LayoutDetection
        except ImportError as e:
            raise ImportError(
                "layout source 'paddle' needs PaddleOCR: pip install 'ocrflow[paddle]' "
                "(paddleocr>=3, paddlepaddle>=3)"
            ) from e
        kw = {"device": device} if device else {}
        self.model = LayoutDetection(model_name=model_name, model_dir=str(model_dir), **kw)
        self.dpi, self.min_score = dpi, min_score

    def blocks(self, page: pymupdf.Page, text_dict: dict | None = None) -> list[LayoutBlock]:
        import numpy as np

        td = text_dict if text_dict is not None else page.get_text("dict")
        pix = page.get_pixmap(dpi=self.dpi, colorspace=pymupdf.csRGB, alpha=False)
        img = np.frombuffer(pix.samples, dtype=np.uint8).reshape(pix.height, pix.width, 3)  # (H, W, 3)
        # PaddleOCR takes BGR arrays (OpenCV convention).
        results = list(self.model.predict(img[:, :, ::-1].copy(), batch_size=1))
        dets = map_detections(results[0], pix.width / page.rect.width, page.rect, self.min_score) if results else []
        items = []
        for label, r, _ in dets:
            if label == "table":
                tabs = page.find_tables(clip=r).tables
                text = table_html(tabs[0].extract()) if tabs else text_in(page, r, td)
            elif label == "image":
                text = ""
            else:
                text = text_in(page, r, td)
            items.append((label, r, text, None))
        ordered = reading_order(items, page.rect.width)
        return [LayoutBlock(lb, tuple(round(v, 2) for v in r), t) for lb, r, t, _ in ordered]
