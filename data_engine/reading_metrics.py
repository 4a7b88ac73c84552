"""Does a model read the page, or only its layout? Scores and verdict from predictions and references.

    from data_engine.reading_metrics import reading_scores, reading_lines
    s = reading_scores(preds, refs, *, train_labels=None, blank_preds=None, loss_ratio=None, seed=0)
    s["reads"], s["verdict"], s["cer"], s["word_accuracy"], s["wrong_page"]["cer"], s["chance"]["threshold"]
    print("\\n".join(reading_lines(s)))

``preds[i]`` is the model's output for the page whose reference text is ``refs[i]``. Pure Python
(no torch, no images): the evaluation (``train.eval``), the demo table, ``bench_reading.py`` and
the flywheel report all call it. docs/evaluation.md defines every figure; in short:

* ``cer``: summed edits / summed reference characters, whitespace-free (``data_engine.metrics``);
* ``word_accuracy``: reference words whose prediction at the same place (line i, word j) is the
  same word; ``first_letter_accuracy``: ... starts with the same character;
* ``wrong_page``: the same predictions scored against another page's reference, page i against
  page ``derangement(n, seed)[i]`` (a fixed random cyclic permutation: no page against itself);
* ``constant``: one text for every page, the most frequent training label (``train_labels``), or
  the most frequent evaluation reference when training labels are not given (``source`` says which);
* ``word_prior``: the most frequent word written at every word place;
* ``blank`` (with ``blank_preds``): the outputs on blank pages;
* ``chance``: the best word accuracy of the three reading-free controls above, and the
  ``threshold`` a reading model must reach: chance + max(0.10, chance, 3 binomial standard errors);
* ``reads`` = CER <= 0.5 x wrong-page CER AND word accuracy >= threshold. ``loss_ratio`` (held-out
  loss with real / blank images, ``train.reliance``) is reported beside it and never decides it.
"""

from __future__ import annotations

import math
import random
import unicodedata
from collections import Counter
from collections.abc import Sequence

from .metrics import cer_counts

WRONG_PAGE_FACTOR = 0.5  # reads: CER <= this x the wrong-page CER
MIN_MARGIN = 0.10  # word accuracy must beat chance by at least 10 points ...
SIGMAS = 3.0  # ... and by 3 binomial standard errors of chance over the reference words

__all__ = ["WRONG_PAGE_FACTOR", "MIN_MARGIN", "SIGMAS", "words_by_line", "word_hits", "derangement",
           "most_frequent", "text_scores", "chance_threshold", "reading_scores", "control_rows", "reading_lines", "chance_lines"]


def words_by_line(text: str) -> list[list[str]]:
    """NFKC text -> its non-empty lines, each split into whitespace-separated words."""
    lines = unicodedata.normalize("NFKC", text).splitlines()
    return [ws for ws in (ln.split() for ln in lines) if ws]


def word_hits(pred: str, ref: str) -> tuple[int, int, int]:
    """(words right in place, first letters right in place, reference words): the word at line i,
    place j of the prediction against the reference's word at line i, place j (case-sensitive)."""
    p, r = words_by_line(pred), words_by_line(ref)
    words = first = total = 0
    for i, ref_line in enumerate(r):
        pred_line = p[i] if i < len(p) else []
        total += len(ref_line)
        for j, w in enumerate(ref_line):
            if j < len(pred_line):
                words += pred_line[j] == w
                first += pred_line[j][0] == w[0]
    return words, first, total


