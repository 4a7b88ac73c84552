"""CTC decoding of a refused text-layer line, constrained by its garbled text layer.

A born-digital line whose text layer is garbled (Devanagari: ि and conjuncts come back as
U+FFFD) is still right everywhere else: ``trust.text_layer_pattern`` gives its intact characters
in order and one wildcard (1 to ``GLYPH_CODE_POINTS`` code points) per garbled glyph. Greedy
CTC reads the whole line freely and drops or changes intact letters too (`बनना` read `बना`);
this decoder keeps the recognizer's reading only where the text layer is garbled: a CTC prefix
beam search (Graves 2012; as in Hannun et al. 2014's prefix search, without a language model)
whose prefixes must stay on the pattern, tracked as a set of automaton states (wildcards make
it non-deterministic). Spaces never move the automaton (the pattern has none).

The result fits the text layer by construction (``accept.judge``'s ``text_layer_mismatch`` never
rejects it); its confidence is the best prefix's log-probability per emitted character, the
scale the calibrated threshold of the same cut is computed on.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from data_engine.flywheel.trust import GLYPH_CODE_POINTS

State = tuple[int, int]  # (items consumed, code points consumed of the wildcard in progress)


def _step(states: frozenset, ch: str, items: list[str | None]) -> frozenset:
    """The automaton states after reading ``ch`` (a space keeps them)."""
    if ch.isspace():
        return states
    out = set()
    todo = list(states)
    while todo:
        i, w = todo.pop()
        if i >= len(items):
            continue
        if items[i] is None:  # inside a garbled glyph
            if w < GLYPH_CODE_POINTS:
                out.add((i, w + 1))
            if w >= 1:  # or the glyph ended before this character
                todo.append((i + 1, 0))
        elif w == 0 and items[i] == ch:
            out.add((i + 1, 0))
    return frozenset(out)


def _final(states: frozenset, items: list[str | None]) -> bool:
    n = len(items)
    return any(i == n or (i == n - 1 and items[i] is None and w >= 1) for i, w in states)


def _logadd(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


def decode_with_text_layer(logp: torch.Tensor, charset: list[str], items: list[str | None], *,
                           beam: int = 8, per_frame: int = 6) -> tuple[str, float] | None:
    """(text, log-probability per emitted character) of the best labelling of ``logp`` (T, V)
    (log-softmax, blank = 0) that fits ``items``; None when no prefix in the beam reaches the end
    of the pattern (the caller keeps the free reading, which the acceptance filter rejects)."""
    if not items:
        return None
    lp = logp.float().cpu()
    top = lp[:, 1:].topk(min(per_frame, lp.shape[1] - 1), dim=-1).indices + 1  # (T, K)
    lp_list = lp.tolist()
    start = frozenset({(0, 0)})
    beams: dict[tuple, list] = {(): [0.0, -math.inf, start]}  # prefix -> [log p(blank end), log p(char end), states]
    for t in range(lp.shape[0]):
        row = lp_list[t]
        new: dict[tuple, list] = defaultdict(lambda: [-math.inf, -math.inf, None])
        for prefix, (pb, pnb, states) in beams.items():
            total = _logadd(pb, pnb)
            cur = new[prefix]
            cur[2] = states
            cur[0] = _logadd(cur[0], total + row[0])
            if prefix:  # the last character continues over this frame
                cur[1] = _logadd(cur[1], pnb + row[prefix[-1]])
            for c in top[t].tolist():
                nxt = _step(states, charset[c], items)
                if not nxt:
                    continue
                ext = new[prefix + (c,)]
                ext[2] = nxt
                ext[1] = _logadd(ext[1], (pb if prefix and c == prefix[-1] else total) + row[c])
        beams = dict(sorted(new.items(), key=lambda kv: -_logadd(kv[1][0], kv[1][1]))[:beam])
    done = [(p, _logadd(v[0], v[1])) for p, v in beams.items() if _final(v[2], items)]
    if not done:
        return None
    prefix, score = max(done, key=lambda d: d[1])
    return "".join(charset[c] for c in prefix), score / max(1, len(prefix))
