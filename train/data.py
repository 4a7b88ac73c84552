"""Training data pipeline: webdataset shards -> tokenized samples -> packed, resumable batches.

open_clip-style reading (``get_wds_dataset``: shard list split by node and DataLoader worker,
tar iteration, decode, log-and-skip bad samples), adapted to DeepSeek-OCR training
(paper section 3.5; docs/INTERFACES.md "Shard format" and "Training side"):

* Sources (``SOURCES``): ``ocr`` (engine pages ``data.shards`` + ``data.ocr_sources``: charts,
  chemistry, geometry, formulas, tables, scene, flywheel...), ``vision`` (``data.vision_shards``:
  captions, grounding; data_engine/sources) and ``text`` (label text of ``data.text_shards``
  without the image, and/or ``data.text_corpus`` chunks). The mix (``train/mix.py``):
  ``source_weights`` (paper: 70/20/10) x ``ocr_weights`` (sub-weights inside OCR), by samples or
  tokens (``mix_by``), drawn stratified and deterministic; a leaf without data is dropped and
  the rest renormalised, with one warning if its weight is one you set (a default weight
  without data, e.g. flywheel, is logged at DEBUG). The realised mix is counted (``mix/samples/<leaf>``,
  ``mix/tokens/<leaf>``) and logged every ``mix_log_every`` batches.
* Page samples: engine pages give the label kind their mix leaf asks for (coarse / fine);
  other samples draw their kind by ``label_kind_weights`` among the kinds they have (kinds not
  listed weigh 1, 0 excludes a kind); the resolution mode by ``mode_weights`` (native modes +
  Gundam trained together). Tokens = ``encode_prompt(prompt, [image])`` (bos + prompt, ``<image>`` expanded
  to ``image.num_tokens``) + label + eos; loss on label + eos only. Text samples: bos + text
  (+ eos at a document's end); loss on every token but bos.
* Packing: samples are packed first-fit from a small look-ahead buffer (``pack_buffer``) into
  rows of exactly ``seq_len`` tokens; ``segment_ids`` 1..k per row (0 = padding),
  ``position_ids`` restart at 0 per sample, ``labels`` are aligned with ``input_ids`` (the
  model shifts them, HF convention). A sample longer than ``seq_len`` is truncated
  (``overlong: truncate``; never inside the prompt/image span) or skipped (``skip``), counted.
* Determinism and resume: every random choice is a function of (seed, reader slot, sample
  index) and every stream has an explicit position, so no replay of the run is needed. A
  worker's state is the position of its oldest sample still waiting in the packing buffer
  plus the indices already packed after it; restoring re-reads at most one row's worth of
  samples. Batches alternate over DataLoader workers in order (worker ``k % num_workers``
  makes batch k, each worker packs whole micro-batches), and after a restore the physical
  workers are rotated so the sequence continues exactly. The same ``num_workers``, seed,
  rank and world size are required to resume (checked).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from models.config import RESOLUTION_MODES
from models.image_processing import ImageInput, preprocess_image

from .config import DataConfig, typed
from .data_sources import (BadSample, ShardStream, TextCorpusStream, decode_json, decode_page,
                           expand_urls, stable_rng)
from .mix import MixScheduler, format_mix, leaf_source, mix_report, ocr_leaf_weights

log = logging.getLogger(__name__)

SOURCES: tuple[str, ...] = ("ocr", "vision", "text")
MODES: tuple[str, ...] = tuple(RESOLUTION_MODES)  # tiny, small, base, large, gundam, gundam_m
IGNORE_INDEX = -100
STATE_VERSION = 2  # 2: the mix counts are part of the position
MAX_CONSECUTIVE_SKIPS = 1000
_warned_dropped = False  # the dropped-source warning is logged once per process tree

# The schema's defaults as a plain dict (what the workers receive); one default per key: train/config.py.
DEFAULTS: dict = dataclasses.asdict(DataConfig())


def _weights(name: str, given: Mapping | None, known: tuple[str, ...] | None) -> dict[str, float]:
    w = {str(k): float(v) for k, v in (given or {}).items()}
    if known is not None and (unknown := set(w) - set(known)):
        raise ValueError(f"data.{name} has unknown key(s) {sorted(unknown)}; known: {list(known)}")
    if any(v < 0 for v in w.values()):
        raise ValueError(f"data.{name} must be non-negative: {w}")
    return w


def _weight_was_set(leaf: str, cfg: Mapping) -> bool:
    """Whether the weight that puts mix leaf ``leaf`` (``vision``, ``ocr/flywheel``) in the mix
    differs from the schema's default, i.e. a recipe or override set it."""
    source, _, name = leaf.partition("/")
    if not name:
        return float(cfg["source_weights"].get(source, 0)) != DEFAULTS["source_weights"].get(source)
    if cfg["ocr_weights"] is None:  # every ocr_sources entry weighs the same: named by the user?
        return name not in DEFAULTS["ocr_sources"]
    return float(cfg["ocr_weights"].get(name, 0)) != (DEFAULTS["ocr_weights"] or {}).get(name)


