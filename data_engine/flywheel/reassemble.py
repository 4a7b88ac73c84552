"""Accepted line and block patches -> page-level fine labels, so flywheel output feeds stage 2.

Patches of one page are ordered top to bottom (right to left inside a row for RTL scripts)
and written with ``data_engine.labels.fine_label`` (boxes in 0-999 bins, ``<|ref|>text<|/ref|>
<|det|>[[..]]<|/det|>`` + text per line or block; a block's text keeps its line breaks), then
stored as page samples in the engine's shard format: the page rendered from its source file
plus ``labels.fine`` and ``source: flywheel``. Where a page has both, an accepted block stands
for the accepted lines inside it (a line whose box lies mostly, >= half its area, in the block
is dropped), so no text is labelled twice; lines outside every accepted block are kept.

Only complete pages become page labels (``complete_pages``): every line found on the page
accepted, its trusted text-layer lines added. Source files are reopened by their stored path,
relative to the run directory (``patches.relative_source``), so a moved run directory works.
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


def complete_pages(accepted: Iterable[Patch], pool: Iterable[Patch], known: Iterable[Patch] = (),
                   rtl_scripts: frozenset[str] = frozenset()) -> tuple[dict[tuple[str, int], dict], dict[str, dict]]:
    """Page labels of the complete pages only, and per language the page counts.

    A page is complete when every patch the detector (or the text layer's refused lines) put
    in the pool for it was accepted, a line also counting as accepted when it lies inside an
    accepted block: its label is then the accepted patches plus the page's ``known`` lines
    (trusted text-layer lines). A page with some lines unaccepted is partial: its accepted
    patches stay line patches for the recognizer and it gets no page label (trained on, a page
    missing lines would teach the model to skip lines). Counts per language:
    ``{"pages": pages with patches to label, "complete": ..., "partial": ...}``."""
    accepted = list(accepted)
    done = {p.key for p in accepted}
    pages: dict[tuple[str, int], list[Patch]] = defaultdict(list)
    for p in pool:
        pages[(p.doc_id, p.page)].append(p)
    by_page: dict[tuple[str, int], list[Patch]] = defaultdict(list)
    for p in [*accepted, *known]:
        by_page[(p.doc_id, p.page)].append(p)
    counts: dict[str, dict] = defaultdict(lambda: {"pages": 0, "complete": 0, "partial": 0})
    complete = []
    for page, ps in pages.items():
        blocks = [p.bbox for p in accepted if (p.doc_id, p.page) == page and p.kind == BLOCK]
        found = [p for p in ps if p.kind != BLOCK] or ps  # the lines found; blocks where only blocks are cut
        ok = [p.key in done or any(inside(p.bbox, b) for b in blocks) for p in found]
        c = counts[ps[0].lang]
        c["pages"] += 1
        if all(ok):
            c["complete"] += 1
            complete.append(page)
        elif any(ok):
            c["partial"] += 1
    labels = page_labels([p for page in complete for p in by_page[page]], rtl_scripts)
    return labels, dict(counts)


def write_page_shard(path: str | Path, labels: dict[tuple[str, int], dict], dpi: int = 144,
                     root: str | Path | None = None) -> int:
    """Render each labelled page from its source file (a relative ``source_path`` is read below
    ``root``, the run directory) and write it with its fine label."""
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
            rp = render_page(docs[src][page], dpi=dpi)
            meta = {"doc_id": doc_id, "source_path": src, "page": page, "num_pages": len(docs[src]),
                    "lang": lab["lang"], "script": lab["script"], "dpi": rp.dpi, "page_size": lab["page_size"],
                    "image_size": list(rp.size), "source": "flywheel", "data_source": "ocr",
                    "labels": {"fine": {"prompt": PROMPT_FINE, "text": lab["text"], "boxes": lab["boxes"]}}}
            w.write({"__key__": sample_key(doc_id, page), rp.fmt: rp.data, "json": encode_meta(meta)})
            n += 1
        w.close()
    for d in docs.values():
        d.close()
    os.replace(tmp, path)
    return n
