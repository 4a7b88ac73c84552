"""Numerical checks of the kernels a GPU run uses, each against a reference on the same inputs.

Each check returns a dict ``{"name", "passed", "max_abs_diff" | "rel_err", "tolerance", "why", ...}``
and never raises on a mismatch (the report records it); ``tests/test_gpu_correctness.py`` runs
them on CUDA (``gpu`` marker) and asserts ``passed``, ``benchmarks/gpu_check.py`` runs them
directly (CUDA, or CPU with ``--dry``).

* ``bf16_vs_fp32``: DeepEncoder and the decoder in bf16 (grouped-GEMM experts) against the same
  weights in fp32 (per-expert loop).
  Tolerance: normwise relative error ||y_bf16 - y_fp32|| / ||y_fp32|| <= 3e-2 (encoder) and
  5e-2 (decoder). bf16 keeps 8 significant bits (unit roundoff u = 2^-8 = 3.9e-3); each of the
  ~40 (encoder) or ~25 (decoder slice, counted in matmuls along the residual stream) roundings
  adds an error of order u that grows like a random walk, sqrt(40) * u = 2.5e-2. The decoder
  gets more because its router picks experts from bf16 activations: a token whose top-k
  experts are near a tie can switch expert, a legitimate local difference.
* ``grouped_vs_loop``: the MoE block's grouped GEMM against its per-expert loop, outputs and
  all gradients, in the run's dtype (bf16: the tolerances of tests/test_moe.py).
* ``sdpa_vs_eager``: ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on
  CUDA) against softmax(q k^T / sqrt(d) + mask) v written out, for the decoder's causal and
  packed-segment masks and SAM's relative-position bias, outputs and q/k/v gradients. Both
  run in the run's dtype and are compared with an fp32 eager reference: SDPA passes when its
  error is at most 2x the eager path's own error + 1e-3 (no worse than eager attention in
  that dtype).
* ``fused_adamw``: one step of the trainers' AdamW (``train.optimizer.build_optimizer``,
  ``fused=True``) against the AdamW update written out in fp64, on fp32 parameters (what
  DeepSpeed's bf16 mode steps: fp32 master weights); tolerance 1e-6 absolute (fp32 rounding
  of updates of size lr = 1e-3).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F

from models.config import DeepseekOCRConfig
from models.moe import set_experts_impl


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double(), ref.double()
    return float((got - ref).norm() / ref.norm().clamp_min(1e-30))


def _randomize(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Non-zero values everywhere (relative-position tables and biases start at zero), drawn on
    the module's device (a full-size model's CPU draw alone takes seconds)."""
    dev = next(module.parameters()).device
    g = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, device=dev)
            if p.ndim == 1 and name.endswith("weight"):  # norm scales near 1
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(std * noise)


def bf16_vs_fp32(cfg: DeepseekOCRConfig, device: str, side: int, seq_len: int, decoder_layers: int) -> list[dict]:
    """DeepEncoder on one ``side`` view and the first ``decoder_layers`` decoder layers on
    ``seq_len`` tokens: bf16 output against fp32 output of the same weights."""
    from models.deepencoder import DeepEncoder

    from .reference import TextDecoder

    out = []
    torch.manual_seed(0)
    with torch.device(device):  # built and initialised where it runs
        enc = DeepEncoder(cfg).eval()
    _randomize(enc.sam_model, 1)  # relative-position tables are zero at init: give them values
    pixels = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.no_grad():
        ref = enc.encode(pixels)
        got = enc.to(torch.bfloat16).encode(pixels.bfloat16()).float()
    del enc
    err = _rel_err(got, ref)
    out.append({"name": f"bf16 vs fp32: DeepEncoder ({side} px)", "rel_err": err, "tolerance": 3e-2,
                "passed": bool(math.isfinite(err) and err <= 3e-2), "why": "normwise; ~40 bf16 roundings (u = 2^-8) as a random walk"})
    dec_cfg = dataclasses.replace(cfg.decoder, num_hidden_layers=decoder_layers, moe_impl="loop")
    torch.manual_seed(3)
    with torch.device(device):
        dec = TextDecoder(dec_cfg).eval()
    _randomize(dec, 4)
    ids = torch.randint(0, dec_cfg.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(5)).to(device)
    with torch.no_grad():
        ref, _ = dec(ids)  # fp32: per-expert loop
        # bf16: grouped GEMM, what "auto" takes on a CUDA card (named: the CPU run takes it too)
        got = set_experts_impl(dec.to(torch.bfloat16), "grouped")(ids)[0].float()
    err = _rel_err(got, ref)
    out.append({"name": f"bf16 vs fp32: decoder ({decoder_layers} layers, {seq_len} tokens)", "rel_err": err,
                "tolerance": 5e-2, "passed": bool(math.isfinite(err) and err <= 5e-2),
                "why": "normwise; bf16 roundings + router flips of near-tied experts"})
    return out


