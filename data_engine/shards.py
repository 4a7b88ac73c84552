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

from PIL import Image

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
        image = Image.open(io.BytesIO(img_bytes))
        image = image.convert("RGB") if image.mode != "RGB" else image
        yield {"key": sample["__key__"], "image": image, "meta": json.loads(sample["json"])}
