"""Run report of the data engine: `report.json`, `failures.jsonl` and a readable summary.

Counts cover the whole input set (units committed by earlier, interrupted runs included), so
a resumed run reports the same dataset as an uninterrupted one. Throughput is given twice:
`throughput` for the units this run processed, `throughput_total` for the whole dataset
(every committed unit's own worker/CPU seconds, and the processing wall time of every run
recorded in `work/runs.jsonl`), which stays true across interrupted and incremental runs.
`documents.jsonl` has one row per document (pages written / skipped by reason); garbled pages
carry their bad-character ratio and example characters (in `failures.jsonl` and summarised
under `garbled`).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

from data_engine.queue import display_path, is_readable_path, json_bytes


def _sorted_counts(c: Counter) -> dict:
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def build_report(records: list[dict], new_records: list[dict], shard_summary: list[dict], timings: dict,
                 workers: int, resumed_units: int = 0, shards_rewritten: bool = True, config: dict | None = None,
                 ignored_by_suffix: dict | None = None,
                 history: list[dict] | None = None) -> dict:
    """`history`: earlier runs' throughput entries (`load_history`), for `throughput_total`."""
    docs_by_status, doc_fail = Counter(), Counter()
    page_skip, langs, scripts = Counter(), Counter(), Counter()
    kinds_written, kinds_skipped = Counter(), {}
    gt_edits, gt_chars, gt_pages = Counter(), Counter(), Counter()
    pages_seen = pages_written = 0
    for rec in records:
        docs_by_status[rec["status"]] += 1
        if rec["status"] != "ok":
            doc_fail[rec["reason"]] += 1
        pages_seen += rec.get("pages_seen", 0)
        for s in rec.get("skipped", ()):
            page_skip[s["reason"]] += 1
        for s in rec.get("samples", ()):
            pages_written += 1
            langs[s["lang"]] += 1
            scripts[s["script"]] += 1
            kinds_written.update(s["labels"])
            if "gt_chars" in s:  # coarse label vs the generator's source text, or pdftotext on real PDFs
                key = (s["gt_lang"], s.get("gt_ref", "synthetic"))
                gt_edits[key] += s["gt_edits"]
                gt_chars[key] += s["gt_chars"]
                gt_pages[key] += 1
        for kind, reasons in rec.get("kind_skips", {}).items():
            kinds_skipped.setdefault(kind, Counter()).update(reasons)
    kinds = sorted(set(kinds_written) | set(kinds_skipped))

    new_pages = sum(r.get("pages_seen", 0) for r in new_records)
    new_written = sum(len(r.get("samples", ())) for r in new_records)
    busy_s = sum(r.get("seconds", 0.0) for r in new_records)  # summed worker time spent in units
    cpu_s = sum(r.get("cpu_seconds", 0.0) for r in new_records)
    wall = timings.get("process_s", 0.0)
    throughput = {
        "units_processed": len(new_records),
        "pages_processed": new_pages,
        "pages_written": new_written,
        "process_wall_s": round(wall, 3),
        "pages_per_s": round(new_pages / wall, 2) if wall > 0 else None,
        "pages_per_s_per_worker": round(new_pages / wall / workers, 2) if wall > 0 else None,
        "written_pages_per_s": round(new_written / wall, 2) if wall > 0 else None,
        # Per busy worker-second: the per-core speed without pool start-up and tail effects.
        "pages_per_worker_s": round(new_pages / busy_s, 2) if busy_s > 0 else None,
        # Per CPU-second of unit work: what one dedicated core delivers, whatever else runs.
        "pages_per_cpu_s": round(new_pages / cpu_s, 2) if cpu_s > 0 else None,
    }
    all_pages = sum(r.get("pages_seen", 0) for r in records if r.get("status") == "ok")
    all_busy = sum(r.get("seconds", 0.0) for r in records if r.get("status") == "ok")
    all_cpu = sum(r.get("cpu_seconds", 0.0) for r in records if r.get("status") == "ok")
    all_wall = sum(h.get("process_wall_s", 0.0) for h in (history or ())) + wall
    throughput_total = {
        "pages_processed": all_pages,
        "runs": len(history or ()) + 1,
        "process_wall_s": round(all_wall, 3),
        "pages_per_s": round(all_pages / all_wall, 2) if all_wall > 0 else None,
        "pages_per_worker_s": round(all_pages / all_busy, 2) if all_busy > 0 else None,
        "pages_per_cpu_s": round(all_pages / all_cpu, 2) if all_cpu > 0 else None,
    }
    return {
        "docs": {"total": len(records), **{k: v for k, v in sorted(docs_by_status.items())},
                 "failed_by_reason": _sorted_counts(doc_fail), "resumed_units": resumed_units,
                 # files found in the input folders that are not PDFs or page images
                 "ignored_by_suffix": dict(ignored_by_suffix or {})},
        "pages": {"seen": pages_seen, "written": pages_written, "skipped": sum(page_skip.values()),
                  "skipped_by_reason": _sorted_counts(page_skip)},
        "per_language": _sorted_counts(langs),
        "per_script": _sorted_counts(scripts),
        # Character error rate of coarse labels per language: against synthetic ground truth
        # (reference "synthetic") or, on a few pages of each real PDF, against pdftotext.
        "coarse_cer_per_language": {
            lang if ref == "synthetic" else f"{lang} (vs {ref})": {
                "pages": gt_pages[lang, ref], "chars": gt_chars[lang, ref], "reference": ref,
                "cer": round(gt_edits[lang, ref] / gt_chars[lang, ref], 4) if gt_chars[lang, ref] else None}
            for lang, ref in sorted(gt_chars)},
        "per_label_kind": {k: {"written": kinds_written.get(k, 0),
                               "skipped_by_reason": _sorted_counts(kinds_skipped.get(k, Counter()))} for k in kinds},
        "shards": {"count": len(shard_summary), "samples": sum(s["count"] for s in shard_summary),
                   "bytes": sum(s["size"] for s in shard_summary), "rewritten": shards_rewritten,
                   "files": [s["file"] for s in shard_summary]},
        "throughput": throughput,
        "throughput_total": throughput_total,
        "garbled": garbled_summary(records),
        "documents_most_skipped": [d for d in sorted(document_rows(records), key=lambda d: -d["pages_skipped"])
                                   if d["pages_skipped"]][:10],
        "workers": workers,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "config": config or {},
    }


