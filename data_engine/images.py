"""Reading a user's image the way the official DeepSeek-OCR pipeline does.

A phone photo stores its pixels as the sensor saw them and the way to hold it in its EXIF
Orientation tag (e.g. 6: turned 90 degrees). The official preprocessing applies
``ImageOps.exif_transpose`` before anything else; a reader that skips it trains on, and
evaluates, pages lying on their side. (PDF pages and images the data engine opens through
MuPDF are already upright: MuPDF applies the tag.)
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps


def decode_rgb(data: bytes) -> Image.Image:
    """Decoded RGB image of ``data``, turned upright by its EXIF orientation. PIL's errors for
    undecodable or truncated bytes propagate (the whole image is decoded here, not later)."""
    img = Image.open(io.BytesIO(data))
    img = ImageOps.exif_transpose(img) or img  # None only with in_place=True
    img.load()
    return img if img.mode == "RGB" else img.convert("RGB")


__all__ = ["decode_rgb"]
