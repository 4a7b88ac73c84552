"""Run report of the data engine: `report.json`, `failures.jsonl` and a readable summary.

Counts cover the whole input set (units committed by earlier, interrupted runs included), so
a resumed run reports the same dataset as an uninterrupted one; throughput covers only the
units processed by this run.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from data_engine.queue import display_path, is_readable_path, json_bytes


def _sorted_counts(c: Counter) -> dict:
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def build_report(records: list[dict], new_records: list[dict], shard_summary: list[dict], timings: dict,
                 workers: int, resumed_units: int = 0, shards_rewritten: bool = True, config: dict | None = None,
                 ignored_by_suffix: dict | None = None) -> dict:
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
            if "gt_chars" in s:  # synthetic pages: coarse label vs the generator's source text
                gt_edits[s["gt_lang"]] += s["gt_edits"]
                gt_chars[s["gt_lang"]] += s["gt_chars"]
                gt_pages[s["gt_lang"]] += 1
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
    return {
        "docs": {"total": len(records), **{k: v for k, v in sorted(docs_by_status.items())},
                 "failed_by_reason": _sorted_counts(doc_fail), "resumed_units": resumed_units,
                 # files found in the input folders that are not PDFs or page images
                 "ignored_by_suffix": dict(ignored_by_suffix or {})},
        "pages": {"seen": pages_seen, "written": pages_written, "skipped": sum(page_skip.values()),
                  "skipped_by_reason": _sorted_counts(page_skip)},
        "per_language": _sorted_counts(langs),
        "per_script": _sorted_counts(scripts),
        # Character error rate of coarse labels against synthetic ground truth, per source language.
        "coarse_cer_per_language": {
            lang: {"pages": gt_pages[lang], "chars": gt_chars[lang],
                   "cer": round(gt_edits[lang] / gt_chars[lang], 4) if gt_chars[lang] else None}
            for lang in sorted(gt_chars)},
        "per_label_kind": {k: {"written": kinds_written.get(k, 0),
                               "skipped_by_reason": _sorted_counts(kinds_skipped.get(k, Counter()))} for k in kinds},
        "shards": {"count": len(shard_summary), "samples": sum(s["count"] for s in shard_summary),
                   "bytes": sum(s["size"] for s in shard_summary), "rewritten": shards_rewritten,
                   "files": [s["file"] for s in shard_summary]},
        "throughput": throughput,
        "workers": workers,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "config": config or {},
    }


def _row(rec: dict, page, reason: str, detail) -> dict:
    row = {"path": rec["path"], "doc_id": rec["doc_id"], "page": page, "reason": reason, "detail": detail}
    if not is_readable_path(rec["path"]):  # "path" keeps the bytes (JSON \\udcXX escapes); this one reads
        row["path_readable"] = display_path(rec["path"])
    return row


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
        lines.append("  coarse CER: " + _top({k: v["cer"] for k, v in cer.items()}) + " (synthetic ground truth)")
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
    return "\n".join(lines)
