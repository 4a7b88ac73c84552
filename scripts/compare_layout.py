"""Box agreement of the fine-label layout on real PDFs: the text-layer rules, PP-Structure's
PicoDet detector and PyMuPDF's table finder, page by page.

    python scripts/compare_layout.py .cache/real_pdfs --pages-per-doc 8 --json layout.json
    python scripts/compare_layout.py pdfs/ --draw out/   # one PNG per page where they disagree

None of the three is ground truth. The numbers say where two of them agree and where they do not;
the pictures (`--draw`: rules blue, PicoDet red, `find_tables` green) say which is right there.

Per page (an even sample of up to `--pages-per-doc` pages per document), each run on every page:
  rules      `TextLayerLayout(find_tables=False)`: the fine labels of a page the detector skips
  picodet    `PicoDetDetector.detect`: every box the model gives (score >= 0.5), mapped to the
             project's labels
  engine     the `picodet` layout source as the engine runs it: rules + detector hints, the
             detector only where `needs_detector` calls it
  tables     `page.find_tables()` (skipped on pages with more than `--max-drawings` vector paths,
             where it takes minutes; counted)

Agreement per class group: a box of A matches a box of B of the same group at IoU >= `--iou`,
one to one (greedy by IoU). Reported as A's boxes matched / A's boxes, both ways. Groups:
heading (title, sub_title), text (text, list, reference), caption (image_caption,
table_caption), and table, image, equation, header, footer alone.

Gate: PicoDet's table and image boxes on pages `needs_detector` skips, i.e. what the engine's
gate loses (the engine's labels on those pages are the rules').
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import pymupdf

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the project, and compare_pdftotext beside this script

from compare_pdftotext import sample_pages  # the same even sample of pages per document

from data_engine.layout.picodet import (
    CDLA_TO_LABEL,
    PicoDetDetector,
    PicoDetLayout,
    needs_detector,
)
from data_engine.layout.textlayer import TextLayerLayout
from data_engine.metrics import box_iou

GROUPS = {"title": "heading", "sub_title": "heading", "text": "text", "list": "text",
          "image_caption": "caption", "table_caption": "caption"}
ORDER = ("heading", "text", "caption", "table", "image", "equation", "header", "footer")


def group(label: str) -> str:
    return GROUPS.get(label, label)


def matches(a: list, b: list, thr: float) -> int:
    """One-to-one matches (same group, IoU >= thr) between two lists of (label, box)."""
    pairs = sorted(((box_iou(x[1], y[1]), i, j) for i, x in enumerate(a) for j, y in enumerate(b)
                    if group(x[0]) == group(y[0])), reverse=True)
    used_a, used_b, n = set(), set(), 0
    for v, i, j in pairs:
        if v < thr:
            break
        if i not in used_a and j not in used_b:
            used_a.add(i), used_b.add(j)
            n += 1
    return n


class HintedRules(TextLayerLayout):
    """The `picodet` source's rules with the detector regions given (``hints``), so one detector
    run per page serves both PicoDet's own boxes and the engine's blocks."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hints: list[tuple[str, pymupdf.Rect]] = []

    def regions(self, page, td):
        return self.hints


def page_record(page: pymupdf.Page, rules: TextLayerLayout, engine: HintedRules, detector: PicoDetDetector,
                min_drawings: int, max_drawings: int) -> dict:
    td = page.get_text("dict")
    t = time.process_time()
    dets = [(CDLA_TO_LABEL.get(name, name), tuple(r), round(s, 3)) for name, r, s in detector.detect(page)]
    t_det = time.process_time() - t
    n_draw = len(page.get_cdrawings())
    tables = None
    t_tab = None
    if n_draw <= max_drawings:
        t = time.process_time()
        tables = [("table", tuple(tb.bbox)) for tb in page.find_tables().tables]
        t_tab = time.process_time() - t
    gated = needs_detector(page, min_drawings)
    engine.hints = [(lb, pymupdf.Rect(b)) for lb, b, _ in dets] if gated else []
    return {
        "rules": [(b.label, b.bbox) for b in rules.blocks(page, td)],
        "picodet": [(lb, b) for lb, b, _ in dets],
        "engine": [(b.label, b.bbox) for b in engine.blocks(page, td)],
        "tables": tables, "gated": gated, "drawings": n_draw,
        "t_detector": round(t_det, 4), "t_find_tables": None if t_tab is None else round(t_tab, 4),
    }


def agreement(records: list[dict], a: str, b: str, thr: float, only=None) -> dict:
    """Per group: [A boxes, matched, B boxes] summed over pages (`only`: groups kept)."""
    out = defaultdict(lambda: [0, 0, 0])
    for r in records:
        if r[a] is None or r[b] is None:
            continue
        for g in ORDER if only is None else only:
            xa = [x for x in r[a] if group(x[0]) == g]
            xb = [x for x in r[b] if group(x[0]) == g]
            o = out[g]
            o[0] += len(xa)
            o[1] += matches(xa, xb, thr)
            o[2] += len(xb)
    return dict(out)


