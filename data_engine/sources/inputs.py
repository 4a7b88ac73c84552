"""Image inputs users already have: a folder of images, or webdataset shards (img2dataset format).

``ImageInputs(spec)`` indexes the input once (file names, or tar member offsets) so item ``i``
is read directly, in any process, in a fixed order:

* a directory: every ``.jpg/.jpeg/.png/.webp/.bmp/.tif/.tiff`` below it, sorted by path;
* tar shards (a path, glob or ``{000000..000009}`` brace pattern, or a list of them): one item
  per sample key holding an image member, with its sibling members (``txt``, ``json``...) as
  img2dataset writes them (``00000001.jpg``, ``00000001.txt``, ``00000001.json``).
"""

from __future__ import annotations

import glob
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

from data_engine.sources.base import Skip, Source

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def _expand(spec: str | Sequence[str]) -> list[str]:
    from braceexpand import braceexpand

    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[str] = []
    for s in specs:
        for p in braceexpand(str(s)):
            p = os.path.expanduser(p)
            hits = sorted(glob.glob(p)) if glob.has_magic(p) else [p]
            if not hits or not all(os.path.exists(h) for h in hits):
                raise FileNotFoundError(f"input {s!r} matches no file or folder")
            out.extend(hits)
    return out


class ImageInputs:
    def __init__(self, spec: str | Sequence[str]):
        self.items: list[dict] = []  # {"path", "key", "members": {ext: (offset, size)} | None}
        for p in _expand(spec):
            if os.path.isdir(p):
                files = sorted(f for f in Path(p).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
                self.items += [{"path": str(f), "key": str(f.relative_to(p)), "members": None} for f in files]
            elif p.endswith(".tar"):
                self.items += self._index_tar(p)
            elif Path(p).suffix.lower() in IMAGE_SUFFIXES:
                self.items.append({"path": p, "key": Path(p).name, "members": None})
            else:
                raise ValueError(f"input {p!r} is neither a folder, an image nor a .tar shard")

    @staticmethod
    def _index_tar(path: str) -> list[dict]:
        groups: dict[str, dict] = {}
        order: list[str] = []
        try:
            with tarfile.open(path, "r") as tf:
                for info in tf:
                    if not info.isfile():
                        continue
                    base = os.path.basename(info.name)
                    key, _, ext = base.partition(".")
                    key = os.path.join(os.path.dirname(info.name), key)
                    if key not in groups:
                        groups[key] = {}
                        order.append(key)
                    groups[key][ext.lower()] = (info.offset_data, info.size)
        except (tarfile.TarError, OSError) as e:  # a truncated shard keeps the members read so far
            if not order:
                raise ValueError(f"cannot read shard {path}: {e}") from None
        return [{"path": path, "key": k, "members": groups[k]} for k in order
                if any("." + e in IMAGE_SUFFIXES for e in groups[k])]

    def __len__(self) -> int:
        return len(self.items)

    def describe(self, index: int) -> str:
        it = self.items[index]
        return it["path"] if it["members"] is None else f"{it['path']}:{it['key']}"

    def read(self, index: int) -> dict:
        """{"key", "path", "image": bytes, "txt": str | None, "json": bytes | None}."""
        it = self.items[index]
        if it["members"] is None:
            return {"key": it["key"], "path": it["path"], "image": Path(it["path"]).read_bytes(), "txt": None, "json": None}
        m = it["members"]
        out = {"key": it["key"], "path": it["path"], "txt": None, "json": None}
        with open(it["path"], "rb") as f:
            def member(ext):
                off, size = m[ext]
                f.seek(off)
                data = f.read(size)
                if len(data) != size:
                    raise Skip("truncated_input", f"{ext} member of {it['key']} is cut short")
                return data
            img_ext = next(e for e in m if "." + e in IMAGE_SUFFIXES)
            out["image"] = member(img_ext)
            if "txt" in m:
                out["txt"] = member("txt").decode("utf-8", errors="replace")
            if "json" in m:
                out["json"] = member("json")
        return out


def decode_image(data: bytes, what: str):
    """RGB PIL image, or ``Skip("bad_image")`` for bytes that are not a decodable image."""
    from data_engine.images import decode_rgb

    try:
        img = decode_rgb(data)  # upright by its EXIF orientation, like the official pipeline
    except Exception as e:  # noqa: BLE001 - PIL raises several unrelated types for corrupt data
        raise Skip("bad_image", f"{what}: {type(e).__name__}: {e}") from None
    if min(img.size) < 8:
        raise Skip("bad_image", f"{what}: image too small {img.size}")
    return img


class LinesSource(Source):
    """A source whose optional input is a text file with one item per line (None: a generator)."""

    def __init__(self, input: str | None = None, **options):
        super().__init__(input=input, **options)
        self.lines = Path(input).read_text(encoding="utf-8").splitlines() if input else None

    def num_items(self):
        return None if self.lines is None else len(self.lines)

    def describe(self, index):
        return f"{self.options['input']}:{index + 1}" if self.lines is not None else super().describe(index)


class ImageInputSource(Source):
    """A source that reads images users have (``ImageInputs``); its input is required."""

    input_help = "an image folder or webdataset shards"

    def __init__(self, input=None, **options):
        if not input:
            raise ValueError(f"{self.name} needs --input: {self.input_help}")
        super().__init__(input=input, **options)
        self.inputs = ImageInputs(input)

    def num_items(self):
        return len(self.inputs)

    def describe(self, index):
        return self.inputs.describe(index)
