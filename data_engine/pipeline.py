"""The data engine: PDFs / page images -> webdataset shards with coarse (and fine) labels.

`run_engine(cfg) -> report` runs three phases, each resumable (see data_engine/queue.py):
1. discover inputs and hash them (unit id = content hash; cached by path+size+mtime);
2. process every unit not yet committed, in N spawn-safe worker processes (or, with
   `executor: ray`, as Ray tasks across a cluster: data_engine/ray_executor.py): per page extract
   the text layer once, label it (coarse: reading-order text + filters; fine: engineer E's
   layout source + interleaved label), render + encode only pages that kept a label, write
   the samples to a per-unit tar, commit it atomically;
3. assemble shards from committed units with a deterministic plan, then write
   `report.json`, `failures.jsonl` and print a summary.
Bad input (corrupt, encrypted, empty, zero-page, image-only, garbled) is recorded with its
reason and never stops a run. Callable without Hydra; data_engine/cli.py is the Hydra entry.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import re
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pymupdf
from tqdm import tqdm

from data_engine import coarse, langid, metrics, queue, render, report, shards
from data_engine.config import ENGINE_VERSION, LABEL_KINDS, EngineConfig  # noqa: F401 (re-exported)


# Unit-level failure reasons (the whole document is skipped); page-level reasons live in coarse.py.
MISSING_FILE, EMPTY_FILE, UNREADABLE = "missing_file", "empty_file", "unreadable_file"
CORRUPT, ENCRYPTED, ZERO_PAGES = "corrupt_file", "encrypted", "zero_pages"
UNIT_ERROR, WORKER_CRASH, DUPLICATE = "unit_error", "worker_crash", "duplicate"
RENDER_ERROR, EXTRACT_ERROR = "render_error", "extract_error"
FINE_EMPTY, FINE_ERROR = "fine_empty", "fine_error"


# --------------------------------------------------------------------------- worker side

_W: dict = {}  # per-process state, set by _init_worker


def _init_worker(cfg: EngineConfig, prompts: dict) -> None:
    render.quiet_mupdf()
    langid.detect_language("load the language model once per process, not inside a unit")
    tok = None
    if cfg.tokenizer:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(cfg.tokenizer))
    layout = fine_label = None
    if "fine" in cfg.labels:
        from data_engine.labels import fine_label
        from data_engine.layout import get_layout_source

        layout = get_layout_source(**cfg.fine)  # e.g. {name: paddle, model_dir: ...}; {} = textlayer
    _W.update(cfg=cfg, prompts=prompts, store=queue.UnitStore(cfg.work_dir), layout=layout,
              fine_label=fine_label, digest=cfg.digest(),
              filter=coarse.CoarseFilter(cfg.min_chars, cfg.max_bad_char_ratio, cfg.max_tokens, tok))


def ensure_worker(cfg: EngineConfig, prompts: dict) -> None:
    """`_init_worker` once per process and configuration (Ray reuses its worker processes)."""
    key = (cfg.digest(), cfg.work_dir)
    if _W.get("key") != key:
        _init_worker(cfg, prompts)
        _W["key"] = key


def _hash_worker(path: str) -> tuple[str, int, str | None]:
    return queue.hash_file(path)


def _fine_labels(page, tdict, w: float, h: float) -> tuple[dict | None, str | None]:
    try:
        blocks = _W["layout"].blocks(page, tdict)
        text, boxes = _W["fine_label"](blocks, w, h)
    except Exception as e:  # noqa: BLE001 - a layout failure costs the fine label, not the page
        return None, f"{FINE_ERROR}: {type(e).__name__}"
    if not text or not boxes:
        return None, FINE_EMPTY
    if coarse.bad_char_ratio(text) > _W["cfg"].max_bad_char_ratio:
        return None, coarse.GARBLED_TEXT
    if _W["filter"].too_many_tokens(text):
        return None, coarse.TOO_MANY_TOKENS
    return {"prompt": _W["prompts"]["fine"], "text": text, "boxes": boxes}, None


def _ground_truth_pages(unit: dict) -> dict[int, tuple[str, str]]:
    """page -> (language, source text) from a synthetic document's ``.gt.json`` sidecar."""
    if unit["source"] != "synthetic":
        return {}
    try:
        gt = json.loads(Path(unit["path"]).with_suffix(".gt.json").read_text(encoding="utf-8"))
        return {pg["page"]: (gt.get("lang", "und"), "\n".join(b["text"] for b in pg["blocks"]))
                for pg in gt["pages"]}
    except (OSError, ValueError, KeyError, TypeError):  # a broken sidecar costs the score, not the page
        return {}


