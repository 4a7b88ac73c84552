"""Resumable, idempotent work queue: inputs -> work units -> committed unit outputs -> shard plan.

Design (in the spirit of olmocr's work queue):
- one work unit per input document, keyed by the first 16 hex digits of the SHA-256 of its
  bytes, so the same document has the same key on any machine and under any path (the same
  content under two paths is processed once);
- a worker writes a unit's samples to `work/units/ab/<id>.tar.<host>-<pid>.tmp`, then renames
  it to `<id>.tar` and finally writes `<id>.json` (the unit record) through a temporary file
  and a rename. The record is the done-marker: a unit without one is redone from scratch, so a
  kill -9 at any instant leaves at worst a stale `.tmp` that the unit's next commit removes.
  Temporary names are unique per writer process: on a cluster a unit can run twice at once (a
  task retried while the first attempt, on a node cut off or a killed driver's worker, still
  runs); both write the same bytes to their own file and the renames are atomic, so whichever
  lands last publishes a complete unit;
- shards are assembled from committed units in doc-id order with a deterministic plan
  (`plan_shards`), so the shard set depends only on the set of inputs, never on worker
  count, scheduling or interruptions.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PDF_SUFFIXES = (".pdf",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SUPPORTED_SUFFIXES = PDF_SUFFIXES + IMAGE_SUFFIXES
LIST_SUFFIXES = (".txt", ".lst", ".list")
HASH_CHARS = 16
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class InputFile:
    path: str                 # absolute path
    exists: bool = True


def _expand(spec: str, base: Path) -> list[InputFile]:
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base / path
    if path.is_dir():
        return [InputFile(str(p.resolve())) for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES]
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        out = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            entry = Path(line).expanduser()
            entry = entry if entry.is_absolute() else path.parent / entry
            # A list names files explicitly: a missing one is bad input, recorded, not fatal.
            out.append(InputFile(str(entry.resolve()), exists=entry.is_file()))
        return out
    if path.is_file():
        return [InputFile(str(path.resolve()))]
    matches = sorted(glob.glob(str(path), recursive=True))
    if not matches:
        raise FileNotFoundError(f"input {spec!r} is not a file, directory, list file or matching glob")
    return [InputFile(str(Path(m).resolve())) for m in matches
            if Path(m).is_file() and Path(m).suffix.lower() in SUPPORTED_SUFFIXES]


def discover_inputs(specs: str | Sequence[str], base: str | Path | None = None) -> list[InputFile]:
    """Expand directories (recursive), globs and list files (one path per line) into input files.

    Returns unique absolute paths, sorted. A spec matching nothing raises (a typo should not
    silently produce an empty dataset); a missing file named in a list file is kept with
    exists=False so the run records it as a failure.
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    base = Path(base) if base is not None else Path.cwd()
    found: dict[str, InputFile] = {}
    for spec in specs:
        for f in _expand(str(spec), base):
            found.setdefault(f.path, f)
    return [found[p] for p in sorted(found)]


def hash_file(path: str) -> tuple[str, int, str | None]:
    """(doc_id, size, error). doc_id = SHA-256 of the bytes; path+size+mtime if unreadable."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                h.update(chunk)
        return h.hexdigest()[:HASH_CHARS], os.path.getsize(path), None
    except OSError as e:
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        h = hashlib.sha256(f"{path}\0{size}\0{mtime}".encode())
        return h.hexdigest()[:HASH_CHARS], size, f"{type(e).__name__}: {e}"


class UnitStore:
    """Committed unit outputs under `work_dir/units/<id[:2]>/`: `<id>.tar` + `<id>.json` (done-marker)."""

    def __init__(self, work_dir: str | Path):
        self.root = Path(work_dir) / "units"

    def _dir(self, doc_id: str) -> Path:
        return self.root / doc_id[:2]

    def tar_path(self, doc_id: str) -> Path:
        return self._dir(doc_id) / f"{doc_id}.tar"

    def meta_path(self, doc_id: str) -> Path:
        return self._dir(doc_id) / f"{doc_id}.json"

    def tmp_tar_path(self, doc_id: str) -> Path:
        self._dir(doc_id).mkdir(parents=True, exist_ok=True)
        return self._dir(doc_id) / f"{doc_id}.tar{tmp_suffix()}"

    def is_done(self, doc_id: str) -> bool:
        return self.meta_path(doc_id).is_file()

    def load(self, doc_id: str) -> dict:
        return json.loads(self.meta_path(doc_id).read_text(encoding="utf-8"))

    def commit(self, doc_id: str, record: dict, has_tar: bool) -> None:
        """Atomically publish a unit: tar first, record last (the record means "done")."""
        d = self._dir(doc_id)
        d.mkdir(parents=True, exist_ok=True)
        if has_tar:
            os.replace(self.tmp_tar_path(doc_id), self.tar_path(doc_id))
        tmp = d / f"{doc_id}.json{tmp_suffix()}"
        tmp.write_text(json.dumps(record, ensure_ascii=False, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.meta_path(doc_id))
        for stale in d.glob(f"{doc_id}.*.tmp"):  # left by writers killed before their rename
            stale.unlink(missing_ok=True)


def tmp_suffix() -> str:
    """`.<host>-<pid>.tmp`: a temporary name no other writer process (on any node) uses."""
    return f".{socket.gethostname()}-{os.getpid()}.tmp"


# --------------------------------------------------------------------------- shard plan

def shard_name(name: str, index: int) -> str:
    return f"{name}-{index:06d}.tar"


@dataclass
class ShardPlan:
    index: int
    filename: str
    parts: list[tuple[str, list[str]]] = field(default_factory=list)  # (doc_id, sample keys)
    count: int = 0
    size: int = 0                                                       # payload bytes


def plan_shards(records: Iterable[dict], name: str, max_count: int, max_size: int) -> list[ShardPlan]:
    """Pack committed samples, in doc-id then page order, into size/count-bounded shards.

    `records` are unit records with `samples: [{"key", "size"}]`. Like webdataset.ShardWriter,
    a shard is closed before the sample that would exceed `max_count` samples or `max_size`
    payload bytes (a single oversized sample still gets a shard of its own).
    """
    if max_count < 1 or max_size < 1:
        raise ValueError(f"max_count and max_size must be positive, got {max_count}, {max_size}")
    shards: list[ShardPlan] = []
    cur: ShardPlan | None = None
    for rec in sorted(records, key=lambda r: r["doc_id"]):
        for s in rec.get("samples", ()):
            if cur is None or (cur.count and (cur.count + 1 > max_count or cur.size + s["size"] > max_size)):
                cur = ShardPlan(len(shards), shard_name(name, len(shards)))
                shards.append(cur)
            if not cur.parts or cur.parts[-1][0] != rec["doc_id"]:
                cur.parts.append((rec["doc_id"], []))
            cur.parts[-1][1].append(s["key"])
            cur.count += 1
            cur.size += s["size"]
    return shards


def plan_digest(plan: list[ShardPlan], extra: str = "") -> str:
    """Identifies a plan (plus the bytes-affecting settings in `extra`); equal digest = shards reusable."""
    h = hashlib.sha256(extra.encode())
    for sp in plan:
        h.update(sp.filename.encode())
        for doc_id, keys in sp.parts:
            h.update(doc_id.encode())
            h.update(",".join(keys).encode())
    return h.hexdigest()