def grouped_vs_loop(cfg: DeepseekOCRConfig, device: str, dtype: torch.dtype, tokens: int) -> dict:
    """Grouped-GEMM MoE against the per-expert loop: outputs, input and weight gradients."""
    from models.moe import MoE, _grouped_mm

    name = f"grouped GEMM vs per-expert loop MoE ({tokens} tokens, {str(dtype).split('.')[-1]})"
    if _grouped_mm is None:
        return {"name": name, "passed": False, "error": "this torch has no grouped_mm"}
    runs = []
    for impl in ("loop", "grouped"):
        torch.manual_seed(0)
        with torch.device(device):
            m = MoE(dataclasses.replace(cfg.decoder, moe_impl=impl, aux_loss_alpha=0.01))
        m.reset_parameters(std=0.2 / math.sqrt(cfg.decoder.hidden_size / 64))  # routing clearly separated
        m = m.to(dtype=dtype)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(1, tokens, cfg.decoder.hidden_size, generator=g).to(device=device, dtype=dtype)
        target = torch.randn(x.shape, generator=g).to(device=device, dtype=dtype)
        x.requires_grad_(True)
        y, aux = m(x)
        ((y.float() - target.float()).pow(2).mean() + aux).backward()
        runs.append((y.detach().float(), x.grad.float(), {n: p.grad.float() for n, p in m.named_parameters()}))
    (y1, gx1, g1), (y2, gx2, g2) = runs
    tol_out, tol_grad = (2e-2, 5e-2) if dtype != torch.float32 else (1e-5, 1e-5)
    out_diff = float((y2 - y1).abs().max())
    gx_diff = float((gx2 - gx1).abs().max())
    w_err = max(_rel_err(g2[n], g1[n]) for n in g1)
    passed = out_diff <= tol_out * max(1.0, float(y1.abs().max())) and gx_diff <= tol_out * max(
        1.0, float(gx1.abs().max())) and w_err <= tol_grad
    return {"name": name, "max_abs_diff": max(out_diff, gx_diff), "weight_grad_rel_err": w_err,
            "tolerance": f"outputs/input grads {tol_out} x max(1, |ref|); weight grads {tol_grad} normwise",
            "passed": bool(passed), "why": "same math, different summation order in the GEMM"}


