"""Greedy generation: KV-cached == uncached token for token (batched, left padding, an
image), batched == one row at a time, EOS handling, and the no-repeat n-gram processor."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from models.config import get_preset
from models.deepseek_ocr import DeepseekOCRForCausalLM
from models.generation import NoRepeatNGramLogitsProcessor, generate
from models.image_processing import preprocess_image


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    m = DeepseekOCRForCausalLM(cfg).eval()
    with torch.no_grad():
        # peakier logits than the 0.02 init: no near-ties for fp32 noise to flip between paths
        m.lm_head.weight.normal_(std=0.5)
    img = preprocess_image(Image.new("RGB", (300, 200), (30, 160, 90)), "tiny")
    g = torch.Generator().manual_seed(1)
    rows = [
        [cfg.bos_token_id] + [cfg.image_token_id] * img.num_tokens + torch.randint(16, 1024, (5,), generator=g).tolist(),
        [cfg.bos_token_id] + torch.randint(16, 1024, (9,), generator=g).tolist(),
        [cfg.bos_token_id] + torch.randint(16, 1024, (30,), generator=g).tolist(),
    ]
    T = max(map(len, rows))
    ids = torch.full((3, T), cfg.pad_token_id)
    am = torch.zeros(3, T, dtype=torch.long)
    for i, r in enumerate(rows):  # left padding
        ids[i, T - len(r) :], am[i, T - len(r) :] = torch.tensor(r), 1
    return m, img, rows, ids, am


@pytest.fixture(scope="module")
def free_run(setup):
    """Cached greedy run that never stops (eos=-1); shared by the tests below."""
    m, img, _, ids, am = setup
    return generate(m, ids, am, images=[img], max_new_tokens=8, eos_token_id=-1)


def test_cached_equals_uncached_batched_left_padded_with_image(setup, free_run):
    m, img, _, ids, am = setup
    uncached = generate(m, ids, am, images=[img], max_new_tokens=8, eos_token_id=-1, use_cache=False)
    assert free_run.sequences.shape == (3, 8)
    assert torch.equal(free_run.sequences, uncached.sequences)
    assert not free_run.finished.any()
    # the image row really depends on the vision embeddings, not just on the placeholders
    with torch.no_grad():
        vis = m.model.encode_images([img])
        l1 = m(ids[:1], vision_embeds=vis, attention_mask=am[:1]).logits[0, -1]
        l2 = m(ids[:1], vision_embeds=[v.flip(0) for v in vis], attention_mask=am[:1]).logits[0, -1]
    assert not torch.allclose(l1, l2)


def test_batched_equals_each_row_alone(setup, free_run):
    m, img, rows, _, _ = setup
    for i, r in enumerate(rows):
        alone = generate(m, torch.tensor([r]), images=[img] if i == 0 else [], max_new_tokens=8, eos_token_id=-1)
        assert torch.equal(alone.sequences[0], free_run.sequences[i]), i


def test_eos_stops_rows_independently(setup, free_run):
    m, img, _, ids, am = setup
    free = free_run.sequences
    eos = int(free[0, 2])
    stop0 = free[0].tolist().index(eos)  # first time row 0 emits it
    out = generate(m, ids, am, images=[img], max_new_tokens=8, eos_token_id=eos, pad_token_id=2)
    assert out.finished[0]
    assert out.sequences[0, : stop0 + 1].tolist() == free[0, : stop0 + 1].tolist()
    assert (out.sequences[0, stop0 + 1 :] == 2).all()
    for i in (1, 2):
        row = free[i].tolist()
        stop = row.index(eos) if eos in row else len(row)
        assert out.sequences[i, : stop + 1].tolist() == row[: stop + 1][: out.sequences.shape[1]]
        assert bool(out.finished[i]) == (eos in row)


def _banned_reference(seq, n, window, whitelist):
    """Plain-Python definition: next tokens completing an n-gram seen in the window."""
    if len(seq) < n:
        return set()
    start = 0 if window is None else max(0, len(seq) - window)
    prefix = tuple(seq[len(seq) - n + 1 :])
    banned = {seq[i + n - 1] for i in range(start, len(seq) - n + 1) if tuple(seq[i : i + n - 1]) == prefix}
    return banned - set(whitelist)


def test_no_repeat_ngram_bans_and_whitelists():
    V = 12
    # "5 6 7 ... 5 6" -> 7 would repeat the 3-gram (5, 6, 7)
    seq = torch.tensor([[0, 0, 5, 6, 7, 1, 5, 6], [0, 0, 5, 6, 7, 1, 5, 6], [5, 6, 9, 5, 6, 8, 5, 6]])
    scores = torch.zeros(3, V)
    p = NoRepeatNGramLogitsProcessor(3, window_size=8, whitelist_token_ids=[8])
    out = p(seq, scores)
    assert torch.isinf(out[0, 7]) and (out[0, :7] == 0).all() and (out[0, 8:] == 0).all()
    # (5,6,9) and (5,6,8) both seen: 9 banned, 8 whitelisted
    assert torch.isinf(out[2, 9]) and out[2, 8] == 0 and torch.isinf(out[2]).sum() == 1
    # window 4: the first (5, 6, 7) lies outside the last 4 tokens -> nothing banned
    assert not torch.isinf(NoRepeatNGramLogitsProcessor(3, window_size=4)(seq[:1], torch.zeros(1, V))).any()
    # too short to contain an n-gram
    assert not torch.isinf(p(seq[:, :2], torch.zeros(3, V))).any()


@pytest.mark.parametrize("n,window", [(2, None), (3, 8), (4, 20), (1, 5)])
def test_no_repeat_ngram_matches_reference_on_random_sequences(n, window):
    g = torch.Generator().manual_seed(n * 100 + (window or 0))
    V = 6  # small vocab: many repeats
    seq = torch.randint(0, V, (16, 25), generator=g)
    whitelist = [0]
    out = NoRepeatNGramLogitsProcessor(n, window, whitelist)(seq, torch.zeros(16, V))
    for b in range(16):
        got = set(torch.isinf(out[b]).nonzero().flatten().tolist())
        assert got == _banned_reference(seq[b].tolist(), n, window, whitelist)


def test_generation_with_processor_never_repeats_ngram(setup):
    m, img, _, ids, am = setup
    p = NoRepeatNGramLogitsProcessor(2, window_size=50)
    out = generate(m, ids[1:], am[1:], max_new_tokens=10, eos_token_id=-1, logits_processors=[p]).sequences
    for row in out.tolist():
        bigrams = list(zip(row, row[1:]))
        assert len(bigrams) == len(set(bigrams))


def test_right_padding_is_rejected(setup):
    m, _, _, ids, _ = setup
    am = torch.ones_like(ids[1:2])
    am[0, -1] = 0
    with pytest.raises(ValueError, match="LEFT padding"):
        generate(m, ids[1:2], am, max_new_tokens=2)


def test_image_placeholder_is_never_generated(setup):
    """A model whose favourite token is <image> (a fresh one can be) still decodes: the
    placeholder is masked, so no step looks for vision embeddings that do not exist."""
    m, img, _, ids, am = setup
    cfg = m.cfg
    with torch.no_grad():
        saved = m.lm_head.weight[cfg.image_token_id].clone()
        m.lm_head.weight[cfg.image_token_id] = m.lm_head.weight.mean(0) * 0 + 50.0  # huge logit for any state
    try:
        out = generate(m, ids, am, images=[img], max_new_tokens=4, eos_token_id=-1)
    finally:
        with torch.no_grad():
            m.lm_head.weight[cfg.image_token_id] = saved
    assert out.sequences.shape == (3, 4) and not (out.sequences == cfg.image_token_id).any()
