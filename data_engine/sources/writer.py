"""The resumable, deterministic shard writer every data source shares.

A source (``data_engine.sources.base.Source``) turns an item index into one sample. The writer
cuts the index range ``0..count-1`` into fixed blocks of ``shard_size`` items; block ``k`` is
shard ``{out}/shards/{name}-{k:06d}.tar``. Every random choice of item ``i`` comes from
``stable_rng(seed, name, i)``, so a shard's bytes depend only on (source settings, seed, k):

* resumable: a shard is written to ``.tmp`` and renamed, then committed with a small record
  ``{out}/work/{name}-{k:06d}.json`` (samples, failures, config digest). A re-run skips every
  committed shard and continues with the first missing one; the bytes are the same as those of
  an uninterrupted run (tests check it);
* idempotent: a finished run re-run writes nothing; an output folder made with other settings
  is refused rather than silently mixed;
* bad input (an invalid SMILES line, an empty chart table, an image that cannot be decoded...)
  is raised by the source as ``Skip(reason, detail)``, recorded in ``failures.jsonl`` and the
  report, and never stops the run.

Members follow the engine's shard contract (docs/INTERFACES.md "Shard format"): key
``{doc_hash16}_{page:05d}``, ``<key>.png``/``.jpg`` and ``<key>.json``, pinned tar metadata
(``data_engine.shards``), samples sorted by key inside a shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from data_engine import shards
from data_engine.sources.base import GeneratedSample, Skip, Source, hash16, stable_rng

WRITER_VERSION = 1  # bump when sample bytes change for the same settings


def sample_meta(src: Source, index: int, s: GeneratedSample, image_size) -> dict:
    """The shard json of one generated sample, in the contract's key order."""
    return {
        "doc_id": s.doc_id, "source_path": s.source_path, "page": 0, "num_pages": 1,
        "lang": s.lang, "script": s.script, "dpi": None,
        "page_size": list(image_size), "image_size": list(image_size),
        "source": s.kind, "data_source": src.data_source, "ocr_source": src.name,
        "item": index, "labels": s.labels, **({"extra": s.extra} if s.extra else {}),
    }


def encode_image(img, fmt: str, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img = img.convert("RGB") if img.mode != "RGB" else img
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=quality, optimize=False)
    else:
        img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def make_sample(src: Source, index: int, seed: int) -> tuple[dict | None, dict | None]:
    """(tar sample, None) or (None, failure record) for item ``index``."""
    try:
        s = src.make(index, stable_rng(seed, src.name, index))
    except Skip as e:
        return None, {"item": index, "input": src.describe(index), "reason": e.reason, "detail": e.detail[:300]}
    data = encode_image(s.image, src.image_format)
    if s.doc_id is None:  # generated: the content names the sample (equal samples collapse)
        s.doc_id = hash16(data, json.dumps(s.labels, sort_keys=True, ensure_ascii=False))
    key = shards.sample_key(s.doc_id, 0)
    meta = sample_meta(src, index, s, s.image.size)
    return {"__key__": key, src.image_format: data, "json": shards.encode_meta(meta)}, None


