"""Full DeepSeek-OCR model (tiny preset, CPU): every resolution mode, mixed batches, text-only
rows, packing == separate samples, the loss, and the full-size parameter count / names."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.config import RESOLUTION_MODES, get_preset
from models.deepseek_ocr import DeepseekOCRForCausalLM, causal_lm_loss, default_position_ids
from models.image_processing import preprocess_image

TEXT_LO = 16  # text ids start above the special tokens


def _cfg(alpha=0.001):
    c = get_preset("tiny")
    return c.replace(decoder=dataclasses.replace(c.decoder, aux_loss_alpha=alpha))


def _model(alpha=0.001, seed=0):
    torch.manual_seed(seed)
    m = DeepseekOCRForCausalLM(_cfg(alpha))
    m.model.sam_model.requires_grad_(False)  # stage 2 freezes SAM + compressor (PP0)
    return m


def _image(mode, size=(700, 500), max_tiles=None):
    img = Image.new("RGB", size, (235, 235, 235))
    # some structure so the views are not constant
    px = img.load()
    for x in range(0, size[0], 7):
        for y in range(0, size[1], 3):
            px[x, y] = (20, 20, (x * y) % 255)
    return preprocess_image(img, mode, max_tiles=max_tiles)


def _sample(cfg, images, n_text, seed):
    """bos, each image's token run, then n_text text ids; labels on the text only."""
    g = torch.Generator().manual_seed(seed)
    ids = [cfg.bos_token_id]
    for img in images:
        ids += [cfg.image_token_id] * img.num_tokens
    n_prompt = len(ids)
    ids += torch.randint(TEXT_LO, cfg.decoder.vocab_size, (n_text,), generator=g).tolist()
    labels = [-100] * n_prompt + ids[n_prompt:]
    return torch.tensor(ids), torch.tensor(labels)


def _pad_batch(samples, pad_id):
    T = max(len(s[0]) for s in samples)
    ids = torch.full((len(samples), T), pad_id)
    labels = torch.full((len(samples), T), -100)
    am = torch.zeros(len(samples), T, dtype=torch.long)
    for i, (x, y) in enumerate(samples):
        ids[i, : len(x)], labels[i, : len(y)], am[i, : len(x)] = x, y, 1
    return ids, labels, am


def _check_grads(m):
    p = dict(m.named_parameters())
    for name in ["model.vision_model.transformer.layers.0.self_attn.qkv_proj.weight",
                 "model.projector.layers.weight", "model.image_newline", "model.view_seperator",
                 "model.embed_tokens.weight", "model.layers.1.mlp.experts.gate_proj",
                 "model.layers.1.mlp.gate.weight", "lm_head.weight"]:
        assert p[name].grad is not None and torch.isfinite(p[name].grad).all(), name
        assert p[name].grad.abs().sum() > 0, name
    assert all(q.grad is None for q in m.model.sam_model.parameters())  # frozen


@pytest.mark.parametrize("with_gundam", [False, True])
def test_mixed_batch_forward_backward(with_gundam):
    """Images of different modes in one batch (two in one row), plus a text-only row. The
    default run keeps to the cheap 512/640 modes; 1024+ views cost seconds each on CPU."""
    m = _model()
    cfg = m.cfg
    second = _image("gundam", size=(1000, 600), max_tiles=2) if with_gundam else _image("tiny", size=(300, 900))
    imgs = [[_image("tiny")], [_image("small"), second], []]
    if with_gundam:
        assert second.tiles.shape[0] == 2
    samples = [_sample(cfg, im, 12 + 3 * i, seed=i) for i, im in enumerate(imgs)]
    ids, labels, am = _pad_batch(samples, cfg.pad_token_id)
    out = m(ids, images=[x for im in imgs for x in im], labels=labels, attention_mask=am)
    assert out.logits.shape == (3, ids.shape[1], cfg.decoder.vocab_size)
    assert torch.isfinite(out.loss) and out.aux_loss > 0
    torch.testing.assert_close(out.loss, causal_lm_loss(out.logits, labels) + out.aux_loss)
    out.loss.backward()
    _check_grads(m)
    load = m.expert_load()
    assert sorted(load) == list(range(1, cfg.decoder.num_hidden_layers))
    assert all(v.sum() == am.numel() * cfg.decoder.num_experts_per_tok for v in load.values())


@pytest.mark.parametrize("mode", ["tiny", "small", "base", "large", "gundam", "gundam_m"])
def test_every_resolution_mode_forward_backward(mode):
    m = _model()
    img = _image(mode, size=(1500, 1100), max_tiles=2 if RESOLUTION_MODES[mode].tiled else None)
    ids, labels = _sample(m.cfg, [img], 10, seed=3)
    out = m(ids[None], images=[img], labels=labels[None])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    _check_grads(m)


def test_text_only_sample():
    m = _model()
    ids, labels = _sample(m.cfg, [], 20, seed=5)
    labels[:1] = -100
    out = m(ids[None], labels=labels[None])
    ref = F.cross_entropy(out.logits[0, :-1].float(), ids[1:])  # every next token is a label
    torch.testing.assert_close(out.loss - out.aux_loss, ref)
    out.loss.backward()
    assert m.lm_head.weight.grad is not None


