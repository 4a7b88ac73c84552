"""The training data mix: the paper's OCR 70 / general vision 20 / text-only 10, with sub-weights
inside OCR (paper section 3.4-3.5), drawn deterministically and resumably.

Leaves of the mix (``data.source_weights`` x ``data.ocr_weights``):

* ``ocr/coarse``, ``ocr/fine``: engine pages (``data.shards``); the leaf asks for that label
  kind (a page without it gives the kind it has: the slot is still an engine page);
* ``ocr/<name>`` for each ``data.ocr_sources.<name>`` shard list (flywheel, charts, chemistry,
  geometry, formulas, tables, scene, or any other name);
* ``vision`` (``data.vision_shards``: captions, grounding) and ``text`` (text-only).

A leaf's target share is ``source_weights[source] * ocr_weights[leaf] / sum(ocr_weights of the
OCR leaves that have data)`` (a leaf or source without data is dropped and the rest
renormalised, warned once). ``data.mix_by``: ``samples`` (shares of samples) or ``tokens``
(shares of packed tokens, image tokens included).

Drawing is stratified instead of i.i.d.: each draw takes the leaf furthest below its target,
``argmax_l(w_l * total - count_l)`` (ties broken by a seeded order), so over any N draws each
leaf's realised share is within about 1/N (samples) or one sample's tokens (tokens) of its
target, where an i.i.d. draw would wander by sqrt(w(1-w)/N). The counts are part of the data
position, so a resumed run continues the same sequence exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

from .data_sources import stable_rng

# OCR sub-sources the paper names; data.ocr_sources may add others.
OCR_LEAVES = ("coarse", "fine", "flywheel", "charts", "chemistry", "geometry", "formulas", "tables", "scene")
PAGE_LEAVES = ("coarse", "fine")  # read from data.shards (engine pages), by label kind
MIX_BY = ("samples", "tokens")


def leaf_source(leaf: str) -> str:
    """``ocr/charts`` -> ``ocr``; ``vision`` -> ``vision``."""
    return leaf.split("/", 1)[0]


def ocr_leaf_weights(ocr_weights: Mapping | None, label_kind_weights: Mapping, ocr_sources: Mapping) -> dict[str, float]:
    """Sub-weights inside OCR. ``ocr_weights=None`` keeps the plain setting: engine pages split
    coarse/fine by ``label_kind_weights`` and every ``ocr_sources`` entry weighted 1 x their sum."""
    if ocr_weights is None:
        w = {k: float(label_kind_weights.get(k, 0.0)) for k in PAGE_LEAVES}
        if not any(w.values()):  # pages whose kinds are all outside coarse/fine
            w = {"coarse": 1.0}
        base = sum(w.values())
        w.update({name: base for name in ocr_sources})
        return w
    known = set(OCR_LEAVES) | set(ocr_sources)
    w = {str(k): float(v) for k, v in ocr_weights.items()}
    if unknown := set(w) - known:
        raise ValueError(f"data.ocr_weights has unknown key(s) {sorted(unknown)}; known: {sorted(known)} "
                         "(add shards for a new name under data.ocr_sources)")
    if any(v < 0 for v in w.values()):
        raise ValueError(f"data.ocr_weights must be non-negative: {w}")
    for kind in PAGE_LEAVES:  # label_kind_weights: 0 excludes a kind everywhere
        if kind in w and kind in label_kind_weights and float(label_kind_weights[kind]) == 0:
            w[kind] = 0.0
    return w


class MixScheduler:
    """Deterministic stratified choice of the next leaf; its state is the per-leaf counts."""

    def __init__(self, targets: Mapping[str, float], *, by: str, seed: int, slot: int):
        if by not in MIX_BY:
            raise ValueError(f"data.mix_by must be one of {MIX_BY}, got {by!r}")
        total = sum(targets.values())
        if total <= 0:
            raise ValueError(f"no leaf of the data mix has a positive weight: {dict(targets)}")
        self.by = by
        self.targets = {k: v / total for k, v in targets.items() if v > 0}
        order = sorted(self.targets)
        stable_rng(seed, slot, "mix_order").shuffle(order)  # tie-break order (seeded, per reader)
        self.order = order
        self.counts = {k: 0 for k in order}

    def state(self) -> dict:
        return dict(self.counts)

    def load(self, state: Mapping | None) -> None:
        self.counts = {k: 0 for k in self.order}
        for k, v in (state or {}).items():
            if k not in self.counts:
                raise ValueError(f"resume state has mix leaf {k!r} that this config lacks (data sources changed?)")
            self.counts[k] = int(v)

    def next(self) -> str:
        total = sum(self.counts.values())
        return max(self.order, key=lambda k: self.targets[k] * total - self.counts[k])

    def add(self, leaf: str, tokens: int) -> None:
        self.counts[leaf] += tokens if self.by == "tokens" else 1


def mix_report(stats: Mapping[str, int], targets: Mapping[str, float]) -> dict[str, dict]:
    """Realised shares (samples and tokens) next to the targets, from the loader's counters."""
    n = sum(v for k, v in stats.items() if k.startswith("mix/samples/"))
    t = sum(v for k, v in stats.items() if k.startswith("mix/tokens/"))
    leaves = sorted(set(targets) | {k.split("/", 2)[2] for k in stats if k.startswith("mix/samples/")})
    return {leaf: {"target": round(targets.get(leaf, 0.0), 4),
                   "samples": round(stats.get(f"mix/samples/{leaf}", 0) / n, 4) if n else 0.0,
                   "tokens": round(stats.get(f"mix/tokens/{leaf}", 0) / t, 4) if t else 0.0}
            for leaf in leaves}


def format_mix(report: Mapping[str, dict], by: str) -> str:
    return ", ".join(f"{leaf} {100 * r[by]:.1f}% (target {100 * r['target']:.1f}%)" for leaf, r in report.items())
