"""DeepSeek-MoE decoder building blocks (DeepSeek-V2 architecture without MLA).

The language model of DeepSeek-OCR is a DeepSeek-V2-style decoder whose attention is plain
multi-head attention (no multi-head latent attention): pre-norm RMSNorm blocks, rotate-half
RoPE (theta 10000), q/k/v/o projections without bias, a dense SwiGLU MLP in the first
``first_k_dense_replace`` layers and a DeepSeekMoE block (``models/moe.py``) in the rest.
Attribute names equal the published checkpoint names (``self_attn.q_proj``,
``input_layernorm``, ``mlp.gate_proj`` ...). Independent reference for the tests:
``transformers.models.deepseek_ocr2`` (the text model of DeepSeek-OCR 2 is the same decoder).

Every piece here only depends on its inputs, so the DeepSpeed pipeline in ``train/`` can
place any contiguous range of ``DecoderLayer``s on a stage and recompute ``cos``/``sin`` and
the attention mask there (``RotaryEmbedding`` has no state, ``build_attention_mask`` is a
pure function).

KV cache: ``KVCache`` holds one (k, v) pair per layer index and is updated in place by
``Attention``; the number of cached positions is ``cache.seq_len``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import DecoderConfig


def _decoder_cfg(cfg) -> DecoderConfig:
    """Accept a ``DecoderConfig`` or a full ``DeepseekOCRConfig``."""
    return cfg.decoder if hasattr(cfg, "decoder") else cfg


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32, scaled in the input dtype (as the reference implementation)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class RotaryEmbedding(nn.Module):
    """Rotate-half RoPE. Stateless (inverse frequencies are recomputed per call, a few
    hundred flops), so it works unchanged on the meta device and on every pipeline stage."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, position_ids: Tensor) -> tuple[Tensor, Tensor]:
        """position_ids (B, T) -> cos, sin (B, T, head_dim), fp32."""
        dev = position_ids.device
        inv_freq = 1.0 / (
            self.theta ** (torch.arange(0, self.head_dim, 2, device=dev, dtype=torch.float32) / self.head_dim)
        )  # (hd/2,)
        freqs = position_ids.float()[..., None] * inv_freq  # (B, T, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, hd)
        return emb.cos(), emb.sin()


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, H, T, hd); cos/sin (B, T, hd). Cos/sin are cast to x's dtype first, as the
    reference does, so bf16 runs round the same way."""
    cos = cos.unsqueeze(1).to(x.dtype)  # (B, 1, T, hd)
    sin = sin.unsqueeze(1).to(x.dtype)
    return x * cos + _rotate_half(x) * sin


class KVCache:
    """Per-layer key/value cache for incremental decoding.

    ``max_len`` (optional) preallocates each layer's buffers at the first update so decoding
    writes in place instead of concatenating (O(T) instead of O(T^2) copies).
    """

    def __init__(self, num_layers: int, max_len: int | None = None):
        self.max_len = max_len
        self._k: list[Tensor | None] = [None] * num_layers
        self._v: list[Tensor | None] = [None] * num_layers
        self._len = [0] * num_layers

    def layer_len(self, layer_idx: int) -> int:
        return self._len[layer_idx]

    @property
    def seq_len(self) -> int:
        """Cached positions (read before a step: the past length of that step)."""
        return max(self._len) if self._len else 0

    def update(self, layer_idx: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k, v (B, H, T, hd) to layer ``layer_idx``; return all cached k, v."""
        n, t = self._len[layer_idx], k.shape[2]
        if self.max_len is None:
            if self._k[layer_idx] is None:
                self._k[layer_idx], self._v[layer_idx] = k, v
            else:
                self._k[layer_idx] = torch.cat([self._k[layer_idx], k], dim=2)
                self._v[layer_idx] = torch.cat([self._v[layer_idx], v], dim=2)
        else:
            if n + t > self.max_len:
                raise ValueError(f"KVCache overflow: {n} + {t} positions > max_len {self.max_len}")
            if self._k[layer_idx] is None:
                B, H, _, hd = k.shape
                self._k[layer_idx] = k.new_empty(B, H, self.max_len, hd)
                self._v[layer_idx] = v.new_empty(B, H, self.max_len, hd)
            self._k[layer_idx][:, :, n : n + t] = k
            self._v[layer_idx][:, :, n : n + t] = v
        self._len[layer_idx] = n + t
        return self._k[layer_idx][:, :, : n + t], self._v[layer_idx][:, :, : n + t]

    def reorder(self, index: Tensor) -> None:
        """Keep/reorder batch rows (e.g. drop finished sequences)."""
        for i, (k, v) in enumerate(zip(self._k, self._v)):
            if k is not None:
                self._k[i], self._v[i] = k[index], v[index]


