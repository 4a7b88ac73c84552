"""Inputs of your own for the flywheel (``flywheel.input=DIR``): any file names, language by rule.

``DIR`` holds born-digital PDFs (their trusted text-layer lines seed the recognizer), scanned
PDFs and page images (``PAGE_IMAGES``; their detector lines are labelled), in any folders below
it, and optionally held-out gold pages under ``DIR/gold/`` (seen-word gold) and
``DIR/gold_unseen/`` (pages whose words no training page has), pages drawn with known text
under ``DIR/drawn/`` (their lines seed the recognizer, labelled with the sidecar's text: the
glyphs a garbled text layer never gives) and calibration pages under ``DIR/calib/`` (cut as the
pool is, scored against their sidecar; they calibrate the acceptance threshold and are never
trained on). Whether a page seeds or is labelled is decided per page by its text layer, not by
the file name.

The language of a file, by the first rule that applies (``language_of``):

1. a folder on its path below ``DIR`` named after a language of the run (``hin-Deva`` or
   ``hin_Deva``);
2. a file name starting with ``<lang>_<script>_`` of a language of the run (the generated corpus);
3. the run has a single language (``flywheel.languages``): that one;
4. language ID (``data_engine.langid``, offline) of the file's text layer: its ISO 639-3 code,
   or its script when only one language of the run is written in it.

A file that no rule places is refused with the rules (``InputError``): an image-only file
has no text to identify, so with several languages it needs rule 1 or 2. With no
``flywheel.languages`` at all, the run's languages are the folders of rule 1 plus the text
layers' language IDs (``detect_languages``).

Gold truth (``read_truth``): a PDF's ``<stem>.gt.json`` in the synthetic format
(``pages[].blocks[]``, boxes in PDF points), or for a page image ``<stem>.gt.json`` =
``{"lines": [{"bbox": [x0, y0, x1, y1], "text": "..."}]}`` with boxes in the image's pixels
(``python -m data_engine.flywheel.gold`` writes it). A gold page without one is reported
(``gold_without_truth`` in ``data/pages.jsonl`` and the counts), never silently 0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from data_engine.flywheel.linepages import LineLanguage
from data_engine.flywheel.trust import base_text

PAGE_IMAGES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
GOLD_DIRS = ("gold", "gold_unseen")  # seen-word gold, unseen-word gold
DRAWN_DIR = "drawn"  # pages whose sidecar holds the text drawn on them: seed lines labelled with it
CALIB_DIR = "calib"  # pages with a sidecar, cut as the pool is: the acceptance threshold's calibration
TRUTH_DIRS = GOLD_DIRS + (DRAWN_DIR, CALIB_DIR)  # folders whose pages need a .gt.json sidecar
RULES = ("put it in a folder named after its language (DIR/hin-Deva/...), name it <lang>_<script>_*.pdf, "
         "run with one language in flywheel.languages, or give it a text layer language ID can read")


class InputError(ValueError):
    """A file of ``flywheel.input`` that cannot be used, with what is missing and the rule."""


@dataclass
class InputFile:
    path: Path
    spec: str  # the run's language, e.g. hin-Deva
    role: str  # train | gold | gold_unseen | drawn | calib
    doc_id: str  # unique in the run, key-safe (no dots)


def is_input_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".pdf", *PAGE_IMAGES) and not path.name.startswith(".")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if is_input_file(p))


def _role(rel: Path) -> str:
    return rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in TRUTH_DIRS else "train"


def _spec_key(spec: str) -> str:
    return spec.replace(":", "-").replace("_", "-").lower()


def text_layer(path: Path, max_pages: int = 3) -> str:
    """The text of the first pages' text layer ("" for images and scans)."""
    import pymupdf

    if path.suffix.lower() != ".pdf":
        return ""
    try:
        with pymupdf.open(path) as doc:
            return base_text(" ".join(doc[i].get_text() for i in range(min(max_pages, len(doc)))))
    except Exception:  # an unreadable file is recorded later, when it is opened for its pages
        return ""


