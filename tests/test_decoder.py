"""Decoder vs an independent reference: transformers' DeepSeek-OCR-2 text model.

``transformers.models.deepseek_ocr2.DeepseekOcr2TextModel`` is DeepSeek-V2 with MHA instead
of MLA, a dense layer 0 and greedy softmax top-k routing without renormalization: the same
decoder as DeepSeek-OCR's. We copy our weights into it (``benchmarks/check/reference.py``: the stacked gate/up experts
joined into its fused ``gate_up_proj``) and compare hidden states.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from models.config import get_preset
from models.decoder import DecoderLayer, KVCache, RotaryEmbedding, build_attention_mask

pytest.importorskip("transformers.models.deepseek_ocr2.modeling_deepseek_ocr2")

from benchmarks.check.reference import TextDecoder as Stack  # noqa: E402
from benchmarks.check.reference import copy_decoder_to_hf, hf_text_model  # noqa: E402


def _tiny_decoder(**kw):
    c = get_preset("tiny").decoder
    return dataclasses.replace(c, **kw)


def _reference(c):
    return hf_text_model(c, attn="eager")


def _init(stack: Stack, seed=0, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in stack.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def pair():
    c = _tiny_decoder(moe_impl="loop")
    torch.manual_seed(0)
    ours = Stack(c).eval()
    _init(ours)
    ref = _reference(c)
    copy_decoder_to_hf(ours, ref)
    return c, ours, ref


def test_state_dict_names_match_checkpoint_layout(pair):
    c, ours, _ = pair
    names = set(ours.state_dict())
    assert "layers.0.mlp.gate_proj.weight" in names  # dense layer 0
    assert "layers.1.mlp.gate.weight" in names and "layers.1.mlp.shared_experts.down_proj.weight" in names
    E, I, D = c.n_routed_experts, c.moe_intermediate_size, c.hidden_size
    sd = ours.state_dict()
    assert sd["layers.1.mlp.experts.gate_proj"].shape == (E, I, D)
    assert sd["layers.1.mlp.experts.up_proj"].shape == (E, I, D)
    assert sd["layers.1.mlp.experts.down_proj"].shape == (E, D, I)
    assert not any("last_expert_load" in n for n in names)  # logging buffer stays out of checkpoints


def test_decoder_matches_transformers_reference(pair):
    c, ours, ref = pair
    ids = torch.randint(0, c.vocab_size, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h, _ = ours(ids)
        h_ref = ref(input_ids=ids).last_hidden_state
    assert h.shape == h_ref.shape == (2, 23, c.hidden_size)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-5)


def test_decoder_matches_reference_with_left_padding_and_cache(pair):
    c, ours, ref = pair
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(4, c.vocab_size, (2, 12), generator=g)
    am = torch.ones(2, 12, dtype=torch.long)
    am[1, :5] = 0  # row 1 is left padded
    pos = (am.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        h, _ = ours(ids, attention_mask=am, position_ids=pos)
        h_ref = ref(input_ids=ids, attention_mask=am, position_ids=pos).last_hidden_state
        assert not torch.isnan(h).any()
        real = am.bool()
        torch.testing.assert_close(h[real], h_ref[real], rtol=1e-4, atol=1e-5)
        # Same sequence with a KV cache: prefill 8 tokens, then 4 single-token steps.
        cache = KVCache(c.num_hidden_layers, max_len=12)
        outs = [ours(ids[:, :8], attention_mask=am[:, :8], position_ids=pos[:, :8], cache=cache)[0]]
        for t in range(8, 12):
            outs.append(ours(ids[:, t : t + 1], attention_mask=am[:, : t + 1], position_ids=pos[:, t : t + 1], cache=cache)[0])
        torch.testing.assert_close(torch.cat(outs, 1)[real], h[real], rtol=1e-4, atol=1e-5)
        assert cache.seq_len == 12


def test_build_attention_mask_semantics():
    assert build_attention_mask(None, None, 5) is None  # plain causal -> SDPA is_causal
    assert build_attention_mask(None, None, 1, past_len=4) is None  # decode step sees everything
    seg = torch.tensor([[1, 1, 2, 2, 2, 0]])
    m = build_attention_mask(seg, None, 6)[0, 0]
    expect = torch.zeros(6, 6, dtype=torch.bool)
    for i in range(6):
        for j in range(i + 1):
            expect[i, j] = seg[0, i] == seg[0, j] != 0
        expect[i, i] = True  # padding attends to itself only (never a fully masked row)
    assert torch.equal(m, expect)
    am = torch.tensor([[0, 0, 1, 1, 1]])
    m = build_attention_mask(None, am, 2, past_len=3)[0, 0]  # 2 new queries at positions 3, 4
    assert torch.equal(m, torch.tensor([[0, 0, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool))
    causal_offset = build_attention_mask(None, None, 2, past_len=3)[0, 0]
    assert torch.equal(causal_offset, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))
    assert build_attention_mask(None, None, 2, past_len=3, device="meta").device.type == "meta"
    with pytest.raises(ValueError, match="attention_mask"):
        build_attention_mask(None, am, 4, past_len=3)


def test_rope_matches_reference_rotation():
    """Position p rotates pair (i, i + hd/2) by p * theta^(-2i/hd) (rotate-half layout)."""
    hd, theta = 8, 10000.0
    cos, sin = RotaryEmbedding(hd, theta)(torch.tensor([[0, 3]]))
    assert torch.allclose(cos[0, 0], torch.ones(hd)) and torch.allclose(sin[0, 0], torch.zeros(hd))
    ang = 3 * theta ** (-torch.arange(0, hd, 2).float() / hd)
    torch.testing.assert_close(cos[0, 1], torch.cat([ang.cos(), ang.cos()]))
    torch.testing.assert_close(sin[0, 1], torch.cat([ang.sin(), ang.sin()]))


def test_cache_step_without_mask_requires_single_token():
    c = _tiny_decoder()
    layer = DecoderLayer(c, 0)
    cache = KVCache(1)
    cos, sin = RotaryEmbedding(c.head_dim)(torch.arange(3)[None])
    layer(torch.randn(1, 3, c.hidden_size), cos, sin, None, cache)
    with pytest.raises(ValueError, match="explicit mask"):
        layer(torch.randn(1, 3, c.hidden_size), cos, sin, None, cache)
