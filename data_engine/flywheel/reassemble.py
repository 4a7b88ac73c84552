"""Accepted line and block patches -> page-level fine labels, so flywheel output feeds stage 2.

Patches of one page are ordered top to bottom (right to left inside a row for RTL scripts)
and written with ``data_engine.labels.fine_label`` (boxes in 0-999 bins, ``<|ref|>text<|/ref|>
<|det|>[[..]]<|/det|>`` + text per line or block; a block's text keeps its line breaks), then
stored as page samples in the engine's shard format: the page rendered from its source file
plus ``labels.fine`` and ``source: flywheel``. Where a page has both, an accepted block stands
for the accepted lines inside it (a line whose box lies mostly, >= half its area, in the block
is dropped), so no text is labelled twice; lines outside every accepted block are kept.

Only complete pages become page labels (``complete_pages``): every line found on the page
accepted, its trusted text-layer lines added. A page with some lines unaccepted can be made
complete by erasing them (``erase_share``): their boxes are painted white in the rendered image
and left out of the label, so the page shows exactly what its label says and never teaches the
model to skip a visible line. Source files are reopened by their stored path, relative to the
run directory (``patches.relative_source``), so a moved run directory works.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from data_engine.flywheel.blocks import inside
from data_engine.flywheel.patches import BLOCK, Patch, resolve_source
from data_engine.labels import fine_label
from data_engine.shards import SampleTarWriter, encode_meta, sample_key
from models.prompts import PROMPT_FINE


def _without_covered_lines(ps: list[Patch]) -> list[Patch]:
    blocks = [p.bbox for p in ps if p.kind == BLOCK]
    return [p for p in ps if p.kind == BLOCK or not any(inside(p.bbox, b) for b in blocks)]


def page_labels(patches: Iterable[Patch], rtl_scripts: frozenset[str] = frozenset()) -> dict[tuple[str, int], dict]:
    """{(doc_id, page): {"text", "boxes", "lang", "script", "source_path", "page_size"}}."""
    by_page: dict[tuple[str, int], list[Patch]] = defaultdict(list)
    for p in patches:
        if p.text:
            by_page[(p.doc_id, p.page)].append(p)
    out = {}
    for (doc, page), ps in sorted(by_page.items()):
        ps = _without_covered_lines(ps)
        rtl = ps[0].script in rtl_scripts
        ps.sort(key=lambda p: (round(p.bbox[1] / 4), -p.bbox[2] if rtl else p.bbox[0]))
        w, h = ps[0].page_size
        text, boxes = fine_label([{"label": "text", "bbox": p.bbox, "text": p.text} for p in ps], w, h)
        out[(doc, page)] = {"text": text, "boxes": boxes, "lang": ps[0].lang, "script": ps[0].script,
                            "source_path": ps[0].source_path, "page_size": [w, h]}
    return out


# white paint around an erased line's box (PDF points): anti-aliased glyph edges and accents
# reach a little beyond the detector's or the text layer's box
ERASE_PAD_PT = 1.0


def empty_page_counts() -> dict[str, int]:
    """A language's page counts before any page (``complete_pages``)."""
    return {"pages": 0, "complete": 0, "erased": 0, "partial": 0}


