"""Contact sheet of a source's shards: a grid of thumbnails with the start of each label.

    python -m data_engine.sources.contact_sheet 'data/charts/shards/*.tar' docs/img/sources_charts.png

The PNG is palette-quantised so a sheet stays small enough to commit (docs/sources.md).
"""

from __future__ import annotations

import argparse
import glob
import textwrap

from PIL import Image, ImageDraw

from data_engine.shards import iter_samples
from data_engine.sources.fonts import truetype


def contact_sheet(pattern: str, out: str, n: int = 8, cols: int = 4, cell: int = 220, label_lines: int = 4,
                  colors: int = 96) -> str:
    samples = []
    for s in iter_samples(sorted(glob.glob(pattern))):
        samples.append(s)
        if len(samples) == n:
            break
    if not samples:
        raise FileNotFoundError(f"no sample in {pattern!r}")
    font = truetype("NotoSansCJK-Regular.ttc", 10) or truetype("DejaVuSansMono.ttf", 10)
    line_h = 12
    rows = (len(samples) + cols - 1) // cols
    H = cell + label_lines * line_h + 8
    sheet = Image.new("RGB", (cols * cell, rows * H), "white")
    d = ImageDraw.Draw(sheet)
    for i, s in enumerate(samples):
        x, y = (i % cols) * cell, (i // cols) * H
        im = s["image"].copy()
        im.thumbnail((cell - 8, cell - 8))
        sheet.paste(im, (x + (cell - im.width) // 2, y + 4 + (cell - 8 - im.height) // 2))
        kind, lab = next(iter(s["meta"]["labels"].items()))
        text = f"[{kind}] " + " ".join(lab["text"].split())
        for j, line in enumerate(textwrap.wrap(text, width=cell // 6)[:label_lines]):
            d.text((x + 4, y + cell + j * line_h), line, fill=(40, 40, 40), font=font)
        d.rectangle((x, y, x + cell - 1, y + H - 1), outline=(210, 210, 210))
    sheet.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shards", help="shard glob")
    ap.add_argument("out", help="output PNG")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--cols", type=int, default=4)
    a = ap.parse_args(argv)
    print(contact_sheet(a.shards, a.out, a.n, a.cols))


if __name__ == "__main__":
    main()
