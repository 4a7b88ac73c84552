"""The data engine: PDFs / page images -> webdataset shards with coarse (and fine) labels.

`run_engine(cfg) -> report` runs three phases, each resumable (see data_engine/queue.py):
1. discover inputs and hash them (unit id = content hash; cached by path+size+mtime);
2. process every unit not yet committed, in N spawn-safe worker processes (or, with
   `executor: ray`, as Ray tasks across a cluster: data_engine/ray_executor.py): per page extract
   the text layer once, label it (coarse: reading-order text + filters; fine: the
   layout source + interleaved label), render + encode only pages that kept a label, write
   the samples to a per-unit tar, commit it atomically;
3. assemble shards from committed units with a deterministic plan, then write
   `report.json`, `failures.jsonl` and print a summary.
Bad input (corrupt, encrypted, empty, zero-page, not a PDF, image-only, garbled, too slow to
render, killing its worker) and every input found but not read (unreadable folder, dangling or
looping symlink) is recorded with its reason and never stops a run. Errors of the engine's own
output (disk full, a path in the way) are not the documents' fault: the run stops with a
`queue.OutputError` and the same command, re-run, processes what is left. Units run on
`executor.LocalExecutor` (time limit, crash isolation, workers that die with the driver).
Callable without Hydra; data_engine/cli.py is the Hydra entry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pymupdf
from tqdm import tqdm

from data_engine import coarse, fallback, langid, metrics, queue, render, report, shards
from data_engine.config import ENGINE_VERSION, LABEL_KINDS, EngineConfig  # noqa: F401 (re-exported)
from data_engine.executor import LocalExecutor
from data_engine.lock import folder_lock


# Unit-level failure reasons (the whole document is skipped); page-level reasons live in coarse.py,
# discovery and executor reasons in queue.py.
MISSING_FILE, EMPTY_FILE, UNREADABLE = queue.MISSING_FILE, "empty_file", "unreadable_file"
CORRUPT, ENCRYPTED, ZERO_PAGES = "corrupt_file", "encrypted", "zero_pages"
NOT_PDF, NOT_IMAGE = "not_pdf", "not_image"  # content sniffing: e.g. an HTML page named .pdf
UNIT_ERROR, WORKER_CRASH, TIMEOUT, DUPLICATE = queue.UNIT_ERROR, queue.WORKER_CRASH, queue.TIMEOUT, "duplicate"
RENDER_ERROR, EXTRACT_ERROR = "render_error", "extract_error"
FINE_EMPTY, FINE_ERROR = "fine_empty", "fine_error"
PAGE_TIMEOUT = "page_timeout"  # a page over page_timeout_s: its worker was stopped, the page skipped


# --------------------------------------------------------------------------- worker side

_W: dict = {}  # per-process state, set by _init_worker
log = logging.getLogger(__name__)


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
              filter=coarse.CoarseFilter(cfg.min_chars, cfg.max_bad_char_ratio, cfg.max_tokens, tok,
                                         cfg.max_isolated_bad_ratio))


def ensure_worker(cfg: EngineConfig, prompts: dict) -> None:
    """`_init_worker` once per process and configuration (Ray reuses its worker processes)."""
    key = (cfg.digest(), cfg.work_dir)
    if _W.get("key") != key:
        _init_worker(cfg, prompts)
        _W["key"] = key


def _fine_labels(page, tdict, w: float, h: float, page_check: tuple) -> tuple[dict | None, str | None]:
    _, why, detail = page_check  # the page's text verdict (CoarseFilter.check) holds for both kinds
    if why in (coarse.GARBLED_TEXT, coarse.NO_TEXT_LAYER):
        return None, why
    try:
        blocks = _W["layout"].blocks(page, tdict)
        text, boxes = _W["fine_label"](blocks, w, h)
    except Exception as e:  # noqa: BLE001 - a layout failure costs the fine label, not the page
        return None, f"{FINE_ERROR}: {type(e).__name__}"
    if not text or not boxes:
        return None, FINE_EMPTY
    text = coarse.apply_repair(text, detail)
    for b in boxes:
        b["text"] = coarse.apply_repair(b["text"], detail)
    if _W["filter"].too_many_tokens(text):
        return None, coarse.TOO_MANY_TOKENS
    return {"prompt": _W["prompts"]["fine"], "text": text, "boxes": boxes}, None


def _ground_truth_pages(unit: dict) -> dict[int, tuple[str, str]]:
    """page -> (language, source text) from a generated document's ``.gt.json`` sidecar: the
    synthetic documents' (text in ``blocks``) or the easy and reading pages' (``text``)."""
    if unit["source"] != "synthetic":
        return {}
    try:
        gt = json.loads(Path(unit["path"]).with_suffix(".gt.json").read_text(encoding="utf-8"))
        return {pg["page"]: (gt.get("lang", "und"),
                             "\n".join(b["text"] for b in pg["blocks"]) if "blocks" in pg else pg["text"])
                for pg in gt["pages"]}
    except (OSError, ValueError, KeyError, TypeError):  # a broken sidecar costs the score, not the page
        return {}


def progress_path(work_dir: str | Path, doc_id: str) -> Path:
    """The file a worker rewrites as it starts each page of `doc_id` (its mtime: the page's
    start), which the driver reads to enforce `page_timeout_s`."""
    return Path(work_dir) / "progress" / f"{doc_id}.page"


def _page_stalled(cfg: EngineConfig, u: dict) -> dict | None:
    """`u` with its current page marked to be skipped when that page has run longer than
    `page_timeout_s`, else None (the executor then stops the worker and re-queues `u`)."""
    path = progress_path(cfg.work_dir, u["doc_id"])
    try:
        st = os.stat(path)
        page = int(path.read_bytes() or b"-1")
    except (OSError, ValueError):
        return None
    running = time.time() - st.st_mtime
    if page < 0 or running <= cfg.page_timeout_s:
        return None
    path.unlink(missing_ok=True)
    skip = dict(u.get("skip_pages") or {})
    skip[str(page)] = f"still running after {cfg.page_timeout_s:g} s: its worker was stopped, the page skipped"
    return dict(u, skip_pages=skip)


@contextlib.contextmanager
def _gc_paused():
    """Python's cyclic garbage collector off while a document's pages run. A page's text dict
    (~2,500 glyph dicts with their box tuples) is allocated in one go, and the growth makes the
    collector sweep every live object of the process several times per page: ~4 ms of a ~20 ms
    text path on real pages. Page work frees its objects by reference count (no cycles: a
    full collection after 100 real pages finds none), and the collector resumes after the
    document."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _process_pages(doc, unit: dict, record: dict, writer) -> None:
    cfg: EngineConfig = _W["cfg"]
    n_pages = doc.page_count if cfg.max_pages_per_doc is None else min(doc.page_count, cfg.max_pages_per_doc)
    kind_skips: dict[str, dict[str, int]] = {k: {} for k in cfg.labels}
    truth = _ground_truth_pages(unit)
    skip_pages = unit.get("skip_pages") or {}
    progress = None
    if cfg.page_timeout_s is not None:
        path = progress_path(cfg.work_dir, unit["doc_id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        progress = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with _gc_paused():
            _label_pages(doc, unit, record, writer, n_pages, kind_skips, truth, skip_pages, progress)
    finally:
        if progress is not None:
            os.close(progress)
            progress_path(cfg.work_dir, unit["doc_id"]).unlink(missing_ok=True)
    record["kind_skips"] = kind_skips
    record["pages_seen"] = n_pages


def _label_pages(doc, unit, record, writer, n_pages, kind_skips, truth, skip_pages, progress) -> None:
    cfg: EngineConfig = _W["cfg"]
    k = cfg.cer_pages_per_doc  # evenly spaced pages scored against pdftotext
    cer_pages = {round(j * (n_pages - 1) / max(k - 1, 1)) for j in range(k)} if k and n_pages else set()
    for i in range(n_pages):
        if str(i) in skip_pages:
            record["skipped"].append({"page": i, "reason": PAGE_TIMEOUT, "detail": skip_pages[str(i)]})
            continue
        if progress is not None:  # the page's start, for the driver's page_timeout_s
            os.pwrite(progress, b"%10d" % i, 0)
        try:
            page = doc.load_page(i)
            # (label text, reason, detail); a page of unmapped glyphs gets a second reading
            page_check, tdict, source = fallback.page_check(page, _W["filter"], cfg.sort_text)
        except Exception as e:  # noqa: BLE001 - bad input is recorded, never fatal
            record["skipped"].append({"page": i, "reason": EXTRACT_ERROR, "detail": f"{type(e).__name__}: {e}"[:300]})
            continue
        if source is not None:  # where the page's text came from (data_engine/fallback.py)
            record.setdefault("text_source", []).append({"page": i, "source": source, "detail": page_check[2]})
        text = page_check[0]
        w_pt, h_pt = page.rect.width, page.rect.height
        labels, reasons = {}, {}
        if "coarse" in cfg.labels:
            reasons["coarse"] = page_check[1]
            if reasons["coarse"] is None:
                labels["coarse"] = {"prompt": _W["prompts"]["coarse"], "text": text}
        if "fine" in cfg.labels and tdict is None:  # poppler's text has no glyph boxes
            reasons["fine"] = coarse.GARBLED_TEXT
        elif "fine" in cfg.labels:
            labels["fine"], reasons["fine"] = _fine_labels(page, tdict, w_pt, h_pt, page_check)
            if labels["fine"] is None:
                del labels["fine"]
        for kind, why in reasons.items():
            if why is not None:
                kind_skips[kind][why] = kind_skips[kind].get(why, 0) + 1
        if not labels:  # nothing to learn from: skip before paying for the render
            record["skipped"].append({"page": i, "reason": next(r for r in reasons.values() if r),
                                      "detail": page_check[2]})
            continue
        if page_check[2]:  # a repaired page (mojibake decoded, lone unmapped glyphs dropped)
            record.setdefault("repaired", []).append({"page": i, "detail": page_check[2]})
        try:
            img = render.render_page(page, cfg.dpi, cfg.max_side, cfg.image_format, cfg.jpeg_quality)
        except Exception as e:  # noqa: BLE001 - bad input is recorded, never fatal
            record["skipped"].append({"page": i, "reason": RENDER_ERROR, "detail": f"{type(e).__name__}: {e}"[:300]})
            continue
        lang, script, script_mix = langid.page_language_and_script(text, cfg.min_lang_prob)
        detected = lang
        if i in truth and truth[i][0] != langid.UNDETERMINED:
            # a generated page's language is what its generator declared (pseudo-text, random
            # letters: "zxx"); the detector would name the nearest language model (e.g. "gcf")
            lang = truth[i][0]
        key = shards.sample_key(unit["doc_id"], i)
        meta = {
            "doc_id": unit["doc_id"], "source_path": unit["path"], "page": i, "num_pages": doc.page_count,
            "lang": lang, **({"lang_detected": detected} if detected != lang else {}), "script": script,
            "dpi": img.dpi,
            "page_size": [round(w_pt, 2), round(h_pt, 2)], "image_size": list(img.size),
            "source": unit["source"], "data_source": "ocr", "labels": labels,
        }
        if script_mix:  # a page of two writing systems: both, with their weighted shares
            meta["script_mix"] = script_mix
        meta_bytes = shards.encode_meta(meta)
        writer.write({"__key__": key, img.fmt: img.data, "json": meta_bytes})
        sample = {"key": key, "page": i, "size": len(img.data) + len(meta_bytes),
                  "lang": lang, "script": script, "labels": sorted(labels)}
        if script_mix:
            sample["script_mix"] = script_mix
        if i in truth and "coarse" in labels:
            # Synthetic page: score the coarse label against the text the generator placed.
            gt_lang, gt_text = truth[i]
            sample["gt_lang"] = gt_lang
            sample["gt_edits"], sample["gt_chars"] = metrics.cer_counts(gt_text, labels["coarse"]["text"])
        elif not truth and "coarse" in labels and i in cer_pages:
            # Real PDF: a few pages per document scored against poppler's reading (a reference
            # with its own errors, not ground truth: the report names it)
            ref = fallback.poppler_text(page)
            if ref and ref.strip():
                sample["gt_lang"], sample["gt_ref"] = lang, fallback.POPPLER
                sample["gt_edits"], sample["gt_chars"] = metrics.cer_counts(ref, labels["coarse"]["text"])
        record["samples"].append(sample)


_FILETYPES = {"pdf": "pdf", "png": "png", "jpeg": "jpg", "tiff": "tiff"}


def _open_document(path: str, kind: str) -> pymupdf.Document:
    """``pymupdf.open`` for any path. MuPDF takes UTF-8 file names only, so a name holding other
    bytes is opened through ``/proc/self/fd`` (Linux), or read into memory elsewhere."""
    if queue.is_readable_path(path):
        return pymupdf.open(path, filetype=_FILETYPES[kind])
    fd = os.open(os.fsencode(path), os.O_RDONLY)
    try:
        if os.path.isdir("/proc/self/fd"):
            return pymupdf.open(f"/proc/self/fd/{fd}", filetype=_FILETYPES[kind])
        with os.fdopen(os.dup(fd), "rb") as f:
            return pymupdf.open(stream=f.read(), filetype=_FILETYPES[kind])
    finally:
        os.close(fd)


def _process_document(unit: dict, record: dict, fail) -> bool:
    """Label and write one document's pages; returns whether a unit tar was written."""
    if unit.get("hash_error"):
        return fail(UNREADABLE, unit["hash_error"])
    if unit["size"] == 0:
        return fail(EMPTY_FILE)
    try:
        with open(os.fsencode(unit["path"]), "rb") as f:
            head = f.read(1024)
    except OSError as e:
        return fail(UNREADABLE, f"{type(e).__name__}: {e}"[:300])
    kind = queue.sniff(head)
    # Trust the bytes, not the name: MuPDF would render an HTML page named .pdf as a document.
    if unit["source"] != "image" and kind != "pdf":
        return fail(NOT_PDF, f"no %PDF- header in the first 1 KB; {kind or queue.describe_bytes(head)}")
    if unit["source"] == "image" and kind in (None, "pdf"):
        return fail(NOT_IMAGE, f"not PNG/JPEG/TIFF data; {kind or queue.describe_bytes(head)}")
    try:
        doc = _open_document(unit["path"], kind)
    except Exception as e:  # noqa: BLE001 - bad input is recorded, never fatal
        return fail(CORRUPT, f"{type(e).__name__}: {e}"[:300])
    try:
        record["num_pages"] = doc.page_count if not doc.needs_pass else 0
        if doc.needs_pass:
            return fail(ENCRYPTED)
        if doc.page_count == 0:
            return fail(ZERO_PAGES)
        with _W["store"].open_tmp_tar(unit["doc_id"]) as f:
            writer = shards.tar_writer(f)
            _process_pages(doc, unit, record, writer)
            writer.close()
        return True
    finally:
        doc.close()


def process_unit(unit: dict) -> dict:
    """Process one document and commit its outputs; returns the committed unit record.

    Whatever the document does, the record says it (status "failed" + reason + detail); only
    the engine's own output errors (queue.OutputError) propagate, uncommitted.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    record = {"doc_id": unit["doc_id"], "path": unit["path"], "source": unit["source"], "config": _W["digest"], "status": "ok",
              "reason": None, "detail": None, "num_pages": 0, "pages_seen": 0,
              "samples": [], "skipped": [], "kind_skips": {}}

    def fail(reason: str, detail: str | None = None) -> bool:
        record.update(status="failed", reason=reason, detail=detail, samples=[])
        return False  # no unit tar

    try:
        has_tar = _process_document(unit, record, fail)
    except queue.OutputError:
        raise
    except Exception as e:  # noqa: BLE001 - anything MuPDF throws mid-document: record, move on
        has_tar = fail(UNIT_ERROR, f"{type(e).__name__}: {e}"[:300])
    record["seconds"] = round(time.perf_counter() - t0, 4)
    record["cpu_seconds"] = round(time.process_time() - c0, 4)  # load-independent per-core cost
    _W["store"].commit(unit["doc_id"], record, has_tar)
    return record


# --------------------------------------------------------------------------- driver side

def _num_workers(cfg: EngineConfig) -> int:
    if cfg.workers:
        return int(cfg.workers)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _hash_inputs(files: list[queue.InputFile], work: Path, threads: int,
                 hash_map=None) -> dict[str, tuple[str, int, str | None]]:
    """path -> (doc_id, size, error), reusing `work/hash_cache.jsonl` entries whose size+mtime match.

    Hashing runs on threads (file reads and hashlib release the GIL), or through `hash_map`
    (an executor's `map(fn, paths, chunksize=...)`, e.g. Ray tasks on the nodes).
    """
    cache_path = work / "hash_cache.jsonl"
    cache = {}
    if cache_path.is_file():
        for line in cache_path.read_bytes().splitlines():
            try:
                e = json.loads(line)
                cache[e["path"]] = e
            except (ValueError, KeyError, TypeError):  # a damaged cache line costs a re-hash only
                continue
    out, todo = {}, []
    for f in files:
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
    if hash_map is not None and todo:
        results = list(hash_map(queue.hash_file, [p for p, _ in todo], chunksize=64))
    else:
        with ThreadPoolExecutor(max(1, min(threads, len(todo)))) as pool:
            results = list(pool.map(queue.hash_file, [p for p, _ in todo]))
    for (path, mtime), res in zip(todo, results):
        out[path] = res
        if res[2] is None:
            cache[path] = {"path": path, "size": res[1], "mtime_ns": mtime, "doc_id": res[0]}
    tmp = cache_path.with_suffix(".tmp")
    with queue.output_io(f"cannot write {queue.display_path(str(cache_path))}"):
        tmp.write_text("".join(json.dumps(e) + "\n" for e in cache.values()), encoding="ascii")
        os.replace(tmp, cache_path)
    return out


def _tick(bar, rec: dict) -> None:
    bar.pages += len(rec["samples"])
    bar.set_postfix(pages=bar.pages, refresh=False)
    bar.update(1)


def _failure_record(path: str, reason: str, detail: str | None, status: str = "failed", **kw) -> dict:
    return {"doc_id": None, "path": path, "status": status, "reason": reason, "detail": detail,
            "num_pages": 0, "pages_seen": 0, "samples": [], "skipped": [], "kind_skips": {}, **kw}


def _commit_failure(cfg: EngineConfig, u: dict, reason: str, detail: str) -> dict:
    rec = _failure_record(u["path"], reason, detail, doc_id=u["doc_id"], source=u["source"], config=cfg.digest())
    if reason == TIMEOUT:  # a later run with a larger limit retries the document
        rec["limit_s"] = cfg.doc_timeout_s
    queue.UnitStore(cfg.work_dir).commit(u["doc_id"], rec, has_tar=False)
    return rec


def _assemble(cfg: EngineConfig, records: list[dict], executor: LocalExecutor) -> tuple[list[dict], bool]:
    """Write the shards for `records` (skipped when the previous plan is identical). Returns (shards, rewritten)."""
    shard_dir = Path(cfg.out) / "shards"
    with queue.output_io(f"cannot create {queue.display_path(str(shard_dir))}"):
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
        try:
            prev = json.loads(index_path.read_bytes())
        except ValueError:  # a damaged index: rewrite the shards
            prev = {}
        if prev.get("digest") == digest and all((shard_dir / s["file"]).is_file() for s in summary):
            return summary, False
    store = queue.UnitStore(cfg.work_dir)
    jobs = [(shard_dir / sp.filename, [(store.tar_path(d), keys) for d, keys in sp.parts]) for sp in plan]
    with queue.output_io(f"cannot write the shards in {queue.display_path(str(shard_dir))}"):
        if jobs:
            executor.map(shards.write_shard, *zip(*jobs))
        # Shards of an earlier, larger plan would otherwise be read as part of this dataset
        # (and temporaries of writers killed mid-shard: `.tar.<host>-<pid>.tmp`).
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


def _source_kind(path: str) -> str:
    if Path(path).suffix.lower() in queue.IMAGE_SUFFIXES:
        return "image"
    try:  # a synthetic document has a ground-truth sidecar
        return "synthetic" if Path(path).with_suffix(".gt.json").is_file() else "pdf"
    except (OSError, ValueError):  # e.g. the sidecar's name would be too long
        return "pdf"


def _units(cfg: EngineConfig, files: list[queue.InputFile], hash_map=None) -> tuple[list[dict], list[dict]]:
    """Work units (one per distinct content, doc-id order) and records of the inputs not processed."""
    hashes = _hash_inputs([f for f in files if f.exists], Path(cfg.work_dir), _num_workers(cfg), hash_map)
    units, skipped = [], []
    seen: dict[str, str] = {}
    for f in files:
        if not f.exists:  # found during discovery, not readable as an input
            skipped.append(_failure_record(f.path, f.reason, f.detail))
            continue
        doc_id, size, err = hashes[f.path]
        if doc_id in seen:  # same bytes under another path: processed once, under the first path
            skipped.append(_failure_record(f.path, DUPLICATE, f"same content as {seen[doc_id]}",
                                           status="skipped", doc_id=doc_id))
            continue
        seen[doc_id] = f.path
        units.append({"doc_id": doc_id, "path": f.path, "size": size, "hash_error": err, "source": _source_kind(f.path)})
    units.sort(key=lambda u: u["doc_id"])
    return units, skipped


def run_engine(cfg: EngineConfig | Mapping) -> dict:
    """Run the engine end to end; returns the report dict (also written to {out}/report.json).

    Raises queue.OutputError when the engine cannot write its own output: fix the cause and
    run the same command again; committed units are kept, the rest is processed then.
    """
    cfg = EngineConfig.from_any(cfg)
    cfg.validate()
    out = Path(cfg.out).resolve()
    cfg.out = str(out)
    cfg.work_dir = str(Path(cfg.work_dir).resolve() if cfg.work_dir else out / "work")
    with queue.output_io(f"cannot create the output folder {queue.display_path(str(out))}"):
        out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "data engine"):  # one engine per out=: FolderInUseError names the other
        return _run_locked(cfg, out)


def _run_locked(cfg: EngineConfig, out: Path) -> dict:
    with queue.output_io(f"cannot create the work folder {queue.display_path(cfg.work_dir)}"):
        Path(cfg.work_dir).mkdir(parents=True, exist_ok=True)
    n_workers = _num_workers(cfg)
    prompts = _prompts()
    t_start = time.perf_counter()

    found = queue.discover(cfg.input)
    if cfg.executor == "ray":  # same units, same commit protocol; Ray tasks instead of a local pool
        from data_engine.ray_executor import RayExecutor

        executor = RayExecutor(cfg, prompts)
        n_workers = executor.workers
    else:
        executor = LocalExecutor(n_workers, _init_worker, (cfg, prompts), cfg.start_method)
    try:
        # Ray: inputs are hashed by tasks across the cluster, not all read by the driver.
        units, skipped = _units(cfg, found.files, executor.map if cfg.executor == "ray" else None)
    except BaseException:
        executor.close(wait_for_workers=False)
        raise
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
        timed_out = rec is not None and rec.get("reason") == TIMEOUT and (
            cfg.doc_timeout_s is None or cfg.doc_timeout_s > rec.get("limit_s", 0))
        if (rec is not None and rec.get("config") == digest and rec.get("path") == u["path"]
                and rec.get("source") == u["source"] and not timed_out
                and (not rec["samples"] or store.tar_path(u["doc_id"]).is_file())):
            records[u["doc_id"]] = rec
        else:
            todo.append(u)
    resumed = len(records)
    try:
        bar = tqdm(total=len(todo), unit="doc", desc="data engine", disable=not cfg.progress, dynamic_ncols=True)
        bar.pages = 0
        new = []
        for rec in executor.run(process_unit, todo, timeout_s=cfg.doc_timeout_s,
                                max_crash_retries=cfg.max_crash_retries,
                                fail=lambda u, reason, detail: _commit_failure(cfg, u, reason, detail),
                                **({"stalled": lambda u: _page_stalled(cfg, u),
                                    "poll_s": min(1.0, cfg.page_timeout_s / 4)} if cfg.page_timeout_s else {})):
            new.append(rec)
            _tick(bar, rec)
        bar.close()
        for rec in new:
            records[rec["doc_id"]] = rec
        t_processed = time.perf_counter()

        ordered = [records[u["doc_id"]] for u in units]
        shard_summary, rewritten = _assemble(cfg, ordered, executor)
        t_done = time.perf_counter()
    except BaseException:  # output error, Ctrl-C: stop the workers now, keep what is committed
        executor.close(wait_for_workers=False)
        raise
    executor.close()

    if not cfg.keep_units:
        for rec in ordered:
            if rec["doc_id"]:
                store.tar_path(rec["doc_id"]).unlink(missing_ok=True)
    timings = {"discover_hash_s": t_hashed - t_start, "process_s": t_processed - t_hashed,
               "assemble_s": t_done - t_processed, "total_s": t_done - t_start}
    rep = report.build_report(ordered + skipped, new, shard_summary, timings, n_workers,
                              resumed_units=resumed, shards_rewritten=rewritten, config=dataclasses.asdict(cfg),
                              ignored_by_suffix=found.ignored_suffixes,
                              history=report.load_history(cfg.work_dir))
    with queue.output_io(f"cannot write the report in {queue.display_path(str(out))}"):
        report.write_report(rep, ordered + skipped, out)
    if new:
        report.append_history(cfg.work_dir, rep)
    if cfg.print_summary:
        summary = report.format_summary(rep)
        log.info("%s", summary)  # the CLI's log file (Hydra: {out}/logs/<time>/cli.log)
        if not logging.getLogger().handlers:  # no logging set up (a library call): the console
            print(summary)
    return rep