def _eager_attention(q, k, v, mask):
    """softmax(q k^T / sqrt(d) + mask) v in q's dtype; ``mask`` boolean (True = attend) or additive."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.float().softmax(-1).to(q.dtype) @ v


def _attention_cases(device: str, heads: int, head_dim: int, seq_len: int, sam_grid: int):
    from models.decoder import build_attention_mask
    from models.sam import decomposed_rel_pos_bias

    T = seq_len
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()[None, None]
    seg = torch.ones(1, T, dtype=torch.long)
    seg[:, T // 3:] = 2  # two packed samples
    seg[:, -T // 8:] = 0  # and right padding
    packed = build_attention_mask(seg.to(device), None, T)
    g = torch.Generator().manual_seed(7)
    rel_h = 0.1 * torch.randn(2 * sam_grid - 1, head_dim, generator=g)
    rel_w = 0.1 * torch.randn(2 * sam_grid - 1, head_dim, generator=g)
    q_sam = torch.randn(1, heads, sam_grid * sam_grid, head_dim, generator=g)
    bias = decomposed_rel_pos_bias(q_sam, rel_h, rel_w, sam_grid, sam_grid).to(device)
    # (name, tokens, sdpa kwargs, eager mask); the SAM case uses q_sam as its queries
    return [("decoder causal", T, {"is_causal": True}, causal, None),
            ("decoder packed segments", T, {"attn_mask": packed}, packed, None),
            ("SAM rel-pos bias", sam_grid * sam_grid, {"attn_mask": bias}, bias, q_sam)]


def sdpa_vs_eager(device: str, dtype: torch.dtype, heads: int, head_dim: int, seq_len: int, sam_grid: int) -> list[dict]:
    """SDPA against eager attention (outputs and q/k/v gradients), three masks (module docstring)."""
    out = []
    for name, T, kw, mask, q_fixed in _attention_cases(device, heads, head_dim, seq_len, sam_grid):
        g = torch.Generator().manual_seed(11)
        q = q_fixed if q_fixed is not None else torch.randn(1, heads, T, head_dim, generator=g)
        k, v = torch.randn(1, heads, T, head_dim, generator=g), torch.randn(1, heads, T, head_dim, generator=g)
        dout = torch.randn(1, heads, T, head_dim, generator=g)
        results = {}
        for impl, run_dtype in (("ref", torch.float64 if device == "cpu" else torch.float32),
                                ("eager", dtype), ("sdpa", dtype)):
            qkv = [t.to(device=device, dtype=run_dtype).requires_grad_(True) for t in (q, k, v)]
            if impl == "sdpa":
                m = {key: (val.to(run_dtype) if torch.is_tensor(val) and val.is_floating_point() else val)
                     for key, val in kw.items()}
                y = F.scaled_dot_product_attention(*qkv, **m)
            else:
                m = mask.to(run_dtype) if mask.is_floating_point() else mask
                y = _eager_attention(*qkv, m)
            y.backward(dout.to(device=device, dtype=run_dtype))
            results[impl] = [y.detach().double()] + [t.grad.double() for t in qkv]
        ref = results["ref"]
        err = {impl: max(float((a - b).abs().max()) for a, b in zip(results[impl], ref)) for impl in ("eager", "sdpa")}
        bound = 2 * err["eager"] + 1e-3
        out.append({"name": f"SDPA vs eager: {name} ({T} tokens, {str(dtype).split('.')[-1]})",
                    "max_abs_diff": err["sdpa"], "eager_max_abs_diff": err["eager"], "tolerance": bound,
                    "passed": bool(math.isfinite(err["sdpa"]) and err["sdpa"] <= bound),
                    "why": "error vs an fp32 eager reference no more than 2x eager attention's own + 1e-3"})
    return out


def fused_adamw(cfg: DeepseekOCRConfig, device: str, steps: int = 2) -> dict:
    """The trainers' fused AdamW against the update written out in fp64 (decoupled weight
    decay on matrices only, bias correction), ``steps`` steps on a decoder layer's parameters."""
    from models.decoder import DecoderLayer
    from train.optimizer import build_optimizer
    from train.config import OptimConfig

    torch.manual_seed(0)
    with torch.device(device):
        layer = DecoderLayer(dataclasses.replace(cfg.decoder, moe_impl="loop"), 1)
    ocfg = OptimConfig(lr=1e-3, weight_decay=0.1)
    opt = build_optimizer(layer, ocfg)
    if not opt.defaults.get("fused"):
        return {"name": "fused AdamW vs reference", "passed": False, "error": "build_optimizer's AdamW is not fused"}
    ref = {id(p): (p.detach().double().clone(), torch.zeros_like(p, dtype=torch.float64),
                   torch.zeros_like(p, dtype=torch.float64)) for p in layer.parameters()}
    b1, b2 = ocfg.betas
    g = torch.Generator(device=device).manual_seed(1)
    for step in range(1, steps + 1):
        for p in layer.parameters():
            p.grad = torch.randn(p.shape, generator=g, device=device)
        for group in opt.param_groups:
            for p in group["params"]:
                w, m, v = ref[id(p)]
                grad = p.grad.double()
                w.mul_(1 - group["lr"] * group["weight_decay"])
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                denom = (v / (1 - b2 ** step)).sqrt().add_(ocfg.eps)
                w.addcdiv_(m / (1 - b1 ** step), denom, value=-group["lr"])
        opt.step()
    diff = max(float((p.detach().double() - ref[id(p)][0]).abs().max()) for p in layer.parameters())
    return {"name": f"fused AdamW vs reference ({steps} steps, fp32 params)", "max_abs_diff": diff, "tolerance": 1e-6,
            "passed": bool(diff <= 1e-6), "why": "fp32 rounding of lr-sized updates"}


def planned_checks(cfg: DeepseekOCRConfig, device: str, dtype: torch.dtype, sizes: dict) -> list[tuple[str, object]]:
    """(name, thunk returning a list of result dicts) of every check above with the plan's
    ``sizes`` (side, seq_len, decoder_layers, moe_tokens, attn_heads, attn_head_dim,
    attn_seq_len, sam_grid); the caller runs them one by one within its time budget."""
    cfg = copy.deepcopy(cfg)
    return [
        ("bf16 vs fp32", lambda: bf16_vs_fp32(cfg, device, sizes["side"], sizes["seq_len"], sizes["decoder_layers"])),
        ("grouped vs loop", lambda: [grouped_vs_loop(cfg, device, dtype, sizes["moe_tokens"])]),
        ("SDPA vs eager", lambda: sdpa_vs_eager(device, dtype, sizes["attn_heads"], sizes["attn_head_dim"],
                                                sizes["attn_seq_len"], sizes["sam_grid"])),
        ("fused AdamW", lambda: [fused_adamw(cfg, device)]),
    ]
