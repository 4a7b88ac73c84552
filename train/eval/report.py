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
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

VARIANT_ORDER = ("untrained", "trained", "blind")
VARIANT_TITLES = {"untrained": "before training (fresh init)", "trained": "after training",
                  "blind": "image-blind (blank pages)"}


def _mean(xs: Iterable[float]) -> float | None:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else None


def aggregate(rows: Sequence[dict]) -> dict:
    """Text metrics of a group of rows (one variant)."""
    edits, length = sum(r["cer_edits"] for r in rows), sum(r["cer_len"] for r in rows)
    return {
        "pages": len(rows),
        "cer": edits / length if length else None,
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


def build_report(rows: Sequence[dict], *, fox_edges: Sequence[int] | None = None, fox_width: int = 100,
                 info: dict | None = None) -> dict:
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
    }


# ---------------------------------------------------------------------------- text out


def _f(x, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def headline(report: dict) -> tuple[str, str, dict]:
    """The first (mode, kind) and its per-variant summary: the newcomer's table."""
    mode = next(iter(report["summary"]))
    kind = next(iter(report["summary"][mode]))
    return mode, kind, report["summary"][mode][kind]


def verdict(by_variant: dict) -> str:
    t, b = by_variant.get("trained", {}).get("cer"), by_variant.get("blind", {}).get("cer")
    if t is None or b is None:
        return ""
    if t <= 0.8 * b:
        return f"the model reads the page: CER {t:.3f} with the real image vs {b:.3f} with a blank one"
    return (f"WARNING: CER with the real image ({t:.3f}) is not clearly below the image-blind CER ({b:.3f}): "
            "the model writes what it memorised, not what it sees")


def console_table(report: dict) -> str:
    mode, kind, sv = headline(report)
    n = next(iter(sv.values()))["pages"]
    lines = [f"held-out pages: {n} (never trained on), mode {mode}, {kind} labels",
             f"  {'':32s}{'CER':>7s}{'edit dist':>11s}{'word prec':>11s}{'loops':>7s}{'len ratio':>11s}"]
    for v, s in sv.items():
        lines.append(f"  {VARIANT_TITLES.get(v, v):32s}{_f(s['cer']):>7s}{_f(s['ned']):>11s}{_f(s['precision']):>11s}"
                     f"{_f(s['repetition_rate'], 2):>7s}{_f(s['length_ratio'], 2):>11s}")
    lines.append("  CER: character edits / reference length (0 = perfect; over 1 when the output runs on "
                 "longer than the page)")
    lines.append("  edit dist: normalised to 0..1; loops: share of outputs stuck repeating")
    if verdict(sv):
        lines.append("  " + verdict(sv))
    return "\n".join(lines)


def markdown(report: dict, plots: Sequence[str] = ()) -> str:
    md = [f"# OCR evaluation: {report.get('model', {}).get('source', '')}", ""]
    mode, kind, sv = headline(report)
    md += [f"Held-out pages, mode `{mode}`, `{kind}` labels. " + verdict(sv), "",
           "| | CER | edit distance | word precision | repetition | unfinished | length ratio |",
           "|---|---|---|---|---|---|---|"]
    for v, s in sv.items():
        md.append(f"| {VARIANT_TITLES.get(v, v)} | {_f(s['cer'])} | {_f(s['ned'])} | {_f(s['precision'])} | "
                  f"{_f(s['repetition_rate'], 2)} | {_f(s['unfinished_rate'], 2)} | {_f(s['length_ratio'], 2)} |")
    md += ["", "## Every mode and label kind", "", "| mode | labels | variant | pages | CER | edit distance | "
           "precision | repetition | length ratio |", "|---|---|---|---|---|---|---|---|---|"]
    for m, mk in report["summary"].items():
        for k, kv in mk.items():
            for v, s in kv.items():
                md.append(f"| {m} | {k} | {v} | {s['pages']} | {_f(s['cer'])} | {_f(s['ned'])} | "
                          f"{_f(s['precision'])} | {_f(s['repetition_rate'], 2)} | {_f(s['length_ratio'], 2)} |")
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
    length ratios. Returns the written paths."""
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
           "console_table", "markdown", "plot", "write_report", "verdict", "VARIANT_TITLES"]
