"""Real-PDF regression harness: the engine's coarse text per page vs poppler's `pdftotext`.

    python scripts/compare_pdftotext.py /data/real_pdfs --pages-per-doc 12 --json out.json
    python scripts/compare_pdftotext.py pdfs/ --engine-root /path/to/other/checkout   # measure another version
    python scripts/compare_pdftotext.py pdfs/ --engine-root /old --json old.json && \
        python scripts/compare_pdftotext.py pdfs/ --before old.json                  # before -> after tables
    python scripts/compare_pdftotext.py --before old.json --after new.json             # the same from two runs

`pdftotext` (Debian/Ubuntu `poppler-utils`, Homebrew `poppler`) is an independent text extractor
with mature word-spacing, accent-composition and bidi heuristics; it is the reference here, not
ground truth (it has its own errors), so the numbers to watch are differences between engine
versions on the same pages, and pages where the two disagree a lot (`--worst`).

Per page (an even sample of up to `--pages-per-doc` pages per document):
  CER        edit distance / reference length on NFKC text with all whitespace and bidi
             controls removed (characters and their order, not layout)
  breaks     word breaks: both texts' non-space characters are aligned (Levenshtein opcodes);
             over aligned characters, `recall` = reference breaks the engine also has,
             `ratio` = engine breaks / reference breaks (1.0 = as many breaks as poppler)
  accents    spacing accents (´ ˛ ¸ ˜ ¨ ˇ ...) touching a letter, per 1000 letters: TeX draws some
             accents as separate glyphs; a label must carry the composed letter
  bidi       pages with RTL letters: lam-alef pairs (engine / reference), digit runs of the
             reference found in the engine text, kashida (U+0640) in the engine text
  filter     the engine's own decision (kept / skipped reason) and its language/script labels

Pages are grouped by the reference's writing system (Han+kana = Jpan, Hangul(+Han) = Kore,
computed here, independently of the engine) and by the reference's language (py3langid).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path

SPACING_ACCENTS = "\u00b4\u02db\u00b8\u02dc\u00a8\u02c7\u02d8\u02da\u02dd\u02c6\u00af\u02d9`"
_DETACHED = re.compile(rf"(?<=\w)[{SPACING_ACCENTS}]|[{SPACING_ACCENTS}](?=\w)")
_BIDI_CONTROLS = dict.fromkeys(map(ord, "\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u061c"), None)
_LAM_ALEF = re.compile("\u0644[\u0627\u0622\u0623\u0625]")
_DIGIT_RUN = re.compile(r"\d{2,}")
_SPACE = re.compile(r"\s+")


def clean(text: str) -> str:
    """NFKC (presentation forms -> letters, as pdftotext emits Arabic), bidi controls removed."""
    return unicodedata.normalize("NFKC", text).translate(_BIDI_CONTROLS).replace("\u00ad", "")


def writing_system(text: str) -> str:
    """ISO 15924 of the letters' majority writing system; Han joins kana (Jpan) or Hangul (Kore)."""
    from fontTools.unicodedata import script

    counts: Counter = Counter()
    for ch, n in Counter(text).items():
        if ch.isalpha():
            counts[script(ch)] += n
    if not counts:
        return "Zyyy"
    han, kana, hangul = counts.pop("Hani", 0), counts.pop("Hira", 0) + counts.pop("Kana", 0), counts.pop("Hang", 0)
    if kana:
        counts["Jpan"] = han + kana
    elif hangul:
        counts["Kore" if han else "Hang"] = han + hangul
    elif han:
        counts["Hani"] = han
    return counts.most_common(1)[0][0]


def _chars_and_breaks(text: str) -> tuple[str, list[bool]]:
    chars, breaks, gap = [], [], False
    for ch in text:
        if ch.isspace():
            gap = True
            continue
        chars.append(ch)
        breaks.append(gap and bool(chars[:-1]))
        gap = False
    return "".join(chars), breaks


