"""Easy pages: small born-digital PDFs of a few large random letters, for learning on a CPU.

A model trained from scratch on a laptop-class CPU cannot learn to read full document pages
in minutes; it can learn to read a few large glyphs, and whether it reads is then beyond
doubt: the letters are random, so a model that ignores the image cannot guess them (the
image-blind baseline's CER stays near 1). These pages feed the reading test, the reading
benchmark and the embedded default (``./launch.sh demo``) through the real engine: PDF ->
PyMuPDF render -> text-layer (coarse) labels -> shards.

Page layout: a square page of ``size`` points (rendered at 72 dpi: ``size`` pixels, the
``nano`` (128) or ``micro`` (256) resolution mode's view without resampling), ``lines`` lines
of ``chars`` letters each, one line per band of ``size / lines`` points, set in Courier-Bold
(PDF base-14: no font file needed) with a pitch of ``size / chars``, at a small random offset. Each line is one text-show operation, so the text layer holds each line's
letters exactly; the ground truth is written beside each PDF as ``<doc>.gt.json``
(``{"doc_id", "lang", "script", "pages": [{"page", "lines": [...], "text"}]}``) to check what
the engine extracts against what was drawn.

CLI: ``python -m data_engine.easy_pages --out DIR --docs 4 --pages 100 [--lines 2 --chars 2]``
(PDFs only) or ``... --out DIR --train-pages 1600 --heldout-pages 64`` (the whole dataset).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pymupdf

# capitals without look-alikes (I/1, O/0/Q) so a reading error is a reading error
DEFAULT_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ"
FONT = "cobo"  # PDF base-14 Courier-Bold: monospaced, in every viewer and PyMuPDF, no file needed
MONO_ADVANCE, MONO_CAP = 0.6, 0.57  # Courier's advance width and cap height, in em


@dataclass(frozen=True)
class EasyPageSpec:
    size: float = 128.0  # page side in points (= pixels at 72 dpi)
    lines: int = 2
    chars: int = 2  # letters per line
    alphabet: str = DEFAULT_ALPHABET
    jitter: float = 0.06  # random offset of each line, as a fraction of the band height

    def __post_init__(self) -> None:
        if self.size < 32 or self.lines < 1 or self.chars < 1:
            raise ValueError(f"easy pages need size >= 32 pt and at least 1 line of 1 letter, got {self}")
        if len(set(self.alphabet)) < 2 or any(c.isspace() for c in self.alphabet):
            raise ValueError(f"the alphabet needs at least 2 distinct non-space characters, got {self.alphabet!r}")


def draw_lines(rng: random.Random, spec: EasyPageSpec) -> list[str]:
    return ["".join(rng.choice(spec.alphabet) for _ in range(spec.chars)) for _ in range(spec.lines)]


def add_page(doc: pymupdf.Document, lines: list[str], spec: EasyPageSpec, rng: random.Random) -> None:
    """One page with ``lines`` set in a monospaced font whose pitch is the page width / chars:
    at 72 dpi and a view of ``size`` pixels each letter then sits in its own column of the
    vision-token grid (2 letters on a 128 pt page: one 64 px token each), the way glyph size
    and token size are matched in the paper's Fox setting at a much smaller scale."""
    page = doc.new_page(width=spec.size, height=spec.size)
    band, pitch = spec.size / spec.lines, spec.size / spec.chars
    # Courier's advance is 0.6 em and its cap height ~0.57 em: fill the column and ~85% of the band
    fontsize = min(pitch / MONO_ADVANCE, 0.85 * band / MONO_CAP)
    for i, line in enumerate(lines):
        x = (pitch - MONO_ADVANCE * fontsize) / 2 + pitch * spec.jitter * rng.uniform(-1, 1)
        dy = band * spec.jitter * rng.uniform(-1, 1)
        baseline = i * band + 0.5 * band + 0.5 * MONO_CAP * fontsize + dy  # caps centred in the band
        page.insert_text((x, baseline), line, fontname=FONT, fontsize=fontsize, color=(0, 0, 0))