def _row(rec: dict, page, reason: str, detail) -> dict:
    row = {"path": rec["path"], "doc_id": rec["doc_id"], "page": page, "reason": reason, "detail": detail}
    if not is_readable_path(rec["path"]):  # "path" keeps the bytes (JSON \\udcXX escapes); this one reads
        row["path_readable"] = display_path(rec["path"])
    return row


_EXAMPLE = re.compile(r"U\+([0-9A-F]{4,6}) x(\d+)")
_RATIO = re.compile(r"^(\d+)/(\d+) bad chars")


def garbled_summary(records: list[dict]) -> dict:
    """Garbled pages: how many, their median bad-character ratio, the most common bad characters."""
    ratios, chars = [], Counter()
    for rec in records:
        for s in rec.get("skipped", ()):
            if s["reason"] != "garbled_text" or not s.get("detail"):
                continue
            m = _RATIO.match(s["detail"])
            if m:
                ratios.append(int(m.group(1)) / max(int(m.group(2)), 1))
            chars.update({f"U+{c}": int(n) for c, n in _EXAMPLE.findall(s["detail"])})
    ratios.sort()
    return {"pages": len(ratios), "median_bad_ratio": round(ratios[len(ratios) // 2], 4) if ratios else None,
            "top_chars": dict(chars.most_common(8))}


def document_rows(records: list[dict]):
    """One row per document: status, pages seen / written / skipped by reason, repaired pages."""
    for rec in records:
        skipped = Counter(s["reason"] for s in rec.get("skipped", ()))
        yield {"path": rec["path"], "doc_id": rec["doc_id"], "status": rec["status"], "reason": rec.get("reason"),
               "pages_seen": rec.get("pages_seen", 0), "pages_written": len(rec.get("samples", ())),
               "pages_skipped": sum(skipped.values()), "skipped_by_reason": _sorted_counts(skipped),
               "pages_repaired": len(rec.get("repaired", ()))}


def load_history(work_dir: str | Path) -> list[dict]:
    path = Path(work_dir) / "runs.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def append_history(work_dir: str | Path, rep: dict) -> None:
    """Record this run's processing wall time (read back by the next run's `throughput_total`)."""
    t = rep["throughput"]
    path = Path(work_dir) / "runs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"units_processed": t["units_processed"], "pages_processed": t["pages_processed"],
                            "process_wall_s": t["process_wall_s"]}) + "\n")


