"""Training speed beside transformers, in one process, on the same weights.

* ``encoder_speed``: per resolution mode, forward + backward images/s of the whole DeepEncoder
  (SAM + compressor + CLIP + projector + token layout) and of its SAM + compressor alone,
  beside transformers' ``DeepseekOcr2SamVisionEncoder`` (the same SAM + neck + compressor)
  holding the same weights, on the same pixels (the SAM outputs' max abs difference is
  recorded); FLOPs counted by ``flops.py`` give MFU; peak memory per part.
* ``decoder_speed``: training tokens/s (forward + backward + fused AdamW step, bf16 parameters
  on CUDA) of a decoder slice beside transformers' ``DeepseekOcr2TextModel`` holding the same
  weights, same routing (greedy softmax top-k, no renormalization), same loss (cross-entropy
  through the same ``lm_head``); first both are run in fp32 on the same ids and the max abs
  difference of the final hidden states recorded (the v1 decoder equals the reference), both
  with per-expert loops; then ocrflow's experts are timed with grouped GEMM (what ``moe_impl:
  auto`` picks for bf16 on a CUDA card, named here so the CPU dry run takes the same path).
  transformers runs its defaults: SDPA attention and its grouped_mm experts where available.

Timing: ``benchmarks/bench_model.timed`` (median of ``iters`` after ``warmup`` untimed calls,
CUDA synchronised around each call).
"""

from __future__ import annotations

import dataclasses
import gc

import torch
import torch.nn.functional as F

from benchmarks.bench_model import peak_gib, reset_peak, synthetic_page, timed
from models.config import DeepseekOCRConfig
from models.moe import set_experts_impl

from . import flops
from .reference import TextDecoder, copy_decoder_to_hf, copy_sam_to_hf, hf_sam_encoder, hf_text_model


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _train_step(model: torch.nn.Module, loss_fn, optimizer=None):
    def step():
        model.zero_grad(set_to_none=True)
        loss_fn().backward()
        if optimizer is not None:
            optimizer.step()
    return step


def mode_views(mode: str, batch: int, device: str, dtype: torch.dtype, page_size=(1240, 1754)):
    """``batch`` A4 pages preprocessed for ``mode`` (Gundam: 2x3 tiles + global view)."""
    from models.image_processing import preprocess_image

    img = preprocess_image(synthetic_page(*page_size), mode).to(device=device, dtype=dtype)
    return [img] * batch


def _pixels_by_side(images) -> list[torch.Tensor]:
    """The views of ``images`` grouped by side, as DeepEncoder batches them: (n, 3, S, S) each."""
    by_side: dict[int, list[torch.Tensor]] = {}
    for img in images:
        by_side.setdefault(img.global_view.shape[-1], []).append(img.global_view[None])
        if img.tiles.shape[0]:
            by_side.setdefault(img.tiles.shape[-1], []).append(img.tiles)
    return [torch.cat(v) for _, v in sorted(by_side.items())]


def encoder_speed(cfg: DeepseekOCRConfig, modes: list[str], batch: int, device: str, dtype: torch.dtype,
                  iters: int, warmup: int, peak: float | None, budget) -> list[dict]:
    """One row per mode (see module docstring); stops early (rows so far) when ``budget`` runs out."""
    from models.deepencoder import DeepEncoder

    torch.manual_seed(0)
    with torch.device(device):  # built and initialised where it runs (seconds on a CPU at full size)
        enc = DeepEncoder(cfg).to(dtype).train()
        hf = hf_sam_encoder(cfg.sam).to(dtype).train()
    copy_sam_to_hf(enc.sam_model, hf)
    rows = []
    for mode in modes:
        if budget.expired():
            rows.append({"mode": mode, "skipped": "section budget spent"})
            continue
        try:
            rows.append(_encoder_mode(cfg, enc, hf, mode, batch, device, dtype, iters, warmup, peak))
        except torch.OutOfMemoryError as e:  # recorded; the next (smaller or other) mode still runs
            rows.append({"mode": mode, "skipped": f"out of memory: {str(e).splitlines()[0][:200]}"})
        enc.zero_grad(set_to_none=True)
        hf.zero_grad(set_to_none=True)
        _free(device)
    del enc, hf
    _free(device)
    return rows


