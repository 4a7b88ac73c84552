"""Counted FLOPs of the decoder and DeepEncoder, peak FLOP/s of known cards, and MFU.

Model FLOPs, the MFU convention of PaLM (Chowdhery et al. 2022, appendix B): every matmul
counts 2 * m * n * k, a training step is 3x the forward (the backward computes the input and
the weight gradient, 2x), recomputation by activation checkpointing is not counted, and
element-wise work (norms, softmax, activations, RoPE) is left out. Attention is counted with
the keys it actually visits: causal self-attention visits (T + 1) / 2 keys per query on average.
"""

from __future__ import annotations

import math

from models.config import DecoderConfig, DeepseekOCRConfig, SamConfig

# bf16 dense tensor-core peak (no sparsity) from the vendors' data sheets, by device-name substring
# (first match wins, so the specific names come first).
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12),
    ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
    ("A10G", 70e12), ("L4", 121e12),
)


def peak_flops(device_name: str) -> float | None:
    """bf16 peak FLOP/s of a CUDA device by name; None when the card is not in the table."""
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


def mfu(flops_per_step: float, seconds_per_step: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the card's peak; None without a peak."""
    if not peak or seconds_per_step <= 0:
        return None
    return flops_per_step / seconds_per_step / peak


def decoder_forward_flops_per_token(c: DecoderConfig, seq_len: int, head: bool = True) -> float:
    """Forward FLOPs per token of the decoder on causal sequences of ``seq_len`` tokens."""
    D, hd = c.hidden_size, c.head_dim
    q_o = 2 * 2 * D * c.num_attention_heads * hd  # q_proj + o_proj
    k_v = 2 * 2 * D * c.num_key_value_heads * hd  # k_proj + v_proj
    keys = (seq_len + 1) / 2  # causal: mean keys visited per query
    core = 2 * 2 * c.num_attention_heads * hd * keys  # q @ k^T and p @ v
    attn = q_o + k_v + core
    dense_mlp = 2 * 3 * D * c.intermediate_size  # gate, up, down
    router = 2 * D * c.n_routed_experts
    routed = c.num_experts_per_tok * 2 * 3 * D * c.moe_intermediate_size
    shared = 2 * 3 * D * c.n_shared_experts * c.moe_intermediate_size
    n_dense = min(c.first_k_dense_replace, c.num_hidden_layers)
    n_moe = c.num_hidden_layers - n_dense
    total = c.num_hidden_layers * attn + n_dense * dense_mlp + n_moe * (router + routed + shared)
    return total + (2 * D * c.vocab_size if head else 0)


def decoder_train_flops(c: DecoderConfig, batch: int, seq_len: int, head: bool = True) -> float:
    """FLOPs of one training step (forward + backward) over ``batch`` sequences of ``seq_len``."""
    return 3 * batch * seq_len * decoder_forward_flops_per_token(c, seq_len, head)


def _window_tokens(grid: int, window: int) -> int:
    """Tokens a windowed block attends over: the grid zero-padded to whole windows."""
    padded = math.ceil(grid / window) * window
    return padded * padded


def sam_forward_flops(c: SamConfig, side: int) -> float:
    """Forward FLOPs of SAM + neck + 16x compressor on one ``side`` x ``side`` view."""
    g = side // c.patch_size
    N, W = g * g, c.width
    total = 2 * N * (3 * c.patch_size ** 2) * W  # patch embedding conv
    for i in range(c.depth):
        if i in c.global_attn_indexes:
            n_att, keys, rel = N, N, 2 * g  # every token sees the grid; rel-pos tables of h + w rows
        else:
            n_att, keys, rel = _window_tokens(g, c.window_size), c.window_size ** 2, 2 * c.window_size
        total += 2 * n_att * W * 3 * W + 2 * n_att * W * W  # qkv, proj (padded tokens included)
        total += 2 * 2 * n_att * keys * W  # q @ k^T and p @ v over all heads
        total += 2 * n_att * rel * W  # decomposed relative-position bias (two einsums)
        total += 2 * 2 * N * W * int(W * c.mlp_ratio)  # MLP lin1 + lin2
    nc, (c_mid, c_out) = c.neck_channels, c.downsample_channels
    total += 2 * N * W * nc + 2 * N * nc * nc * 9  # neck: 1x1 conv, 3x3 conv
    total += 2 * (N // 4) * nc * c_mid * 9 + 2 * (N // 16) * c_mid * c_out * 9  # net_2, net_3
    return total


def clip_projector_forward_flops(cfg: DeepseekOCRConfig, tokens: int) -> float:
    """Forward FLOPs of CLIP over ``tokens`` compressor tokens (+ class token) and the projector."""
    c, n = cfg.clip, tokens + 1
    per_layer = 2 * n * c.width * 3 * c.width + 2 * n * c.width * c.width  # qkv, out proj
    per_layer += 2 * 2 * n * n * c.width  # attention (bidirectional: every key)
    per_layer += 2 * 2 * n * c.width * c.mlp_dim  # fc1 + fc2
    return c.layers * per_layer + 2 * tokens * cfg.projector_input_dim * cfg.decoder.hidden_size


def encoder_train_flops(cfg: DeepseekOCRConfig, sides: list[int]) -> float:
    """FLOPs of DeepEncoder forward + backward over views of the given sides (global and tiles)."""
    total = 0.0
    for side in sides:
        tokens = (side // cfg.sam.downsample) ** 2
        total += sam_forward_flops(cfg.sam, side) + clip_projector_forward_flops(cfg, tokens)
    return 3 * total


def sam_train_flops(c: SamConfig, sides: list[int]) -> float:
    return 3 * sum(sam_forward_flops(c, s) for s in sides)