def derangement(n: int, seed: int = 0) -> list[int]:
    """A fixed permutation of range(n) with no fixed point (Sattolo's algorithm: one random cycle,
    seeded, so every call with the same n and seed gives the same pairs). Needs n >= 2."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 pages, got {n}")
    perm = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)  # j < i: the cycle never closes early
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def most_frequent(items: Sequence[str]) -> str:
    """The most frequent item (stripped); ties go to the first seen."""
    return Counter(s.strip() for s in items).most_common(1)[0][0]


def text_scores(preds: Sequence[str], refs: Sequence[str]) -> dict:
    """CER, word and first-letter accuracy of paired predictions and references (summed over pages)."""
    edits = chars = words = first = total = 0
    for p, r in zip(preds, refs, strict=True):
        e, n = cer_counts(r, p)
        w, f, t = word_hits(p, r)
        edits, chars, words, first, total = edits + e, chars + n, words + w, first + f, total + t
    return {"cer": edits / chars if chars else None, "word_accuracy": words / total if total else None,
            "first_letter_accuracy": first / total if total else None, "words": total}


def chance_threshold(chance: float, n_words: int) -> tuple[float, float]:
    """(margin, threshold): word accuracy "well above chance" means >= chance + margin, the margin
    being the largest of MIN_MARGIN, chance itself (at least double) and SIGMAS binomial standard
    errors of a rate ``chance`` over ``n_words`` words."""
    se = math.sqrt(chance * (1 - chance) / n_words) if n_words else 0.0
    margin = max(MIN_MARGIN, chance, SIGMAS * se)
    return margin, chance + margin


def reading_scores(preds: Sequence[str], refs: Sequence[str], *, train_labels: Sequence[str] | None = None,
                   blank_preds: Sequence[str] | None = None, loss_ratio: float | None = None,
                   seed: int = 0) -> dict:
    """Every reading figure, its controls and the verdict (module docstring; docs/evaluation.md)."""
    preds, refs = list(preds), list(refs)
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    if not refs:
        raise ValueError("no pages to score")
    n = len(refs)
    out = {"pages": n, **text_scores(preds, refs)}

    if n >= 2:
        perm = derangement(n, seed)
        out["wrong_page"] = {**text_scores(preds, [refs[k] for k in perm]), "derangement_seed": seed}
    else:
        out["wrong_page"] = None
    labels, source = (train_labels, "training labels") if train_labels else (refs, "evaluation references")
    label = most_frequent(labels)
    out["constant"] = {**text_scores([label] * n, refs), "label": label, "source": source}
    word_pool = [w for t in labels for ln in words_by_line(t) for w in ln]
    word = Counter(word_pool).most_common(1)[0][0] if word_pool else ""
    ref_words = [w for r in refs for ln in words_by_line(r) for w in ln]
    out["word_prior"] = {"word": word, "source": source,
                         "word_accuracy": sum(w == word for w in ref_words) / len(ref_words) if ref_words else None}
    out["blank"] = text_scores(blank_preds, refs) if blank_preds is not None else None

    controls = [x for x in ((out["wrong_page"] or {}).get("word_accuracy"), out["constant"]["word_accuracy"],
                            out["word_prior"]["word_accuracy"]) if x is not None]
    chance = max(controls) if controls else None
    margin, threshold = chance_threshold(chance, out["words"]) if chance is not None else (None, None)
    out["chance"] = {"word_accuracy": chance, "margin": margin, "threshold": threshold}
    out["loss_ratio"] = loss_ratio

    cer, wrong_cer = out["cer"], (out["wrong_page"] or {}).get("cer")
    cer_ok = cer is not None and wrong_cer is not None and cer <= WRONG_PAGE_FACTOR * wrong_cer
    words_ok = out["word_accuracy"] is not None and threshold is not None and out["word_accuracy"] >= threshold
    out["checks"] = {"cer_vs_wrong_page": cer_ok, "words_above_chance": words_ok}
    out["reads"] = cer_ok and words_ok
    out["verdict"] = _verdict(out)
    return out


def _f(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _verdict(s: dict) -> str:
    wp, ch = s["wrong_page"] or {}, s["chance"]
    cer_part = (f"CER {_f(s['cer'])} {'<=' if s['checks']['cer_vs_wrong_page'] else 'NOT <='} "
                f"{WRONG_PAGE_FACTOR:g} x wrong-page CER {_f(wp.get('cer'))}")
    word_part = (f"word accuracy {_f(s['word_accuracy'])} {'>=' if s['checks']['words_above_chance'] else '<'} "
                 f"{_f(ch['threshold'])} (chance {_f(ch['word_accuracy'])} + margin {_f(ch['margin'])})")
    if s["pages"] < 2:
        return "no verdict: the wrong-page control needs at least 2 pages"
    head = "READS" if s["reads"] else "does NOT read"
    return f"{head}: {cer_part}; {word_part}"


def control_rows(s: dict) -> list[tuple[str, dict]]:
    """(title, {cer, word_accuracy, first_letter_accuracy}) of the reading-free controls present in
    ``s``: blank pages, wrong-page reference, constant output. For a table beside the model's row."""
    rows = []
    if s.get("blank"):
        rows.append(("blank pages", s["blank"]))
    if s.get("wrong_page"):
        rows.append(("wrong-page reference", s["wrong_page"]))
    src = "most frequent training label" if s["constant"]["source"] == "training labels" else \
        "most frequent reference"
    rows.append((f"constant output ({src})", s["constant"]))
    return rows


def reading_lines(s: dict, title: str = "this model", indent: str = "  ",
                  extra: Sequence[tuple[str, dict]] = ()) -> list[str]:
    """A small text table: the model, any ``extra`` (title, text_scores) rows (e.g. the untrained
    model's ``reading_scores``) and the controls (CER, word / first-letter accuracy), then the
    chance line, the loss ratio (reported, never the verdict) and the verdict."""
    lines = [f"{indent}{'':46s}{'CER':>8s}{'word acc':>10s}{'1st letter':>12s}"]
    for t, r in [(title, s), *extra, *control_rows(s)]:
        lines.append(f"{indent}{t:46s}{_f(r['cer']):>8s}{_f(r['word_accuracy']):>10s}"
                     f"{_f(r['first_letter_accuracy']):>12s}")
    lines += chance_lines(s, indent)
    return lines


def chance_lines(s: dict, indent: str = "  ") -> list[str]:
    """The chance / loss-ratio / verdict lines under a reading table."""
    ch = s["chance"]
    out = [f"{indent}word accuracy by chance {_f(ch['word_accuracy'])} (best of wrong-page, constant output, "
           f"most frequent word {s['word_prior']['word']!r}); {s['words']} reference words"]
    if s.get("loss_ratio") is not None:
        out.append(f"{indent}held-out loss ratio real/blank {s['loss_ratio']:.3f} (reported only: a low ratio "
                   "alone does not show reading)")
    out.append(f"{indent}verdict: {s['verdict']}")
    return out