def _process_pages(doc, unit: dict, record: dict, writer) -> None:
    cfg: EngineConfig = _W["cfg"]
    n_pages = doc.page_count if cfg.max_pages_per_doc is None else min(doc.page_count, cfg.max_pages_per_doc)
    kind_skips: dict[str, dict[str, int]] = {k: {} for k in cfg.labels}
    truth = _ground_truth_pages(unit)
    for i in range(n_pages):
        try:
            page = doc.load_page(i)
            tdict = render.extract_text(page, sort=cfg.sort_text)
        except Exception as e:  # noqa: BLE001 - bad input is recorded, never fatal
            record["skipped"].append({"page": i, "reason": EXTRACT_ERROR, "detail": f"{type(e).__name__}: {e}"[:300]})
            continue
        text = coarse.text_from_dict(tdict)
        w_pt, h_pt = page.rect.width, page.rect.height
        labels, reasons = {}, {}
        if "coarse" in cfg.labels:
            reasons["coarse"] = _W["filter"].reason(text)
            if reasons["coarse"] is None:
                labels["coarse"] = {"prompt": _W["prompts"]["coarse"], "text": text}
        if "fine" in cfg.labels:
            labels["fine"], reasons["fine"] = _fine_labels(page, tdict, w_pt, h_pt)
            if labels["fine"] is None:
                del labels["fine"]
        for kind, why in reasons.items():
            if why is not None:
                kind_skips[kind][why] = kind_skips[kind].get(why, 0) + 1
        if not labels:  # nothing to learn from: skip before paying for the render
            record["skipped"].append({"page": i, "reason": next(r for r in reasons.values() if r)})
            continue
        try:
            img = render.render_page(page, cfg.dpi, cfg.max_side, cfg.image_format, cfg.jpeg_quality)
        except Exception as e:  # noqa: BLE001 - bad input is recorded, never fatal
            record["skipped"].append({"page": i, "reason": RENDER_ERROR, "detail": f"{type(e).__name__}: {e}"[:300]})
            continue
        lang, _ = langid.detect_language(text, cfg.min_lang_prob)
        script = langid.detect_script(text)
        key = shards.sample_key(unit["doc_id"], i)
        meta = {
            "doc_id": unit["doc_id"], "source_path": unit["path"], "page": i, "num_pages": doc.page_count,
            "lang": lang, "script": script, "dpi": img.dpi,
            "page_size": [round(w_pt, 2), round(h_pt, 2)], "image_size": list(img.size),
            "source": unit["source"], "data_source": "ocr", "labels": labels,
        }
        meta_bytes = shards.encode_meta(meta)
        writer.write({"__key__": key, img.fmt: img.data, "json": meta_bytes})
        sample = {"key": key, "page": i, "size": len(img.data) + len(meta_bytes),
                  "lang": lang, "script": script, "labels": sorted(labels)}
        if i in truth and "coarse" in labels:
            # Synthetic page: score the coarse label against the text the generator placed.
            gt_lang, gt_text = truth[i]
            sample["gt_lang"] = gt_lang
            sample["gt_edits"], sample["gt_chars"] = metrics.cer_counts(gt_text, labels["coarse"]["text"])
        record["samples"].append(sample)
    record["kind_skips"] = kind_skips
    record["pages_seen"] = n_pages