def _choose(rng, weights: Mapping[str, float]) -> str:
    names = [k for k, v in weights.items() if v > 0]
    return rng.choices(names, weights=[weights[k] for k in names])[0]


def _kind_weights(kind_w: Mapping[str, float], labels: Mapping) -> dict[str, float]:
    """The sample's label kinds with their weights (unlisted kinds weigh 1; 0 excludes)."""
    return {k: kind_w.get(k, 1.0) for k, v in labels.items() if isinstance(v, dict) and kind_w.get(k, 1.0) > 0}


@dataclass
class PackedBatch:
    """One micro-batch of packed rows (docs/INTERFACES.md "Batch contract")."""

    input_ids: torch.Tensor  # (B, T) long
    labels: torch.Tensor  # (B, T) long, IGNORE_INDEX = no loss; aligned with input_ids
    position_ids: torch.Tensor  # (B, T) long, 0.. per packed sample
    segment_ids: torch.Tensor  # (B, T) long, 1..k per row, 0 = padding
    source_ids: torch.Tensor  # (B, T) long, index into SOURCES, -1 = padding
    mode_ids: torch.Tensor  # (B, T) long, index into MODES, -1 = text / padding
    images: list[ImageInput] = field(default_factory=list)  # flat, in order of <image> runs

    def to(self, device, non_blocking: bool = False) -> "PackedBatch":
        t = {k: getattr(self, k).to(device, non_blocking=non_blocking)
             for k in ("input_ids", "labels", "position_ids", "segment_ids", "source_ids", "mode_ids")}
        return PackedBatch(**t, images=[im.to(device, non_blocking=non_blocking) for im in self.images])

    @property
    def num_loss_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


@dataclass
class Sample:
    """One tokenized sample = one packed segment."""

    input_ids: list[int]
    labels: list[int]
    source: int
    mode: int
    images: list[ImageInput]
    leaf: str  # mix leaf it was drawn for (train/mix.py), e.g. "ocr/charts"
    realised: str  # leaf it counts as (an engine page asked for "fine" may only have "coarse")
    index: int  # position in the worker's sample stream
    pre_state: dict  # stream positions before this sample was drawn (for resume)


