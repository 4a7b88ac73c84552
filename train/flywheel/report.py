"""Run-level flywheel report: ``report.json`` (every round), ``report.md`` (the table) and
``report.png`` (CER per round per language: recognizer on held-out gold patches and on
unseen-word gold patches, its image-blind control, accepted-label CER, and Tesseract as a flat
reference line). The table adds complete pages (page labels for stage 2) and partial ones."""

from __future__ import annotations

import json
from pathlib import Path


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _threshold(cal: dict | None) -> str:
    """The acceptance threshold column: calibrated value (held-out CER at it), or why not."""
    if not cal or cal.get("status") == "too_few":
        return "fixed"
    if cal["status"] == "unreachable":
        own = ("too few lines left by earlier rounds" if cal.get("exhausted") else "none reaches target" +
               (f" (held-out CER {_f(cal['cer_all'])})" if cal.get("cer_all") is not None else ""))
    else:
        bound = f", bound {_f(cal['cer_bound'])}" if cal.get("cer_bound") is not None else ""
        own = f"{cal['threshold']:.3f} ({_f(cal.get('cer_at_threshold'))}{bound}, {cal['share']:.0%} of {cal['lines']})"
    by_source = {src: c for src, c in (cal.get("by_source") or {}).items() if c.get("status") != "too_few"}
    return own + "".join(f"; {src}: {_threshold(c)}" for src, c in sorted(by_source.items()))


def _reads(rd: dict | None) -> str:
    """The reading verdict column (data_engine.reading_metrics): wrong-page CER, word accuracy / needed."""
    if not rd:
        return "-"
    return (f"{'reads' if rd['reads'] else 'does NOT read'} ({_f((rd['wrong_page'] or {}).get('cer'))}, "
            f"{_f(rd['word_accuracy'])} / {_f(rd['chance']['threshold'])})")


def _pages(c: dict | None) -> str:
    if not c:
        return "-"
    erased = f" + {c['erased']} erased" if c.get("erased") else ""  # reports written before erasing have none
    return f"{c['complete']}{erased} ({c['partial']}, {c['pages']})"


def table(rounds: list[dict]) -> str:
    head = ("| round | language | recognizer CER (gold) | image-blind CER | reading verdict (wrong-page CER, "
            "word accuracy / needed) | CER on unseen words | gold loss real / blind | "
            "Tesseract CER (unseen words) | threshold (held-out CER at it) | labelled | accepted | rejected (reasons) | "
            "accepted-label CER | rejected-label CER | accepted total | complete pages + erased (partial, of) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rounds:
        for spec, d in r["languages"].items():
            rec, tess = d.get("recognizer", {}), d.get("tesseract", {})
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(d["rejected_by_reason"].items())) or "-"
            tess_s = (f"{_f(tess.get('cer'))} ({_f(tess.get('cer_unseen'))})" if tess.get("cer") is not None
                      else f"- ({tess.get('note', 'n/a')})")
            lines.append(f"| {r['round']} | {spec} | {_f(rec.get('cer'))} (n={rec.get('gold_n', 0)}) | "
                         f"{_f(rec.get('cer_blind'))} | {_reads(rec.get('reading'))} | {_f(rec.get('cer_unseen'))} | "
                         f"{_f(rec.get('loss'))} / {_f(rec.get('loss_blind'))} | {tess_s} | "
                         f"{_threshold(d.get('calibration'))} | {d['labelled']} | {d['accepted']} | "
                         f"{d['rejected']} ({reasons}) | {_f(d['accepted_label_cer'])} | "
                         f"{_f(d['rejected_label_cer'])} | {d['accepted_total']} | {_pages(d.get('pages'))} |")
    return "\n".join(lines)