def process_unit(unit: dict) -> dict:
    """Process one document and commit its outputs; returns the committed unit record."""
    t0, c0 = time.perf_counter(), time.process_time()
    store: queue.UnitStore = _W["store"]
    record = {"doc_id": unit["doc_id"], "path": unit["path"], "source": unit["source"], "config": _W["digest"], "status": "ok",
              "reason": None, "detail": None, "num_pages": 0, "pages_seen": 0,
              "samples": [], "skipped": [], "kind_skips": {}}

    def fail(reason: str, detail: str | None = None) -> dict:
        record.update(status="failed", reason=reason, detail=detail, samples=[])
        return record

    has_tar = False
    if unit.get("hash_error"):
        fail(UNREADABLE, unit["hash_error"])
    elif unit["size"] == 0:
        fail(EMPTY_FILE)
    else:
        try:
            doc = pymupdf.open(unit["path"])
        except Exception as e:  # noqa: BLE001 - bad input is recorded, never fatal
            doc = None
            fail(CORRUPT, f"{type(e).__name__}: {e}"[:300])
        if doc is not None:
            try:
                record["num_pages"] = doc.page_count if not doc.needs_pass else 0
                if doc.needs_pass:
                    fail(ENCRYPTED)
                elif doc.page_count == 0:
                    fail(ZERO_PAGES)
                else:
                    with open(store.tmp_tar_path(unit["doc_id"]), "wb") as f:
                        writer = shards.tar_writer(f)
                        _process_pages(doc, unit, record, writer)
                        writer.close()
                    has_tar = True
            except Exception as e:  # noqa: BLE001 - anything MuPDF throws mid-document: record, move on
                fail(UNIT_ERROR, f"{type(e).__name__}: {e}"[:300])
                has_tar = False
            finally:
                doc.close()
    record["seconds"] = round(time.perf_counter() - t0, 4)
    record["cpu_seconds"] = round(time.process_time() - c0, 4)  # load-independent per-core cost
    store.commit(unit["doc_id"], record, has_tar)
    return record


# --------------------------------------------------------------------------- driver side

def _num_workers(cfg: EngineConfig) -> int:
    if cfg.workers:
        return int(cfg.workers)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _hash_inputs(files: list[queue.InputFile], work: Path, pool) -> dict[str, tuple[str, int, str | None]]:
    """path -> (doc_id, size, error), reusing `work/hash_cache.jsonl` entries whose size+mtime match."""
    cache_path = work / "hash_cache.jsonl"
    cache = {}
    if cache_path.is_file():
        for line in cache_path.read_text(encoding="utf-8").splitlines():
            e = json.loads(line)
            cache[e["path"]] = e
    out, todo = {}, []
    for f in files:
        if not f.exists:
            continue
        try:
            st = os.stat(f.path)
        except OSError:  # gone since discovery: hash_file records the error (unreadable_file)
            todo.append((f.path, 0))
            continue
        e = cache.get(f.path)
        if e and e["size"] == st.st_size and e["mtime_ns"] == st.st_mtime_ns:
            out[f.path] = (e["doc_id"], e["size"], None)
        else:
            todo.append((f.path, st.st_mtime_ns))
    results = None
    if pool is not None:
        try:
            results = list(pool.map(_hash_worker, [p for p, _ in todo], chunksize=16))
        except BrokenProcessPool:  # a worker died: hash in the driver; the caller replaces the pool
            results = None
    if results is None:
        results = [_hash_worker(p) for p, _ in todo]
    for (path, mtime), res in zip(todo, results):
        out[path] = res
        if res[2] is None:
            cache[path] = {"path": path, "size": res[1], "mtime_ns": mtime, "doc_id": res[0]}
    tmp = cache_path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in cache.values()), encoding="utf-8")
    os.replace(tmp, cache_path)
    return out


def _make_pool(cfg: EngineConfig, n: int, prompts: dict):
    return ProcessPoolExecutor(n, mp_context=mp.get_context(cfg.start_method),
                               initializer=_init_worker, initargs=(cfg, prompts))


def _run_units(cfg: EngineConfig, units: list[dict], n_workers: int, prompts: dict, pool, bar) -> tuple[list[dict], Any]:
    """Process `units` on the pool, surviving worker deaths (MuPDF segfault, OOM killer).

    A dead worker fails every in-flight future, so the culprit is unknown: all of them become
    suspects and are re-run one at a time on a fresh pool. A suspect that kills its worker
    while running alone more than `max_crash_retries` times is recorded as `worker_crash`;
    the innocent ones are simply processed.
    """
    done: list[dict] = []
    crashes: dict[str, int] = {}
    pending = list(reversed(units))  # pop() from the end keeps submission in doc-id order
    suspects: list[dict] = []
    in_flight: dict = {}  # future -> (unit, ran alone)
    window = 4 * n_workers  # bounded submission: millions of units never sit in memory as futures
    while pending or suspects or in_flight:
        if suspects:
            if not in_flight:
                u = suspects.pop()
                in_flight[pool.submit(process_unit, u)] = (u, True)
        else:
            while pending and len(in_flight) < window:
                u = pending.pop()
                in_flight[pool.submit(process_unit, u)] = (u, False)
        finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        broken = False
        for fut in finished:
            u, alone = in_flight.pop(fut)
            try:
                rec = fut.result()
            except BrokenProcessPool:
                broken = True
                if alone:
                    crashes[u["doc_id"]] = crashes.get(u["doc_id"], 0) + 1
                if crashes.get(u["doc_id"], 0) <= cfg.max_crash_retries:
                    suspects.append(u)
                    continue
                rec = _commit_failure(cfg, u, WORKER_CRASH, f"killed its worker process {crashes[u['doc_id']]} times")
            done.append(rec)
            _tick(bar, rec)
        if broken:  # the pool is unusable: every other in-flight unit is a suspect too
            suspects.extend(u for u, _ in in_flight.values())
            in_flight.clear()
            pool.shutdown(wait=False, cancel_futures=True)
            pool = _make_pool(cfg, n_workers, prompts)
    return done, pool


