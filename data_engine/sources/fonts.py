"""Font files for sources that draw text with PIL: DejaVu (shipped inside matplotlib, so always
present) and the Noto fonts the project installs (scripts/setup_fonts.sh)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import ImageFont


@lru_cache(maxsize=None)
def font_path(name: str) -> str | None:
    """Path of a font file by file name, or None when it is not installed."""
    import matplotlib

    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    if bundled.is_file():
        return str(bundled)
    from data_engine.scripts import find_font

    p = find_font(name)
    return str(p) if p else None


@lru_cache(maxsize=64)
def truetype(name: str, size: int) -> ImageFont.FreeTypeFont | None:
    path = font_path(name)
    return ImageFont.truetype(path, size) if path else None
