"""Write the gold sidecar of a page image: ``python -m data_engine.flywheel.gold PAGE.png --text PAGE.txt``.

A gold page of ``flywheel.input`` (``DIR/gold/`` or ``DIR/gold_unseen/``) is a page image plus
``<stem>.gt.json`` = ``{"lines": [{"bbox": [x0, y0, x1, y1], "text": "..."}]}`` (boxes in the
image's pixels, text NFC). This tool finds the lines with the PP-OCRv4 detector (the one the
flywheel cuts pool lines with), orders them top to bottom, and pairs them with the non-empty
lines of a text file you typed from the page, in the same order. When the counts differ it
writes nothing and says so (``--show`` prints the boxes found, to fix the text file or write the
sidecar by hand); a line whose box is off can be edited in the JSON afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_engine.flywheel.trust import base_text


def detect_lines(image_path: Path, threads: int = 1) -> list[list[float]]:
    """Line boxes (pixels) of a page image, top to bottom."""
    from PIL import Image

    from data_engine.flywheel.detect import PPOCRTextLines

    with Image.open(image_path) as im:
        return [[round(v, 1) for v in b] for b in PPOCRTextLines(threads=threads).detect(im.convert("RGB"))]


def gold_sidecar(boxes: list[list[float]], texts: list[str]) -> dict:
    """The sidecar of one page: ``boxes`` (top to bottom) paired with ``texts`` (the page's lines,
    in the same order); a count mismatch is a ``ValueError`` naming both counts."""
    texts = [base_text(t.strip()) for t in texts if t.strip()]
    if len(boxes) != len(texts):
        raise ValueError(f"the detector found {len(boxes)} lines but the text has {len(texts)}: give one text line "
                         "per line of the page, top to bottom (--show prints the boxes found)")
    return {"lines": [{"bbox": b, "text": t} for b, t in zip(boxes, texts)]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_engine.flywheel.gold", description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path, help="page image (png, jpg, tif) of a gold page")
    ap.add_argument("--text", type=Path, help="the page's text, one line of the page per line, top to bottom")
    ap.add_argument("--show", action="store_true", help="print the detected line boxes and exit")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    boxes = detect_lines(args.image, args.threads)
    if args.show or args.text is None:
        for i, b in enumerate(boxes):
            print(i, b)
        return 0
    try:
        side = gold_sidecar(boxes, args.text.read_text(encoding="utf-8").splitlines())
    except ValueError as e:
        print(f"{args.image}: {e}", file=sys.stderr)
        return 1
    out = args.image.with_suffix(".gt.json")
    out.write_text(json.dumps(side, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"{out}: {len(side['lines'])} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