def _tick(bar, rec: dict) -> None:
    bar.pages += len(rec["samples"])
    bar.set_postfix(pages=bar.pages, refresh=False)
    bar.update(1)


def _commit_failure(cfg: EngineConfig, u: dict, reason: str, detail: str) -> dict:
    rec = {"doc_id": u["doc_id"], "path": u["path"], "source": u["source"], "config": cfg.digest(), "status": "failed", "reason": reason,
           "detail": detail, "num_pages": 0, "pages_seen": 0, "samples": [], "skipped": [], "kind_skips": {}}
    queue.UnitStore(cfg.work_dir).commit(u["doc_id"], rec, has_tar=False)
    return rec


def _assemble(cfg: EngineConfig, records: list[dict], pool) -> tuple[list[dict], bool]:
    """Write the shards for `records` (skipped when the previous plan is identical). Returns (shards, rewritten)."""
    shard_dir = Path(cfg.out) / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    with_samples = [r for r in records if r["samples"]]
    plan = queue.plan_shards(with_samples, cfg.name, cfg.max_count, cfg.max_size)
    # The sample bytes also hold each document's path and source kind: a moved file (same
    # keys, new source_path) must rewrite the shards, not reuse them.
    docs = json.dumps(sorted((r["doc_id"], r["path"], r.get("source")) for r in with_samples))
    digest = queue.plan_digest(plan, extra=cfg.digest() + docs)
    index_path = shard_dir / f"{cfg.name}.index.json"
    summary = [{"file": sp.filename, "count": sp.count, "size": sp.size} for sp in plan]
    if index_path.is_file():
        prev = json.loads(index_path.read_text(encoding="utf-8"))
        if prev.get("digest") == digest and all((shard_dir / s["file"]).is_file() for s in summary):
            return summary, False
    store = queue.UnitStore(cfg.work_dir)
    jobs = [(shard_dir / sp.filename, [(store.tar_path(d), keys) for d, keys in sp.parts]) for sp in plan]
    written = False
    if pool is not None and jobs:
        try:
            paths, parts = zip(*jobs)
            list(pool.map(shards.write_shard, paths, parts))
            written = True
        except BrokenProcessPool:  # a worker died during assembly: finish in the driver
            pass
    if not written:
        for path, parts in jobs:
            shards.write_shard(path, parts)
    # Shards of an earlier, larger plan would otherwise be read as part of this dataset.
    keep = {sp.filename for sp in plan}
    for p in shard_dir.glob(f"{cfg.name}-*.tar*"):
        if p.name not in keep and re.fullmatch(re.escape(cfg.name) + r"-\d{6}\.tar(\..*)?", p.name):
            p.unlink()
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"digest": digest, "shards": summary}, indent=1), encoding="utf-8")
    os.replace(tmp, index_path)
    return summary, True


def _prompts() -> dict:
    # models/prompts.py is the single source of the prompt strings. models/__init__ imports torch,
    # so only the driver imports it; workers receive the strings.
    from models.prompts import PROMPTS

    return {"coarse": PROMPTS["coarse"], "fine": PROMPTS["fine"]}


