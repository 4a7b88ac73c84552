"""DeepEncoder V2's LLM-style encoder with causal flow queries (DeepSeek-OCR 2, arXiv 2601.20552,
section 3; reference: ``transformers.models.deepseek_ocr2.DeepseekOcr2VisionModel`` minus SAM).

The compressor's tokens of one view (``(B, C, h, w)``, C = the encoder width, row-major) are
followed by learned queries, and the whole sequence runs through Qwen2-0.5B-shaped decoder
layers with one special mask:

    image token i  attends to every image token (bidirectional, like a ViT);
    query j        attends to every image token and to the queries 0..j (causal).

So the mask is ``key < n_patches or key <= query``. Only the queries' final states leave the
encoder: 144 of them (``query_768``) for a view of at most 144 SAM tokens (a 768 px tile), 256
(``query_1024``) for a larger one (the 1024 px global view). Positions are 0..T-1 over the
joint sequence (RoPE, theta 1e6).

Attribute names are the checkpoint's below ``model.qwen2_model.`` with the published
``model.model.`` level dropped (``models/checkpoint.py`` maps it): ``layers.N.{self_attn.{q,k,v,o}_proj,
mlp.{gate,up,down}_proj, input_layernorm, post_attention_layernorm}``, ``norm``, ``query_768``,
``query_1024``. The layer pieces are the decoder's (``models/decoder.py``) with q/k/v biases.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .config import FlowEncoderConfig
from .decoder import Attention, DenseMLP, RMSNorm, RotaryEmbedding


def flow_attention_mask(num_patches: int, num_queries: int, device=None) -> Tensor:
    """(1, 1, T, T) bool, True = may attend: bidirectional over the first ``num_patches``
    tokens, causal over the ``num_queries`` that follow."""
    T = num_patches + num_queries
    pos = torch.arange(T, device=device)
    key, query = pos[None, :], pos[:, None]
    return ((key < num_patches) | (key <= query))[None, None]


class FlowEncoderLayer(nn.Module):
    """Pre-norm Qwen2 block: x + attn(norm(x)), then h + swiglu(norm(h))."""

    def __init__(self, cfg: FlowEncoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx, qkv_bias=True)
        self.mlp = DenseMLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:  # (B, T, C)
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return h + self.mlp(self.post_attention_layernorm(h))


class FlowEncoder(nn.Module):
    """(B, C, h, w) compressor features -> (B, n_queries, C) final query states."""

    def __init__(self, cfg: FlowEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(FlowEncoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.query_768 = nn.Embedding(cfg.queries_768, cfg.hidden_size)
        self.query_1024 = nn.Embedding(cfg.queries_1024, cfg.hidden_size)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope_theta)  # stateless
        self.gradient_checkpointing = False
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """N(0, std) weights and queries, zero biases, unit norms (Qwen2's init)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
            elif isinstance(m, RMSNorm):
                m.reset_parameters()

    def queries(self, num_patches: int) -> nn.Embedding:
        return self.query_768 if num_patches <= self.cfg.queries_768 else self.query_1024

    def forward(self, features: Tensor) -> Tensor:
        if features.ndim != 4 or features.shape[1] != self.cfg.hidden_size:
            raise ValueError(f"expected compressor features (B, {self.cfg.hidden_size}, h, w), "
                             f"got {tuple(features.shape)}")
        B = features.shape[0]
        patches = features.flatten(2).transpose(1, 2)  # (B, N, C), row-major
        N = patches.shape[1]
        q = self.queries(N).weight  # (Q, C)
        x = torch.cat([patches, q.to(patches.dtype).expand(B, -1, -1)], dim=1)  # (B, N + Q, C)
        T = x.shape[1]
        cos, sin = self.rotary_emb(torch.arange(T, device=x.device)[None])  # (1, T, hd)
        mask = flow_attention_mask(N, q.shape[0], x.device)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask)
        return self.norm(x)[:, N:]  # (B, Q, C): only the queries leave the encoder