def _encoder_mode(cfg, enc, hf, mode: str, batch: int, device: str, dtype: torch.dtype, iters: int, warmup: int,
                  peak: float | None) -> dict:
    """One mode's row of ``encoder_speed``."""
    images = mode_views(mode, batch, device, dtype)
    pixels = _pixels_by_side(images)
    sides = [p.shape[-1] for p in pixels for _ in range(p.shape[0])]
    with torch.no_grad():  # same weights, same pixels: the two SAMs agree
        diff = max(float((enc.sam_model(p[:1]).float() - hf(pixel_values=p[:1]).last_hidden_state.float()).abs().max())
                   for p in pixels)
    row = {"mode": mode, "batch": batch, "views": len(sides), "view_sides": sorted(set(sides)),
           "vision_tokens": images[0].num_tokens, "sam_max_abs_diff": diff}
    parts = (
        ("deepencoder", enc, lambda: sum(o.float().square().mean() for o in enc(images)),
         flops.encoder_train_flops(cfg, sides)),
        ("sam", enc.sam_model, lambda: sum(enc.sam_model(p).float().square().mean() for p in pixels),
         flops.sam_train_flops(cfg.sam, sides)),
        ("sam_transformers", hf,
         lambda: sum(hf(pixel_values=p).last_hidden_state.float().square().mean() for p in pixels),
         flops.sam_train_flops(cfg.sam, sides)),
    )
    for name, module, loss_fn, step_flops in parts:
        _free(device)
        reset_peak(torch.device(device))
        sec = timed(_train_step(module, loss_fn), torch.device(device), iters, warmup)
        row[f"{name}_images_per_s"] = batch / sec
        row[f"{name}_peak_gib"] = peak_gib(torch.device(device))
        row[f"{name}_mfu"] = flops.mfu(step_flops, sec, peak)
    row["sam_ratio"] = row["sam_images_per_s"] / row["sam_transformers_images_per_s"]
    return row


def decoder_speed(cfg: DeepseekOCRConfig, layers: int, batch: int, seq_len: int, device: str, dtype: torch.dtype,
                  iters: int, warmup: int, peak: float | None, check_len: int) -> dict:
    """The decoder-slice row (module docstring): equality in fp32, then tokens/s, MFU, memory."""
    c = dataclasses.replace(cfg.decoder, num_hidden_layers=layers, moe_impl="loop")
    torch.manual_seed(0)
    with torch.device(device):
        ours = TextDecoder(c, head=True)
        hf = hf_text_model(c)
        hf_head = torch.nn.Linear(c.hidden_size, c.vocab_size, bias=False)
    copy_decoder_to_hf(ours, hf)
    hf_head.weight.data.copy_(ours.lm_head.weight.data)
    g = torch.Generator().manual_seed(1)
    row = {"layers": layers, "moe_layers": max(0, layers - c.first_k_dense_replace), "batch": batch,
           "seq_len": seq_len, "params": sum(p.numel() for p in ours.parameters()),
           "transformers_attn": hf.config._attn_implementation,
           "transformers_experts": getattr(hf.config, "_experts_implementation", None)}
    ids = torch.randint(0, c.vocab_size, (1, check_len), generator=g).to(device)
    speed_experts = row["transformers_experts"]
    hf.set_experts_implementation("eager")  # fp32: the per-expert loop on both sides
    with torch.no_grad():  # the implementations agree on the same weights
        row["max_abs_diff_fp32"] = float((ours(ids)[0] - hf(input_ids=ids).last_hidden_state).abs().max())
        row["check_tokens"] = check_len
    if speed_experts:
        hf.set_experts_implementation(speed_experts)
    set_experts_impl(ours, "grouped")  # timed: grouped GEMM, on CUDA and on the dry run's CPU alike
    row["ocrflow_experts"] = "grouped"
    ours.to(dtype).train()
    hf.to(dtype).train()
    hf_head.to(dtype)
    with torch.no_grad():  # same router values on both sides whatever dtype each keeps them in
        for mine, theirs in zip(ours.layers, hf.layers):
            if mine.is_moe:
                theirs.mlp.gate.weight.copy_(mine.mlp.gate.weight)
    ids = torch.randint(0, c.vocab_size, (batch, seq_len), generator=g).to(device)

    def ce(hidden, head):
        logits = head(hidden[:, :-1])  # (B, T-1, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())

    def ours_loss():
        h, aux = ours(ids)
        return ce(h, ours.lm_head) + aux

    def hf_loss():
        return ce(hf(input_ids=ids).last_hidden_state, hf_head)

    step_flops = flops.decoder_train_flops(c, batch, seq_len)
    row["flops_per_step"] = step_flops
    for name, params, loss_fn in (("ocrflow", list(ours.parameters()), ours_loss),
                                  ("transformers", list(hf.parameters()) + list(hf_head.parameters()), hf_loss)):
        opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
        _free(device)
        reset_peak(torch.device(device))
        module = ours if name == "ocrflow" else torch.nn.ModuleList([hf, hf_head])
        sec = timed(_train_step(module, loss_fn, opt), torch.device(device), iters, warmup)
        row[f"{name}_tokens_per_s"] = batch * seq_len / sec
        row[f"{name}_step_s"] = sec
        row[f"{name}_peak_gib"] = peak_gib(torch.device(device))
        row[f"{name}_mfu"] = flops.mfu(step_flops, sec, peak)
        module.zero_grad(set_to_none=True)
        del opt
    row["ratio"] = row["ocrflow_tokens_per_s"] / row["transformers_tokens_per_s"]
    del ours, hf, hf_head
    _free(device)
    return row