def _control_cells(rd: dict) -> str:
    """CER | blank | wrong line | constant | word accuracy (needed) | verdict, of one reading_scores dict."""
    return (f"{_f(rd['cer'])} | {_f((rd.get('blank') or {}).get('cer'))} | {_f((rd['wrong_page'] or {}).get('cer'))} | "
            f"{_f(rd['constant']['cer'])} | {_f(rd['word_accuracy'])} ({_f(rd['chance']['threshold'])}) | "
            f"{'reads' if rd['reads'] else 'does NOT read'} |")


def controls_table(rounds: list[dict]) -> str:
    """The recognizer against its reading controls per round, language and line set (gold, unseen
    words): CER of the same lines as blank images, of each prediction against another line's
    reference, of one constant output, and word accuracy against what chance would need."""
    head = ("| round | language | lines | CER | blank-line CER | wrong-line CER | constant-output CER | "
            "word accuracy (needed) | verdict |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rounds:
        for spec, d in r["languages"].items():
            rec = d.get("recognizer", {})
            for name, key, n in (("gold", "reading", rec.get("gold_n")), ("unseen words", "reading_unseen", rec.get("unseen_n"))):
                if rec.get(key):
                    lines.append(f"| {r['round']} | {spec} | {name} ({n}) | {_control_cells(rec[key])}")
    return "\n".join(lines)


def plot(rounds: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    langs = list(rounds[0]["languages"]) if rounds else []
    ks = [r["round"] for r in rounds]
    for i, spec in enumerate(langs):
        color = f"C{i}"
        rec = [r["languages"][spec]["recognizer"].get("cer") for r in rounds]
        blind = [r["languages"][spec]["recognizer"].get("cer_blind") for r in rounds]
        unseen = [r["languages"][spec]["recognizer"].get("cer_unseen") for r in rounds]
        if any(v is not None for v in unseen):
            ax.plot(ks, [v if v is not None else float("nan") for v in unseen], "^-", color=color, alpha=0.8,
                    label=f"{spec} unseen words")
        acc = [r["languages"][spec]["accepted_label_cer"] for r in rounds]
        ax.plot(ks, [v if v is not None else float("nan") for v in rec], "o-", color=color,
                label=f"{spec} recognizer (gold)")
        ax.plot(ks, [v if v is not None else float("nan") for v in blind], "x:", color=color, alpha=0.5,
                label=f"{spec} image-blind")
        if any(v is not None for v in acc):
            ax.plot(ks, [v if v is not None else float("nan") for v in acc], "s--", color=color, alpha=0.7,
                    label=f"{spec} accepted labels")
        tess = rounds[0]["languages"][spec]["tesseract"].get("cer")
        if tess is not None:
            ax.axhline(tess, color=color, lw=0.8, ls="-.", label=f"{spec} Tesseract")
    ax.set_xlabel("round")
    ax.set_ylabel("CER")
    ax.set_xticks(ks)
    ax.set_ylim(bottom=0)
    ax.set_title("Flywheel: CER per round and language")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_run_report(out_dir: Path, rounds: list[dict], extra: dict | None = None) -> dict:
    out_dir = Path(out_dir)
    report = {"rounds": rounds, **(extra or {})}
    tmp = out_dir / "report.json.tmp"
    tmp.write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(out_dir / "report.json")
    notes = sorted({f"- {spec}: {d['note']}" for r in rounds for spec, d in r["languages"].items() if d.get("note")})
    seeds = [f"- {spec}: seed lines by source {c['seed_by_source']}; calibration lines: {c['calib']} "
             f"({c.get('calib_from')}, {c.get('calib_by_source')})"
             for spec, c in (extra or {}).get("data", {}).items() if "seed_by_source" in c]
    (out_dir / "report.md").write_text("# Flywheel report\n\n" + "\n".join(seeds) + ("\n\n" if seeds else "") +
                                       table(rounds) + "\n\nReading controls (data_engine.reading_metrics; a line is a page):\n\n" +
                                       controls_table(rounds) + "\n\n" + "\n".join(notes) + "\n", encoding="utf-8")
    if rounds:
        plot(rounds, out_dir / "report.png")
    return report
