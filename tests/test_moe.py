"""MoE: grouped GEMM == per-expert loop == a naive per-token reference (outputs and
gradients), router top-k, load-balance loss, expert-load logging."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from models.config import get_preset
from models.moe import MoE, MoEGate, _grouped_mm


def _cfg(**kw):
    return dataclasses.replace(get_preset("tiny").decoder, **kw)


def _naive_moe(x, gate_w, gp, up, down, shared, k, norm_topk):
    """Token by token, slot by slot: the definition, no sorting or batching."""
    out = torch.zeros_like(x)
    probs = F.linear(x.float(), gate_w.float()).softmax(-1)
    for n in range(x.shape[0]):
        w, idx = probs[n].sort(descending=True)
        w, idx = w[:k], idx[:k]
        if norm_topk:
            w = w / w.sum()
        for wj, e in zip(w, idx.tolist()):
            h = F.silu(gp[e] @ x[n]) * (up[e] @ x[n])
            out[n] = out[n] + wj * (down[e] @ h)
    return out + shared(x)


def _moe(seed=0, **kw):
    torch.manual_seed(seed)
    m = MoE(_cfg(**kw))
    m.reset_parameters(std=0.2)  # larger than default: clearly separated, non-trivial routing
    return m


@pytest.mark.parametrize("impl", ["loop", "grouped"])
@pytest.mark.parametrize("norm_topk", [False, True])
def test_moe_matches_naive_reference(impl, norm_topk):
    if impl == "grouped" and _grouped_mm is None:
        pytest.skip("torch has no grouped_mm")
    m = _moe(moe_impl=impl, norm_topk_prob=norm_topk)
    x = torch.randn(2, 9, m.gate.weight.shape[1])
    out, _ = m(x)
    e = m.experts
    ref = _naive_moe(x.view(-1, x.shape[-1]), m.gate.weight, e.gate_proj, e.up_proj, e.down_proj,
                     m.shared_experts, m.gate.top_k, norm_topk)
    torch.testing.assert_close(out.view(-1, x.shape[-1]), ref, rtol=1e-5, atol=1e-5)


def _outputs_and_grads(m, x, target):
    x = x.clone().requires_grad_(True)
    out, aux = m(x)
    ((out - target).pow(2).mean() + aux).backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    return out.detach(), x.grad, grads


def test_grouped_equals_loop_outputs_and_gradients_cpu():
    """torch's grouped_mm has a CPU kernel (fp32 and bf16) with autograd, so the grouped path
    is checked here on CPU; the CUDA bf16 kernel by tests/test_gpu_correctness.py."""
    if _grouped_mm is None:
        pytest.skip("torch has no grouped_mm")
    loop = _moe(moe_impl="loop", aux_loss_alpha=0.01)
    grouped = _moe(moe_impl="grouped", aux_loss_alpha=0.01)
    grouped.load_state_dict(loop.state_dict())
    D = loop.gate.weight.shape[1]
    # 3 tokens only with 8 experts x top-2: some experts get no token (empty groups).
    for T in (3, 40):
        x, target = torch.randn(1, T, D), torch.randn(1, T, D)
        loop.zero_grad(), grouped.zero_grad()
        o1, gx1, g1 = _outputs_and_grads(loop, x, target)
        o2, gx2, g2 = _outputs_and_grads(grouped, x, target)
        torch.testing.assert_close(o2, o1, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gx2, gx1, rtol=1e-5, atol=1e-6)
        for n in g1:
            torch.testing.assert_close(g2[n], g1[n], rtol=1e-5, atol=1e-6, msg=n)
        if T == 3:
            assert (loop.last_expert_load == 0).any()  # the empty-group case was exercised


def test_router_picks_k_largest_probabilities():
    cfg = _cfg(n_routed_experts=16, num_experts_per_tok=4)
    gate = MoEGate(cfg)
    torch.nn.init.normal_(gate.weight, std=0.5)
    x = torch.randn(50, cfg.hidden_size)
    idx, w, probs = gate(x)
    torch.testing.assert_close(probs, (x @ gate.weight.T).softmax(-1))
    # The k chosen probabilities are the k largest: every chosen >= every non-chosen.
    chosen = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, idx, True)
    assert (probs.masked_fill(~chosen, 2).min(1).values >= probs.masked_fill(chosen, -1).max(1).values).all()
    torch.testing.assert_close(w, probs.gather(1, idx))  # DeepSeek-V2: weights not renormalized
    assert (w.sum(-1) < 1).all()


def test_aux_loss_positive_scales_with_alpha_and_disables_at_zero():
    D = _cfg().hidden_size
    x = torch.randn(2, 30, D)
    losses = {}
    for alpha in (0.0, 0.001, 0.003):
        m = _moe(aux_loss_alpha=alpha)
        _, losses[alpha] = m(x)
    assert losses[0.0].item() == 0.0
    assert losses[0.001].item() > 0
    torch.testing.assert_close(losses[0.003], 3 * losses[0.001])
    # Uniform router (zero weights): P_e = 1/E and f sums to 1 over the chosen experts, so the
    # DeepSeek normalisation makes the loss exactly alpha.
    m = _moe(aux_loss_alpha=0.01)
    torch.nn.init.zeros_(m.gate.weight)
    _, aux = m(x)
    torch.testing.assert_close(aux, torch.tensor(0.01))


def test_aux_loss_gradient_reaches_router_and_load_is_logged():
    m = _moe(aux_loss_alpha=0.01)
    x = torch.randn(3, 7, m.gate.weight.shape[1])
    _, aux = m(x)
    aux.backward()
    assert m.gate.weight.grad is not None and m.gate.weight.grad.abs().sum() > 0
    idx, _, _ = m.gate(x.view(-1, x.shape[-1]))
    assert torch.equal(m.last_expert_load, torch.bincount(idx.view(-1), minlength=m.gate.n_experts))
    assert m.last_expert_load.sum().item() == 3 * 7 * m.gate.top_k


def test_bad_impl_is_a_clear_error():
    with pytest.raises(ValueError, match="moe_impl"):
        MoE(_cfg(moe_impl="fast"))