def test_vision_embeddings_fill_image_positions_in_order():
    m = _model().eval()
    imgs = [_image("tiny"), _image("small")]
    ids, _ = _sample(m.cfg, imgs, 4, seed=0)
    with torch.no_grad():
        vis = m.model.encode_images(imgs)
        h = m.model.embed(ids[None], vis)[0]
    pos = (ids == m.cfg.image_token_id).nonzero().squeeze(1)
    torch.testing.assert_close(h[pos], torch.cat(vis))
    torch.testing.assert_close(h[-4:], m.model.embed_tokens(ids[-4:]))
    with pytest.raises(ValueError, match="<image> tokens"):
        m(ids[None], images=imgs[:1])
    with pytest.raises(ValueError, match="<image> tokens"):
        m(ids[None])


def test_packed_equals_separate():
    """Two samples (one with an image) packed into one row with segment ids and per-segment
    positions give the same logits at every position and the same token-weighted loss."""
    m = _model(alpha=0.0).eval()
    cfg = m.cfg
    img = _image("tiny")
    a = _sample(cfg, [img], 9, seed=1)
    b = _sample(cfg, [], 14, seed=2)
    pad = 3
    ids = torch.cat([a[0], b[0], torch.full((pad,), cfg.pad_token_id)])[None]
    labels = torch.cat([a[1], b[1], torch.full((pad,), -100)])[None]
    seg = torch.tensor([1] * len(a[0]) + [2] * len(b[0]) + [0] * pad)[None]
    with torch.no_grad():
        packed = m(ids, images=[img], labels=labels, segment_ids=seg)
        sep_a = m(a[0][None], images=[img], labels=a[1][None])
        sep_b = m(b[0][None], labels=b[1][None])
    na, nb = len(a[0]), len(b[0])
    torch.testing.assert_close(packed.logits[0, :na], sep_a.logits[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed.logits[0, na : na + nb], sep_b.logits[0], rtol=1e-4, atol=1e-5)
    ca, cb = (a[1][1:] != -100).sum(), (b[1][1:] != -100).sum()
    expect = (sep_a.loss * ca + sep_b.loss * cb) / (ca + cb)
    torch.testing.assert_close(packed.loss, expect)


def test_default_position_ids():
    seg = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0]])
    assert default_position_ids(8, segment_ids=seg).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]
    am = torch.tensor([[0, 0, 1, 1, 1]])
    assert default_position_ids(5, attention_mask=am).tolist() == [[0, 0, 0, 1, 2]]
    assert default_position_ids(1, past_len=4, attention_mask=am).tolist() == [[2]]
    assert default_position_ids(3, past_len=2).tolist() == [[2, 3, 4]]
    # segment ids cover the cached keys too: a segment begun before the chunk keeps counting
    assert default_position_ids(3, past_len=5, segment_ids=seg).tolist() == [[0, 0, 1]]
    assert default_position_ids(2, past_len=1, segment_ids=seg[:, :3]).tolist() == [[1, 2]]


def test_causal_lm_loss_shift_and_segments():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.randint(0, 11, (2, 6))
    labels[0, 2] = -100
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(causal_lm_loss(logits, labels), ref)
    seg = torch.tensor([[1, 1, 1, 2, 2, 2], [1] * 6])
    lab = labels.clone()
    lab[0, 3] = -100  # the token after the boundary is never a target of the previous segment
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 11), lab[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(causal_lm_loss(logits, labels, seg), ref)


def test_full_size_on_meta_device_matches_published_checkpoint(manifest):
    with torch.device("meta"):
        m = DeepseekOCRForCausalLM(get_preset("deepseek-ocr"))
    assert m.num_parameters() == 3_336_106_240 == manifest["total_parameters"]
    # names/shapes: identical to the published ones once stacked experts are split per expert
    ours = {}
    for k, v in m.state_dict().items():
        stem, _, leaf = k.rpartition(".")
        if stem.endswith("mlp.experts"):
            for e in range(v.shape[0]):
                ours[f"{stem}.{e}.{leaf}.weight"] = list(v.shape[1:])
        else:
            ours[k] = list(v.shape)
    assert ours == {k: list(s) for k, s in manifest["tensors"].items()}


def test_gradient_checkpointing_same_loss_and_grads():
    m = _model()
    ids, labels = _sample(m.cfg, [], 24, seed=7)
    grads = []
    for ckpt in (False, True):
        m.zero_grad()
        m.model.set_gradient_checkpointing(ckpt)
        out = m(ids[None], labels=labels[None])
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(grads[1][0], grads[0][0])
    assert grads[0][1].keys() == grads[1][1].keys()
    for n in grads[0][1]:
        torch.testing.assert_close(grads[1][1][n], grads[0][1][n], msg=n)


def test_bf16_forward_keeps_dtypes():
    m = _model().to(torch.bfloat16)
    ids, labels = _sample(m.cfg, [], 16, seed=8)
    out = m(ids[None], labels=labels[None])
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss)


def test_chunked_prefill_on_a_cache_equals_one_pass():
    """A multi-token chunk on a non-empty cache (no mask given): causal with an offset."""
    m = _model().eval()
    ids, _ = _sample(m.cfg, [], 12, seed=9)
    with torch.no_grad():
        full = m(ids[None]).logits
        first = m(ids[None, :7], use_cache=True)
        second = m(ids[None, 7:], past_key_values=first.past_key_values, use_cache=True)
    assert second.past_key_values.seq_len == 13
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full, rtol=1e-4, atol=1e-5)
