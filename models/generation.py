"""Greedy decoding for DeepSeek-OCR with a KV cache, batched with left padding.

As in DeepSeek-OCR's inference: greedy argmax, images encoded once at prefill, a
no-repeat n-gram logits processor over a sliding window (with whitelisted ids such as
table-cell tags that legitimately repeat), stop at EOS. Pages that hit ``max_new_tokens``
without EOS are the paper's "repetition failures"; ``GenerationOutput.finished`` says which.

``use_cache=False`` re-runs the whole token sequence every step (images are encoded once):
slow, but an independent path used to test the cached one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from models.decoder import KVCache
from models.image_processing import ImageInput

LogitsProcessor = Callable[[Tensor, Tensor], Tensor]  # (generated ids (B, L), scores (B, V)) -> scores


class NoRepeatNGramLogitsProcessor:
    """Ban any token that would complete an n-gram already present within the last
    ``window_size`` tokens, except ``whitelist_token_ids``.

    Called with the tokens generated so far (B, L) and next-token scores (B, V); the n-grams
    searched are those lying entirely in the last ``window_size`` tokens (all tokens if None).
    """

    def __init__(self, ngram_size: int, window_size: int | None = None, whitelist_token_ids: Sequence[int] = ()):
        if ngram_size < 1:
            raise ValueError(f"ngram_size must be >= 1, got {ngram_size}")
        if window_size is not None and window_size < ngram_size:
            raise ValueError(f"window_size ({window_size}) must be >= ngram_size ({ngram_size})")
        self.n = ngram_size
        self.window = window_size
        self.whitelist = sorted(set(int(t) for t in whitelist_token_ids))

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        n = self.n
        if input_ids.shape[1] < n:  # no complete n-gram yet
            return scores
        seq = input_ids if self.window is None else input_ids[:, -self.window :]  # (B, W)
        grams = seq.unfold(1, n, 1)  # (B, M, n): every n-gram in the window
        prefix = input_ids[:, input_ids.shape[1] - (n - 1) :]  # (B, n-1): what the next token extends
        match = (grams[:, :, :-1] == prefix[:, None, :]).all(-1)  # (B, M)
        # scatter_add (not scatter) so duplicate candidate ids cannot overwrite a True with False
        hits = torch.zeros(scores.shape, dtype=torch.int32, device=scores.device)
        hits.scatter_add_(1, grams[:, :, -1], match.int())
        ban = hits > 0  # (B, V)
        if self.whitelist:
            ban[:, self.whitelist] = False
        return scores.masked_fill(ban, float("-inf"))


def _last_logits(model, input_ids: Tensor, **kwargs) -> Tensor:
    """Next-token logits (B, V) of the last position only: the (B, T, V) logits of a long
    prompt (T x 129280 per row) are never built. ``kwargs`` go to ``model.model``; a cache
    passed there is updated in place."""
    h, _, _ = model.model(input_ids, **kwargs)
    return model.lm_head(h[:, -1])


@dataclass
class GenerationOutput:
    sequences: Tensor  # (B, n_new) generated ids; pad_token_id after a row's EOS
    finished: Tensor  # (B,) bool: the row emitted EOS


@torch.no_grad()
def generate(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    images: Sequence[ImageInput] = (),
    max_new_tokens: int = 512,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    logits_processors: Sequence[LogitsProcessor] = (),
    use_cache: bool = True,
) -> GenerationOutput:
    """Greedy decoding. input_ids (B, T) LEFT-padded (attention_mask 0 on the padding), with
    each ``<image>`` already expanded; ``images`` flat, in order of their token runs."""
    cfg = model.cfg
    eos = cfg.eos_token_id if eos_token_id is None else eos_token_id
    pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
    B, T = input_ids.shape
    dev = input_ids.device
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    if not bool(attention_mask[:, -1].all()):
        raise ValueError("generate() needs LEFT padding: the last prompt position must be real in every row")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1")

    am = attention_mask.long()
    cache = KVCache(len(model.model.layers), max_len=T + max_new_tokens) if use_cache else None
    # Encode the images once; the uncached path re-reads the same embeddings every step.
    vision = model.model.encode_images(images) if len(images) else None
    logits = _last_logits(model, input_ids, vision_embeds=vision, attention_mask=am, past_key_values=cache)  # (B, V)
    generated = torch.empty(B, 0, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    for step in range(max_new_tokens):
        scores = logits.float()
        # an <image> placeholder is never text: emitted, the next step would look for vision
        # embeddings that do not exist (a fresh or barely trained model draws it by chance)
        scores[:, cfg.image_token_id] = float("-inf")
        for proc in logits_processors:
            scores = proc(generated, scores)
        nxt = scores.argmax(dim=-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        generated = torch.cat([generated, nxt[:, None]], dim=1)
        done = done | (nxt == eos)
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        am = torch.cat([am, am.new_ones(B, 1)], dim=1)  # (B, T + step + 1)
        if use_cache:
            logits = _last_logits(model, nxt[:, None], attention_mask=am, past_key_values=cache)
        else:
            logits = _last_logits(model, torch.cat([input_ids, generated], dim=1), vision_embeds=vision, attention_mask=am)
    return GenerationOutput(sequences=generated, finished=done)
