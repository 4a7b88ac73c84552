"""DeepSeekMoE block: softmax router with greedy top-k, shared experts, stacked routed experts.

Reference: DeepSeekMoE (arXiv 2401.06066) / DeepSeek-V2 as used by DeepSeek-OCR's decoder
(64 routed SwiGLU experts of width 896, top-6, 2 shared experts fused into one SwiGLU of width
1792, routing weights = softmax probabilities, not renormalized). Independent reference for
the tests: ``transformers.models.deepseek_ocr2``'s text MoE.

Routed expert weights are stored STACKED as three parameters, ``experts.gate_proj`` (E, I, D),
``experts.up_proj`` (E, I, D), ``experts.down_proj`` (E, D, I), so that one grouped GEMM
(``torch.nn.functional.grouped_mm`` with jagged offsets) runs all experts at once;
``models/checkpoint.py`` converts to/from the published per-expert tensors. A per-expert loop
computes exactly the same thing where grouped GEMM is unavailable (``cfg.moe_impl``).

Load balance: DeepSeek's expert-level auxiliary loss ``alpha * E * sum_e f_e * P_e`` where
``f_e`` is the fraction of routed (token, slot) pairs sent to expert e and ``P_e`` the mean
router probability of e; it equals ``alpha`` under perfectly uniform routing. The token count
per expert of the last forward is kept in the ``last_expert_load`` buffer for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.config import DecoderConfig
from models.decoder import DenseMLP, _decoder_cfg

_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def grouped_mm_available(x: Tensor) -> bool:
    """Whether the grouped-GEMM path should be used for activations like ``x`` under "auto".

    CUDA kernels exist for bf16 on SM80+ (torch >= 2.8). CPU has a (reference) kernel too,
    but the per-expert loop is as fast there, so "auto" keeps the loop off-GPU.
    """
    if _grouped_mm is None or not x.is_cuda or x.dtype != torch.bfloat16:
        return False
    return torch.cuda.get_device_capability(x.device) >= (8, 0)


def _checked_impl(impl: str) -> str:
    if impl not in ("auto", "grouped", "loop"):
        raise ValueError(f"moe_impl must be auto|grouped|loop, got {impl!r}")
    return impl


def set_experts_impl(module: nn.Module, impl: str) -> nn.Module:
    """Every ``RoutedExperts`` under ``module`` computes with ``impl`` ("auto" | "grouped" | "loop")
    from now on: the same weights through another kernel (benchmarks/gpu_check.py names the
    kernel a CUDA card's "auto" takes, so a CPU run takes it too)."""
    _checked_impl(impl)
    for m in module.modules():
        if isinstance(m, RoutedExperts):
            m.impl = impl
    return module


class MoEGate(nn.Module):
    """Router: fp32 logits -> softmax -> greedy top-k (optionally renormalized)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.n_experts = cfg.n_routed_experts
        self.norm_topk_prob = cfg.norm_topk_prob
        if not 0 < self.top_k <= self.n_experts:
            raise ValueError(f"num_experts_per_tok={self.top_k} must be in 1..n_routed_experts={self.n_experts}")
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))  # (E, D)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, D) -> topk_idx (N, k) long, topk_weight (N, k) fp32, probs (N, E) fp32."""
        # fp32 routing: bf16 logits flip near-tied experts between otherwise equal runs.
        logits = F.linear(x.float(), self.weight.float())  # (N, E)
        probs = logits.softmax(dim=-1)
        topk_weight, topk_idx = torch.topk(probs, self.top_k, dim=-1)  # (N, k)
        if self.norm_topk_prob and self.top_k > 1:
            topk_weight = topk_weight / (topk_weight.sum(dim=-1, keepdim=True) + 1e-20)
        return topk_idx, topk_weight, probs


class RoutedExperts(nn.Module):
    """E SwiGLU experts with stacked weights; grouped GEMM or an exact per-expert loop."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        E, I, D = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.hidden_size
        self.n_experts = E
        self.impl = _checked_impl(cfg.moe_impl)
        self.gate_proj = nn.Parameter(torch.empty(E, I, D))
        self.up_proj = nn.Parameter(torch.empty(E, I, D))
        self.down_proj = nn.Parameter(torch.empty(E, D, I))

    def forward(self, x: Tensor, topk_idx: Tensor, topk_weight: Tensor, counts: Tensor | None = None) -> Tensor:
        """x (N, D), topk_idx/topk_weight (N, k) -> (N, D) = sum_j w_j * expert_{idx_j}(x)."""
        N, k = topk_idx.shape
        flat = topk_idx.reshape(-1)  # (N*k,) expert of each (token, slot)
        # Sort slots by expert so each expert's tokens are one contiguous block.
        order = torch.argsort(flat, stable=True)  # (N*k,)
        token = order // k  # token index of each sorted slot
        if counts is None:
            counts = torch.bincount(flat, minlength=self.n_experts)  # (E,)
        xs = x[token]  # (N*k, D)
        use_grouped = self.impl == "grouped" or (self.impl == "auto" and grouped_mm_available(x))
        if use_grouped:
            if _grouped_mm is None:
                raise RuntimeError("moe_impl='grouped' needs torch.nn.functional.grouped_mm (torch >= 2.8)")
            ys = self._grouped(xs, counts)
        else:
            ys = self._loop(xs, counts)
        ys = ys.float() * topk_weight.reshape(-1)[order, None]  # weight in fp32, as the reference
        out = torch.zeros(N, x.shape[-1], dtype=torch.float32, device=x.device)
        return out.index_add_(0, token, ys).to(x.dtype)  # (N, D)

    def _grouped(self, xs: Tensor, counts: Tensor) -> Tensor:
        offs = torch.cumsum(counts, 0).to(torch.int32)  # (E,) end of each expert's block
        # mat_b is (E, K, N) as a transposed view of the (E, N, K) weights: no copy.
        g = _grouped_mm(xs, self.gate_proj.transpose(-2, -1), offs=offs)  # (N*k, I)
        u = _grouped_mm(xs, self.up_proj.transpose(-2, -1), offs=offs)
        return _grouped_mm(F.silu(g) * u, self.down_proj.transpose(-2, -1), offs=offs)  # (N*k, D)

    def _loop(self, xs: Tensor, counts: Tensor) -> Tensor:
        ys = torch.empty_like(xs)
        start = 0
        for e, n in enumerate(counts.tolist()):  # one host sync per layer
            if n:
                xe = xs[start : start + n]
                h = F.silu(F.linear(xe, self.gate_proj[e])) * F.linear(xe, self.up_proj[e])
                ys[start : start + n] = F.linear(h, self.down_proj[e])
            start += n
        return ys


class MoE(nn.Module):
    """Shared experts (always on) + top-k routed experts. Returns (out, aux_loss)."""

    def __init__(self, cfg):
        super().__init__()
        cfg = _decoder_cfg(cfg)
        self.aux_loss_alpha = cfg.aux_loss_alpha
        self.gate = MoEGate(cfg)
        self.experts = RoutedExperts(cfg)
        self.shared_experts = (
            DenseMLP(cfg.hidden_size, cfg.n_shared_experts * cfg.moe_intermediate_size)
            if cfg.n_shared_experts > 0 else None
        )
        # Tokens routed to each expert in the last forward (summed over slots); for logging.
        self.register_buffer("last_expert_load", torch.zeros(cfg.n_routed_experts, dtype=torch.long), persistent=False)
        self.reset_parameters()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> (out (B, T, D), aux_loss scalar fp32)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (N, D)
        topk_idx, topk_weight, probs = self.gate(flat)
        counts = torch.bincount(topk_idx.reshape(-1), minlength=self.gate.n_experts)  # (E,)
        with torch.no_grad():
            self.last_expert_load.copy_(counts)
        out = self.experts(flat, topk_idx, topk_weight, counts)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        return out.view(shape), self.load_balance_loss(probs, counts)

    def load_balance_loss(self, probs: Tensor, counts: Tensor) -> Tensor:
        """alpha * E * sum_e f_e * P_e; f_e from the (non-differentiable) counts, P_e carries the grad."""
        if self.aux_loss_alpha <= 0 or probs.shape[0] == 0:
            return probs.new_zeros(())
        E = probs.shape[-1]
        f = counts.float() / counts.sum().clamp(min=1)  # (E,) fraction of routed slots
        P = probs.mean(dim=0)  # (E,)
        return self.aux_loss_alpha * E * (f * P).sum()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        for p in (self.gate.weight, self.experts.gate_proj, self.experts.up_proj, self.experts.down_proj):
            nn.init.normal_(p, mean=0.0, std=std)
        self.last_expert_load.zero_()
