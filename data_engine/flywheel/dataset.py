"""The flywheel's round-independent data (torch-free), made once per run directory (idempotent, resumable).

From a folder of PDFs per language (the embedded default generates synthetic line pages).
``kinds`` (``flywheel.patches``) says what is cut: line patches, block patches (``blocks.py``)
or both; every file below then holds those kinds (``kind`` in each patch's metadata):

* ``seed/<lang>.tar``: text-layer line patches whose text passes the per-line trust check
  (born-digital pages), labelled with that text; block patches: a text block's runs of trusted
  lines. ``seed_refused.jsonl``: the refused lines (and block runs) with their reasons; their
  boxes (usable even when the text is garbled) join the pool.
* ``pool/<lang>.tar``: unlabelled patches to label: detector lines of image-only pages (for
  blocks: the lines grouped into blocks, ``blocks.group_lines``) and the refused text-layer
  lines / block runs. ``pool_truth.json``: ground truth per pool patch where a sidecar exists
  (matched by box overlap; a block's truth is the union of its lines), used only to score
  accepted labels, never to train.
* ``gold/<lang>.tar``: held-out image-only patches cut at the ground-truth boxes (lines; blocks:
  ``linepages.truth_blocks``) (the recognizer's CER and Tesseract's are measured on them; never
  trained on).
* ``calib/<lang>.tar``: about ``calibration_lines`` trusted seed lines per language, whole
  documents held out of training (their words stay out of the collage lines too), on which each
  round calibrates its acceptance threshold (``accept.py`` ``calibrate``); ``split_calibration``.
* ``gold_unseen/<lang>.tar``: like ``gold``, from held-out pages whose words come from another
  pseudo-word lexicon than every other page's (the generated corpus; ``<input>/gold_unseen/``
  for inputs of your own, optional): the recognizer's CER on words it never saw.
* ``collage/<lang>.tar`` (``collage`` > 0): collage lines, the words of trusted seed lines
  recombined into new lines (``collage.py``), trained on with the seed; as many per language as
  ``collage`` x the best-seeded language's seed lines (a language with few seeds is balanced).
* ``tokenizer/``: byte-level BPE trained on the seed labels plus each script's letters.

Every file is written atomically; ``data/DONE`` marks the whole step, so a killed run redoes
at most the step in progress. Pages without usable text or detections are recorded with a
reason in ``data/pages.jsonl``, never crash the run.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

from data_engine.flywheel.blocks import group_lines, lines_in
from data_engine.flywheel.canvas import LAYOUT, is_rtl
from data_engine.flywheel.collage import COLLAGE_WORDS, line_word_boxes, make_collages, refused_line_words, word_pieces
from data_engine.flywheel.inputs import CALIB_DIR, DRAWN_DIR, find_inputs, read_truth
from data_engine.flywheel.linepages import (POOL, POOL_WORDS, SYLLABLE_SIGNS, UNSEEN, LineLanguage, Vocabulary,
                                            make_line_corpus, truth_blocks)
from data_engine.flywheel.patches import (BLOCK, CANVAS, LINE, Patch, cut_boxes, cut_text_layer, relative_source,
                                          render_page, write_patch_shard)
from data_engine.metrics import box_iou, corpus_cer
from data_engine.scripts import letters


UNSEEN_DIR = "gold_unseen"  # held-out pages of words that no training page has (generated corpus)


def match_truth(box, truth_blocks: list[dict], min_iou: float = 0.5) -> str | None:
    best = max(truth_blocks, key=lambda t: box_iou(box, t["bbox"]), default=None)
    return best["text"] if best is not None and box_iou(box, best["bbox"]) >= min_iou else None


def match_block_truth(box, truth_lines: list[dict], min_iou: float = 0.5) -> str | None:
    """A block patch's truth: the ground-truth lines inside it, joined by newlines, when their
    union covers the box (IoU >= ``min_iou``); a cut run of a paragraph matches its own lines."""
    lines = lines_in(box, truth_lines)
    if not lines:
        return None
    union = [min(ln["bbox"][0] for ln in lines), min(ln["bbox"][1] for ln in lines),
             max(ln["bbox"][2] for ln in lines), max(ln["bbox"][3] for ln in lines)]
    return "\n".join(ln["text"] for ln in lines) if box_iou(box, union) >= min_iou else None


def _truth_of(p: Patch, truth_lines: list[dict]) -> str | None:
    return match_block_truth(p.bbox, truth_lines) if p.kind == BLOCK else match_truth(p.bbox, truth_lines)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


def generate_default_corpus(pdf_dir: Path, languages: dict, pages_per_doc: int, seed: int,
                            lines_per_block: tuple[int, int] = (1, 1), lexicon_size: int = 300,
                            words: str = "pseudo", pool_words: str = "seed") -> None:
    """Embedded default: synthetic line pages, ``languages`` = {spec: {digital, scan, gold}},
    words (``words``: ``wordfreq`` real words, ``pseudo`` pseudo-words; ``linepages.Vocabulary``)
    from a list of ``lexicon_size`` per language. ``pool_words``: the image-only pages to label
    draw from the same words as the seed (``seed``) or from words of their own (``own``: none of
    the seed's or the unseen-word gold's, ``linepages.POOL``), as documents to label hold words
    the seed never had. ``pdf_dir/CORPUS.json`` records these and which languages got real
    words: documents already there are kept, so other settings need another directory."""
    if pool_words not in POOL_WORDS:
        raise ValueError(f"flywheel.pool_words must be one of {POOL_WORDS}, got {pool_words!r}")
    record = pdf_dir / "CORPUS.json"
    made = json.loads(record.read_text()) if record.is_file() else None
    if made is None and any(pdf_dir.glob("*.pdf")):
        made = {"lexicon_size": 300}  # directories made before the record existed: 300 pseudo-words
    if made is not None and (made["lexicon_size"], made.get("words", "pseudo"), made.get("pool_words", "seed")) != \
            (lexicon_size, words, pool_words):
        raise ValueError(f"{pdf_dir} holds pages made with {made['lexicon_size']}-word lexicons of "
                         f"{made.get('words', 'pseudo')} words (pool: {made.get('pool_words', 'seed')} words), not "
                         f"flywheel.lexicon_size={lexicon_size} flywheel.words={words} "
                         f"flywheel.pool_words={pool_words}: use a new out= directory")
    pdf_dir.mkdir(parents=True, exist_ok=True)
    train, unseen = Vocabulary(lexicon_size, 0, words), Vocabulary(lexicon_size, UNSEEN, words)
    parsed = {spec: LineLanguage.parse(spec) for spec in languages}
    real = sorted(spec for spec, lang in parsed.items() if train.real(lang.lang, lang.script))
    _write_json(record, {"lexicon_size": lexicon_size, "words": words, "real_words": real, "pool_words": pool_words})
    own = ("scan",) if pool_words == "own" else ()
    plan = {spec: {k: int(v) for k, v in kinds.items() if k in ("digital", "scan") and k not in own}
            for spec, kinds in languages.items()}
    make_line_corpus(pdf_dir, plan, pages_per_doc=pages_per_doc, seed=seed, lines_per_block=lines_per_block,
                     vocab=train)
    if own:  # the same per-document seeds: only the words differ
        make_line_corpus(pdf_dir, {spec: {"scan": int(kinds.get("scan", 0))} for spec, kinds in languages.items()},
                         pages_per_doc=pages_per_doc, seed=seed, lines_per_block=lines_per_block,
                         vocab=Vocabulary(lexicon_size, POOL, words))
    gold = {spec: {"scan": int(kinds.get("gold", 0))} for spec, kinds in languages.items()}
    make_line_corpus(pdf_dir / "gold", gold, pages_per_doc=pages_per_doc, seed=seed + 7919,
                     lines_per_block=lines_per_block, vocab=train)
    # the same held-out pages again, from words the training pages never use
    make_line_corpus(pdf_dir / UNSEEN_DIR, gold, pages_per_doc=pages_per_doc, seed=seed + 104729,
                     lines_per_block=lines_per_block, vocab=unseen)
    # calibration pages: born-digital pages of training words, cut as the pool is (calib/)
    calib = {spec: {"digital": int(kinds.get("calib", 0))} for spec, kinds in languages.items()}
    make_line_corpus(pdf_dir / CALIB_DIR, calib, pages_per_doc=pages_per_doc, seed=seed + 15485863,
                     lines_per_block=lines_per_block, vocab=train)
    # drawn seed pages: lines of the training words with a shaped sign (pre-base vowel sign,
    # conjunct), image-only, labelled with the text drawn (drawn/): the glyphs the text layer garbles
    shaped = replace(train, shaped=True)
    drawn = {spec: {"scan": int(kinds.get("drawn", 0))} for spec, kinds in languages.items()
             if shaped.words(parsed[spec].script, parsed[spec].lang)}
    make_line_corpus(pdf_dir / DRAWN_DIR, drawn, pages_per_doc=pages_per_doc, seed=seed + 32452843,
                     lines_per_block=lines_per_block, vocab=shaped)


def patch_kinds(setting: str) -> tuple[str, ...]:
    """``flywheel.patches`` (lines | blocks | both) -> the patch kinds to cut."""
    return {"lines": (LINE,), "blocks": (BLOCK,), "both": (LINE, BLOCK)}[setting]


def prepare_data(data_dir: Path, languages: dict, *, pdf_dir: Path, detector, dpi: int = 144,
                 tokenizer_vocab: int = 512, kinds: tuple[str, ...] = (LINE,), canvas: int = CANVAS,
                 stretch: float = 1.0, collage: float = 0.0, calibration_lines: int = 0, log=print) -> dict:
    """Cut seed / pool / gold patches per language and train the tokenizer (see module doc).
    ``canvas`` / ``stretch``: how the shards' canvases are drawn (``patches.patch_canvas``).
    ``collage``: collage lines (``collage.py``: words of trusted lines recombined) per seed line
    of the best-seeded language, for every language with seed words, in ``collage/<lang>.tar``.
    ``calibration_lines``: seed lines per language held out for calibration (``split_calibration``)."""
    import pymupdf

    view = {"canvas": canvas, "stretch": stretch, "layout": LAYOUT, "collage": collage, "collage_words": COLLAGE_WORDS,
            "calibration_lines": calibration_lines, "seed_sources": ["text layer", "drawn text"],
            "calibration_from": "calib pages cut like the pool, else held-out seed documents"}
    if (data_dir / "DONE").is_file():
        made_view = json.loads((data_dir / "VIEW").read_text()) if (data_dir / "VIEW").is_file() else None
        if made_view != view:
            raise ValueError(f"{data_dir} holds patch canvases drawn as {made_view}, not {view} (the "
                             "recognizer's mode or stretch, the canvas layout, flywheel.collage or "
                             "flywheel.accept.calibration_lines changed): "
                             "use a new out= directory")
        counts = json.loads((data_dir / "DONE").read_text())
        made = {tuple(c.get("by_kind", {LINE: 0})) for c in counts.values()}
        if made and made != {tuple(kinds)}:
            raise ValueError(f"{data_dir} holds patches of kinds {sorted(made)[0]}, not {tuple(kinds)} "
                             "(flywheel.patches changed): use a new out= directory")
        return counts
    langs = {spec: LineLanguage.parse(spec) for spec in languages}
    inputs = find_inputs(pdf_dir, list(langs))
    root = data_dir.parent  # source paths are stored relative to the run directory (it may move)
    min_lines = 2 if LINE in kinds else 1  # block patches of one line only where lines are not cut
    seed, pool, gold, calib, unseen = defaultdict(list), defaultdict(list), defaultdict(list), {}, defaultdict(list)
    drawn, calib_pages = defaultdict(list), defaultdict(list)  # drawn/ seed lines; calib/ pages cut like the pool
    pieces = defaultdict(list)  # spec -> [(doc_id, word pieces of one page)]
    truth, refused, pages_log, seed_truth = {}, [], [], defaultdict(list)
    no_truth = Counter()  # gold pages without a sidecar, per language
    for spec, lang in langs.items():
        rtl = is_rtl(lang.script)
        files = [f for f in inputs if f.spec == spec]
        if not files:
            log(f"[flywheel] {spec}: no input files under {pdf_dir}")
        for f in files:
            path, is_gold = f.path, f.role in ("gold", UNSEEN_DIR, DRAWN_DIR)  # cut at the truth's boxes
            held_out = {"gold": gold, UNSEEN_DIR: unseen, DRAWN_DIR: drawn}.get(f.role)
            try:
                doc = pymupdf.open(path)
            except Exception as e:  # a bad file is recorded, never fatal
                pages_log.append({"file": str(path), "reason": "unreadable", "detail": str(e)[:200]})
                continue
            gt = read_truth(path, [pg.rect for pg in doc])
            if f.role != "train" and gt is None:
                no_truth[spec] += 1
                pages_log.append({"file": str(path), "reason": "gold_without_truth", "role": f.role,
                                  "detail": f"no {path.with_suffix('.gt.json').name} beside it (python -m "
                                            "data_engine.flywheel.gold writes one)"})
                log(f"[flywheel] warning: {f.role} page {path} has no {path.with_suffix('.gt.json').name}: not used")
                doc.close()
                continue
            for page in doc:
                img = render_page(page, dpi)
                lines = gt["pages"][page.number]["blocks"] if gt else []
                # a block's truth: its lines' union; with line patches too, one-line blocks are the lines
                page_truth = {LINE: lines, BLOCK: [b for b in truth_blocks(lines) if b["lines"] >= min_lines]}
                common = dict(doc_id=f.doc_id, lang=lang.lang, script=lang.script, source_path=relative_source(path, root))
                if is_gold:
                    for kind in kinds:
                        held_out[spec] += cut_boxes(img, page.rect, [b["bbox"] for b in page_truth[kind]],
                                                    page=page.number, source=f.role if f.role == DRAWN_DIR else "gold",
                                                    kind=kind, texts=[b["text"] for b in page_truth[kind]], **common)
                    continue
                if f.role == CALIB_DIR:
                    calib_pages[spec] += _pool_like(page, img, detector, rtl, kinds, min_lines, page_truth, common)
                    continue
                good, bad = cut_text_layer(page, img, rtl=rtl, kinds=kinds, **common)
                bad_lines = [r for r in bad if r["kind"] == LINE]
                if good or bad:  # a text layer: trusted lines seed, the others' boxes join the pool
                    seed[spec] += good
                    if collage > 0:
                        pieces[spec].append((f.doc_id, _word_pieces(page, img, [p for p in good if p.kind == LINE])))
                    for p in good:  # scored against the sidecar only (never used to train)
                        t = _truth_of(p, lines)
                        if t is not None:
                            seed_truth[spec].append((t, p.text))
                    refused += [dict(r, doc_id=f.doc_id, page=page.number, lang=lang.lang) for r in bad]
                    new = _refused_boxes(page, img, bad, kinds, common)
                    if collage > 0:  # the refused lines' words that are trustworthy on their own
                        pieces[spec].append((f.doc_id, _word_pieces(page, img, [p for p in new if p.kind == LINE],
                                                                     refused=True)))
                else:  # image-only: the detector cuts the lines (grouped into blocks for block patches)
                    boxes = [b.bbox for b in detector.blocks(page, image=img)]
                    regions = group_lines(boxes, min_lines=min_lines) if getattr(detector, "unit", None) == LINE else boxes
                    new = [p for kind in kinds for p in cut_boxes(
                        img, page.rect, boxes if kind == LINE else regions, page=page.number,
                        source="detector", kind=kind, **common)]
                    if not boxes:
                        pages_log.append({"doc_id": f.doc_id, "page": page.number, "reason": "no_lines_detected"})
                for p in new:
                    t = _truth_of(p, lines)
                    if t is not None:
                        truth[p.key] = t
                pool[spec] += new
                pages_log.append({"doc_id": f.doc_id, "page": page.number, "seed": len(good),
                                  "pool": len(new), "refused": len(bad_lines)})
            doc.close()
    data_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for spec in langs:  # held-out documents leave the seed and give no collage words
        if calib_pages[spec]:  # calibration pages cut like the pool: the seed keeps all its lines
            calib[spec] = calib_pages[spec]
        else:
            seed[spec], calib[spec] = split_calibration(seed[spec], calibration_lines)
        held = {p.doc_id for p in calib[spec]}
        pieces[spec] = [w for doc_id, ws in pieces[spec] if doc_id not in held for w in ws]
    # balanced: every language gets as many collage lines (from its own words) as the
    # best-seeded one, so a language with few seed lines is not a rounding error of the mix
    most = max((sum(p.kind == LINE for p in seed[spec]) for spec in langs), default=0)
    collages = {spec: make_collages(pieces[spec], round(collage * most), seed=zlib.crc32(f"collage:{spec}".encode()),
                                    template=(seed[spec] or pool[spec])[0])  # pool: no trusted line, trusted words
                for spec in langs if pieces[spec]}
    sources = {spec: {"text layer": len(seed[spec]), "drawn text": len(drawn[spec])} for spec in langs}
    for spec in langs:  # drawn lines seed after the split: never calibration lines, no collage words
        seed[spec] += drawn[spec]
    parts = (("seed", seed), ("pool", pool), ("gold", gold), ("calib", calib), (UNSEEN_DIR, unseen)) + \
        ((("collage", collages),) if collage > 0 else ())
    for spec in langs:
        key = spec.replace(":", "_").replace("-", "_")
        counts[spec] = {name: write_patch_shard(data_dir / name / f"{key}.tar", ps.get(spec, []), canvas, stretch)
                        for name, ps in parts}
        refused_here = [r for r in refused if r["lang"] == langs[spec].lang and r["kind"] == LINE]
        counts[spec].update({
            "seed_refused": len(refused_here), "gold_without_truth": no_truth[spec],
            "seed_refused_by_reason": dict(Counter(r["reason"] for r in refused_here)),
            "by_kind": {kind: {name: sum(p.kind == kind for p in ps.get(spec, [])) for name, ps in parts}
                        for kind in kinds},
            "seed_label_cer": corpus_cer(seed_truth[spec]), "seed_by_source": sources[spec],
            "calib_from": "calib pages cut like the pool" if calib_pages[spec] else "held-out seed documents",
            "calib_by_source": dict(Counter(p.source for p in calib[spec]))})
        log(f"[flywheel] {spec}: {counts[spec]['seed']} seed patches ({sources[spec]['text layer']} text layer, "
            f"{sources[spec]['drawn text']} drawn text), "
            f"{counts[spec]['seed_refused']} text-layer lines refused, {counts[spec]['pool']} to label, "
            f"{counts[spec]['gold']} held-out gold, {counts[spec]['calib']} calibration lines "
            f"({counts[spec]['calib_from']}); "
            f"seed-label CER vs ground truth "
            f"{counts[spec]['seed_label_cer']}" + (f"; {counts[spec]['collage']} collage lines" if collage > 0 else ""))
    _write_json(data_dir / "pool_truth.json", truth)
    (data_dir / "seed_refused.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in refused),
                                                 encoding="utf-8")
    (data_dir / "pages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pages_log), encoding="utf-8")
    train_flywheel_tokenizer(data_dir / "tokenizer", [p.text for ps in seed.values() for p in ps],
                             [lg.script for lg in langs.values()], tokenizer_vocab)
    _write_json(data_dir / "VIEW", view)
    _write_json(data_dir / "DONE", counts)
    return counts


def split_calibration(seed: list[Patch], n: int, max_share: float = 0.25) -> tuple[list[Patch], list[Patch]]:
    """(training seed, calibration lines): whole documents' line patches held out, in a fixed
    pseudo-random document order, until at least ``n`` lines, but never more than ``max_share``
    of the language's seed lines (a language with few seeds keeps most of them to learn from;
    ``n`` = 0 or a single document: nothing is held out). Whole documents, so that the
    calibration lines share no page, and no collage word, with what the recognizer trains on."""
    lines = Counter(p.doc_id for p in seed if p.kind == LINE)
    if n <= 0 or len(lines) < 2:
        return seed, []
    cap, held, count = max_share * sum(lines.values()), set(), 0
    for doc_id in sorted(lines, key=lambda d: zlib.crc32(d.encode())):
        if count >= n:
            break
        if count + lines[doc_id] <= cap:
            held.add(doc_id)
            count += lines[doc_id]
    return ([p for p in seed if p.doc_id not in held],
            [p for p in seed if p.doc_id in held and p.kind == LINE])


def _refused_boxes(page, img, bad: list[dict], kinds: tuple[str, ...], common: dict) -> list[Patch]:
    """The refused text-layer lines (and block runs) cut at their boxes, to label; a line keeps
    its garbled text (``extra.text_layer``), which its label must fit (``accept.judge``)."""
    return [p for kind in kinds for p in cut_boxes(
        img, page.rect, [r["bbox"] for r in bad if r["kind"] == kind], page=page.number, source="textlayer_box",
        start=500, kind=kind, extras=[{"text_layer": r["text"]} if kind == LINE else {} for r in bad if r["kind"] == kind],
        **common)]


def _pool_like(page, img, detector, rtl: bool, kinds: tuple[str, ...], min_lines: int, page_truth: dict,
               common: dict) -> list[Patch]:
    """A calibration page cut as the pool is cut, labelled with its truth (box overlap; patches
    without a match are dropped): the refused text-layer lines' boxes (``textlayer_box``) and the
    detector's lines of the rendered page (``detector``, the page as if scanned). Calibrating on
    these, not on clean trusted lines, makes the threshold hold for the labels it lets through."""
    _, bad = cut_text_layer(page, img, rtl=rtl, kinds=kinds, **common)
    cut = _refused_boxes(page, img, bad, kinds, common)
    boxes = [b.bbox for b in detector.blocks(page, image=img)]
    regions = group_lines(boxes, min_lines=min_lines) if getattr(detector, "unit", None) == LINE else boxes
    cut += [p for kind in kinds for p in cut_boxes(img, page.rect, boxes if kind == LINE else regions,
                                                   page=page.number, source="detector", kind=kind, **common)]
    out = []
    for p in cut:
        t = _truth_of(p, page_truth[LINE])
        if t is not None:
            out.append(replace(p, text=t))
    return out


def _word_pieces(page, img, lines: list[Patch], refused: bool = False) -> list:
    """The words of trusted seed lines (``refused``: the trusted words of refused lines), cut
    for collage lines (``collage.py``)."""
    words = page.get_text("words")
    out = []
    for p in lines:
        boxes = refused_line_words(p, words) if refused else line_word_boxes(page, p, words)
        if boxes:
            out += word_pieces(img, page.rect, p, boxes)
    return out


def train_flywheel_tokenizer(out_dir: Path, texts: list[str], scripts: list[str], vocab: int) -> None:
    """BPE on the seed labels plus every script's letters (so no script falls back to bytes)."""
    from data_engine.tokenizer_train import save_tokenizer, train_tokenizer

    alphabets = []
    for s in scripts:
        signs = "".join(chr(c) for c in SYLLABLE_SIGNS.get(s, ()))
        alphabets += [" ".join(letters(s)) + " " + " ".join(signs)] * 3
    tok = train_tokenizer(texts + alphabets, vocab_size=vocab, min_frequency=2)
    save_tokenizer(tok, out_dir)


def seed_samples(patches: list[Patch]) -> list[tuple[str, tuple]]:
    return [(p.text, p.bbox) for p in patches if p.text]
