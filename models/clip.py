"""CLIP-L vision transformer over the compressor's tokens (``model.vision_model``).

The second half of DeepEncoder (paper section 3.2): a dense global-attention ViT (CLIP ViT-L/14,
Radford et al. 2021) whose patch embedding is bypassed: its input tokens are the SAM
compressor's ``width``-channel output, flattened row-major, after a learned class token. The
257-entry position table (class + 16x16 grid of the 224/14 CLIP) is interpolated bicubically
(antialiased, float32, as the official code does) to the token grid; the class position is kept.

Attribute names equal the published checkpoint: ``embeddings.{class_embedding,
patch_embedding, position_embedding}``, ``pre_layrnorm`` (sic), ``transformer.layers.N.
{layer_norm1, self_attn.{qkv_proj, out_proj}, layer_norm2, mlp.{fc1, fc2}}``. There is no
post-layernorm. q/k/v are fused in ``qkv_proj`` as rows [q; k; v], each head-major, so a
``transformers`` CLIP layer's ``q_proj/k_proj/v_proj`` concatenate into it (tests do that).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import ClipConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class Embeddings(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.width))
        # Kept only so the published tensor loads; the compressor replaces the patch embedding.
        # Frozen because it never sees a gradient (optimizers/ZeRO then never track it).
        self.patch_embedding = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.patch_embedding.weight.requires_grad_(False)
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.width)
        self.grid = cfg.image_size // cfg.patch_size  # 16: side of the position table's grid

    def positions(self, h: int, w: int) -> torch.Tensor:
        """(1 + h*w, W) position table for an h x w token grid (class position first)."""
        table = self.position_embedding.weight
        cls_pos, grid_pos = table[:1], table[1:]
        if (h, w) != (self.grid, self.grid):
            g = grid_pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2).float()
            g = F.interpolate(g, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
            grid_pos = g[0].permute(1, 2, 0).reshape(h * w, -1).to(table.dtype)
        return torch.cat([cls_pos, grid_pos], dim=0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, 1+h*w, W)
        B, C, h, w = features.shape
        tokens = features.flatten(2).transpose(1, 2)  # (B, h*w, C), row-major
        cls = self.class_embedding.to(tokens.dtype).expand(B, 1, -1)
        x = torch.cat([cls, tokens], dim=1)
        return x + self.positions(h, w).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"CLIP width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, W)
        B, T, W = x.shape
        q, k, v = self.qkv_proj(x).reshape(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hd), bidirectional
        return self.out_proj(out.transpose(1, 2).reshape(B, T, W))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.self_attn = SelfAttention(cfg.width, cfg.heads)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg.width, cfg.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x


class ClipVisionTower(nn.Module):
    """(B, C, h, w) compressor features -> (B, 1 + h*w, W) tokens (class token first)."""

    def __init__(self, cfg: ClipConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.transformer = Transformer(cfg)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Fresh-training init: CLIP's scheme simplified (truncated normal 0.02 for linears and
        positions, width**-0.5 for the class token, zero biases, unit norms)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        emb = self.embeddings
        nn.init.normal_(emb.class_embedding, std=self.cfg.width**-0.5)
        nn.init.trunc_normal_(emb.position_embedding.weight, std=std)
        nn.init.trunc_normal_(emb.patch_embedding.weight, std=std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 4 or features.shape[1] != self.cfg.width:
            raise ValueError(
                f"expected compressor features (B, {self.cfg.width}, h, w), got {tuple(features.shape)}"
            )
        x = self.pre_layrnorm(self.embeddings(features))  # (B, 1+h*w, W)
        return self.transformer(x)