def _write_block(src: Source, k: int, seed: int, lo: int, hi: int, shard_path: Path) -> dict:
    """Make items lo..hi-1 and write them as one shard; returns its commit record."""
    t0, c0 = time.perf_counter(), time.process_time()
    samples, failures = [], []
    for i in range(lo, hi):
        sample, fail = make_sample(src, i, seed)
        if fail is not None:
            failures.append(fail)
        else:
            samples.append(sample)
    samples.sort(key=lambda s: s["__key__"])
    keys = [s["__key__"] for s in samples]
    if len(set(keys)) != len(keys):  # same input twice (e.g. a duplicated SMILES line): keep the first
        seen, kept = set(), []
        for s in samples:
            if s["__key__"] in seen:
                failures.append({"item": None, "input": s["__key__"], "reason": "duplicate", "detail": "same sample key"})
                continue
            seen.add(s["__key__"])
            kept.append(s)
        samples = kept
    size = 0
    if samples:
        tmp = shard_path.with_name(shard_path.name + ".tmp")
        with open(tmp, "wb") as f:
            w = shards.tar_writer(f)
            for s in samples:
                size += w.write(s)
            w.close()
        os.replace(tmp, shard_path)
    return {"shard": k, "file": shard_path.name if samples else None, "items": [lo, hi], "count": len(samples),
            "size": size, "failures": failures, "cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0}


_WORKER: dict = {}


def _init_worker(name: str, options: dict) -> None:
    from data_engine.sources import get_source

    _WORKER["src"] = get_source(name, **options)


def _worker_block(args) -> dict:
    k, seed, lo, hi, path = args
    _WORKER["src"].seed = seed
    return _write_block(_WORKER["src"], k, seed, lo, hi, Path(path))


def config_digest(src: Source, seed: int, shard_size: int) -> str:
    desc = {"writer": WRITER_VERSION, "source": src.name, "version": src.version, "seed": seed,
            "shard_size": shard_size, "format": src.image_format, "options": src.options_digest()}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_source(src: Source, out: str | os.PathLike, count: int | None, seed: int = 0, *,
                 shard_size: int = 1000, workers: int = 1, progress: bool = True) -> dict:
    """Write ``count`` items of ``src`` (None = all of its input) as shards under ``out``.

    Returns the report (also ``{out}/report.json``). With ``workers > 1`` each worker process
    re-creates the source from its name and options and writes whole shards (same bytes).
    """
    n_items = src.num_items()
    if count is None:
        if n_items is None:
            raise ValueError(f"source {src.name!r} makes samples without end: give a count")
        count = n_items
    elif n_items is not None:
        count = min(count, n_items)
    if count < 0 or shard_size < 1:
        raise ValueError(f"count must be >= 0 and shard_size >= 1, got {count}, {shard_size}")
    src.seed = seed
    out = Path(out).resolve()
    shard_dir, work = out / "shards", out / "work"
    shard_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    digest = config_digest(src, seed, shard_size)
    blocks = [(k, k * shard_size, min(count, (k + 1) * shard_size)) for k in range((count + shard_size - 1) // shard_size)]
    records, todo = {}, []
    for k, lo, hi in blocks:
        rec_path = work / f"{src.name}-{k:06d}.json"
        rec = json.loads(rec_path.read_text(encoding="utf-8")) if rec_path.is_file() else None
        if rec is not None and rec.get("digest") != digest:
            raise RuntimeError(f"{out} holds shards of {src.name!r} made with other settings "
                               f"(digest {rec.get('digest')} != {digest}); use another --out")
        if rec is not None and rec["items"] == [lo, hi] and (rec["file"] is None or (shard_dir / rec["file"]).is_file()):
            records[k] = rec
        else:
            todo.append((k, seed, lo, hi, str(shard_dir / shards_name(src.name, k))))
    resumed = len(records)
    t0, c0 = time.perf_counter(), time.process_time()
    bar = tqdm(total=sum(hi - lo for _, _, lo, hi, _ in todo), unit="item", desc=src.name,
               disable=not progress, dynamic_ncols=True)

    def commit(rec: dict) -> None:
        rec["digest"] = digest
        path = work / f"{src.name}-{rec['shard']:06d}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        records[rec["shard"]] = rec
        bar.update(rec["items"][1] - rec["items"][0])

    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(src.name, src.options)) as pool:
            for rec in pool.map(_worker_block, todo):
                commit(rec)
    else:
        for k, s, lo, hi, path in todo:
            commit(_write_block(src, k, s, lo, hi, Path(path)))
    bar.close()
    return _finish(src, out, records, [b[0] for b in blocks], digest, resumed, seed, count,
                   time.perf_counter() - t0, time.process_time() - c0)


def shards_name(name: str, k: int) -> str:
    return f"{name}-{k:06d}.tar"


def _finish(src: Source, out: Path, records: dict, order: list[int], digest: str, resumed: int,
            seed: int, count: int, wall: float, cpu: float) -> dict:
    recs = [records[k] for k in order]
    summary = [{"file": r["file"], "count": r["count"], "size": r["size"]} for r in recs if r["file"]]
    index = out / "shards" / f"{src.name}.index.json"
    tmp = index.with_suffix(".tmp")
    tmp.write_text(json.dumps({"digest": digest, "shards": summary}, indent=1), encoding="utf-8")
    os.replace(tmp, index)
    failures = [f for r in recs for f in r["failures"]]
    with open(out / "failures.jsonl.tmp", "w", encoding="utf-8") as f:
        for row in failures:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(out / "failures.jsonl.tmp", out / "failures.jsonl")
    written = sum(r["count"] for r in recs)
    gen_cpu = sum(r["cpu_s"] for r in recs)
    rep = {"source": src.name, "data_source": src.data_source, "seed": seed, "items": count,
           "written": written, "failed": len(failures),
           "failure_reasons": dict(Counter(f["reason"] for f in failures).most_common()),
           "shards": len(summary), "shards_resumed": resumed, "digest": digest,
           "samples_per_cpu_s": round(written / gen_cpu, 3) if gen_cpu > 0 else None,
           "this_run": {"wall_s": round(wall, 3), "cpu_s_driver": round(cpu, 3)}}
    (out / "report.json").write_text(json.dumps(rep, indent=1), encoding="utf-8")
    return rep