def page_metrics(ref: str, hyp: str) -> dict:
    from rapidfuzz.distance import Levenshtein

    # spacing accents are counted before NFKC, which turns "´" into a space + combining acute
    accents_ref, accents_hyp = len(_DETACHED.findall(ref)), len(_DETACHED.findall(hyp))
    ref, hyp = clean(ref), clean(hyp)
    r, rb = _chars_and_breaks(ref)
    h, hb = _chars_and_breaks(hyp)
    m = {"ref_chars": len(r), "edits": Levenshtein.distance(r, h)}
    ref_breaks = hyp_breaks = hits = 0
    for op in Levenshtein.opcodes(r, h):
        if op.tag != "equal":
            continue
        for k in range(op.src_end - op.src_start):
            # the first character of an aligned block: its "break before" follows an edit, not comparable
            if k == 0 and op.src_start > 0:
                continue
            a, b = rb[op.src_start + k], hb[op.dest_start + k]
            ref_breaks += a
            hyp_breaks += b
            hits += a and b
    letters_h = sum(c.isalpha() for c in h) or 1
    letters_r = sum(c.isalpha() for c in r) or 1
    m.update(ref_breaks=ref_breaks, hyp_breaks=hyp_breaks, break_hits=hits,
             accents_hyp=accents_hyp, accents_ref=accents_ref,
             letters_hyp=letters_h, letters_ref=letters_r)
    n_rtl = sum(unicodedata.bidirectional(c) in ("R", "AL") for c in r)
    if n_rtl >= 20:
        ref_runs, hyp_runs = Counter(_DIGIT_RUN.findall(r)), Counter(_DIGIT_RUN.findall(h))
        m.update(rtl=True, lamalef_ref=len(_LAM_ALEF.findall(r)), lamalef_hyp=len(_LAM_ALEF.findall(h)),
                 digit_runs_ref=sum(ref_runs.values()), digit_runs_hit=sum((ref_runs & hyp_runs).values()),
                 kashida_hyp=h.count("\u0640"), kashida_ref=r.count("\u0640"))
    return m


def pdftotext_page(path: Path, page: int) -> str:
    out = subprocess.run(["pdftotext", "-q", "-enc", "UTF-8", "-nopgbrk", "-f", str(page + 1), "-l", str(page + 1),
                          str(path), "-"], capture_output=True, timeout=120)
    return out.stdout.decode("utf-8", "replace")


