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

import errno
import glob
import hashlib
import json
import os
import socket
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

PDF_SUFFIXES = (".pdf",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SUPPORTED_SUFFIXES = PDF_SUFFIXES + IMAGE_SUFFIXES
LIST_SUFFIXES = (".txt", ".lst", ".list")
HASH_CHARS = 16
_READ_CHUNK = 1 << 20

# Reasons recorded for inputs found during discovery but not processed (see run_engine).
MISSING_FILE = "missing_file"            # named by a list file, not there
UNREADABLE_DIR = "unreadable_dir"        # a directory that could not be listed
DANGLING_SYMLINK = "dangling_symlink"    # a link whose target does not exist
SYMLINK_LOOP = "symlink_loop"            # a link that resolves to itself or to a folder above it
NOT_A_FILE = "not_a_file"                # fifo, socket, device... with a supported suffix
# Unit-level reasons that an executor records (the unit's own reasons live in pipeline.py).
TIMEOUT, WORKER_CRASH, UNIT_ERROR = "timeout", "worker_crash", "unit_error"


class OutputError(RuntimeError):
    """The engine could not write (or read back) its own output: disk full, EIO, a path in the
    way. Not the document's fault: the run stops, nothing is recorded for the document, and a
    re-run once the fault is fixed processes it."""


@contextmanager
def output_io(what: str):
    """Turns an OSError of the engine's own file operations into an OutputError naming them."""
    try:
        yield
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"{what}: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- paths and JSON

def display_path(path: str) -> str:
    """A path for people: bytes that are not UTF-8 shown as \\xNN (the str itself keeps them
    losslessly as surrogate escapes, see ``os.fsdecode``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_readable_path(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def json_bytes(obj, **kw) -> bytes:
    """UTF-8 JSON that keeps non-UTF-8 paths losslessly: their surrogate escapes are written as
    ``\\udcXX`` JSON escapes, which ``json.loads`` turns back into the same str."""
    return json.dumps(obj, ensure_ascii=False, **kw).encode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class InputFile:
    path: str                   # absolute path (non-UTF-8 bytes kept as surrogate escapes)
    reason: str | None = None   # why it is not processed (MISSING_FILE, UNREADABLE_DIR, ...), None = input
    detail: str | None = None

    @property
    def exists(self) -> bool:
        return self.reason is None


@dataclass
class Discovery:
    files: list[InputFile]                          # inputs and skipped finds (reason set), by path
    ignored_suffixes: dict[str, int] = field(default_factory=dict)  # files of other types, counted


def _err(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _classify_link(path: str) -> InputFile:
    """A symlink that is neither a file nor a directory once followed: dangling or looping."""
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return InputFile(path, SYMLINK_LOOP, _err(e))
        return InputFile(path, DANGLING_SYMLINK, f"-> {display_path(os.readlink(path))}")
    return InputFile(path, NOT_A_FILE)


def _walk(root: Path, out: list[InputFile], ignored: Counter) -> None:
    """Every supported file under ``root`` (symlinks followed, loops cut), and a record for
    everything that could not be read or followed."""
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[str, frozenset]] = [(str(root), frozenset())]
    while stack:
        d, ancestors = stack.pop()
        try:
            st = os.stat(d)
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                out.append(InputFile(d, SYMLINK_LOOP, "leads back to a folder above it"))
                continue
            if key in seen:  # the same folder through another link: its files are listed already
                continue
            seen.add(key)
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            out.append(InputFile(d, UNREADABLE_DIR, _err(e)))
            continue
        for e in entries:
            try:
                if e.is_dir():  # follows symlinks
                    stack.append((e.path, ancestors | {key}))
                    continue
                if e.is_symlink() and not e.is_file():
                    found = _classify_link(e.path)
                    if found.reason != NOT_A_FILE or Path(e.name).suffix.lower() in SUPPORTED_SUFFIXES:
                        out.append(found)
                    continue
                suffix = Path(e.name).suffix.lower()
                if suffix not in SUPPORTED_SUFFIXES:
                    ignored[suffix or "(none)"] += 1
                elif e.is_file():
                    out.append(InputFile(os.path.realpath(e.path)))
                else:
                    out.append(InputFile(e.path, NOT_A_FILE, stat.filemode(e.stat().st_mode)))
            except OSError as err:  # e.g. ELOOP while following a link
                out.append(_classify_link(e.path) if e.is_symlink() else InputFile(e.path, NOT_A_FILE, _err(err)))


def _expand(spec: str, base: Path, ignored: Counter) -> list[InputFile]:
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base / path
    path = Path(os.path.abspath(path))
    if path.is_dir():
        out: list[InputFile] = []
        _walk(path, out, ignored)
        return out
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        out = []
        try:
            lines = path.read_bytes().decode("utf-8", "surrogateescape").splitlines()
        except OSError as e:
            raise FileNotFoundError(f"cannot read the list file {display_path(str(path))}: {e}") from e
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            entry = Path(line).expanduser()
            entry = entry if entry.is_absolute() else path.parent / entry
            # A list names files explicitly: a missing one is bad input, recorded, not fatal.
            if entry.is_file():
                out.append(InputFile(os.path.realpath(entry)))
            elif entry.is_symlink():
                out.append(_classify_link(str(entry)))
            else:
                out.append(InputFile(os.path.abspath(entry), MISSING_FILE))
        return out
    if path.is_file():
        return [InputFile(os.path.realpath(path))]
    if path.is_symlink():
        return [_classify_link(str(path))]
    matches = sorted(glob.glob(str(path), recursive=True))
    if not matches:
        raise FileNotFoundError(f"input {spec!r} is not a file, directory, list file or matching glob")
    out = []
    for m in matches:
        if Path(m).suffix.lower() not in SUPPORTED_SUFFIXES:
            continue
        if os.path.isfile(m):
            out.append(InputFile(os.path.realpath(m)))
        elif os.path.islink(m):
            out.append(_classify_link(os.path.abspath(m)))
    return out


def discover(specs: str | Sequence[str], base: str | Path | None = None) -> Discovery:
    """Expand directories (recursive, symlinks followed), globs and list files (one path per
    line) into input files, plus a record for everything found and not processed.

    Paths are unique, absolute and sorted. A spec matching nothing raises (a typo should not
    silently produce an empty dataset); a missing file named in a list file, an unreadable
    folder, a dangling or looping symlink are kept with their ``reason`` so the run records
    them; files of other types are counted by suffix.
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    base = Path(base) if base is not None else Path.cwd()
    found: dict[str, InputFile] = {}
    ignored: Counter = Counter()
    for spec in specs:
        for f in _expand(os.fspath(spec), base, ignored):
            found.setdefault(f.path, f)
    return Discovery([found[p] for p in sorted(found)], dict(sorted(ignored.items())))


def discover_inputs(specs: str | Sequence[str], base: str | Path | None = None) -> list[InputFile]:
    """``discover(specs, base).files``."""
    return discover(specs, base).files


def hash_file(path: str) -> tuple[str, int, str | None]:
    """(doc_id, size, error). doc_id = SHA-256 of the bytes; path+size+mtime if unreadable."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                h.update(chunk)
        return h.hexdigest()[:HASH_CHARS], os.path.getsize(path), None
    except Exception as e:  # noqa: BLE001 - an unreadable input is recorded (unreadable_file)
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        h = hashlib.sha256(os.fsencode(path) + f"\0{size}\0{mtime}".encode())
        return h.hexdigest()[:HASH_CHARS], size, _err(e)


# Leading bytes of the types the engine reads. A PDF's header may follow up to 1 KB of junk
# (PDF 32000-1 and what Acrobat accepts); images must start with their signature.
_PDF_MAGIC, _PDF_WINDOW = b"%PDF-", 1024
_IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg", b"II*\x00": "tiff", b"MM\x00*": "tiff"}


def sniff(head: bytes) -> str | None:
    """"pdf", "png", "jpeg", "tiff" from a file's first bytes (>= 1 KB), or None."""
    if _PDF_MAGIC in head[:_PDF_WINDOW]:
        return "pdf"
    return next((kind for magic, kind in _IMAGE_MAGIC.items() if head.startswith(magic)), None)


def describe_bytes(head: bytes) -> str:
    """What unknown leading bytes look like, for a failure's detail."""
    text = head[:64].lstrip()
    if text[:1] == b"<":
        return "markup (HTML/XML?): " + repr(text[:40].decode("utf-8", "replace"))
    return "starts with " + repr(head[:16])


class _GuardedFile:
    """A write-only file whose OSErrors become OutputError (tarfile only calls write)."""

    def __init__(self, f, path: Path):
        self._f, self._path = f, path

    def write(self, data) -> int:
        if self._f.closed:
            # A tar stream abandoned by a failed write flushes its buffer when collected; the
            # temporary file is discarded anyway, and the stop is already reported.
            return len(data)
        with output_io(f"cannot write {display_path(str(self._path))}"):
            return self._f.write(data)


class UnitStore:
    """Committed unit outputs under `work_dir/units/<id[:2]>/`: `<id>.tar` + `<id>.json` (done-marker).

    Every write raises OutputError on failure: the engine's own I/O never fails a document.
    """

    def __init__(self, work_dir: str | Path):
        self.root = Path(work_dir) / "units"

    def _dir(self, doc_id: str) -> Path:
        return self.root / doc_id[:2]

    def tar_path(self, doc_id: str) -> Path:
        return self._dir(doc_id) / f"{doc_id}.tar"

    def meta_path(self, doc_id: str) -> Path:
        return self._dir(doc_id) / f"{doc_id}.json"

    def tmp_tar_path(self, doc_id: str) -> Path:
        with output_io(f"cannot create {display_path(str(self._dir(doc_id)))}"):
            self._dir(doc_id).mkdir(parents=True, exist_ok=True)
        return self._dir(doc_id) / f"{doc_id}.tar{tmp_suffix()}"

    @contextmanager
    def open_tmp_tar(self, doc_id: str):
        """The unit's temporary tar, opened for writing; write errors raise OutputError."""
        path = self.tmp_tar_path(doc_id)
        with output_io(f"cannot write {display_path(str(path))}"):
            f = open(path, "wb")  # noqa: SIM115 - closed below, errors mapped
        try:
            yield _GuardedFile(f, path)
        finally:
            with output_io(f"cannot write {display_path(str(path))}"):
                f.close()

    def is_done(self, doc_id: str) -> bool:
        return self.meta_path(doc_id).is_file()

    def load(self, doc_id: str) -> dict:
        return json.loads(self.meta_path(doc_id).read_bytes())

    def commit(self, doc_id: str, record: dict, has_tar: bool) -> None:
        """Atomically publish a unit: tar first, record last (the record means "done")."""
        d = self._dir(doc_id)
        with output_io(f"cannot commit unit {doc_id} under {display_path(str(d))}"):
            d.mkdir(parents=True, exist_ok=True)
            if has_tar:
                os.replace(self.tmp_tar_path(doc_id), self.tar_path(doc_id))
            tmp = d / f"{doc_id}.json{tmp_suffix()}"
            tmp.write_bytes(json_bytes(record, sort_keys=True))
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