def identify(text: str) -> str | None:
    """``<iso639-3>-<script>`` of a text layer by language ID, or None when it cannot tell."""
    from data_engine.langid import UNDETERMINED, detect_language, detect_script

    lang, _ = detect_language(text)
    script = detect_script(text)
    from data_engine.scripts import SCRIPTS

    return None if lang == UNDETERMINED or script not in SCRIPTS else f"{lang}-{script}"


def language_of(path: Path, rel: Path, specs: list[str]) -> str:
    """The run language of one input file (rules in the module doc), or ``InputError``."""
    by_key = {_spec_key(s): s for s in specs}
    for folder in rel.parts[:-1]:  # 1. a language folder
        if _spec_key(folder) in by_key:
            return by_key[_spec_key(folder)]
    for s in specs:  # 2. the generated corpus's names
        lang = LineLanguage.parse(s)
        if rel.name.startswith(f"{lang.lang}_{lang.script}_"):
            return s
    if len(specs) == 1:  # 3. the only language
        return specs[0]
    found = identify(text_layer(path))  # 4. language ID of the text layer
    if found:
        lang, script = found.split("-")
        same = [s for s in specs if LineLanguage.parse(s).lang == lang]
        by_script = [s for s in specs if LineLanguage.parse(s).script == script]
        if same or len(by_script) == 1:
            return (same or by_script)[0]
        raise InputError(f"flywheel.input: {rel} reads as {found} by language ID, which is not one of "
                         f"flywheel.languages {specs}: add it there, or {RULES}")
    raise InputError(f"flywheel.input: cannot tell the language of {rel} (no text layer language ID can read, "
                     f"{len(specs)} languages in flywheel.languages): {RULES}")


def detect_languages(root: Path) -> list[str]:
    """The languages of an input folder when ``flywheel.languages`` names none: folders named
    ``<lang>-<Script>`` (rule 1) and the text layers' language IDs (rule 4)."""
    found = set()
    for path in _files(root):
        rel = path.relative_to(root)
        for folder in rel.parts[:-1]:
            lang = LineLanguage.parse(folder.replace("_", "-"))
            if len(lang.lang) == 3 and len(lang.script) == 4 and lang.script[0].isupper():
                found.add(f"{lang.lang}-{lang.script}")
        spec = identify(text_layer(path))
        if spec:
            found.add(spec)
    return sorted(found)


def find_inputs(root: Path, specs: list[str]) -> list[InputFile]:
    """Every usable file under ``root`` with its language and role (``InputError`` names every
    file no rule places, at once)."""
    out, refused, used = [], [], set()
    for path in _files(root):
        rel = path.relative_to(root)
        try:
            spec = language_of(path, rel, specs)
        except InputError as e:
            refused.append(str(e))
            continue
        doc_id = re.sub(r"[^\w-]+", "_", str(rel.with_suffix("")))
        if doc_id in used:  # scan.pdf beside scan.png
            doc_id += "_" + path.suffix.lower().lstrip(".")
        used.add(doc_id)
        out.append(InputFile(path, spec, _role(rel), doc_id))
    if refused:
        raise InputError("\n".join(refused))
    if not out:
        raise FileNotFoundError(f"flywheel.input={root}: no PDF files or page images ({', '.join(PAGE_IMAGES)}) there")
    return out


def read_truth(path: Path, page_rects: list) -> dict | None:
    """The sidecar ``<stem>.gt.json`` of an input file in the synthetic format (``pages[].blocks[]``,
    PDF points), converting an image's ``{"lines": [...]}`` (pixels) with its page's size; None
    when there is none."""
    side = path.with_suffix(".gt.json")
    if not side.is_file():
        return None
    gt = json.loads(side.read_text(encoding="utf-8"))
    if "pages" in gt:
        for page in gt["pages"]:
            for b in page["blocks"]:
                b["text"] = base_text(b["text"])
        return gt
    from PIL import Image

    with Image.open(path) as im:
        sx, sy = page_rects[0].width / im.width, page_rects[0].height / im.height
    blocks = [{"label": "text", "bbox": [ln["bbox"][0] * sx, ln["bbox"][1] * sy, ln["bbox"][2] * sx, ln["bbox"][3] * sy],
               "text": base_text(ln["text"])} for ln in gt["lines"]]
    return {"pages": [{"page": 0, "blocks": blocks}]}
