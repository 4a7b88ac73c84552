"""Resumable record streams for the training data pipeline (used by ``train/data.py``).

Two kinds of streams, both infinite (epoch after epoch) and both with an explicit, small,
JSON-able position (``state()`` / ``load()``) so a loader can restart exactly where it was
instead of replaying the run:

* ``ShardStream``: raw samples of webdataset shards (docs/INTERFACES.md "Shard format").
  The slot's shard list (split by node and DataLoader worker) is reshuffled every epoch;
  inside a shard, samples are permuted within fixed windows of ``shuffle_window`` records,
  and ``open_shards`` shards are read at once, interleaved by a seeded, size-weighted draw.
  A position is the epoch, the next shard to open, ``(shard_pos, records consumed)`` of each
  open shard and the records drawn this epoch; restoring it means re-reading the open
  shards' bytes up to that point (no decoding).
* ``TextCorpusStream``: a directory of plain-text files (one per language) cut into token
  chunks of at most ``chunk_tokens``; the position is ``(epoch, file_pos, byte offset of the
  current line, token offset inside that line)``.

Reading uses webdataset's tar iterators (``gopen`` handles local paths and ``pipe:``/URL
shards), in the spirit of open_clip's ``get_wds_dataset``. Decoding and validation of a
record live in ``decode_page``; it raises ``BadSample`` with a reason, which the pipeline
logs and counts.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import random
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path

from braceexpand import braceexpand
from PIL import Image

from data_engine.images import decode_rgb

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


class BadSample(Exception):
    """A record that cannot be trained on; ``reason`` is a short, countable category."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def stable_rng(*parts) -> random.Random:
    """A ``random.Random`` seeded from ``parts``; identical in every process (no ``hash()``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def expand_urls(patterns: str | Sequence[str] | None) -> list[str]:
    """Expand brace ranges and globs into a sorted, de-duplicated shard list.

    Remote specs (``pipe:...``, ``s3://``...) are kept as given. A local pattern matching
    nothing is an error: a typo must not silently drop a data source.
    """
    if patterns is None:
        return []
    if isinstance(patterns, str):
        patterns = [patterns]
    out: set[str] = set()
    for pat in patterns:
        for p in braceexpand(str(pat)):
            if p.startswith("pipe:") or "://" in p:
                out.add(p)
                continue
            p = os.path.expanduser(p)
            hits = glob.glob(p, recursive=True) if glob.has_magic(p) else ([p] if os.path.exists(p) else [])
            if not hits:
                raise FileNotFoundError(f"shard pattern {pat!r} matches no file")
            out.update(hits)
    return sorted(out)


def split_for_slot(items: list, slot: int, nslots: int) -> tuple[list, int]:
    """Split ``items`` (shards or files) across ``nslots`` readers (node x worker).

    With at least one item per slot each slot takes ``items[slot::nslots]`` (disjoint, covering
    all) and reads every record of them; returns ``(items, 1)``. With fewer items than slots
    every slot reads all items but keeps only every ``nslots``-th record (rotated per item); returns
    ``(items, nslots)`` (correct, but each slot reads all bytes: add shards to avoid it).
    """
    if not 0 <= slot < nslots:
        raise ValueError(f"slot {slot} outside 0..{nslots - 1}")
    if len(items) >= nslots:
        return items[slot::nslots], 1
    if items:
        log.warning("only %d shard(s)/file(s) for %d readers (nodes x workers): every reader "
                    "reads all of them and keeps every %d-th record", len(items), nslots, nslots)
    return list(items), nslots


def _pick_weights(urls: list[str]) -> dict[str, float]:
    """Weight of each shard when several are open: its size in bytes (local shards).

    Drawn in proportion to their sizes, shards opened together drain at the same pace (records
    per byte are about constant within a source), so a small shard is not used up long before
    a big one and the end of a big shard is not read alone. Sizes of remote shards
    (``pipe:``, URLs) are unknown: then every shard weighs 1 (uniform).
    """
    weights = {}
    for u in urls:
        if u.startswith("pipe:") or "://" in u:
            return dict.fromkeys(urls, 1.0)
        try:
            weights[u] = float(max(os.path.getsize(u), 1))
        except OSError:  # vanished since the listing: it fails (logged) when opened
            weights[u] = 1.0
    return weights


class ShardStream:
    """Infinite stream of raw webdataset samples (dicts of bytes + ``__key__``, ``__url__``).

    Up to ``open_shards`` shards (in the epoch's shuffled order) are open at once and every
    next record comes from one of them, drawn by a seeded choice weighted by shard size (as
    webdataset's several-shards-open shuffling): a few large single-kind shards (one per
    language) are interleaved instead of being trained on in long blocks. ``open_shards=1``
    reads one shard after another.
    """

    def __init__(self, urls: list[str], *, name: str, slot: int, nslots: int, seed: int,
                 shuffle_window: int = 256, open_shards: int = 1, suffixes: Sequence[str] | None = None,
                 max_bad_shards: int = 8):
        if not urls:
            raise ValueError(f"source {name!r} has no shards")
        if shuffle_window < 1:
            raise ValueError(f"shuffle_window must be >= 1, got {shuffle_window}")
        if open_shards < 1:
            raise ValueError(f"open_shards must be >= 1, got {open_shards}")
        if max_bad_shards < 1:
            raise ValueError(f"max_bad_shards must be >= 1, got {max_bad_shards}")
        self.max_bad_shards, self.open_shards = max_bad_shards, open_shards
        self.name, self.slot, self.seed, self.window = name, slot, seed, shuffle_window
        self.urls, self.stride = split_for_slot(urls, slot, nslots)
        self.rank_of = {u: i for i, u in enumerate(self.urls)}  # rotates the record split per shard
        self.weight = _pick_weights(self.urls)
        self.suffixes = set(suffixes) if suffixes else None
        self.shard_errors = 0
        # Position: next shard (in the epoch's order) to open; the open shards as
        # [shard_pos, records consumed] in pick order; records yielded this epoch (seeds the picks).
        self.epoch, self.next_pos, self.open, self.drawn = 0, 0, [], 0

    def state(self) -> dict:
        return {"epoch": self.epoch, "next": self.next_pos, "open": [list(o) for o in self.open],
                "drawn": self.drawn}

    def load(self, state: dict) -> None:
        """Restore a ``state()``. One saved with another ``open_shards`` keeps its open shards
        (no record lost or repeated); the new count applies as they end."""
        self.epoch = state["epoch"]
        if "open" not in state:
            # A checkpoint from before open_shards: (epoch, shard_pos, index) of the one shard
            # being read. It is the one open shard, the next ones follow it in order (with
            # open_shards=1 exactly the old continuation); `drawn` only needs to be non-zero
            # mid-epoch (records came before: the empty-epoch check must not fire).
            pos, index = state["shard_pos"], state["index"]
            self.next_pos, self.open, self.drawn = pos + 1, [[pos, index]], pos + index
            return
        self.next_pos, self.drawn = state["next"], state["drawn"]
        self.open = [list(o) for o in state["open"]]

    def _order(self, epoch: int) -> list[str]:
        order = list(self.urls)
        stable_rng(self.seed, self.name, self.slot, "shards", epoch).shuffle(order)
        return order

    def _raw(self, url: str) -> Iterator[dict]:
        """Records of one shard in file order (this slot's share only)."""
        from webdataset.tariterators import tar_file_iterator, url_opener  # imports torch: not at module import

        select = None
        if self.suffixes is not None:
            sfx = self.suffixes
            select = lambda fname: fname.rsplit(".", 1)[-1].lower() in sfx  # noqa: E731
        for stream in url_opener([{"url": url}]):
            files = tar_file_iterator(stream["stream"], select_files=select)
            files = ({**f, "__url__": url} for f in files)
            first = self.rank_of[url]
            for i, rec in enumerate(_records_up_to_damage(files)):
                if (i + first) % self.stride == self.slot % self.stride:
                    yield rec

    def _permuted(self, url: str, epoch: int) -> Iterator[dict]:
        """Records of one shard, permuted inside windows of ``shuffle_window`` records.

        A read error (truncated or damaged tar) ends the shard, but the records read before it
        are still yielded (the partial window too, permuted the same way on every read, so a
        resumed position stays exact); then the error is raised.
        """
        window: list[dict] = []
        n_win = 0
        # the shard's file name, not its path: the same shards in another folder (a copy, a
        # temporary directory) are read in the same order, so the run trains the same model
        shard = os.path.basename(url)

        def flush():
            stable_rng(self.seed, self.name, shard, epoch, n_win).shuffle(window)
            yield from window

        try:
            for rec in self._raw(url):
                window.append(rec)
                if len(window) == self.window:
                    yield from flush()
                    window, n_win = [], n_win + 1
        except Exception:
            yield from flush()
            raise
        if window:
            yield from flush()

    def _pick(self, order: list[str]) -> int:
        """Index into ``self.open`` of the shard giving the next record: a function of the
        position only (seed, slot, epoch, records drawn, the open shards), so a resumed stream
        makes the same choices."""
        if len(self.open) == 1:
            return 0
        weights = [self.weight[order[pos]] for pos, _ in self.open]
        u = stable_rng(self.seed, self.name, self.slot, self.epoch, "pick", self.drawn).random() * sum(weights)
        for j, w in enumerate(weights):
            u -= w
            if u < 0:
                return j
        return len(weights) - 1  # float rounding at the top end

    def __iter__(self) -> Iterator[dict]:
        """Unreadable shards are logged and skipped, up to ``max_bad_shards`` in a row (shards
        ending in an error, in the order they end; a shard read to its end resets the count);
        more, or a whole epoch without a record, is an error: the run cannot make progress."""
        bad_streak = 0
        while True:
            order = self._order(self.epoch)
            # Resuming: re-read each open shard's bytes up to what was consumed (no decoding).
            readers = [islice(self._permuted(order[pos], self.epoch), used, None) for pos, used in self.open]
            while True:
                while len(self.open) < self.open_shards and self.next_pos < len(order):
                    self.open.append([self.next_pos, 0])
                    readers.append(self._permuted(order[self.next_pos], self.epoch))
                    self.next_pos += 1
                if not self.open:
                    break
                j = self._pick(order)
                try:
                    rec = next(readers[j])
                except StopIteration:
                    bad_streak = 0
                except Exception as e:  # unreadable/truncated shard: log, count, go on
                    self.shard_errors += 1
                    bad_streak += 1
                    msg = f"{order[self.open[j][0]]} after {self.open[j][1]} records ({type(e).__name__}: {e})"
                    if bad_streak >= self.max_bad_shards:
                        raise RuntimeError(
                            f"source {self.name}: {bad_streak} shards in a row could not be read, the last "
                            f"{msg}; check the shard files (limit: data.max_bad_shards={self.max_bad_shards})"
                        ) from None
                    log.warning("source %s: error reading shard %s; moving to the next shard", self.name, msg)
                else:
                    self.open[j][1] += 1
                    self.drawn += 1
                    yield rec
                    continue
                del self.open[j], readers[j]  # this shard is done: the next one in the order opens
            if not self.drawn:
                raise RuntimeError(
                    f"source {self.name}: a whole pass over its {len(order)} shard(s) gave reader slot "
                    f"{self.slot} no record ({self.shard_errors} read errors): the shards are empty, "
                    f"unreadable or fewer records than readers")
            self.epoch, self.next_pos, self.drawn = self.epoch + 1, 0, 0


def _records_up_to_damage(files: Iterator[dict]) -> Iterator[dict]:
    """webdataset's ``group_by_keys``, except that a read error first yields the record in hand.

    A record is complete only once the next one starts, so on a truncated tar (lost end blocks,
    a cut in the next header) ``group_by_keys`` drops the last whole record with the error.
    The record in hand is yielded when it has the members of the record before it (a shard's
    records share their members; tar reading yields no partial file)."""
    from webdataset.tariterators import group_by_keys

    pending: list[dict] = []
    members = None
    try:
        for rec in group_by_keys(_noting(files, pending)):
            members = {k for k in rec if not k.startswith("__")}
            yield rec
    except Exception:
        held = list(group_by_keys(iter(pending)))
        if held and (members is None or {k for k in held[0] if not k.startswith("__")} == members):
            yield held[0]
        raise


def _noting(files: Iterator[dict], pending: list[dict]) -> Iterator[dict]:
    """Pass ``files`` on, keeping in ``pending`` the members of the record not yet yielded."""
    from webdataset.tariterators import base_plus_ext

    key = None
    for f in files:
        k = base_plus_ext(f["fname"])[0]
        if k != key:
            pending.clear()
            key = k
        pending.append(f)
        yield f


def decode_json(rec: dict) -> dict:
    if "json" not in rec:
        raise BadSample("missing_json", f"record has {sorted(k for k in rec if not k.startswith('__'))}")
    try:
        meta = json.loads(rec["json"])
    except (ValueError, UnicodeDecodeError) as e:
        raise BadSample("bad_json", str(e)) from None
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict):
        raise BadSample("bad_json", "no 'labels' object")
    return meta


def decode_page(rec: dict) -> tuple[Image.Image, dict]:
    """Decode one shard record into (RGB PIL image, metadata dict) or raise ``BadSample``."""
    meta = decode_json(rec)
    ext = next((e for e in IMAGE_EXTS if e in rec), None)
    if ext is None:
        raise BadSample("missing_image")
    try:
        img = decode_rgb(rec[ext])  # upright (EXIF); fully decoded: truncated files fail now, not later
    except Exception as e:  # PIL raises several unrelated types for corrupt data
        raise BadSample("bad_image", f"{type(e).__name__}: {e}") from None
    if min(img.size) < 1:
        raise BadSample("bad_image", f"empty image {img.size}")
    return img, meta


class TextCorpusStream:
    """Infinite stream of token chunks from a directory of plain-text files.

    Yields ``(token_ids, file_ended)``; chunks hold at most ``chunk_tokens`` tokens, a file's
    last chunk may be shorter. Lines are tokenized one at a time (newline kept), so a
    position is a byte offset plus a token offset inside that line.
    """

    def __init__(self, root: str | os.PathLike, tokenizer, *, chunk_tokens: int, slot: int,
                 nslots: int, seed: int, min_tokens: int = 8):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"text corpus {root} is not a directory")
        files = sorted(str(p) for p in root.iterdir()
                       if p.is_file() and p.suffix in (".txt", ".md", ".text"))
        if not files:
            raise FileNotFoundError(f"text corpus {root} holds no .txt/.md files")
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        self.tok, self.chunk, self.min_tokens = tokenizer, chunk_tokens, min_tokens
        self.slot, self.seed = slot, seed
        self.files, self.stride = split_for_slot(files, slot, nslots)
        self.offset = slot if self.stride > 1 else 0
        self.epoch, self.file_pos, self.byte, self.tok_off, self.n_chunk = 0, 0, 0, 0, 0

    def state(self) -> dict:
        return {"epoch": self.epoch, "file_pos": self.file_pos, "byte": self.byte,
                "tok_off": self.tok_off, "n_chunk": self.n_chunk}

    def load(self, s: dict) -> None:
        self.epoch, self.file_pos, self.byte = s["epoch"], s["file_pos"], s["byte"]
        self.tok_off, self.n_chunk = s["tok_off"], s["n_chunk"]

    def _chunks(self, path: str) -> Iterator[tuple[list[int], bool]]:
        """Chunks of one file from the current (byte, tok_off) on; updates the position."""
        buf: list[int] = []
        with open(path, "rb") as f:
            f.seek(self.byte)
            line_start, pos = self.byte, self.tok_off
            for line in iter(f.readline, b""):
                ids = self.tok.encode(line.decode("utf-8", errors="replace"))
                while pos < len(ids):
                    take = min(self.chunk - len(buf), len(ids) - pos)
                    buf.extend(ids[pos:pos + take])
                    pos += take
                    if len(buf) == self.chunk:
                        # Position = next unconsumed token: rest of this line, or next line.
                        if pos == len(ids):
                            self.byte, self.tok_off = line_start + len(line), 0
                        else:
                            self.byte, self.tok_off = line_start, pos
                        yield buf, False
                        buf = []
                line_start, pos = line_start + len(line), 0
                self.byte, self.tok_off = line_start, 0
        if len(buf) >= self.min_tokens:
            yield buf, True

    def __iter__(self) -> Iterator[tuple[list[int], bool]]:
        while True:
            order = list(self.files)
            stable_rng(self.seed, "text_corpus", self.slot, "files", self.epoch).shuffle(order)
            while self.file_pos < len(order):
                for chunk in self._chunks(order[self.file_pos]):
                    n, self.n_chunk = self.n_chunk, self.n_chunk + 1
                    if n % self.stride == self.offset:
                        yield chunk
                self.file_pos, self.byte, self.tok_off = self.file_pos + 1, 0, 0
            self.epoch, self.file_pos = self.epoch + 1, 0
