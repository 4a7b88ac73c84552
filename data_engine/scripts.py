"""Script table for the synthetic page generator: ISO 15924 script -> Noto font, direction,
Unicode letter ranges (for pseudo-text when no corpus is available) and whether PyMuPDF text
extraction of that script is exact.

Fonts are the Debian ``fonts-noto-core`` / ``fonts-noto-cjk`` files (``scripts/setup_fonts.sh``
installs them). ``exact`` was measured on the UDHR corpus with the Noto fonts below
(``tests/test_synthetic.py`` re-checks it): simple scripts round-trip through the PDF text layer
exactly after NFKC; complex-shaping scripts (Indic, Southeast Asian, Arabic-family, ...) lose or
reorder some characters because the ToUnicode map of a shaped glyph cannot always be inverted.
Measured on real UDHR text (small pages): Armenian, Ethiopic, Tifinagh and Hebrew/Yiddish are
close but not exact (CER 0.4-6%: ligatures like Armenian "և", combining points); Thai 2%,
Myanmar 4%, Arabic ~12%, Khmer ~42%, Sinhala ~45%, Tamil ~58%.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# Where Debian puts the Noto fonts; override with OCRFLOW_FONT_DIRS (os.pathsep-separated).
DEFAULT_FONT_DIRS = (
    "/usr/share/fonts/truetype/noto",
    "/usr/share/fonts/opentype/noto",
)
FALLBACK_FONT = "NotoSans-Regular.ttf"  # digits / Latin punctuation inside other scripts


@dataclass(frozen=True)
class ScriptInfo:
    code: str  # ISO 15924
    font: str  # regular font file name
    bold: str | None  # bold file name (None: synthesize with font-weight)
    ranges: tuple[tuple[int, int], ...]  # Unicode blocks whose letters make pseudo-text
    direction: str = "ltr"
    exact: bool = False  # text layer round-trips exactly (after NFKC + whitespace removal)
    spaced: bool = True  # words separated by spaces (False: CJK)
    face: int = 0  # index inside a .ttc collection (Noto CJK: 0 JP, 1 KR, 2 SC, 3 TC)


def _s(code, font, ranges, bold=True, **kw) -> ScriptInfo:
    b = font.replace("-Regular", "-Bold") if bold else None
    return ScriptInfo(code, font, b, tuple(ranges), **kw)


_CJK = "NotoSansCJK-Regular.ttc"
SCRIPTS: dict[str, ScriptInfo] = {s.code: s for s in [
    _s("Latn", "NotoSans-Regular.ttf", [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x17F)], exact=True),
    _s("Cyrl", "NotoSans-Regular.ttf", [(0x410, 0x44F)], exact=True),
    _s("Grek", "NotoSans-Regular.ttf", [(0x391, 0x3C9)], exact=True),
    _s("Armn", "NotoSansArmenian-Regular.ttf", [(0x531, 0x587)]),
    _s("Geor", "NotoSansGeorgian-Regular.ttf", [(0x10D0, 0x10FA)], exact=True),
    _s("Ethi", "NotoSansEthiopic-Regular.ttf", [(0x1200, 0x135A)]),
    _s("Cher", "NotoSansCherokee-Regular.ttf", [(0x13A0, 0x13F5)], exact=True),
    _s("Cans", "NotoSansCanadianAboriginal-Regular.ttf", [(0x1401, 0x166C)], exact=True),
    _s("Vaii", "NotoSansVai-Regular.ttf", [(0xA500, 0xA60B)], bold=False, exact=True),
    _s("Yiii", "NotoSansYi-Regular.ttf", [(0xA000, 0xA48C)], bold=False, exact=True),
    _s("Tfng", "NotoSansTifinagh-Regular.ttf", [(0x2D30, 0x2D67)], bold=False),
    _s("Hebr", "NotoSansHebrew-Regular.ttf", [(0x5D0, 0x5EA)], direction="rtl"),
    _s("Hans", _CJK, [(0x4E00, 0x62FF)], bold=False, exact=True, spaced=False, face=2),
    _s("Hant", _CJK, [(0x4E00, 0x62FF)], bold=False, exact=True, spaced=False, face=3),
    _s("Hani", _CJK, [(0x4E00, 0x62FF)], bold=False, exact=True, spaced=False, face=3),
    _s("Jpan", _CJK, [(0x3041, 0x3096), (0x30A1, 0x30FA), (0x4E00, 0x5FFF)], bold=False,
       exact=True, spaced=False, face=0),
    _s("Hang", _CJK, [(0xAC00, 0xB7FF)], bold=False, exact=True, face=1),
    _s("Arab", "NotoNaskhArabic-Regular.ttf", [(0x627, 0x64A)], direction="rtl"),
    _s("Syrc", "NotoSansSyriac-Regular.ttf", [(0x710, 0x72F)], bold=False, direction="rtl"),
    _s("Thaa", "NotoSansThaana-Regular.ttf", [(0x780, 0x7A5)], direction="rtl"),
    _s("Adlm", "NotoSansAdlam-Regular.ttf", [(0x1E900, 0x1E943)], direction="rtl"),
    _s("Deva", "NotoSansDevanagari-Regular.ttf", [(0x905, 0x939)]),
    _s("Beng", "NotoSansBengali-Regular.ttf", [(0x985, 0x9B9)]),
    _s("Guru", "NotoSansGurmukhi-Regular.ttf", [(0xA05, 0xA39)]),
    _s("Gujr", "NotoSansGujarati-Regular.ttf", [(0xA85, 0xAB9)]),
    _s("Orya", "NotoSansOriya-Regular.ttf", [(0xB05, 0xB39)]),
    _s("Taml", "NotoSansTamil-Regular.ttf", [(0xB85, 0xBB9)]),
    _s("Telu", "NotoSansTelugu-Regular.ttf", [(0xC05, 0xC39)]),
    _s("Knda", "NotoSansKannada-Regular.ttf", [(0xC85, 0xCB9)]),
    _s("Mlym", "NotoSansMalayalam-Regular.ttf", [(0xD05, 0xD39)]),
    _s("Sinh", "NotoSansSinhala-Regular.ttf", [(0xD85, 0xDC6)]),
    _s("Thai", "NotoSansThai-Regular.ttf", [(0xE01, 0xE2E)]),
    _s("Laoo", "NotoSansLao-Regular.ttf", [(0xE81, 0xEAE)]),
    _s("Tibt", "NotoSerifTibetan-Regular.ttf", [(0xF40, 0xF6C)]),
    _s("Mymr", "NotoSansMyanmar-Regular.ttf", [(0x1000, 0x102A)]),
    _s("Khmr", "NotoSansKhmer-Regular.ttf", [(0x1780, 0x17B3)]),
    _s("Tavt", "NotoSansTaiViet-Regular.ttf", [(0xAA80, 0xAAAF)], bold=False),
    _s("Lana", "NotoSansTaiTham-Regular.ttf", [(0x1A20, 0x1A54)]),
    _s("Java", "NotoSansJavanese-Regular.ttf", [(0xA984, 0xA9B2)]),
    _s("Cakm", "NotoSansChakma-Regular.ttf", [(0x11103, 0x11126)], bold=False),
    _s("Gran", "NotoSansGrantha-Regular.ttf", [(0x11305, 0x11339)], bold=False),
    _s("Mong", "NotoSansMongolian-Regular.ttf", [(0x1820, 0x1878)], bold=False),
]}

# Default language per script for pseudo-text (ISO 639-3; "und" when not meaningful).
DEFAULT_LANG = {
    "Latn": "eng", "Cyrl": "rus", "Grek": "ell", "Armn": "hye", "Geor": "kat", "Ethi": "amh",
    "Cher": "chr", "Cans": "iku", "Vaii": "vai", "Yiii": "iii", "Tfng": "zgh", "Hebr": "heb",
    "Hans": "cmn", "Hant": "cmn", "Hani": "yue", "Jpan": "jpn", "Hang": "kor", "Arab": "arb",
    "Syrc": "aii", "Thaa": "div", "Adlm": "fuf", "Deva": "hin", "Beng": "ben", "Guru": "pan",
    "Gujr": "guj", "Orya": "ory", "Taml": "tam", "Telu": "tel", "Knda": "kan", "Mlym": "mal",
    "Sinh": "sin", "Thai": "tha", "Laoo": "lao", "Tibt": "bod", "Mymr": "mya", "Khmr": "khm",
    "Tavt": "blt", "Lana": "kkh", "Java": "jav", "Cakm": "ccp", "Gran": "san", "Mong": "khk",
}


def font_dirs() -> list[Path]:
    env = os.environ.get("OCRFLOW_FONT_DIRS")
    dirs = env.split(os.pathsep) if env else DEFAULT_FONT_DIRS
    return [Path(d) for d in dirs if Path(d).is_dir()]


@lru_cache(maxsize=None)
def find_font(name: str) -> Path | None:
    for d in font_dirs():
        p = d / name
        if p.is_file():
            return p
    return None


def script_info(code: str) -> ScriptInfo:
    """The table entry of ``code``; unknown scripts fall back to Latin's font (with a clear
    note in the ground truth via ``exact=False``) rather than failing a whole corpus run."""
    if code in SCRIPTS:
        return SCRIPTS[code]
    latn = SCRIPTS["Latn"]
    return ScriptInfo(code, latn.font, latn.bold, latn.ranges, exact=False)


def subset_collection_face(font: Path, face: int, text: str, out_dir: Path) -> Path | None:
    """Cut one face of a font collection (.ttc) down to the glyphs of ``text``.

    Noto CJK is a 20 MB collection; embedding it whole makes every PDF ~15 MB and MuPDF's
    subsetter does not handle its CFF outlines. With fontTools (optional) we embed a subset of
    the right regional face (SC/TC/JP/KR) instead. Returns None when fontTools is missing.
    """
    try:
        from fontTools import subset, ttLib
    except ImportError:
        return None
    f = ttLib.TTFont(str(font), fontNumber=face, lazy=True)
    opts = subset.Options()
    opts.layout_features = ["*"]  # keep shaping features (vertical forms, locl, ...)
    opts.name_IDs = ["*"]
    opts.notdef_outline = True
    # PDF viewers index CID-keyed CFF by CID: keep glyph ids (= CIDs in Noto CJK) unchanged.
    opts.retain_gids = True
    sub = subset.Subsetter(opts)
    sub.populate(text=text)
    sub.subset(f)
    out = out_dir / f"{font.stem}-{face}-subset.otf"
    f.save(str(out))
    return out


def require_fonts(codes) -> None:
    """Raise a clear error naming the missing font files (and how to install them)."""
    missing = sorted({script_info(c).font for c in codes if find_font(script_info(c).font) is None})
    if missing:
        raise FileNotFoundError(
            f"Noto font files not found: {missing} (searched {[str(d) for d in font_dirs()] or list(DEFAULT_FONT_DIRS)}). "
            "Install them with scripts/setup_fonts.sh (Debian fonts-noto-core, fonts-noto-cjk) "
            "or point OCRFLOW_FONT_DIRS at a folder holding them."
        )


@lru_cache(maxsize=None)
def letters(code: str) -> tuple[str, ...]:
    """Assigned letters (category L*) of the script's ranges, for pseudo-text. Modifier letters
    (Lm) are left out: the Arabic tatweel U+0640 only stretches a joint, and a text layer drops it."""
    out = []
    for lo, hi in script_info(code).ranges:
        for cp in range(lo, hi + 1):
            ch = chr(cp)
            if unicodedata.category(ch).startswith("L") and unicodedata.category(ch) != "Lm":
                out.append(ch)
    if not out:
        raise ValueError(f"script {code!r} has no letters in its ranges")
    return tuple(out)
