"""SAM ViT-B image encoder + neck + 16x convolutional compressor (``model.sam_model``).

The first half of DeepEncoder (paper section 3.2): a window-attention ViT (Segment Anything,
Kirillov et al. 2023, ViTDet-style blocks) that sees every 16x16 patch of a high-resolution
page cheaply, followed by the SAM neck and two stride-2 3x3 convolutions that cut the token
count 16x before the global-attention CLIP stage. A 1024x1024 page -> 64x64 patches -> 16x16
tokens of ``out_channels`` (1024) channels.

Attribute names equal the published checkpoint (``patch_embed.proj``, ``pos_embed``,
``blocks.N.{norm1, attn.{qkv, proj, rel_pos_h, rel_pos_w}, norm2, mlp.{lin1, lin2}}``,
``neck.{0..3}``, ``net_2``, ``net_3``). Reference for behaviour: SAM's ``ImageEncoderViT``
and ``transformers.models.sam.SamVisionEncoder`` (tests compare against the latter).

Inputs other than the 1024 training size (512/640/1280 views, 640/1024 tiles) interpolate
the absolute position table bicubically (antialiased, in float32, as the official DeepSeek-OCR
code does) and the global blocks' relative-position tables linearly (as SAM does).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import SamConfig


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of a (B, C, H, W) map (SAM's neck norm, eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        # channels-last LayerNorm uses the fused kernel; same math as mean/var over dim 1
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, S/p, S/p, W)
        return self.proj(x).permute(0, 2, 3, 1)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(width, hidden)
        self.lin2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """(L, C) relative-position table -> (length, C), linear interpolation (SAM's rule)."""
    if rel_pos.shape[0] == length:
        return rel_pos
    out = F.interpolate(rel_pos.float().t()[None], size=length, mode="linear")  # (1, C, length)
    return out[0].t().to(rel_pos.dtype)


def rel_pos_lookup(size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Per (query, key) coordinate pair along one axis, the table row for q - k: (size, size, C)."""
    table = resize_rel_pos(rel_pos, 2 * size - 1)
    coords = torch.arange(size, device=rel_pos.device)
    return table[coords[:, None] - coords[None, :] + (size - 1)]


def decomposed_rel_pos_bias(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """MViTv2 decomposed relative-position bias for self-attention on an h x w grid.

    q: (B, nh, h*w, hd) unscaled queries. Returns an additive bias (B, nh, h*w, h*w):
    bias[(qy, qx), (ky, kx)] = q . Rh[qy - ky] + q . Rw[qx - kx].
    """
    B, nh, _, hd = q.shape
    Rh = rel_pos_lookup(h, rel_pos_h).to(q.dtype)  # (h, h, hd)
    Rw = rel_pos_lookup(w, rel_pos_w).to(q.dtype)  # (w, w, hd)
    r_q = q.reshape(B, nh, h, w, hd)
    rel_h = torch.einsum("bnyxc,ykc->bnyxk", r_q, Rh)  # (B, nh, h, w, kh)
    rel_w = torch.einsum("bnyxc,xkc->bnyxk", r_q, Rw)  # (B, nh, h, w, kw)
    bias = rel_h[..., :, None] + rel_w[..., None, :]  # (B, nh, h, w, kh, kw)
    return bias.reshape(B, nh, h * w, h * w)


class Attention(nn.Module):
    """Multi-head self-attention over an (h, w) grid with decomposed relative positions."""

    def __init__(self, width: int, num_heads: int, rel_pos_size: int) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"SAM width {width} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = width // num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        # rows = 2 * (window or full grid) - 1 relative offsets per axis
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, h, w, W)
        B, h, w, W = x.shape
        qkv = self.qkv(x).reshape(B, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, nh, h*w, hd)
        bias = decomposed_rel_pos_bias(q, self.rel_pos_h, self.rel_pos_w, h, w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, nh, h*w, hd)
        out = out.transpose(1, 2).reshape(B, h, w, W)
        return self.proj(out)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nWin, window, window, C), zero-padding H, W up to multiples."""
    B, H, W, C = x.shape
    pad_h, pad_w = (-H) % window, (-W) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.reshape(B, Hp // window, window, Wp // window, window, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, C), (Hp, Wp)


def window_unpartition(x: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of ``window_partition``: (B * nWin, window, window, C) -> (B, H, W, C)."""
    Hp, Wp = padded
    H, W = size
    B = x.shape[0] // ((Hp // window) * (Wp // window))
    x = x.reshape(B, Hp // window, Wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return x[:, :H, :W].contiguous()


class Block(nn.Module):
    """Pre-LN transformer block; ``window > 0``: attention inside non-overlapping windows."""

    def __init__(self, cfg: SamConfig, window: int) -> None:
        super().__init__()
        grid = cfg.img_size // cfg.patch_size
        self.window = window
        self.norm1 = nn.LayerNorm(cfg.width, eps=1e-6)
        self.attn = Attention(cfg.width, cfg.num_heads, window if window > 0 else grid)
        self.norm2 = nn.LayerNorm(cfg.width, eps=1e-6)
        self.mlp = MLP(cfg.width, int(cfg.width * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        y = self.norm1(x)
        if self.window > 0:
            H, W = y.shape[1:3]
            y, padded = window_partition(y, self.window)
            y = window_unpartition(self.attn(y), self.window, padded, (H, W))
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


def resize_abs_pos(pos_embed: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(1, G, G, C) absolute table -> (1, h, w, C): bicubic, antialiased, computed in float32."""
    if pos_embed.shape[1:3] == (h, w):
        return pos_embed
    x = pos_embed.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
    return x.to(pos_embed.dtype).permute(0, 2, 3, 1)


class SamEncoder(nn.Module):
    """(B, 3, S, S) normalized pixels -> (B, out_channels, S/64, S/64) compressed features."""

    def __init__(self, cfg: SamConfig) -> None:
        super().__init__()
        if cfg.img_size % cfg.patch_size:
            raise ValueError(f"img_size {cfg.img_size} is not a multiple of patch_size {cfg.patch_size}")
        self.cfg = cfg
        grid = cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.width)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, cfg.width))
        self.blocks = nn.ModuleList(
            Block(cfg, 0 if i in cfg.global_attn_indexes else cfg.window_size) for i in range(cfg.depth)
        )
        nc = cfg.neck_channels
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.width, nc, kernel_size=1, bias=False),
            LayerNorm2d(nc),
            nn.Conv2d(nc, nc, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(nc),
        )
        # 16x token compressor: each conv halves both sides (4x fewer tokens per conv)
        if len(cfg.downsample_channels) != 2:
            raise ValueError("the published compressor has exactly two convs (net_2, net_3)")
        c_mid, c_out = cfg.downsample_channels
        self.net_2 = nn.Conv2d(nc, c_mid, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(c_mid, c_out, kernel_size=3, stride=2, padding=1, bias=False)
        self.gradient_checkpointing = False
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Fresh-training init: truncated normal for linear/conv weights and the absolute
        position table, zero biases, zero relative-position tables (as SAM), unit norms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, LayerNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, Attention):
                nn.init.zeros_(m.rel_pos_h)
                nn.init.zeros_(m.rel_pos_w)
        nn.init.trunc_normal_(self.pos_embed, std=std)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """ViT + neck, no compressor: (B, 3, S, S) -> (B, neck_channels, S/16, S/16)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels of shape (B, 3, H, W), got {tuple(pixels.shape)}")
        p = self.cfg.patch_size
        if pixels.shape[2] % p or pixels.shape[3] % p:
            raise ValueError(f"image sides {tuple(pixels.shape[2:])} must be multiples of the patch size {p}")
        x = self.patch_embed(pixels)  # (B, S/16, S/16, W)
        x = x + resize_abs_pos(self.pos_embed, x.shape[1], x.shape[2])
        for blk in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return self.neck(x.permute(0, 3, 1, 2))  # (B, neck, S/16, S/16)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.encode(pixels)
        return self.net_3(self.net_2(x))  # (B, out_channels, S/64, S/64)