def build_attention_mask(
    segment_ids: Tensor | None,
    attention_mask: Tensor | None,
    T: int,
    past_len: int = 0,
    device: torch.device | str | None = None,
) -> Tensor | None:
    """Boolean attention mask (B|1, 1, T, past_len + T), True = may attend; None when a plain
    causal mask suffices (then SDPA runs with ``is_causal`` and can pick flash kernels).

    segment_ids (B, S): packed samples, attention stays inside a segment; 0 = padding.
        S is T, or past_len + T when keys come from a cache.
    attention_mask (B, S): 1 = real token, 0 = padding (left or right padding).
    Every query may always attend to itself, so padding rows are never fully masked (a fully
    masked row would make SDPA emit NaN, which then leaks through 0 * NaN in later layers).
    device: where to build the mask when neither segment_ids nor attention_mask is given
    (a multi-token chunk on a non-empty cache); otherwise theirs.
    """
    S = past_len + T
    if segment_ids is None and attention_mask is None and (past_len == 0 or T == 1):
        return None
    ref = segment_ids if segment_ids is not None else attention_mask
    if ref is not None:
        device = ref.device
    q_pos = torch.arange(past_len, S, device=device)  # (T,) absolute positions of queries
    k_pos = torch.arange(S, device=device)  # (S,)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]  # (1, 1, T, S) causal
    if attention_mask is not None:
        am = _check_keys(attention_mask, "attention_mask", T, S).bool()
        mask = mask & am[:, None, None, :]
    if segment_ids is not None:
        seg_k = _check_keys(segment_ids, "segment_ids", T, S)
        seg_q = seg_k[:, -T:]
        same = (seg_q[:, :, None] == seg_k[:, None, :]) & (seg_k[:, None, :] != 0)  # (B, T, S)
        mask = mask & same[:, None]
    diag = (k_pos[None, :] == q_pos[:, None])[None, None]  # (1, 1, T, S)
    return mask | diag


def _check_keys(t: Tensor, name: str, T: int, S: int) -> Tensor:
    if t.dim() != 2 or t.shape[1] != S:
        raise ValueError(
            f"{name} must be (B, past_len + T) = (B, {S}) (T={T}), got {tuple(t.shape)}"
        )
    return t


class Attention(nn.Module):
    """Multi-head attention (GQA-capable) with RoPE, SDPA and an optional KV cache.
    ``qkv_bias``: biases on q/k/v (Qwen2 layers of DeepEncoder V2; the decoder has none)."""

    def __init__(self, cfg: DecoderConfig, layer_idx: int, qkv_bias: bool = False):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        if cfg.hidden_size != self.n_heads * self.head_dim or self.n_heads % self.n_kv:
            raise ValueError(f"bad head layout: hidden {cfg.hidden_size}, heads {self.n_heads}, kv {self.n_kv}")
        D = cfg.hidden_size
        self.q_proj = nn.Linear(D, self.n_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(D, self.n_kv * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(D, self.n_kv * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, D, bias=False)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, attn_mask: Tensor | None, past_kv: KVCache | None = None
    ) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        past_len = 0
        if past_kv is not None:
            past_len = past_kv.layer_len(self.layer_idx)
            k, v = past_kv.update(self.layer_idx, k, v)  # (B, Hkv, past_len + T, hd)
        if attn_mask is None and T > 1 and past_len > 0:
            raise ValueError("multi-token step on a non-empty cache needs an explicit mask "
                             "(build_attention_mask(..., past_len=cache.seq_len))")
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None and T > 1,
            enable_gqa=self.n_kv != self.n_heads,
        )  # (B, H, T, hd)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class DenseMLP(nn.Module):
    """SwiGLU MLP: down(silu(gate(x)) * up(x)). Also the shared experts of the MoE block."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then h + mlp(norm(h)); mlp is dense for
    ``layer_idx < first_k_dense_replace``, DeepSeekMoE otherwise."""

    def __init__(self, cfg, layer_idx: int):
        super().__init__()
        from models.moe import MoE  # local import: moe.py imports DenseMLP from here

        cfg = _decoder_cfg(cfg)
        self.layer_idx = layer_idx
        self.is_moe = layer_idx >= cfg.first_k_dense_replace
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MoE(cfg) if self.is_moe else DenseMLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        hidden: Tensor,
        cos: Tensor,
        sin: Tensor,
        attn_mask: Tensor | None,
        past_kv: KVCache | None = None,
    ) -> tuple[Tensor, Tensor]:
        """hidden (B, T, D) -> (hidden (B, T, D), aux_loss scalar; 0 for dense layers).
        ``past_kv`` (a ``KVCache``) is updated in place at this layer's index."""
        h = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin, attn_mask, past_kv)
        if self.is_moe:
            m, aux = self.mlp(self.post_attention_layernorm(h))
        else:
            m = self.mlp(self.post_attention_layernorm(h))
            aux = h.new_zeros((), dtype=torch.float32)
        return h + m, aux
