"""Aggregate per-page rows into the report's tables; write report.json, report.md and plots.

A row is one (variant, mode, label kind, page) prediction with its metrics (see
``train.eval.suite``). Variants: ``trained`` (the model on the real page), ``blind`` (the same
model, every page replaced by a blank image of the same size: what it writes without looking)
and, optionally, ``untrained`` (the same architecture at a fresh init). Every table carries
each variant side by side, so a figure is never read without its image-blind control.

Tables:
* ``summary``: mode -> kind -> variant -> CER (summed edits / summed reference characters,
  whitespace-free), mean normalised edit distance (OmniDocBench page metric), Fox word
  precision, repetition rate (outputs ending in a loop), unfinished rate (no EOS within the
  budget), mean output/reference length ratio.
* ``fox``: mode -> rows binned by reference text tokens (the paper's Table 2 layout): pages,
  mean text tokens, vision tokens, compression ratio = text tokens / vision tokens, and per
  variant precision and edit distance.
* ``blocks`` (fine labels): mode -> variant -> per block type NED (missed block = 1), mean IoU,
  recall at IoU 0.5; overall box precision/recall and label accuracy.
* ``by_language`` / ``by_script``: mode -> kind -> group -> variant -> pages, CER, NED.
* ``reading``: mode -> kind -> ``data_engine.reading_metrics.reading_scores`` of the trained
  row: word / first-letter accuracy in place, the wrong-page control (each prediction against
  another page's reference), the constant-output baseline, chance, the held-out loss ratio and
  the verdict "reads" (CER <= 0.5 x wrong-page CER and word accuracy well above chance).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from data_engine.reading_metrics import chance_lines, control_rows, reading_scores

VARIANT_ORDER = ("untrained", "trained", "blind")
VARIANT_TITLES = {"untrained": "before training (fresh init)", "trained": "after training",
                  "blind": "image-blind (blank pages)"}


def _mean(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def aggregate(rows: Sequence[dict]) -> dict:
    """Text metrics of a group of rows (one variant)."""
    edits, length = sum(r["cer_edits"] for r in rows), sum(r["cer_len"] for r in rows)
    words = sum(r.get("ref_words", 0) for r in rows)
    return {
        "pages": len(rows),
        "cer": edits / length if length else None,
        "word_accuracy": sum(r["words_right"] for r in rows) / words if words else None,
        "first_letter_accuracy": sum(r["first_letters_right"] for r in rows) / words if words else None,
        "ned": _mean(r["ned"] for r in rows),
        "precision": _mean(r["precision"] for r in rows),
        "repetition_rate": _mean(float(r["repetition"]) for r in rows),
        "unfinished_rate": _mean(float(not r["finished"]) for r in rows),
        "length_ratio": _mean(r["length_ratio"] for r in rows),
    }


def _group(rows: Sequence[dict], *keys: str) -> dict:
    out: dict = {}
    for r in rows:
        d = out
        for k in keys[:-1]:
            d = d.setdefault(r[k], {})
        d.setdefault(r[keys[-1]], []).append(r)
    return out


def summary_table(rows: Sequence[dict]) -> dict:
    g = _group(rows, "mode", "kind", "variant")
    return {m: {k: {v: aggregate(rs) for v, rs in _ordered(kv)} for k, kv in mk.items()} for m, mk in g.items()}


def _ordered(by_variant: dict) -> list:
    return sorted(by_variant.items(), key=lambda kv: VARIANT_ORDER.index(kv[0]) if kv[0] in VARIANT_ORDER else 99)


def bin_edges(values: Sequence[int], width: int = 100) -> list[int]:
    """Edges every ``width`` tokens covering ``values`` (the paper's 100-token Fox bins)."""
    lo = (min(values) // width) * width
    hi = (max(values) // width + 1) * width
    return list(range(lo, hi + 1, width))


def fox_table(rows: Sequence[dict], edges: Sequence[int] | None = None, width: int = 100) -> list[dict]:
    """Rows of one mode binned by reference text tokens (lo <= tokens < hi); see module doc."""
    if not rows:
        return []
    edges = list(edges) if edges else bin_edges([r["ref_tokens"] for r in rows], width)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = [r for r in rows if lo <= r["ref_tokens"] < hi]
        if not in_bin:
            continue
        by_v = _group(in_bin, "variant")
        ref = by_v.get("trained") or next(iter(by_v.values()))  # one row per page for token stats
        text_tok = _mean(r["ref_tokens"] for r in ref)
        vis_tok = _mean(r["vision_tokens"] for r in ref)
        row = {"bin": [lo, hi], "pages": len(ref), "text_tokens": text_tok, "vision_tokens": vis_tok,
               "compression": _mean(r["ref_tokens"] / r["vision_tokens"] for r in ref)}
        for v, rs in _ordered(by_v):
            row[v] = {"precision": _mean(r["precision"] for r in rs), "ned": _mean(r["ned"] for r in rs)}
        out.append(row)
    return out


def block_table(rows: Sequence[dict]) -> dict:
    """Fine-label rows (with ``blocks``) of one mode and variant -> per type and overall."""
    blocks = [b for r in rows for b in r["blocks"]["blocks"]]
    per_type = {}
    for t, bs in sorted(_group(blocks, "type").items()):
        per_type[t] = {"blocks": len(bs), "ned": _mean(b["ned"] for b in bs), "iou": _mean(b["iou"] for b in bs),
                       "recall@0.5": _mean(float(b["iou"] >= 0.5) for b in bs)}
    n_pred = sum(r["blocks"]["pred_blocks"] for r in rows)
    hits = sum(r["blocks"]["hits"] for r in rows)
    return {"per_type": per_type,
            "overall": {"ref_blocks": len(blocks), "pred_blocks": n_pred, "ned": _mean(b["ned"] for b in blocks),
                        "mean_iou": _mean(b["iou"] for b in blocks),
                        "box_recall@0.5": hits / len(blocks) if blocks else None,
                        "box_precision@0.5": hits / n_pred if n_pred else None,
                        "label_accuracy": _mean(float(b["label_ok"]) for b in blocks)}}


def group_table(rows: Sequence[dict], key: str) -> dict:
    g = _group(rows, "mode", "kind", key, "variant")
    return {m: {k: {grp: {v: {x: aggregate(rs)[x] for x in ("pages", "cer", "ned")} for v, rs in _ordered(gv)}
                    for grp, gv in sorted(kg.items())} for k, kg in mk.items()} for m, mk in g.items()}


def _texts(r: dict) -> tuple[str, str]:
    """(prediction, reference) as plain text (a fine row's blocks joined)."""
    return r.get("pred_text", r["pred"]), r.get("ref_text", r["ref"])


def reading_table(rows: Sequence[dict], *, train_labels: dict[str, list[str]] | None = None,
                  loss_ratio: float | None = None, seed: int = 0) -> dict:
    """mode -> kind -> reading scores of the trained row, with the blank-page outputs of the
    same pages and the training labels of that kind (``reading_scores``)."""
    out: dict = {}
    for m, mk in _group(rows, "mode", "kind", "variant").items():
        for k, kv in mk.items():
            trained = kv.get("trained")
            if not trained:
                continue
            blind = {r["key"]: _texts(r)[0] for r in kv.get("blind", [])}
            blank = [blind[r["key"]] for r in trained] if all(r["key"] in blind for r in trained) and blind else None
            preds, refs = zip(*(_texts(r) for r in trained))
            out.setdefault(m, {})[k] = reading_scores(preds, refs, train_labels=(train_labels or {}).get(k),
                                                      blank_preds=blank, loss_ratio=loss_ratio, seed=seed)
    return out


def build_report(rows: Sequence[dict], *, fox_edges: Sequence[int] | None = None, fox_width: int = 100,
                 info: dict | None = None, train_labels: dict[str, list[str]] | None = None,
                 loss_ratio: float | None = None, seed: int = 0) -> dict:
    by_mode = _group(rows, "mode")
    fox_kind = "coarse" if any(r["kind"] == "coarse" for r in rows) else (rows[0]["kind"] if rows else None)
    fine = [r for r in rows if r.get("blocks")]
    return {
        **(info or {}),
        "variants": [v for v in VARIANT_ORDER if any(r["variant"] == v for r in rows)],
        "summary": summary_table(rows),
        "fox": {"label_kind": fox_kind,
                "table": {m: fox_table([r for r in rs if r["kind"] == fox_kind], fox_edges, fox_width)
                          for m, rs in by_mode.items()}},
        "blocks": {m: {v: block_table(rs) for v, rs in _ordered(_group(mr, "variant"))}
                   for m, mr in _group(fine, "mode").items()} if fine else {},
        "by_language": group_table(rows, "lang"),
        "by_script": group_table(rows, "script"),
        "reading": reading_table(rows, train_labels=train_labels, loss_ratio=loss_ratio, seed=seed),
    }


# ---------------------------------------------------------------------------- text out


def _f(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def headline(report: dict) -> tuple[str, str, dict]:
    """The first (mode, kind) and its per-variant summary: the newcomer's table."""
    mode = next(iter(report["summary"]))
    kind = next(iter(report["summary"][mode]))
    return mode, kind, report["summary"][mode][kind]


def headline_reading(report: dict) -> dict | None:
    """The reading scores of the headline (mode, kind), if it has a trained row."""
    mode, kind, _ = headline(report)
    return report.get("reading", {}).get(mode, {}).get(kind)


def verdict(report: dict) -> str:
    """The reading verdict of the headline (mode, kind) (``reading_scores``), or ""."""
    rd = headline_reading(report)
    return rd["verdict"] if rd else ""


def table_rows(report: dict) -> list[tuple[str, dict]]:
    """(title, metrics) of the headline table: every variant, then the reading-free controls
    computed from the trained outputs (wrong-page reference, constant output; blank pages are
    the ``blind`` variant already)."""
    _, _, sv = headline(report)
    rows = [(VARIANT_TITLES.get(v, v), s) for v, s in sv.items()]
    rd = headline_reading(report)
    if rd:
        rows += [(t, c) for t, c in control_rows(rd) if t != "blank pages"]
    return rows


def console_table(report: dict) -> str:
    """The newcomer's table (printed by ``python -m train.evaluate`` and the demo)."""
    mode, kind, sv = headline(report)
    n = next(iter(sv.values()))["pages"]
    lines = [f"held-out pages: {n} (never trained on), mode {mode}, {kind} labels",
             f"  {'':46s}{'CER':>7s}{'word acc':>10s}{'1st letter':>12s}{'edit dist':>11s}{'word prec':>11s}"
             f"{'loops':>7s}{'len ratio':>11s}"]
    for title, s in table_rows(report):
        lines.append(f"  {title:46s}{_f(s['cer']):>7s}{_f(s['word_accuracy']):>10s}{_f(s['first_letter_accuracy']):>12s}"
                     f"{_f(s.get('ned')):>11s}{_f(s.get('precision')):>11s}{_f(s.get('repetition_rate'), 2):>7s}"
                     f"{_f(s.get('length_ratio'), 2):>11s}")
    lines.append("  CER: character edits / reference length (0 = perfect; over 1 when the output runs on "
                 "longer than the page)")
    lines.append("  word acc / 1st letter: reference words whose predicted word in the same place (line, "
                 "position) is right / starts right")
    lines.append("  edit dist: normalised to 0..1; loops: share of outputs stuck repeating")
    rd = headline_reading(report)
    if rd:
        lines += chance_lines(rd)
    return "\n".join(lines)


def markdown(report: dict, plots: Sequence[str] = ()) -> str:
    md = [f"# OCR evaluation: {report.get('model', {}).get('source', '')}", ""]
    mode, kind, sv = headline(report)
    md += [f"Held-out pages, mode `{mode}`, `{kind}` labels. Verdict (docs/evaluation.md): "
           f"**{verdict(report) or 'none'}**", "",
           "| | CER | word accuracy | first-letter accuracy | edit distance | word precision | repetition | "
           "unfinished | length ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for title, s in table_rows(report):
        md.append(f"| {title} | {_f(s['cer'])} | {_f(s['word_accuracy'])} | {_f(s['first_letter_accuracy'])} | "
                  f"{_f(s.get('ned'))} | {_f(s.get('precision'))} | {_f(s.get('repetition_rate'), 2)} | "
                  f"{_f(s.get('unfinished_rate'), 2)} | {_f(s.get('length_ratio'), 2)} |")
    rd = headline_reading(report)
    if rd:
        md += [""] + [ln.strip() + "  " for ln in chance_lines(rd)]
    md += ["", "## Every mode and label kind", "", "| mode | labels | variant | pages | CER | word accuracy | "
           "first-letter accuracy | edit distance | precision | repetition | length ratio |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, mk in report["summary"].items():
        for k, kv in mk.items():
            for v, s in kv.items():
                md.append(f"| {m} | {k} | {v} | {s['pages']} | {_f(s['cer'])} | {_f(s['word_accuracy'])} | "
                          f"{_f(s['first_letter_accuracy'])} | {_f(s['ned'])} | "
                          f"{_f(s['precision'])} | {_f(s['repetition_rate'], 2)} | {_f(s['length_ratio'], 2)} |")
    md += ["", "## Reading verdict per mode and label kind", "",
           "| mode | labels | CER | wrong-page CER | word accuracy | chance | needed | loss ratio | verdict |",
           "|---|---|---|---|---|---|---|---|---|"]
    for m, mk in report.get("reading", {}).items():
        for k, r in mk.items():
            md.append(f"| {m} | {k} | {_f(r['cer'])} | {_f((r['wrong_page'] or {}).get('cer'))} | "
                      f"{_f(r['word_accuracy'])} | {_f(r['chance']['word_accuracy'])} | {_f(r['chance']['threshold'])} | "
                      f"{_f(r['loss_ratio'])} | {'reads' if r['reads'] else 'does not read'} |")
    fox = report["fox"]
    md += ["", f"## Compression (Fox-style, paper Table 2 layout; {fox['label_kind']} labels)", "",
           "Pages binned by reference text tokens (this model's tokenizer); compression = text tokens / "
           "vision tokens (newline and separator tokens excluded, as in the paper).", ""]
    variants = report["variants"]
    head = ["text tokens", "pages"]
    for m in fox["table"]:
        vt = _f(_first(fox["table"][m], "vision_tokens"), 0)
        head += [f"{m} ({vt} vision tokens) precision {v}" for v in variants]
        head += [f"{m} edit distance trained", f"{m} compression"]
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    bins = sorted({tuple(r["bin"]) for rows in fox["table"].values() for r in rows})
    for lo, hi in bins:
        cells, pages = [], 0
        for m, rows in fox["table"].items():
            r = next((x for x in rows if tuple(x["bin"]) == (lo, hi)), None)
            pages = max(pages, r["pages"] if r else 0)
            cells += [_f(r[v]["precision"]) if r and v in r else "-" for v in variants]
            cells += [_f(r["trained"]["ned"]) if r and "trained" in r else "-",
                      (_f(r["compression"], 1) + "x") if r else "-"]
        md.append(f"| {lo}-{hi} | {pages} | " + " | ".join(cells) + " |")
    if report["blocks"]:
        md += ["", "## Blocks (fine labels, OmniDocBench-style)", "",
               "| mode | variant | block type | blocks | edit distance | mean IoU | recall@0.5 |", "|---|---|---|---|---|---|---|"]
        for m, mv in report["blocks"].items():
            for v, t in mv.items():
                for bt, s in t["per_type"].items():
                    md.append(f"| {m} | {v} | {bt} | {s['blocks']} | {_f(s['ned'])} | {_f(s['iou'])} | {_f(s['recall@0.5'])} |")
                o = t["overall"]
                md.append(f"| {m} | {v} | **all** ({o['pred_blocks']} predicted) | {o['ref_blocks']} | {_f(o['ned'])} | "
                          f"{_f(o['mean_iou'])} | {_f(o['box_recall@0.5'])} (precision {_f(o['box_precision@0.5'])}, "
                          f"labels {_f(o['label_accuracy'])}) |")
    for title, key in (("language", "by_language"), ("script", "by_script")):
        md += ["", f"## Per {title}", "", f"| mode | labels | {title} | variant | pages | CER | edit distance |",
               "|---|---|---|---|---|---|---|"]
        for m, mk in report[key].items():
            for k, kg in mk.items():
                for grp, gv in kg.items():
                    for v, s in gv.items():
                        md.append(f"| {m} | {k} | {grp} | {v} | {s['pages']} | {_f(s['cer'])} | {_f(s['ned'])} |")
    if plots:
        md += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(md) + "\n"


def _first(rows: list[dict], key: str):
    return rows[0][key] if rows else None


# ---------------------------------------------------------------------------- plots


def plot(report: dict, rows: Sequence[dict], out_dir: str | Path) -> list[str]:
    """PNG plots (matplotlib, Agg): summary bars, Fox precision vs compression, per language,
    reading (CER and word accuracy beside the controls), length ratios. Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    paths = []
    colors = {"untrained": "tab:gray", "trained": "tab:blue", "blind": "tab:red"}

    groups = [(m, k) for m, mk in report["summary"].items() for k in mk]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(groups) + 2), 3.2))
    variants = report["variants"]
    w = 0.8 / max(len(variants), 1)
    for i, v in enumerate(variants):
        ys = [report["summary"][m][k].get(v, {}).get("cer") or 0.0 for m, k in groups]
        ax.bar([g + i * w for g in range(len(groups))], ys, w, label=VARIANT_TITLES.get(v, v), color=colors.get(v))
    ax.set_xticks([g + w * (len(variants) - 1) / 2 for g in range(len(groups))], [f"{m}\n{k}" for m, k in groups])
    ax.set_ylabel("CER (lower is better)")
    ax.set_title("held-out character error rate")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "cer.png"))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for m, trows in report["fox"]["table"].items():
        for v in variants:
            pts = [(r["compression"], r[v]["precision"], r[v]["ned"]) for r in trows if v in r]
            if not pts:
                continue
            style = dict(color=colors.get(v), marker="o", linestyle="-" if v == "trained" else "--")
            a1.plot([p[0] for p in pts], [p[1] for p in pts], label=f"{m} {v}", **style)
            a2.plot([p[0] for p in pts], [p[2] for p in pts], label=f"{m} {v}", **style)
    for a, yl in ((a1, "word precision"), (a2, "edit distance")):
        a.set_xlabel("compression (text tokens / vision tokens)")
        a.set_ylabel(yl)
    a1.set_title("Fox-style: precision vs compression")
    a2.set_title("edit distance vs compression")
    a1.legend(fontsize=7)
    paths.append(_save(fig, out / "compression.png"))

    mode, kind, _ = headline(report)
    langs = report["by_language"][mode][kind]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(langs) + 2), 3.2))
    for i, v in enumerate(variants):
        ax.bar([g + i * w for g in range(len(langs))], [langs[lg].get(v, {}).get("cer") or 0.0 for lg in langs], w,
               label=VARIANT_TITLES.get(v, v), color=colors.get(v))
    ax.set_xticks([g + w * (len(variants) - 1) / 2 for g in range(len(langs))], list(langs))
    ax.set_ylabel("CER")
    ax.set_title(f"per language ({mode}, {kind})")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "languages.png"))

    rd = headline_reading(report)
    if rd:
        paths.append(_reading_plot(plt, report, rd, out / "reading.png"))

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for v in variants:
        ratios = [min(r["length_ratio"], 3.0) for r in rows if r["variant"] == v]
        ax.hist(ratios, bins=20, range=(0, 3), alpha=0.5, label=VARIANT_TITLES.get(v, v), color=colors.get(v))
    ax.axvline(1.0, color="k", linewidth=0.8)
    ax.set_xlabel("output / reference length (capped at 3)")
    ax.set_ylabel("pages")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "length_ratio.png"))
    return paths


def _reading_plot(plt, report: dict, rd: dict, path: Path) -> str:
    """CER and word accuracy of the trained row beside every control, with the verdict's two
    bars to clear: 0.5 x the wrong-page CER and the word-accuracy threshold above chance."""
    from data_engine.reading_metrics import WRONG_PAGE_FACTOR

    rows = table_rows(report)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [t.split(" (")[0] for t, _ in rows]
    for ax, key, label in ((a1, "cer", "CER (lower is better)"), (a2, "word_accuracy", "word accuracy in place")):
        vals = [r.get(key) or 0.0 for _, r in rows]
        ax.bar(range(len(rows)), vals, color=["tab:blue" if t == VARIANT_TITLES["trained"] else "tab:gray"
                                              for t, _ in rows])
        ax.set_xticks(range(len(rows)), names, rotation=25, ha="right", fontsize=7)
        ax.set_ylabel(label)
    wrong = (rd["wrong_page"] or {}).get("cer")
    if wrong is not None:
        a1.axhline(WRONG_PAGE_FACTOR * wrong, color="k", linestyle="--", linewidth=0.8,
                   label=f"{WRONG_PAGE_FACTOR:g} x wrong-page CER")
        a1.legend(fontsize=7)
    if rd["chance"]["threshold"] is not None:
        a2.axhline(rd["chance"]["threshold"], color="k", linestyle="--", linewidth=0.8, label="needed (chance + margin)")
        a2.legend(fontsize=7)
    fig.suptitle(("reads" if rd["reads"] else "does NOT read") + " (held-out pages)", fontsize=10)
    return _save(fig, path)


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)


def write_report(report: dict, rows: Sequence[dict], out_dir: str | Path, plots: bool = True) -> dict[str, str]:
    """report.json (tables + every page's prediction), report.md and the PNG plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = plot(report, rows, out) if plots and rows else []
    (out / "report.json").write_text(json.dumps({**report, "plots": [Path(p).name for p in pngs], "pages": list(rows)},
                                                ensure_ascii=False, indent=1, default=_jsonable))
    (out / "report.md").write_text(markdown(report, pngs))
    return {"json": str(out / "report.json"), "md": str(out / "report.md"), **{Path(p).stem: p for p in pngs}}


def _jsonable(x):
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)


__all__ = ["aggregate", "summary_table", "bin_edges", "fox_table", "block_table", "group_table", "build_report",
           "console_table", "markdown", "plot", "write_report", "verdict", "reading_table", "table_rows",
           "headline_reading", "VARIANT_TITLES"]