def sample_pages(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n // 2]


def engine_page(page, flt) -> tuple[str, str | None, str, str]:
    """The engine's coarse text of one page, its filter reason, language and script.

    Uses the engine's own entry point (`coarse.page_text`) when it has one; older engines
    built the text from `render.extract_text` + `coarse.text_from_dict`."""
    from data_engine import coarse, langid, render

    try:  # engines with second readings of unmapped glyphs (data_engine/fallback.py)
        from data_engine import fallback

        (text, reason, _), _, _ = fallback.page_check(page, flt)
    except ImportError:
        if hasattr(coarse, "page_text"):
            text = coarse.page_text(page)[0]
        else:
            text = coarse.text_from_dict(render.extract_text(page))
        check = getattr(flt, "check", None)
        if check is not None:  # newer filters may repair the text (returns text, reason, detail)
            text, reason, _ = check(text)
        else:
            reason = flt.reason(text)
    if hasattr(langid, "page_language_and_script"):  # script by weighted share, language of its letters
        lang, script, _ = langid.page_language_and_script(text)
        return text, reason, lang, script
    return text, reason, langid.detect_language(text)[0], langid.detect_script(text)


def _ref_language(text: str) -> str:
    import py3langid

    return py3langid.classify(text[:3000])[0] if sum(c.isalpha() for c in text) >= 20 else "und"


_VERSION = re.compile(r"[\s(,;-]*(v(ersion)?\s*)?\d[\w.()-]*|\(.*?\)|[\u00ae\u2122]|www\.\S+|https?://\S+", re.I)
_OFFICE_APPS = ("Word", "Excel", "PowerPoint", "InDesign", "Writer", "Calc", "Impress", "XeLaTeX", "LaTeX")


def producer_family(metadata: dict) -> str:
    """The program that wrote a PDF, without versions: pdfinfo's Producer, plus the authoring
    application from Creator when the producer is only a PDF library ("Adobe PDF Library
    (Excel)")."""
    prod = _VERSION.sub(" ", (metadata or {}).get("producer") or "").split(";")[0]
    prod = " ".join(prod.replace("-", " ").split()[:3]) or "unknown"
    creator = (metadata or {}).get("creator") or ""
    app = next((a for a in _OFFICE_APPS if re.search(rf"\b{a}\b", creator)), None)
    if app and app not in prod and not (app.endswith("LaTeX") and "TeX" in prod):
        prod += f" ({app})"
    return prod


def run(paths: list[Path], pages_per_doc: int) -> list[dict]:
    import pymupdf

    from data_engine import coarse

    pymupdf.TOOLS.mupdf_display_errors(False)
    pymupdf.TOOLS.mupdf_display_warnings(False)
    flt = coarse.CoarseFilter()
    rows = []
    for path in paths:
        try:
            doc = pymupdf.open(path)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"skip {path}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        producer = producer_family(doc.metadata)
        for i in sample_pages(doc.page_count, pages_per_doc):
            ref = pdftotext_page(path, i)
            if sum(not c.isspace() for c in ref) < 20:
                continue  # nothing to compare (figure pages, blank pages)
            hyp, reason, lang, script = engine_page(doc[i], flt)
            letters = [c for c in ref if c.isalpha()]
            # the reference itself is single-byte mojibake (cp1251 read as Latin-1): no yardstick
            suspect = sum("\u00c0" <= c <= "\u00ff" for c in letters) > 0.5 * max(len(letters), 1)
            row = {"doc": str(path), "page": i, "ref_mojibake": suspect, "producer": producer,
                   "script": writing_system(clean(ref)), "lang": _ref_language(clean(ref)),
                   "engine_reason": reason, "engine_lang": lang, "engine_script": script}
            row.update(page_metrics(ref, hyp))
            rows.append(row)
        doc.close()
    return rows


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else 0.0


def summarize(rows: list[dict], key: str) -> dict:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if not r.get("ref_mojibake"):
            groups[r[key]].append(r)
    out = {}
    for g, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        tot = lambda k: sum(r.get(k, 0) for r in rs)  # noqa: E731
        rtl = [r for r in rs if r.get("rtl")]
        s = {"pages": len(rs), "docs": len({r["doc"] for r in rs}),
             "cer": round(tot("edits") / max(tot("ref_chars"), 1), 4),
             "cer_median": round(_median([r["edits"] / max(r["ref_chars"], 1) for r in rs]), 4),
             "break_recall": round(tot("break_hits") / max(tot("ref_breaks"), 1), 3),
             "break_ratio": round(tot("hyp_breaks") / max(tot("ref_breaks"), 1), 3),
             "accents_per_1k": round(1000 * tot("accents_hyp") / max(tot("letters_hyp"), 1), 2),
             "accents_ref_per_1k": round(1000 * tot("accents_ref") / max(tot("letters_ref"), 1), 2),
             "kept": sum(r["engine_reason"] is None for r in rs),
             "skipped": dict(Counter(r["engine_reason"] for r in rs if r["engine_reason"])),
             "script_agree": round(sum(r["engine_script"] == r["script"] or
                                       (r["script"] == "Kore" and r["engine_script"] == "Hang") for r in rs) / len(rs), 3),
             "engine_scripts": dict(Counter(r["engine_script"] for r in rs).most_common(3)),
             "engine_langs": dict(Counter(r["engine_lang"] for r in rs).most_common(3))}
        if rtl:
            s.update(rtl_pages=len(rtl),
                     lamalef=round(sum(r["lamalef_hyp"] for r in rtl) / max(sum(r["lamalef_ref"] for r in rtl), 1), 3),
                     digit_runs=round(sum(r["digit_runs_hit"] for r in rtl) / max(sum(r["digit_runs_ref"] for r in rtl), 1), 3),
                     kashida=sum(r["kashida_hyp"] for r in rtl))
        out[g] = s
    return out


def format_table(summary: dict, title: str) -> str:
    width = max([6, len(title)] + [len(str(g)) for g in summary])
    head = (f"{title:<{width}} {'docs':>4} {'pages':>5} {'CER':>7} {'median':>7} {'brk rec':>7} {'brk ratio':>9} "
            f"{'acc/1k':>6} {'kept':>5} {'script ok':>9}  bidi (lam-alef, digit runs, kashida)  engine labels")
    lines = [head]
    for g, s in summary.items():
        bidi = f"{s['lamalef']:.2f}, {s['digit_runs']:.2f}, {s['kashida']}" if "rtl_pages" in s else "-"
        lines.append(f"{g:<{width}} {s['docs']:>4} {s['pages']:>5} {s['cer']:>7.4f} {s['cer_median']:>7.4f} "
                     f"{s['break_recall']:>7.3f} {s['break_ratio']:>9.3f} {s['accents_per_1k']:>6.2f} "
                     f"{s['kept']:>5} {s['script_agree']:>9.3f}  {bidi:<37} {s['engine_scripts']} {s['engine_langs']}")
    return "\n".join(lines)


def format_before_after(before: dict, after: dict, title: str) -> str:
    """One row per group of either summary: pages, median CER before -> after, kept pages and
    script agreement before -> after (a group missing on one side shows '-')."""
    def cell(s, key, fmt):
        return format(s[key], fmt) if s else "-"

    groups = list(after) + [g for g in before if g not in after]
    width = max([len(title)] + [len(str(g)) for g in groups])
    lines = [f"{title:<{width}} {'docs':>4} {'pages':>5}  {'median CER before -> after':>26}  "
             f"{'kept before -> after':>20}  {'script ok before -> after':>25}"]
    for g in groups:
        b, a = before.get(g), after.get(g)
        ref = a or b
        lines.append(f"{g:<{width}} {ref['docs']:>4} {ref['pages']:>5}  "
                     f"{cell(b, 'cer_median', '.4f'):>15} -> {cell(a, 'cer_median', '.4f'):<7}  "
                     f"{cell(b, 'kept', 'd'):>10} -> {cell(a, 'kept', 'd'):<6}  "
                     f"{cell(b, 'script_agree', '.3f'):>14} -> {cell(a, 'script_agree', '.3f'):<7}")
    return "\n".join(lines)


def print_before_after(before: dict, after: dict, name: str) -> None:
    for key, title in (("by_producer", "producer"), ("by_script", "script")):
        print(f"\nbefore ({name}) -> after, by {title}:")
        print(format_before_after(before[key], after[key], title))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", help="PDF files or folders (searched recursively)")
    ap.add_argument("--pages-per-doc", type=int, default=12, help="evenly spaced pages per document")
    ap.add_argument("--engine-root", help="import data_engine from this checkout instead of this one")
    ap.add_argument("--json", help="write per-page rows and summaries here")
    ap.add_argument("--worst", type=int, default=0, help="list the N pages with the highest CER")
    ap.add_argument("--before", help="the --json of an earlier run (e.g. another --engine-root on the same "
                                     "PDFs and --pages-per-doc): also print per-producer and per-script "
                                     "tables before -> after")
    ap.add_argument("--after", help="with --before: the --json of the later run; prints the tables without a run")
    args = ap.parse_args(argv)
    if args.after:
        if not args.before:
            sys.exit("--after needs --before")
        result = json.loads(Path(args.after).read_text(encoding="utf-8"))
        print_before_after(json.loads(Path(args.before).read_text(encoding="utf-8")), result, args.before)
        return result
    if not args.inputs:
        sys.exit("no inputs: name PDF files or folders (or --before and --after)")
    if shutil.which("pdftotext") is None:
        sys.exit("pdftotext not found: install poppler-utils (Debian/Ubuntu) or poppler (Homebrew)")
    sys.path.insert(0, str(Path(args.engine_root).resolve() if args.engine_root else Path(__file__).resolve().parents[1]))
    paths = []
    for s in args.inputs:
        p = Path(s)
        paths += sorted(p.rglob("*.pdf")) if p.is_dir() else [p]
    if not paths:
        sys.exit(f"no PDFs found in {args.inputs}")
    rows = run(paths, args.pages_per_doc)
    result = {"by_script": summarize(rows, "script"), "by_language": summarize(rows, "lang"),
              "by_producer": summarize(rows, "producer"), "rows": rows}
    bad_refs = [r for r in rows if r["ref_mojibake"]]
    if bad_refs:
        kept = Counter(r["engine_script"] for r in bad_refs)
        print(f"{len(bad_refs)} pages left out: pdftotext's text is Latin-1 mojibake there "
              f"({len({r['doc'] for r in bad_refs})} docs); engine scripts on them: {dict(kept)}, "
              f"languages: {dict(Counter(r['engine_lang'] for r in bad_refs))}\n")
    print(format_table(result["by_script"], "script"))
    print()
    print(format_table(result["by_language"], "lang"))
    print()
    print(format_table(result["by_producer"], "producer"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    if args.before:
        print_before_after(json.loads(Path(args.before).read_text(encoding="utf-8")), result, args.before)
    if args.worst:
        print(f"\nworst {args.worst} pages by CER:")
        for r in sorted(rows, key=lambda r: -r["edits"] / max(r["ref_chars"], 1))[:args.worst]:
            print(f"  {r['edits'] / max(r['ref_chars'], 1):.3f} {r['script']} {r['doc']} p{r['page']} ({r['engine_reason']})")
    return result


if __name__ == "__main__":
    main()