def run_engine(cfg: EngineConfig | Mapping) -> dict:
    """Run the engine end to end; returns the report dict (also written to {out}/report.json)."""
    cfg = EngineConfig.from_any(cfg)
    cfg.validate()
    out = Path(cfg.out).resolve()
    cfg.out = str(out)
    cfg.work_dir = str(Path(cfg.work_dir).resolve() if cfg.work_dir else out / "work")
    Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    n_workers = _num_workers(cfg)
    prompts = _prompts()
    t_start = time.perf_counter()

    files = queue.discover_inputs(cfg.input)
    if cfg.executor == "ray":  # same units, same commit protocol; Ray tasks instead of a local pool
        from data_engine.ray_executor import RayPool

        pool = RayPool(cfg, prompts)
        n_workers = pool.workers
    else:
        if n_workers == 1:  # one worker: the driver runs the units itself (no process start-up)
            _init_worker(cfg, prompts)
        pool = _make_pool(cfg, n_workers, prompts) if n_workers > 1 else None
    try:
        hashes = _hash_inputs(files, Path(cfg.work_dir), pool)
        if pool is not None and getattr(pool, "_broken", False):  # a worker died while hashing
            pool.shutdown(wait=False, cancel_futures=True)
            pool = _make_pool(cfg, n_workers, prompts)
        units, dup_records, missing = [], [], []
        seen: dict[str, str] = {}
        for f in files:
            if not f.exists:
                missing.append({"doc_id": None, "path": f.path, "status": "failed", "reason": MISSING_FILE,
                                "detail": None, "samples": [], "skipped": [], "kind_skips": {}, "num_pages": 0})
                continue
            doc_id, size, err = hashes[f.path]
            if doc_id in seen:  # same bytes under another path: processed once, under the first path
                dup_records.append({"doc_id": doc_id, "path": f.path, "status": "skipped", "reason": DUPLICATE,
                                    "detail": f"same content as {seen[doc_id]}", "samples": [], "skipped": [],
                                    "kind_skips": {}, "num_pages": 0})
                continue
            seen[doc_id] = f.path
            sidecar = Path(f.path).with_suffix(".gt.json")
            source = "image" if Path(f.path).suffix.lower() in queue.IMAGE_SUFFIXES else (
                "synthetic" if sidecar.is_file() else "pdf")
            units.append({"doc_id": doc_id, "path": f.path, "size": size, "hash_error": err, "source": source})
        units.sort(key=lambda u: u["doc_id"])
        t_hashed = time.perf_counter()

        store = queue.UnitStore(cfg.work_dir)
        digest = cfg.digest()
        records, todo = {}, []
        for u in units:
            try:
                rec = store.load(u["doc_id"]) if store.is_done(u["doc_id"]) else None
            except (OSError, ValueError):  # unreadable record: redo the unit
                rec = None
            # Reuse a committed unit only if it was made from this path and source kind (both are
            # in the sample bytes) with these settings and its samples are still there
            # (keep_units: false deletes them after assembly).
            if (rec is not None and rec.get("config") == digest and rec.get("path") == u["path"]
                    and rec.get("source") == u["source"]
                    and (not rec["samples"] or store.tar_path(u["doc_id"]).is_file())):
                records[u["doc_id"]] = rec
            else:
                todo.append(u)
        resumed = len(records)
        bar = tqdm(total=len(todo), unit="doc", desc="data engine", disable=not cfg.progress, dynamic_ncols=True)
        bar.pages = 0
        if pool is None:
            new = []
            for u in todo:
                new.append(process_unit(u))
                _tick(bar, new[-1])
        elif cfg.executor == "ray":
            new = pool.run_units(todo, bar)
        else:
            new, pool = _run_units(cfg, todo, n_workers, prompts, pool, bar)
        bar.close()
        for rec in new:
            records[rec["doc_id"]] = rec
        t_processed = time.perf_counter()

        ordered = [records[u["doc_id"]] for u in units]
        shard_summary, rewritten = _assemble(cfg, ordered, pool)
        t_done = time.perf_counter()
    finally:
        if pool is not None:
            pool.shutdown()

    if not cfg.keep_units:
        for rec in ordered:
            if rec["doc_id"]:
                store.tar_path(rec["doc_id"]).unlink(missing_ok=True)
    timings = {"discover_hash_s": t_hashed - t_start, "process_s": t_processed - t_hashed,
               "assemble_s": t_done - t_processed, "total_s": t_done - t_start}
    rep = report.build_report(ordered + dup_records + missing, new, shard_summary, timings, n_workers,
                              resumed_units=resumed, shards_rewritten=rewritten, config=dataclasses.asdict(cfg))
    report.write_report(rep, ordered + dup_records + missing, out)
    if cfg.print_summary:
        print(report.format_summary(rep))
    return rep
