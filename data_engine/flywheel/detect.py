"""Line sources for patch cutting, behind the layout-source interface of ``data_engine.layout``.

Every source has ``blocks(page, text_dict=None) -> list[LayoutBlock]`` (label ``text``, box in
PDF points, text when the source knows it), so the flywheel and the fine-label engine share one
interface:

* ``textlayer_lines``: the text layer's visual lines (boxes always usable; texts only as
  trustworthy as the text layer: the flywheel re-labels them when they are garbled).
* ``ppocr_det``: PaddleOCR's PP-OCRv4 text-line detector (DB head, ONNX) run with onnxruntime
  through ``rapidocr_onnxruntime``'s pre/post-processing, for image-only pages. The model
  ``ch_PP-OCRv4_det_infer.onnx`` ships inside the ``rapidocr-onnxruntime==1.4.4`` wheel; nothing
  is downloaded. ``model_path=`` points at another copy.
* any name of ``data_engine.layout.get_layout_source`` (e.g. ``textlayer``): layout blocks, for
  block patches (taken as they are; the line sources' boxes, ``unit = "line"``, are grouped
  into blocks by ``blocks.group_lines`` instead).
"""

from __future__ import annotations

from pathlib import Path

import pymupdf

from data_engine.layout import LayoutBlock, get_layout_source
from data_engine.render import extract_text

PPOCR_DET_FILE = "ch_PP-OCRv4_det_infer.onnx"
PPOCR_HOW_TO_GET = ("it ships inside the wheel rapidocr-onnxruntime==1.4.4 "
                    "(pip install rapidocr-onnxruntime==1.4.4, file rapidocr_onnxruntime/models/"
                    f"{PPOCR_DET_FILE}); or pass model_path= to a local copy")


def find_ppocr_det_model(model_path: str | Path | None = None) -> Path:
    """The detector's ONNX file, or FileNotFoundError naming it and how to get it."""
    if model_path:
        p = Path(model_path)
        if p.is_file():
            return p
        raise FileNotFoundError(f"PP-OCRv4 text detector model not found: {p}; {PPOCR_HOW_TO_GET}")
    try:
        import rapidocr_onnxruntime
    except ImportError:
        raise FileNotFoundError(f"PP-OCRv4 text detector model {PPOCR_DET_FILE} not found: the package "
                                f"rapidocr_onnxruntime is not installed; {PPOCR_HOW_TO_GET}") from None
    p = Path(rapidocr_onnxruntime.__file__).parent / "models" / PPOCR_DET_FILE
    if not p.is_file():
        raise FileNotFoundError(f"PP-OCRv4 text detector model not found: {p}; {PPOCR_HOW_TO_GET}")
    return p


class TextLayerLines:
    """Visual lines of the PDF text layer (``patches.visual_lines``)."""

    unit = "line"  # what one box holds: block patches group these boxes (blocks.group_lines)

    def __init__(self, rtl: bool = False):
        self.rtl = rtl

    def blocks(self, page: pymupdf.Page, text_dict: dict | None = None) -> list[LayoutBlock]:
        from data_engine.flywheel.patches import visual_lines

        td = text_dict if text_dict is not None else extract_text(page)
        return [LayoutBlock("text", tuple(round(v, 2) for v in r), t) for r, t in visual_lines(td, self.rtl)]


class PPOCRTextLines:
    """PP-OCRv4 text-line detection on the rendered page (``dpi``), boxes back in PDF points."""

    unit = "line"

    def __init__(self, model_path: str | Path | None = None, dpi: int = 144, threads: int = 1,
                 box_thresh: float = 0.5, unclip_ratio: float = 1.6, limit_side_len: int = 736):
        path = find_ppocr_det_model(model_path)
        from rapidocr_onnxruntime.ch_ppocr_det import TextDetector

        self.detector = TextDetector({
            "model_path": str(path), "limit_side_len": limit_side_len, "limit_type": "min",
            "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "thresh": 0.3, "box_thresh": box_thresh,
            "max_candidates": 1000, "unclip_ratio": unclip_ratio, "use_dilation": True,
            "score_mode": "fast", "intra_op_num_threads": threads, "inter_op_num_threads": 1,
            "use_cuda": False, "use_dml": False,
        })
        self.dpi = dpi

    def detect(self, image) -> list[tuple[float, float, float, float]]:
        """Axis-aligned line boxes (pixels) of an RGB PIL image or (H, W, 3) RGB array, top to bottom."""
        import numpy as np

        arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        quads, _ = self.detector(np.ascontiguousarray(arr[:, :, ::-1]))  # the model takes BGR
        if quads is None or len(quads) == 0:
            return []
        boxes = [(float(q[:, 0].min()), float(q[:, 1].min()), float(q[:, 0].max()), float(q[:, 1].max()))
                 for q in np.asarray(quads)]
        return sorted(boxes, key=lambda b: (b[1], b[0]))

    def blocks(self, page: pymupdf.Page, text_dict: dict | None = None, image=None) -> list[LayoutBlock]:
        """``image``: the page already rendered (any DPI); rendered at ``self.dpi`` otherwise."""
        if image is None:
            from data_engine.flywheel.patches import render_page

            image = render_page(page, self.dpi)
        sx, sy = page.rect.width / image.width, page.rect.height / image.height
        return [LayoutBlock("text", (round(x0 * sx, 2), round(y0 * sy, 2), round(x1 * sx, 2), round(y1 * sy, 2)), "")
                for x0, y0, x1, y1 in self.detect(image)]


def get_line_source(name: str = "ppocr_det", **kwargs):
    """``ppocr_det`` (kwargs of ``PPOCRTextLines``), ``textlayer_lines`` or a layout source name."""
    if name == "ppocr_det":
        return PPOCRTextLines(**kwargs)
    if name == "textlayer_lines":
        return TextLayerLines(**kwargs)
    try:
        return get_layout_source(name, **kwargs)
    except ValueError:
        raise ValueError(f"unknown line source {name!r}; known: 'ppocr_det', 'textlayer_lines' "
                         "or a layout source of data_engine.layout") from None