class _WorkerPipeline:
    """The per-reader (node x worker) pipeline: draw, tokenize, pack, batch. Pure Python."""

    def __init__(self, cfg: dict, tokenizer, *, seq_len: int, micro_batch_size: int, seed: int,
                 slot: int, nslots: int):
        self.cfg, self.tok, self.seq_len, self.mbs = cfg, tokenizer, seq_len, micro_batch_size
        self.seed, self.slot = seed, slot
        self.stats: Counter = Counter()
        self._logged: Counter = Counter()
        self.mode_w = _weights("mode_weights", cfg["mode_weights"], MODES)
        if not any(self.mode_w.values()):
            raise ValueError("data.mode_weights: at least one mode needs a positive weight")
        self.kind_w = _weights("label_kind_weights", cfg["label_kind_weights"], None)
        if cfg["overlong"] not in ("truncate", "skip"):
            raise ValueError(f"data.overlong must be 'truncate' or 'skip', got {cfg['overlong']!r}")
        chunk = cfg["text_chunk_tokens"] or seq_len - 2
        if not 1 <= chunk <= seq_len - 2:
            raise ValueError(f"data.text_chunk_tokens must be in 1..seq_len-2 ({seq_len - 2}), got {chunk}")
        common = dict(slot=slot, nslots=nslots, seed=seed, shuffle_window=int(cfg["shuffle_window"]),
                      open_shards=int(cfg["open_shards"]), max_bad_shards=int(cfg["max_bad_shards"]))
        self.streams: dict[str, object] = {}
        if urls := expand_urls(cfg["shards"]):
            self.streams["ocr"] = ShardStream(urls, name="ocr", **common)
        ocr_sources = dict(cfg["ocr_sources"] or {})
        for name, pats in sorted(ocr_sources.items()):
            if name in ("coarse", "fine"):
                raise ValueError(f"data.ocr_sources.{name}: coarse/fine come from data.shards (engine pages)")
            if urls := expand_urls(pats):
                self.streams[f"ocr/{name}"] = ShardStream(urls, name=f"ocr/{name}", **common)
        if urls := expand_urls(cfg["vision_shards"]):
            self.streams["vision"] = ShardStream(urls, name="vision", **common)
        if urls := expand_urls(cfg["text_shards"]):
            self.streams["text_labels"] = ShardStream(urls, name="text_labels", suffixes=("json",), **common)
        if cfg["text_corpus"]:
            self.streams["text_corpus"] = TextCorpusStream(
                cfg["text_corpus"], tokenizer, chunk_tokens=chunk, slot=slot, nslots=nslots, seed=seed)
        self.text_parts = [k for k in ("text_labels", "text_corpus") if k in self.streams]
        self.targets = self._mix_targets(cfg, ocr_sources, slot)
        self.mix = MixScheduler(self.targets, by=cfg["mix_by"], seed=seed, slot=slot)
        self._iters: dict[str, Iterator] = {}
        self.n = 0  # index of the next sample drawn
        self.buffer: list[Sample] = []
        self.packed: set[int] = set()  # indices already packed that are newer than buffer[0]
        self._skip_on_redraw: set[int] = set()  # after a restore: packed before the save
        self._misses = 0  # consecutive unusable samples: fail loudly instead of spinning

    def _mix_targets(self, cfg: dict, ocr_sources: dict, slot: int) -> dict[str, float]:
        """Target share of every mix leaf that has data (train/mix.py)."""
        has_ocr = {"coarse": "ocr" in self.streams, "fine": "ocr" in self.streams,
                   **{n: f"ocr/{n}" in self.streams for n in ocr_sources}}
        sub = ocr_leaf_weights(cfg["ocr_weights"], self.kind_w, ocr_sources)
        w = _weights("source_weights", cfg["source_weights"], SOURCES)
        have = {"ocr": any(has_ocr.get(k) and v > 0 for k, v in sub.items()), "vision": "vision" in self.streams,
                "text": bool(self.text_parts)}
        dropped = [s for s in SOURCES if w.get(s, 0) > 0 and not have[s]]
        dropped += [f"ocr/{k}" for k, v in sub.items() if v > 0 and not has_ocr.get(k) and have["ocr"]]
        self.source_w = {s: w.get(s, 0.0) for s in SOURCES if have[s] and w.get(s, 0) > 0}
        if not self.source_w:
            raise ValueError(f"no data source with both data and a positive weight: weights {w}, "
                             f"configured {[s for s in SOURCES if have[s]]}")
        ocr_sub = {k: v for k, v in sub.items() if v > 0 and has_ocr.get(k)}
        targets: dict[str, float] = {}
        for s, ws in self.source_w.items():
            if s == "ocr":
                total = sum(ocr_sub.values())
                targets.update({f"ocr/{k}": ws * v / total for k, v in ocr_sub.items()})
            else:
                targets[s] = ws
        total = sum(targets.values())
        targets = {k: v / total for k, v in targets.items()}
        global _warned_dropped
        if dropped and slot == 0:
            # a weight you set warns (once); the schema's own default (e.g. flywheel data the run
            # does not have) is the plain case of a smaller run: DEBUG only
            mine = [leaf for leaf in dropped if _weight_was_set(leaf, cfg)]
            warn = bool(mine) and not _warned_dropped
            _warned_dropped = _warned_dropped or warn
            log.log(logging.WARNING if warn else logging.DEBUG,
                    "data sources %s have a weight but no data configured; dropped, the rest "
                    "renormalised to %s", mine or dropped, {k: round(v, 4) for k, v in targets.items()})
        return targets

    # ---- state -------------------------------------------------------------------------

    def _stream_state(self) -> dict:
        return {"n": self.n, "mix": self.mix.state(), **{k: s.state() for k, s in self.streams.items()}}

    def state_dict(self) -> dict:
        if self.buffer:
            oldest = self.buffer[0]  # buffer is in index order
            pos = oldest.pre_state
            packed = sorted(i for i in self.packed if i > oldest.index)
        else:
            pos, packed = self._stream_state(), []
        return {"pos": pos, "packed": packed, "stats": dict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        pos = state["pos"]
        self.n = pos["n"]
        self.mix.load(pos.get("mix"))
        for k, s in self.streams.items():
            if k not in pos:
                raise ValueError(f"resume state lacks stream {k!r} (data sources changed since the save?)")
            s.load(pos[k])
        self._iters, self.buffer = {}, []
        self.packed = set(state["packed"])
        self.stats = Counter(state.get("stats", {}))
        self._skip_on_redraw = set(state["packed"])

    # ---- drawing samples -----------------------------------------------------------------

    def _next(self, stream: str):
        if stream not in self._iters:
            self._iters[stream] = iter(self.streams[stream])
        return next(self._iters[stream])

    def _bad(self, reason: str, key: str, url: str, detail: str) -> None:
        self.stats[f"skipped/{reason}"] += 1
        self._misses += 1
        if self._misses >= MAX_CONSECUTIVE_SKIPS:
            raise RuntimeError(f"{self._misses} consecutive samples were unusable (last: {key} in "
                               f"{url}: {reason} {detail}); check the shards. Stats {dict(self.stats)}")
        self._logged[reason] += 1
        level = logging.WARNING if self._logged[reason] <= self.cfg["log_bad_samples"] else logging.DEBUG
        log.log(level, "skipping sample %s (%s): %s %s [%d so far]", key, url, reason, detail,
                self.stats[f"skipped/{reason}"])

    def _page(self, leaf: str, rng) -> tuple[list[int], list[int], int, list[ImageInput], str]:
        """A page sample for mix leaf ``leaf``; also returns the leaf it realises."""
        stream = "ocr" if leaf in ("ocr/coarse", "ocr/fine") else leaf
        want = leaf[4:] if stream == "ocr" else None
        while True:
            rec = self._next(stream)
            key, url = rec.get("__key__", "?"), rec.get("__url__", "?")
            try:
                image, meta = decode_page(rec)
                labels = meta["labels"]
                kinds = _kind_weights(self.kind_w, labels)
                if not kinds:
                    raise BadSample("no_label", f"has {sorted(labels)}, weighted {sorted(self.kind_w)}")
                kind = want if want in kinds else _choose(rng, kinds)
                realised = f"ocr/{kind}" if want is not None and kind in ("coarse", "fine") else leaf
                label = labels[kind]
                prompt, text = label.get("prompt"), label.get("text")
                if not isinstance(prompt, str) or not isinstance(text, str):
                    raise BadSample("bad_json", "label without string prompt/text")
                if not text.strip():  # would teach image -> end token
                    raise BadSample("empty_label", f"{kind} label text is empty or whitespace")
                mode = _choose(rng, self.mode_w)
                try:
                    img = preprocess_image(image, mode, self.cfg["max_tiles"])
                    prompt_ids = self.tok.encode_prompt(prompt, [img])
                except ValueError as e:
                    raise BadSample("bad_prompt_or_image", str(e)) from None
            except BadSample as e:
                self._bad(e.reason, key, url, str(e))
                continue
            label_ids = self.tok.encode(text) + [self.tok.eos_token_id]
            return (prompt_ids + label_ids, [IGNORE_INDEX] * len(prompt_ids) + label_ids,
                    MODES.index(mode), [img], realised)

    def _text(self, rng) -> tuple[list[int], list[int]]:
        part = self.text_parts[0] if len(self.text_parts) == 1 else rng.choice(self.text_parts)
        bos, eos = self.tok.bos_token_id, self.tok.eos_token_id
        if part == "text_corpus":
            chunk, ended = self._next(part)
            ids = [bos] + chunk + ([eos] if ended else [])
        else:
            while True:
                rec = self._next(part)
                try:
                    lab = decode_json(rec)["labels"].get(self.cfg["text_label_kind"])
                    if not isinstance(lab, dict) or not isinstance(lab.get("text"), str):
                        raise BadSample("no_label", f"no {self.cfg['text_label_kind']!r} label text")
                    if not lab["text"].strip():
                        raise BadSample("empty_label", f"{self.cfg['text_label_kind']} label text is empty or whitespace")
                    break
                except BadSample as e:
                    self._bad(e.reason, rec.get("__key__", "?"), rec.get("__url__", "?"), str(e))
            ids = [bos] + self.tok.encode(lab["text"]) + [eos]
        return ids, [IGNORE_INDEX] + ids[1:]

    def _draw(self) -> Sample | None:
        """Draw sample ``self.n``; None when it is skipped (overlong policy)."""
        pre, idx = self._stream_state(), self.n
        self.n += 1
        rng = stable_rng(self.seed, self.slot, "sample", idx)
        leaf = self.mix.next()
        source = leaf_source(leaf)
        if source == "text":
            ids, labels = self._text(rng)
            mode, images, n_fixed, realised = -1, [], 1, leaf
        else:
            ids, labels, mode, images, realised = self._page(leaf, rng)
            n_fixed = sum(1 for x in labels if x == IGNORE_INDEX)  # bos + prompt + image tokens
        if len(ids) > self.seq_len:
            # Never cut the prompt/image span: a partial image run cannot be embedded.
            if self.cfg["overlong"] == "skip" or n_fixed >= self.seq_len:
                self.stats["skipped/overlong"] += 1
                return None
            self.stats["truncated"] += 1
            ids, labels = ids[:self.seq_len], labels[:self.seq_len]
        self.mix.add(leaf, len(ids))
        return Sample(ids, labels, SOURCES.index(source), mode, images, leaf, realised, idx, pre)

    def _fill(self) -> None:
        while len(self.buffer) < self.cfg["pack_buffer"]:
            s = self._draw()
            if s is None:
                self._misses += 1
                if self._misses >= MAX_CONSECUTIVE_SKIPS:
                    raise RuntimeError(
                        f"{self._misses} consecutive samples were too long for seq_len={self.seq_len} "
                        f"(overlong={self.cfg['overlong']!r}): raise seq_len or lower the weight of "
                        f"large modes; stats {dict(self.stats)}")
                continue
            self._misses = 0
            if s.index in self._skip_on_redraw:  # packed before the restore
                self._skip_on_redraw.discard(s.index)
                continue
            self.buffer.append(s)

    # ---- packing ---------------------------------------------------------------------------

    def _row(self) -> list[Sample]:
        row, space = [], self.seq_len
        while space > 0:
            self._fill()
            j = next((j for j, s in enumerate(self.buffer) if len(s.input_ids) <= space), None)
            if j is None:
                break
            s = self.buffer.pop(j)
            row.append(s)
            space -= len(s.input_ids)
            self.packed.add(s.index)
        if self.buffer:  # forget packed indices older than the oldest waiting sample
            self.packed = {i for i in self.packed if i > self.buffer[0].index}
        return row

    def next_batch(self) -> PackedBatch:
        B, T = self.mbs, self.seq_len
        out = {k: torch.full((B, T), v, dtype=torch.long) for k, v in (
            ("input_ids", self.tok.pad_token_id), ("labels", IGNORE_INDEX), ("position_ids", 0),
            ("segment_ids", 0), ("source_ids", -1), ("mode_ids", -1))}
        images: list[ImageInput] = []
        for b in range(B):
            t = 0
            for seg, s in enumerate(self._row(), start=1):
                n = len(s.input_ids)
                out["input_ids"][b, t:t + n] = torch.tensor(s.input_ids)
                out["labels"][b, t:t + n] = torch.tensor(s.labels)
                out["position_ids"][b, t:t + n] = torch.arange(n)
                out["segment_ids"][b, t:t + n] = seg
                out["source_ids"][b, t:t + n] = s.source
                out["mode_ids"][b, t:t + n] = s.mode
                images.extend(s.images)
                self.stats[f"samples/{SOURCES[s.source]}"] += 1
                self.stats[f"mix/samples/{s.realised}"] += 1
                self.stats[f"mix/tokens/{s.realised}"] += n
                if s.mode >= 0:
                    self.stats[f"samples/mode/{MODES[s.mode]}"] += 1
                t += n
            self.stats["tokens"] += t
            self.stats["padding"] += T - t
        self.stats["batches"] += 1
        return PackedBatch(**out, images=images)


class PackedDataset(IterableDataset):
    """Yields ``(logical_worker, PackedBatch, worker_state)``; used through ``ResumableLoader``."""

    def __init__(self, cfg: dict, tokenizer, *, seq_len: int, micro_batch_size: int, seed: int,
                 rank: int, world_size: int, num_workers: int):
        self.cfg, self.tok = cfg, tokenizer
        self.kw = dict(seq_len=seq_len, micro_batch_size=micro_batch_size, seed=seed)
        self.rank, self.world_size, self.nw = rank, world_size, max(1, num_workers)
        self.worker_states: dict[int, dict] = {}
        self.targets: dict[str, float] = {}  # mix leaf -> target share (train/mix.py)
        self.rotate = 0  # physical worker w plays logical worker (w + rotate) % nw

    def pipeline(self, logical: int) -> _WorkerPipeline:
        p = _WorkerPipeline(self.cfg, self.tok, slot=self.rank * self.nw + logical,
                            nslots=self.world_size * self.nw, **self.kw)
        if logical in self.worker_states:
            p.load_state_dict(self.worker_states[logical])
        return p

    def __iter__(self):
        info = get_worker_info()
        physical = info.id if info is not None else 0
        logical = (physical + self.rotate) % self.nw
        p = self.pipeline(logical)
        while True:
            batch = p.next_batch()
            yield logical, batch, p.state_dict()


def _collate(x):  # batches are built in the workers
    return x


class ResumableLoader:
    """Infinite iterable of ``PackedBatch`` with an exact, restorable data position.

    ``state_dict()`` after k batches + ``load_state_dict()`` on a fresh loader (same config,
    seed, rank, world size and num_workers) makes it yield batch k+1, k+2, ... exactly as the
    uninterrupted loader would. Iterating again continues from the current position.
    """

    def __init__(self, dataset: PackedDataset, num_workers: int, prefetch_factor: int = 2):
        self.dataset, self.num_workers, self.prefetch_factor = dataset, num_workers, prefetch_factor
        self.batches = 0
        self.worker_states: dict[int, dict] = {}

    def __iter__(self) -> Iterator[PackedBatch]:
        nw = self.dataset.nw
        self.dataset.worker_states = dict(self.worker_states)
        self.dataset.rotate = self.batches % nw
        kw = dict(prefetch_factor=self.prefetch_factor) if self.num_workers > 0 else {}
        # its own generator: a DataLoader iterator draws its workers' base seed from the global
        # torch RNG when it starts, and a resumed run starts it after restoring that RNG, so the
        # draw would shift every dropout mask after a resume (the pipelines seed themselves)
        seed = self.dataset.kw["seed"] * 1_000_003 + self.dataset.rank * 1_009 + self.batches
        dl = DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers,
                        collate_fn=_collate, generator=torch.Generator().manual_seed(seed), **kw)
        for logical, batch, state in dl:
            if logical != self.batches % nw:  # guards the round-robin assumption
                raise RuntimeError(f"batch {self.batches} came from worker {logical}, expected "
                                   f"{self.batches % nw}: DataLoader worker order broke")
            self.worker_states[logical] = state
            self.batches += 1
            every = int(self.dataset.cfg.get("mix_log_every") or 0)
            # one leaf (e.g. pages only) has nothing to report: its share is 100% by construction
            if every and self.batches % every == 0 and self.dataset.rank == 0 and len(self.dataset.targets) > 1:
                log.info("realised data mix after %d batches (by %s): %s", self.batches,
                         self.dataset.cfg["mix_by"], format_mix(self.mix_report(), self.dataset.cfg["mix_by"]))
            yield batch

    def mix_report(self) -> dict[str, dict]:
        """Per mix leaf: target share and realised shares of samples and tokens (this rank)."""
        return mix_report(self.stats, self.dataset.targets)

    @property
    def stats(self) -> dict[str, int]:
        """Counters summed over workers: samples per source/mode, skipped/<reason>, truncated,
        tokens, padding, batches (as of the batches yielded so far)."""
        total: Counter = Counter()
        for s in self.worker_states.values():
            total.update(s.get("stats", {}))
        return dict(total)

    def state_dict(self) -> dict:
        d = self.dataset
        return {"version": STATE_VERSION, "batches": self.batches, "num_workers": d.nw,
                "rank": d.rank, "world_size": d.world_size, **d.kw,
                "workers": {str(k): v for k, v in self.worker_states.items()}}

    def load_state_dict(self, state: dict) -> None:
        d = self.dataset
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data state version {state.get('version')} != {STATE_VERSION}")
        expect = {"num_workers": d.nw, "rank": d.rank, "world_size": d.world_size, **d.kw}
        diff = {k: (state.get(k), v) for k, v in expect.items() if state.get(k) != v}
        if diff:
            raise ValueError(f"cannot resume the data position exactly: (saved, now) differ for {diff}")
        self.batches = int(state["batches"])
        self.worker_states = {int(k): v for k, v in state["workers"].items()}


def build_train_loader(data_cfg, tokenizer, *, seq_len: int, micro_batch_size: int, seed: int,
                       rank: int = 0, world_size: int = 1) -> ResumableLoader:
    """Build the packed, resumable training loader from the ``data`` config group."""
    dcfg = typed(data_cfg, DataConfig)  # types and ranges checked; a dict replaces only the keys it names
    cfg = dataclasses.asdict(dcfg)
    if seq_len < 16:
        raise ValueError(f"seq_len must be >= 16, got {seq_len}")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if dcfg.seed is not None:
        seed = dcfg.seed
    nw = dcfg.num_workers
    ds = PackedDataset(cfg, tokenizer, seq_len=seq_len, micro_batch_size=micro_batch_size,
                       seed=seed, rank=rank, world_size=world_size, num_workers=nw)
    ds.targets = ds.pipeline(0).targets  # validates the config and shard lists now, in the main process
    return ResumableLoader(ds, nw, dcfg.prefetch_factor)