def write_easy_pdfs(out: str | Path, docs: int, pages: int, spec: EasyPageSpec = EasyPageSpec(),
                    seed: int = 0, prefix: str = "easy") -> list[Path]:
    """``docs`` PDFs of ``pages`` pages each (+ ``.gt.json``); deterministic given ``seed``.
    Existing files with the same name are replaced (a re-run gives the same bytes)."""
    if docs < 1 or pages < 1:
        raise ValueError(f"docs and pages must be >= 1, got docs={docs}, pages={pages}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in range(docs):
        rng = random.Random(f"{seed}/{d}")
        doc_id = f"{prefix}-s{seed}-{d:04d}"
        doc = pymupdf.open()
        gt_pages = []
        for p in range(pages):
            lines = draw_lines(rng, spec)
            add_page(doc, lines, spec, rng)
            gt_pages.append({"page": p, "lines": lines, "text": "\n".join(lines)})
        pdf = out / f"{doc_id}.pdf"
        tmp = pdf.with_suffix(".pdf.tmp")
        doc.save(tmp, garbage=3, deflate=True, no_new_id=True)  # no random file id: same bytes per seed
        doc.close()
        tmp.replace(pdf)
        gt = {"doc_id": doc_id, "lang": "und", "script": "Latn", "pages": gt_pages}
        (out / f"{doc_id}.gt.json").write_text(json.dumps(gt, ensure_ascii=False, indent=1))
        paths.append(pdf)
    return paths


def engine_shards(split_dir: Path, workers: int | None = None) -> str:
    """``split_dir/pdfs`` -> the data engine at 72 dpi (coarse labels) -> the glob of its shards."""
    from data_engine.config import EngineConfig
    from data_engine.pipeline import run_engine

    ecfg = EngineConfig.from_any({"input": str(split_dir / "pdfs"), "out": str(split_dir / "engine"),
                                  "dpi": 72, "min_chars": 1, "progress": False, "labels": ["coarse"],
                                  "workers": workers})
    rep = run_engine(ecfg)
    if rep["pages"]["written"] == 0:
        raise RuntimeError(f"the data engine wrote no pages: {split_dir / 'engine' / 'report.json'}")
    return str(split_dir / "engine" / "shards" / "*.tar")


def train_labels_tokenizer(train_shards: str, out_dir: Path, vocab_size: int) -> str:
    """A byte-level BPE trained on the labels of ``train_shards``, saved in ``out_dir``; its folder."""
    from data_engine.tokenizer_train import save_tokenizer, texts_from_shards, train_tokenizer

    tok = train_tokenizer(texts_from_shards(train_shards), vocab_size, min_frequency=2)
    return str(save_tokenizer(tok, out_dir).parent)


def build_dataset(out: str | Path, train_pages: int, heldout_pages: int, spec: EasyPageSpec = EasyPageSpec(),
                  seed: int = 0, pages_per_doc: int = 100, vocab_size: int = 300, workers: int | None = None) -> dict:
    """Easy-page PDFs -> the data engine (coarse labels from the text layer) -> shards, for
    training and for held-out evaluation (other seed: pages never seen), plus a byte-level BPE
    trained on the training labels. Returns the paths; a re-run reuses finished engine work.

    ``vocab_size`` stays small (specials + 256 bytes + a few merges) so a label is close to one
    token per letter: the pairs of a random alphabet are too many and too rare to be tokens."""
    out = Path(out)
    paths = {}
    for split, n, s in (("train", train_pages, seed), ("heldout", heldout_pages, seed + 1_000_003)):
        docs = -(-n // pages_per_doc)
        write_easy_pdfs(out / split / "pdfs", docs, min(n, pages_per_doc), spec, seed=s, prefix=split)
        paths[split] = engine_shards(out / split, workers)
    paths["tokenizer"] = train_labels_tokenizer(paths["train"], out / "tokenizer", vocab_size)
    return paths


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--docs", type=int, default=4, help="PDFs to write (without --heldout-pages)")
    ap.add_argument("--pages", type=int, default=100, help="pages per document")
    ap.add_argument("--size", type=float, default=EasyPageSpec.size, help="page side in points")
    ap.add_argument("--lines", type=int, default=EasyPageSpec.lines)
    ap.add_argument("--chars", type=int, default=EasyPageSpec.chars, help="letters per line")
    ap.add_argument("--alphabet", default=DEFAULT_ALPHABET)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-pages", type=int, default=1600, help="with --heldout-pages: training pages")
    ap.add_argument("--heldout-pages", type=int, default=0,
                    help="> 0: build the whole dataset (train + held-out PDFs -> engine shards + tokenizer)")
    a = ap.parse_args(argv)
    spec = EasyPageSpec(a.size, a.lines, a.chars, a.alphabet)
    if a.heldout_pages > 0:
        paths = build_dataset(a.out, a.train_pages, a.heldout_pages, spec, a.seed, pages_per_doc=a.pages)
        print("easy-page dataset: " + ", ".join(f"{k} {v}" for k, v in paths.items()))
        return
    paths = write_easy_pdfs(a.out, a.docs, a.pages, spec, a.seed)
    print(f"wrote {len(paths)} PDFs x {a.pages} pages ({a.lines} lines x {a.chars} letters, "
          f"{a.size:g} pt pages) to {a.out}")


if __name__ == "__main__":
    main()