def _overlaps(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def _erasable(refused: list[Patch], kept: list[Patch]) -> list[tuple[float, float, float, float]] | None:
    """The white boxes that hide ``refused`` without touching a ``kept`` line, or None where a
    refused line overlaps a kept one (erasing it would cut into labelled text)."""
    boxes = []
    for p in refused:
        x0, y0, x1, y1 = p.bbox
        padded = (x0 - ERASE_PAD_PT, y0 - ERASE_PAD_PT, x1 + ERASE_PAD_PT, y1 + ERASE_PAD_PT)
        for box in (padded, tuple(p.bbox)):
            if not any(_overlaps(box, k.bbox) for k in kept):
                boxes.append(tuple(round(v, 2) for v in box))
                break
        else:
            return None
    return boxes


def complete_pages(accepted: Iterable[Patch], pool: Iterable[Patch], known: Iterable[Patch] = (),
                   rtl_scripts: frozenset[str] = frozenset(), erase_share: float | None = None,
                   ) -> tuple[dict[tuple[str, int], dict], dict[str, dict]]:
    """Page labels of the complete pages, and per language the page counts.

    A page is complete when every patch the detector (or the text layer's refused lines) put
    in the pool for it was accepted, a line also counting as accepted when it lies inside an
    accepted block: its label is then the accepted patches plus the page's ``known`` lines
    (trusted text-layer lines). A page with some lines unaccepted is partial: its accepted
    patches stay line patches for the recognizer and it gets no page label (trained on, a page
    missing lines would teach the model to skip lines), unless ``erase_share`` is set, at least
    that share of its found lines is accepted and no unaccepted line overlaps a labelled one:
    then the unaccepted lines are erased (``erase``: white boxes for ``write_page_shard``) and
    the page is labelled as complete. Counts per language:
    ``{"pages": pages with patches to label, "complete": ..., "erased": complete after erasing,
    "partial": ...}``."""
    accepted = list(accepted)
    done = {p.key for p in accepted}
    pages: dict[tuple[str, int], list[Patch]] = defaultdict(list)
    for p in pool:
        pages[(p.doc_id, p.page)].append(p)
    by_page: dict[tuple[str, int], list[Patch]] = defaultdict(list)
    for p in [*accepted, *known]:
        by_page[(p.doc_id, p.page)].append(p)
    counts: dict[str, dict] = defaultdict(empty_page_counts)
    complete, erase = [], {}
    for page, ps in pages.items():
        blocks = [p.bbox for p in accepted if (p.doc_id, p.page) == page and p.kind == BLOCK]
        found = [p for p in ps if p.kind != BLOCK] or ps  # the lines found; blocks where only blocks are cut
        ok = [p.key in done or any(inside(p.bbox, b) for b in blocks) for p in found]
        c = counts[ps[0].lang]
        c["pages"] += 1
        if all(ok):
            c["complete"] += 1
            complete.append(page)
            continue
        boxes = None
        if erase_share is not None and any(ok) and sum(ok) >= erase_share * len(ok):
            refused = [p for p, good in zip(found, ok) if not good]
            refused_keys = {p.key for p in refused}
            # what the label holds: accepted patches and known lines (a refused block's lines are
            # found lines too, so a block is checked through them)
            boxes = _erasable(refused, [p for p in by_page[page] if p.key not in refused_keys])
        if boxes is not None:
            c["erased"] += 1
            complete.append(page)
            erase[page] = boxes
        elif any(ok):
            c["partial"] += 1
    labels = page_labels([p for page in complete for p in by_page[page]], rtl_scripts)
    for page, boxes in erase.items():
        if page in labels:
            labels[page]["erase"] = boxes
    return labels, dict(counts)


def write_page_shard(path: str | Path, labels: dict[tuple[str, int], dict], dpi: int = 144,
                     root: str | Path | None = None) -> int:
    """Render each labelled page from its source file (a relative ``source_path`` is read below
    ``root``, the run directory), its ``erase`` boxes painted white first, and write it with
    its fine label (the erased boxes in ``meta["erased"]``, PDF points)."""
    import os

    import pymupdf

    from data_engine.render import render_page

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    docs: dict[str, pymupdf.Document] = {}
    with open(tmp, "wb") as f:
        w = SampleTarWriter(f)
        for (doc_id, page), lab in sorted(labels.items()):
            src = lab["source_path"]
            if src not in docs:
                docs[src] = pymupdf.open(resolve_source(src, root))
            pg = docs[src][page]
            for box in lab.get("erase", ()):  # on the open document only: the source file is not written
                pg.draw_rect(pymupdf.Rect(box), color=(1, 1, 1), fill=(1, 1, 1), width=0, overlay=True)
            rp = render_page(pg, dpi=dpi)
            meta = {"doc_id": doc_id, "source_path": src, "page": page, "num_pages": len(docs[src]),
                    "lang": lab["lang"], "script": lab["script"], "dpi": rp.dpi, "page_size": lab["page_size"],
                    "image_size": list(rp.size), "source": "flywheel", "data_source": "ocr",
                    "labels": {"fine": {"prompt": PROMPT_FINE, "text": lab["text"], "boxes": lab["boxes"]}}}
            if lab.get("erase"):
                meta["erased"] = [list(b) for b in lab["erase"]]
            w.write({"__key__": sample_key(doc_id, page), rp.fmt: rp.data, "json": encode_meta(meta)})
            n += 1
        w.close()
    for d in docs.values():
        d.close()
    os.replace(tmp, path)
    return n