def print_agreement(title: str, ag: dict, a: str, b: str) -> None:
    print(f"\n{title}\n| class | {a} boxes | {b} boxes | matched | of {a}'s | of {b}'s |\n|---|---|---|---|---|---|")
    for g in ORDER:
        if g not in ag:
            continue
        na, m, nb = ag[g]
        if na or nb:
            print(f"| {g} | {na} | {nb} | {m} | {m / na if na else 0:.2f} | {m / nb if nb else 0:.2f} |")


def disagree(rec: dict, thr: float) -> bool:
    """Rules and PicoDet disagree on a table, figure, heading, caption or equation."""
    keep = lambda boxes: [x for x in boxes or [] if group(x[0]) not in ("text", "header", "footer")]
    a, b = keep(rec["rules"]), keep(rec["picodet"])
    return matches(a, b, thr) < max(len(a), len(b))


def draw(page: pymupdf.Page, rec: dict, path: Path) -> None:
    """Boxes on the page image: rules blue, PicoDet red, find_tables green (labels at the top left)."""
    shape = page.new_shape()
    for key, color in (("rules", (0, 0, 1)), ("picodet", (1, 0, 0)), ("tables", (0, 0.6, 0))):
        for lb, b in rec[key] or []:
            r = pymupdf.Rect(b)
            shape.draw_rect(r)
            shape.finish(color=color, width=0.8)
            shape.insert_text(r.tl + (1 + 30 * ("rules", "picodet", "tables").index(key), 6), lb, fontsize=5, color=color)
    shape.commit()
    page.get_pixmap(dpi=90).save(str(path))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pdf_dir", type=Path)
    ap.add_argument("--pages-per-doc", type=int, default=8)
    ap.add_argument("--iou", type=float, default=0.5)
    ap.add_argument("--max-drawings", type=int, default=3000, help="skip find_tables on pages with more vector paths")
    ap.add_argument("--json", type=Path, help="write every page's boxes and timings here")
    ap.add_argument("--draw", type=Path, help="write a PNG with the three sources' boxes for pages where they disagree")
    args = ap.parse_args(argv)

    paths = sorted(args.pdf_dir.glob("*.pdf"))
    if not paths:
        raise SystemExit(f"no PDFs in {args.pdf_dir}")
    # the engine's picodet source: its rules (PicoDetLayout's defaults) with the detector's regions
    # where needs_detector calls it
    picodet = PicoDetLayout()
    rules, engine = TextLayerLayout(find_tables=False), HintedRules(find_tables=False)
    records = []
    for path in paths:
        doc = pymupdf.open(path)
        for i in sample_pages(len(doc), args.pages_per_doc):
            rec = {"doc": path.name, "page": i, **page_record(doc[i], rules, engine, picodet.detector,
                                                                          picodet.min_drawings, args.max_drawings)}
            records.append(rec)
            if args.draw and disagree(rec, args.iou):
                args.draw.mkdir(parents=True, exist_ok=True)
                draw(doc[i], rec, args.draw / f"{path.stem}_p{i}.png")
        print(f"{path.name}: {len(doc)} pages", file=sys.stderr, flush=True)

    n, gated = len(records), sum(r["gated"] for r in records)
    skipped = sum(r["tables"] is None for r in records)
    print(f"{n} pages of {len(paths)} PDFs; the engine calls PicoDet on {gated}; find_tables skipped on {skipped} "
          f"(> {args.max_drawings} vector paths); IoU >= {args.iou}")
    print_agreement("Rules (no detector) against PicoDet, every page", agreement(records, "rules", "picodet", args.iou),
                    "rules", "picodet")
    print_agreement("The engine (rules + PicoDet where gated) against PicoDet, every page",
                    agreement(records, "engine", "picodet", args.iou), "engine", "picodet")
    tab = [agreement(records, "tables", other, args.iou, only=("table",)).get("table", [0, 0, 0])
           for other in ("picodet", "engine")]
    print("\nTables: find_tables against PicoDet and against the engine (pages where find_tables ran)")
    print("| against | find_tables boxes | its boxes | matched |\n|---|---|---|---|")
    for name, (na, m, nb) in zip(("picodet", "engine"), tab):
        print(f"| {name} | {na} | {nb} | {m} |")
    lost = defaultdict(int)
    for r in records:
        if not r["gated"]:
            for lb, _ in r["picodet"]:
                if lb in ("table", "image"):
                    lost[lb] += 1
    print(f"\nGate: PicoDet boxes on the {n - gated} pages the engine does not send to it: "
          f"table {lost['table']}, image {lost['image']}")
    td = [r["t_detector"] for r in records]
    tt = [r["t_find_tables"] for r in records if r["t_find_tables"] is not None]
    print(f"CPU per call: PicoDet {1000 * sum(td) / len(td):.0f} ms (render + run + decode), "
          f"find_tables {1000 * sum(tt) / max(len(tt), 1):.0f} ms")
    if args.json:
        args.json.write_text(json.dumps(records))


if __name__ == "__main__":
    main()
