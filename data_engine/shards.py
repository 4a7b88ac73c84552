"""Webdataset shards: byte-reproducible writers and the reader the trainers use.

Format (docs/INTERFACES.md "Shard format"): `{out}/shards/{name}-{NNNNNN}.tar`, one sample per
page, key `{doc_hash16}_{page:05d}`, members `<key>.jpg` (or `.png`) and `<key>.json`.

Every tar member is written with pinned metadata (mtime 0, uid/gid 0, fixed user/group names,
mode 0444), so equal samples give equal bytes on every run. `SampleTarWriter` writes exactly
what `webdataset.TarWriter(mtime=...)` writes, with the standard library only: importing
webdataset imports torch (~2-10 s per process), which engine workers do not need.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from data_engine.images import decode_rgb

# Pinned tar metadata: equal content -> equal bytes, whoever runs the engine and whenever.
TAR_META = dict(user="ocrflow", group="ocrflow", mode=0o444, mtime=0.0)


def sample_key(doc_id: str, page: int) -> str:
    return f"{doc_id}_{page:05d}"


def encode_meta(meta: dict) -> bytes:
    """JSON member bytes: UTF-8, compact, insertion order kept (the order the contract lists).
    A source path that is not UTF-8 keeps its bytes as \\udcXX escapes (queue.json_bytes)."""
    return json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


class SampleTarWriter:
    """Writes samples {"__key__": key, ext: bytes, ...} as `<key>.<ext>` members, extensions sorted."""

    def __init__(self, fileobj):
        self.tar = tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed by close()

    def write(self, sample: dict) -> int:
        key, total = sample["__key__"], 0
        for ext in sorted(k for k in sample if not k.startswith("_")):
            data = sample[ext]
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"member {key}.{ext} must be bytes, got {type(data).__name__}")
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), TAR_META["mtime"], TAR_META["mode"]
            info.uname, info.gname = TAR_META["user"], TAR_META["group"]
            self.tar.addfile(info, io.BytesIO(data))
            total += len(data)
        return total

    def close(self) -> None:
        self.tar.close()


def tar_writer(fileobj) -> SampleTarWriter:
    return SampleTarWriter(fileobj)


def open_shard_writer(pattern: str, max_count: int = 1000, max_size: float = 1 << 30):
    """Size-bounded `webdataset.ShardWriter` with pinned metadata, e.g. pattern ".../name-%06d.tar".

    For writers that stream samples in a fixed order themselves (the engine assembles its
    shards with `write_shard` instead, to stay deterministic under parallel workers).
    """
    import webdataset as wds

    return wds.ShardWriter(pattern, maxcount=max_count, maxsize=max_size, verbose=0, encoder=False, **TAR_META)


def _members_by_key(tar_path: Path) -> dict[str, list[tuple[str, bytes]]]:
    out: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(tar_path, "r") as tf:
        for info in tf:
            key, _, ext = info.name.partition(".")
            out.setdefault(key, []).append((ext, tf.extractfile(info).read()))
    return out


def write_shard(path: Path, parts: Iterable[tuple[Path, list[str]]]) -> int:
    """Copy the listed samples, in order, from unit tars into the shard at `path`.

    Written to a temporary file unique to this process and renamed, so a shard file either is
    complete or does not exist, even with two writers at once (a retried cluster task).
    Returns the number of samples written.
    """
    from data_engine.queue import tmp_suffix

    path = Path(path)
    tmp = path.with_name(path.name + tmp_suffix())
    n = 0
    with open(tmp, "wb") as f:
        writer = tar_writer(f)
        for unit_tar, keys in parts:
            members = _members_by_key(unit_tar)
            for key in keys:
                if key not in members:
                    raise RuntimeError(f"sample {key} missing from unit output {unit_tar}")
                sample = {"__key__": key}
                sample.update(members[key])
                writer.write(sample)
                n += 1
        writer.close()
    os.replace(tmp, path)
    return n


def _tar_index(tar_path: Path) -> dict[str, list[tuple[str, int, int]]]:
    """{key: [(ext, data offset, size)]} of a tar's members, in file order."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    with tarfile.open(tar_path, "r") as tf:
        for info in tf:
            if info.isfile():
                key, _, ext = info.name.partition(".")
                out.setdefault(key, []).append((ext, info.offset_data, info.size))
    return out


def mix_shards(sources: Iterable[Path], out_dir: Path, *, per_shard: int = 256, seed: int = 0,
               prefix: str = "mix") -> list[Path]:
    """The samples of ``sources`` in one seeded random order, written as shards of ``per_shard``
    samples ``out_dir/{prefix}-{i:06d}.tar``; returns their paths.

    Why: a reader goes through its shards one after another (their order and the records inside
    a window shuffled), so a few large single-kind shards (one language's lines, one round's
    accepted labels) are trained on in long single-kind blocks, and the model forgets one kind
    while it sees another. Mixed shards interleave every kind at every step.

    Idempotent: ``out_dir/DONE`` lists the shards (each written atomically), so a second call
    returns them without rewriting; the same sources and seed give the same bytes. Keys must be
    unique across the sources (a duplicate is an error, not a silent merge of two samples).
    """
    import random

    out_dir = Path(out_dir)
    done = out_dir / "DONE"
    if done.is_file():
        return [out_dir / name for name in json.loads(done.read_text())["shards"]]
    if per_shard < 1:
        raise ValueError(f"per_shard must be >= 1, got {per_shard}")
    order: list[tuple[Path, str, list[tuple[str, int, int]]]] = []
    seen: dict[str, Path] = {}
    for src in sources:
        src = Path(src)
        for key, members in _tar_index(src).items():
            if key in seen:
                raise ValueError(f"sample key {key!r} is in both {seen[key]} and {src}")
            seen[key] = src
            order.append((src, key, members))
    random.Random(seed).shuffle(order)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, handles = [], {}
    try:
        for i in range(0, len(order), per_shard):
            path = out_dir / f"{prefix}-{i // per_shard:06d}.tar"
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "wb") as f:
                writer = tar_writer(f)
                for src, key, members in order[i:i + per_shard]:
                    fh = handles.get(src) or handles.setdefault(src, open(src, "rb"))  # noqa: SIM115 - closed below
                    sample = {"__key__": key}
                    for ext, offset, size in members:
                        fh.seek(offset)
                        sample[ext] = fh.read(size)
                    writer.write(sample)
                writer.close()
            os.replace(tmp, path)
            paths.append(path)
    finally:
        for fh in handles.values():
            fh.close()
    done.write_text(json.dumps({"shards": [p.name for p in paths], "samples": len(order)}))
    return paths


def iter_samples(urls: str | list[str]) -> Iterator[dict]:
    """Yield dict(key, image: PIL.Image (RGB), meta: dict) for each sample of the shards.

    `urls`: a shard path, a list of paths, or a webdataset brace pattern ("a-{000000..000009}.tar").
    """
    if isinstance(urls, (str, os.PathLike)):
        urls = str(urls)
    else:
        urls = [str(u) for u in urls]
    import webdataset as wds

    ds = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    for sample in ds:
        img_bytes = sample.get("jpg", sample.get("png"))
        if img_bytes is None or "json" not in sample:
            raise ValueError(f"sample {sample.get('__key__')} in {sample.get('__url__')} lacks an image or json member")
        image = decode_rgb(img_bytes)
        yield {"key": sample["__key__"], "image": image, "meta": json.loads(sample["json"])}