def failure_rows(records: list[dict]):
    """One row per failed/skipped document and per skipped page, in record order."""
    for rec in records:
        if rec["status"] != "ok":
            yield _row(rec, None, rec["reason"], rec.get("detail"))
        for s in rec.get("skipped", ()):
            yield _row(rec, s["page"], s["reason"], s.get("detail"))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(rep: dict, records: list[dict], out: str | Path) -> None:
    out = Path(out)
    _atomic_write(out / "report.json", json_bytes(rep, indent=1, default=str))
    _atomic_write(out / "failures.jsonl", b"".join(json_bytes(r) + b"\n" for r in failure_rows(records)))
    _atomic_write(out / "documents.jsonl", b"".join(json_bytes(r) + b"\n" for r in document_rows(records)))


def _top(d: dict, n: int = 8) -> str:
    items = list(d.items())
    s = ", ".join(f"{k} {v}" for k, v in items[:n])
    return s + (f", ... (+{len(items) - n})" if len(items) > n else "") if s else "-"


def format_summary(rep: dict) -> str:
    d, p, t = rep["docs"], rep["pages"], rep["throughput"]
    lines = [
        "data engine summary",
        (f"  documents : {d['total']} total, {d.get('ok', 0)} ok, {d['resumed_units']} resumed; "
         f"failed/skipped: {_top(d['failed_by_reason'])}"),
        f"  ignored   : {_top(d.get('ignored_by_suffix', {}))} (other file types in the input folders)",
        f"  pages     : {p['seen']} seen, {p['written']} written, {p['skipped']} skipped: {_top(p['skipped_by_reason'])}",
        f"  languages : {_top(rep['per_language'])}",
        f"  scripts   : {_top(rep['per_script'])}",
    ]
    cer = rep.get("coarse_cer_per_language") or {}
    if cer:
        lines.append("  coarse CER: " + _top({k: v["cer"] for k, v in cer.items()})
                     + " (synthetic ground truth, or pdftotext on real PDFs)")
    for kind, v in rep["per_label_kind"].items():
        lines.append(f"  {kind:<10}: {v['written']} labels; not labelled: {_top(v['skipped_by_reason'])}")
    sh = rep["shards"]
    lines.append(f"  shards    : {sh['count']} files, {sh['samples']} samples, {sh['bytes'] / 1e6:.1f} MB"
                 + ("" if sh["rewritten"] else " (unchanged, reused)"))
    if t["pages_per_s"] is not None:
        lines.append(f"  throughput: {t['pages_processed']} pages in {t['process_wall_s']:.1f} s = {t['pages_per_s']} pages/s, "
                     f"{t['pages_per_s_per_worker']} pages/s/worker ({rep['workers']} workers); "
                     f"{t['pages_per_worker_s']} pages per busy worker-second, {t['pages_per_cpu_s']} per CPU-second")
    else:
        lines.append("  throughput: nothing new to process (all units already committed)")
    tt = rep.get("throughput_total") or {}
    if tt.get("runs", 1) > 1 and tt.get("pages_per_cpu_s"):
        lines.append(f"  all runs  : {tt['pages_processed']} pages over {tt['runs']} runs, {tt['pages_per_s']} pages/s, "
                     f"{tt['pages_per_cpu_s']} per CPU-second")
    g = rep.get("garbled") or {}
    if g.get("pages"):
        lines.append(f"  garbled   : {g['pages']} pages, median bad-char ratio {g['median_bad_ratio']}, {_top(g['top_chars'], 5)}")
    return "\n".join(lines)
