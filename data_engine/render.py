"""Per-page work that touches MuPDF: extract the text layer once, render, encode.

The per-character text dict is extracted once per page and shared by the coarse labeller and
the fine (layout) labeller. Rendering uses PyMuPDF at a target DPI (default 144, i.e. A4 -> 1190x1684)
with an optional cap on the longest side, so posters and huge scans cannot blow up memory.

JPEG encoder choice (benchmarks/bench_engine.py prints the comparison; one A4 page at 144 DPI
on this machine): MuPDF `Pixmap.tobytes("jpg")` ~190 ms, PIL (libjpeg-turbo) ~11 ms,
simplejpeg (libjpeg-turbo, no PIL image copy) ~8 ms. We use simplejpeg when installed and PIL
otherwise; both give identical-quality baseline JPEG at 4:2:0 subsampling.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pymupdf
from PIL import Image

from data_engine.config import IMAGE_FORMATS

try:  # optional fast path; PIL (also libjpeg-turbo) is the fallback
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the environment
    simplejpeg = None

# Ligatures are expanded (no TEXT_PRESERVE_LIGATURES) so "ﬁ" reads "fi"; image blocks are not
# requested (no TEXT_PRESERVE_IMAGES): copying image bytes into the dict costs more than the
# whole extraction. Layout sources that need figure boxes use page.get_image_info().
TEXT_FLAGS = pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP



def quiet_mupdf() -> None:
    """Silence MuPDF's stderr chatter: bad input is reported through the run report instead."""
    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)


def extract_text(page: pymupdf.Page, sort: bool = False) -> dict:
    """`page.get_text("rawdict")` with our flags: spans with per-character boxes, which the
    coarse text assembly needs (word gaps, accents, bidi); ~1.5x the cost of "dict", still
    ~1-2 ms per page. `coarse.text_from_dict` also fills each span's and line's "text".

    sort=False keeps the content-stream order, which for born-digital PDFs is the authoring
    order and keeps columns intact; sort=True orders blocks top-left to bottom-right
    (interleaves multi-column pages, but fixes PDFs written out of order).
    """
    try:
        return page.get_text("rawdict", flags=TEXT_FLAGS, sort=sort)
    except (SystemError, ValueError):
        # PyMuPDF 1.26's rawdict raises on a glyph mapped outside Unicode (chr() out of
        # range) where "dict" copes: that page gets span-level assembly instead.
        return page.get_text("dict", flags=TEXT_FLAGS, sort=sort)


@dataclass
class RenderedPage:
    data: bytes                   # encoded image
    fmt: str                      # "jpg" | "png"
    size: tuple[int, int]         # (w_px, h_px)
    dpi: float                    # effective DPI after the longest-side cap


def page_zoom(page: pymupdf.Page, dpi: float, max_side: int | None) -> float:
    zoom = dpi / 72.0
    longest = max(page.rect.width, page.rect.height)
    if max_side and longest * zoom > max_side:
        zoom = max_side / longest
    return zoom


def encode_rgb(pix: pymupdf.Pixmap, fmt: str = "jpg", quality: int = 90) -> bytes:
    """Encode an RGB pixmap (alpha=False) as JPEG or PNG."""
    if fmt == "png":
        return pix.tobytes("png")
    if fmt != "jpg":
        raise ValueError(f"image format must be one of {IMAGE_FORMATS}, got {fmt!r}")
    rgb = np.frombuffer(pix.samples_mv, dtype=np.uint8).reshape(pix.height, pix.stride)
    rgb = rgb[:, : pix.width * 3].reshape(pix.height, pix.width, 3)  # (H, W, 3)
    if simplejpeg is not None:
        return simplejpeg.encode_jpeg(rgb, quality=quality, colorspace="RGB", colorsubsampling="420")
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, subsampling="4:2:0")
    return buf.getvalue()


def render_page(page: pymupdf.Page, dpi: float = 144, max_side: int | None = None,
                fmt: str = "jpg", quality: int = 90) -> RenderedPage:
    zoom = page_zoom(page, dpi, max_side)
    pix = page.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom), colorspace=pymupdf.csRGB, alpha=False)
    data = encode_rgb(pix, fmt, quality)
    return RenderedPage(data=data, fmt=fmt, size=(pix.width, pix.height), dpi=round(zoom * 72.0, 3))
