"""Stage 1: train the DeepEncoder with a compact causal LM (paper section 3.5.1).

The paper trains DeepEncoder (SAM-base + 16x compressor + CLIP-L + projector) by next-token
prediction through a small OPT-125M-size language model (the Vary recipe): AdamW, cosine
schedule, lr 5e-5, sequence length 4096, global batch 1280, 2 epochs. Here:

* ``Stage1Model``: ``encoder`` = ``models.deepencoder.DeepEncoder`` whose projector outputs
  the LM width, ``lm`` = ``transformers.OPTForCausalLM`` built from config (no download).
  Vision embeddings are scattered, in order, into the ``<image>`` token positions of the LM's
  input embeddings; packed samples attend only inside their segment (block-diagonal causal
  mask) and positions restart per segment.
* ``run_stage1(cfg)``: DeepSpeed data parallel (ZeRO stage from ``cfg.deepspeed``), torch
  AdamW + warmup/cosine, checkpoints with exact resume (train/checkpoints.py), metrics
  (train/logging.py), and at the end ``<out_dir>/encoder.safetensors`` for stage 2
  (``model.encoder_from``): ``sam_model.*`` and ``vision_model.*`` always; ``projector.*``,
  ``image_newline`` and ``view_seperator`` only when the LM width equals the stage-2 decoder
  width (otherwise stage 2 initialises them fresh, as their shapes differ), and
  ``<out_dir>/run_config.yaml`` (the resolved config ``python -m train.evaluate`` rebuilds the
  run's model from).
* DeepSeek-OCR 2 presets (``model=tiny_ocr2`` / ``deepseek_ocr2``, recipe ``ocr2_stage1``): the
  encoder is ``models.deepencoder_v2.DeepEncoderV2`` (SAM + flow encoder + projector); the file
  holds ``sam_model.*`` and ``qwen2_model.*`` (+ projector / separator when widths match).
* ``model.sam_from`` / ``model.clip_from``: DeepEncoder starts from public SAM ViT-B / CLIP
  ViT-L/14 weights (``models.pretrained``; the paper's init), refused with names on mismatch.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.config import DeepseekOCR2Config, DeepseekOCRConfig, get_preset
from models.deepencoder_v2 import build_vision_encoder
from models.image_processing import ImageInput
from models.pretrained import init_encoder_from_pretrained

from .checkpoints import resume_if_requested, save_checkpoint
from .config import Config, Stage1LMConfig, as_config, typed
from .deepspeed_config import build_ds_config
from .distributed import touch_params
from .eval.loading import save_run_config
from .logging import (MetricsLogger, library_prints, quiet_libraries, reduce_breakdowns,
                      token_loss_breakdown)
from .lr_schedule import build_lr_scheduler
from .optimizer import build_optimizer, current_lrs
from .pace import StepPace, WallLimit
from .run_setup import start_run

IGNORE_INDEX = -100
ENCODER_FILE = "encoder.safetensors"
# always handed to stage 2; the rest only when widths match
_ENCODER_CORE = ("sam_model.", "vision_model.", "qwen2_model.")


def load_stage1_weights(model: nn.Module, run: str | Path) -> Path:
    """Weights of ``run``'s latest checkpoint into ``model`` (same preset, LM and tokenizer, else
    refused with the names that differ); the optimizer and step start fresh."""
    from .eval.loading import latest_module_state, load_stage1_state

    state, tag_dir = latest_module_state(Path(run) / "checkpoints")
    load_stage1_state(model, state, f"model.stage1_from={run}: checkpoint {tag_dir.name} does not fit this model "
                                    "(same preset, stage1_lm and tokenizer needed)")
    return tag_dir


def packed_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) segment ids -> (B, 1, T, T) additive mask: causal inside a segment only.

    Padding (segment 0) attends to itself alone, so no softmax row is empty (NaN-free); its
    outputs carry no loss.
    """
    B, T = segment_ids.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    real = (segment_ids > 0)[:, :, None]
    allowed = (same & causal & real) | torch.eye(T, dtype=torch.bool, device=segment_ids.device)
    mask = torch.zeros(B, 1, T, T, dtype=dtype, device=segment_ids.device)
    return mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)


def opt_config(lm_cfg: Any, vocab_size: int, *, pad_token_id: int, bos_token_id: int,
               eos_token_id: int, min_positions: int = 0):
    """An OPT config (OPT-125M layout: pre-LN, ReLU FFN, learned positions, tied head)."""
    from transformers import OPTConfig

    lm_cfg = typed(lm_cfg, Stage1LMConfig)
    d = lm_cfg.hidden_size
    return OPTConfig(
        vocab_size=vocab_size,
        hidden_size=d,
        word_embed_proj_dim=d,
        num_hidden_layers=lm_cfg.num_layers,
        num_attention_heads=lm_cfg.num_heads,
        ffn_dim=lm_cfg.ffn_dim or 4 * d,
        max_position_embeddings=max(lm_cfg.max_position_embeddings, min_positions),
        dropout=lm_cfg.dropout,
        attention_dropout=0.0,
        activation_function="relu",
        do_layer_norm_before=True,
        layerdrop=0.0,
        enable_bias=True,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
    )


class Stage1Model(nn.Module):
    """DeepEncoder + OPT causal LM. ``forward`` returns (loss, token_loss (B, T-1), label_mask)."""

    def __init__(self, ocr_cfg: DeepseekOCRConfig | DeepseekOCR2Config, lm_config) -> None:
        super().__init__()
        from transformers import OPTForCausalLM

        width = lm_config.hidden_size
        # the projector maps to the LM width (768 for OPT-125M, not the MoE decoder's 1280)
        enc_cfg = ocr_cfg.replace(decoder=dataclasses.replace(ocr_cfg.decoder, hidden_size=width))
        self.encoder = build_vision_encoder(enc_cfg)  # DeepEncoder, or DeepEncoderV2 for an ocr2 preset
        lm_config._attn_implementation = "sdpa"
        self.lm = OPTForCausalLM(lm_config)
        self.image_token_id = int(ocr_cfg.image_token_id)
        self.width = width

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.encoder.set_gradient_checkpointing(enabled)
        if enabled:
            self.lm.gradient_checkpointing_enable()
        else:
            self.lm.gradient_checkpointing_disable()

    def embed(self, input_ids: torch.Tensor, images: list[ImageInput]) -> torch.Tensor:
        """(B, T) ids -> (B, T, D) input embeddings with vision tokens at ``<image>`` ids."""
        embeds = self.lm.get_input_embeddings()(input_ids)  # (B, T, D)
        slots = input_ids == self.image_token_id  # (B, T)
        n_slots = int(slots.sum())
        vision = self.encoder(list(images))  # list of (num_tokens_i, D)
        n_vision = sum(v.shape[0] for v in vision)
        if n_slots != n_vision:
            raise ValueError(
                f"{n_slots} <image> token positions but the {len(images)} image(s) give {n_vision} "
                "vision tokens: the prompt expansion and the images disagree"
            )
        if n_vision:
            flat = torch.cat(vision).to(embeds.dtype)  # (N, D), row-major = order of <image> runs
            embeds = embeds.masked_scatter(slots[..., None], flat)
        else:  # text-only micro-batch: zero grads for the encoder (ZeRO buckets, see touch_params)
            embeds = touch_params(embeds, self.encoder)
        return embeds

    def forward(self, input_ids: torch.Tensor, images: list[ImageInput] = (),
                labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None):
        embeds = self.embed(input_ids, images)  # (B, T, D)
        if segment_ids is None:
            segment_ids = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        mask = packed_causal_mask(segment_ids, embeds.dtype)
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                         use_cache=False).logits  # (B, T, V)
        if labels is None:
            return logits
        # next-token loss: position t predicts labels[t + 1] (labels aligned with input_ids),
        # never across a packed-segment boundary (same rule as train.pipeline.PipelineLoss)
        target = labels[:, 1:].masked_fill(segment_ids[:, 1:] != segment_ids[:, :-1], IGNORE_INDEX)
        token_loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX,
            reduction="none",
        ).view_as(target)  # (B, T-1)
        label_mask = target != IGNORE_INDEX
        loss = token_loss.sum() / label_mask.sum().clamp_min(1)
        return loss, token_loss, label_mask


def build_stage1_model(cfg: Any, vocab_size: int | None = None, *,
                       special_ids: dict[str, int] | None = None,
                       seq_len: int = 0) -> Stage1Model:
    """Stage1Model from ``cfg.model`` (preset + ``stage1_lm``) sized for a tokenizer.

    ``vocab_size``/``special_ids`` (bos, eos, pad, image) come from the tokenizer; without them
    the preset's values are used (e.g. building the paper model on the meta device).
    """
    mcfg = as_config(cfg).model  # a building block: a caller may hand it a dict
    ocr_cfg = get_preset(mcfg.preset)
    ids = {"bos_token_id": ocr_cfg.bos_token_id, "eos_token_id": ocr_cfg.eos_token_id,
           "pad_token_id": ocr_cfg.pad_token_id, "image_token_id": ocr_cfg.image_token_id}
    ids.update(special_ids or {})
    vocab = int(vocab_size or ocr_cfg.decoder.vocab_size)
    ocr_cfg = ocr_cfg.with_vocab(vocab, **ids)
    lm = opt_config(mcfg.stage1_lm, vocab, pad_token_id=ids["pad_token_id"],
                    bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"],
                    min_positions=seq_len)
    return Stage1Model(ocr_cfg, lm)


def encoder_state_for_stage2(model: Stage1Model, stage2_width: int) -> dict[str, torch.Tensor]:
    """The encoder tensors stage 2 can load (DeepseekOCRModel names, see module docstring)."""
    state = model.encoder.state_dict()
    keep_all = model.width == stage2_width
    return {k: v.detach().cpu().contiguous() for k, v in state.items()
            if keep_all or k.startswith(_ENCODER_CORE)}


def save_encoder(model: Stage1Model, path: str | Path, stage2_width: int, meta: dict | None = None) -> Path:
    from models.checkpoint import write_safetensors

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = encoder_state_for_stage2(model, stage2_width)
    metadata = {"format": "pt", "producer": "ocrflow.train.stage1",
                "stage1_lm_width": str(model.width), "stage2_width": str(stage2_width),
                **{k: str(v) for k, v in (meta or {}).items()}}
    return write_safetensors(tensors, path, metadata)  # same tensors, same bytes (resumed or not)


def _group_sums(token_loss, label_mask, batch) -> dict[str, tuple[float, int]]:
    from .data import MODES, SOURCES

    src = batch.source_ids[:, 1:]  # group of the *predicted* token
    mode = batch.mode_ids[:, 1:]
    out = token_loss_breakdown(token_loss, label_mask, src, SOURCES, "loss/source")
    out.update(token_loss_breakdown(token_loss, label_mask, mode, MODES, "loss/mode"))
    return out


def _all_reduce_sums(parts: dict[str, tuple[float, int]], extra: list[float], device) -> tuple[dict, list[float]]:
    """Sum (loss-sum, count) pairs and extra counters over ranks (fixed key order)."""
    import torch.distributed as dist

    from .data import MODES, SOURCES

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return parts, extra
    keys = [f"loss/source/{s}" for s in SOURCES] + [f"loss/mode/{m}" for m in MODES]
    vec = torch.tensor([v for k in keys for v in parts.get(k, (0.0, 0))] + extra,
                       dtype=torch.float64, device=device)
    dist.all_reduce(vec)
    vals = vec.tolist()
    out = {k: (vals[2 * i], int(vals[2 * i + 1])) for i, k in enumerate(keys) if vals[2 * i + 1] > 0}
    return out, vals[2 * len(keys):]


def run_stage1(cfg: Config) -> dict:
    """Train stage 1 per ``cfg`` (see conf/); returns a summary dict (paths, losses, speed).
    ``cfg``: the typed ``Config`` (``train.api.compose`` / ``train``), passed down as it is."""
    cfg = as_config(cfg)  # as it is when a Config (train.api.train's); converted once otherwise
    verbose = cfg.logging.verbose
    quiet_libraries(verbose)  # before DeepSpeed is imported
    import deepspeed

    from .data import build_train_loader

    with library_prints(verbose):  # what DeepSpeed prints while it sets up
        (tcfg, mcfg, dcfg, rank, world, device, seed, steps, seq_len,
         out_dir, ckpt_dir, tok) = start_run(cfg)
        special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                   "pad_token_id": tok.pad_token_id, "image_token_id": tok.image_token_id}
        model = build_stage1_model(cfg, tok.vocab_size, special_ids=special, seq_len=seq_len)
        # model.sam_from / model.clip_from: public SAM ViT-B / CLIP ViT-L/14 weights (refused, named, on mismatch)
        pretrained = init_encoder_from_pretrained(model.encoder, mcfg.sam_from, mcfg.clip_from)
        if mcfg.stage1_from:  # a curriculum step: the whole model (encoder + LM) of an earlier run
            load_stage1_weights(model, mcfg.stage1_from)
        if mcfg.gradient_checkpointing:
            model.set_gradient_checkpointing(True)
        stage2_width = get_preset(mcfg.preset).decoder.hidden_size

        ds_config = build_ds_config(cfg, world)
        accum = ds_config["gradient_accumulation_steps"]
        optimizer = build_optimizer(model, cfg.optim)
        scheduler = build_lr_scheduler(optimizer, cfg.optim, steps)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                               lr_scheduler=scheduler, config=ds_config)
    loader = build_train_loader(dcfg, tok, seq_len=seq_len,
                                micro_batch_size=ds_config["train_micro_batch_size_per_gpu"],
                                seed=seed, rank=rank, world_size=world)  # data.seed wins when set

    step, resume = resume_if_requested(engine, tcfg, ckpt_dir, loader)
    reliance = _stage1_reliance(engine, cfg, tok, seq_len, ds_config["train_micro_batch_size_per_gpu"],
                                seed, device)

    n_params = sum(p.numel() for p in model.parameters())
    logger = MetricsLogger(cfg, out_dir, steps, run_config=cfg, start_step=step)
    logger.info(f"stage 1: {n_params / 1e6:.1f}M params (encoder "
                f"{sum(p.numel() for p in model.encoder.parameters()) / 1e6:.1f}M), world {world}, "
                f"micro {ds_config['train_micro_batch_size_per_gpu']} x accum {accum} x dp {world} "
                f"= {ds_config['train_batch_size']}, seq {seq_len}, ZeRO-{ds_config['zero_optimization']['stage']}"
                + (f", resumed at step {step} from {resume}" if resume else ""))

    for report in pretrained:
        logger.info(report.summary())
    save_every, keep_last = tcfg.save_every, tcfg.keep_last
    losses: list[float] = []
    step_times: list[float] = []
    tokens_seen = 0
    it = iter(loader)
    pace = StepPace()  # one warning if steps slow down far below their pace (busy machine)
    limit = WallLimit(tcfg.max_wall_s, device)  # train.max_wall_s: a fixed-time run ends early
    stopped_by = "train.steps"
    engine.train()
    while step < steps:
        t0 = time.perf_counter()
        lrs = current_lrs(optimizer)  # the lrs this step uses (the scheduler steps with it)
        parts, loss_sum, n_label, n_tokens, n_samples = [], 0.0, 0, 0, 0
        for _ in range(accum):
            batch = next(it).to(device)
            loss, token_loss, label_mask = engine(
                input_ids=batch.input_ids, images=batch.images, labels=batch.labels,
                position_ids=batch.position_ids, segment_ids=batch.segment_ids)
            engine.backward(loss)
            engine.step()
            parts.append(_group_sums(token_loss, label_mask, batch))
            loss_sum += float(token_loss.detach()[label_mask].sum())
            n_label += int(label_mask.sum())
            n_tokens += int((batch.segment_ids > 0).sum())
            n_samples += int(batch.segment_ids.max(dim=1).values.sum())
        step += 1
        merged, (loss_sum, n_label, n_tokens, n_samples) = _all_reduce_sums(
            reduce_pairs(parts), [loss_sum, n_label, n_tokens, n_samples], device)
        dt = time.perf_counter() - t0
        step_loss = loss_sum / max(n_label, 1)
        if rank == 0:
            pace.observe(step, dt)
        losses.append(step_loss)
        step_times.append(dt)
        tokens_seen += int(n_tokens)
        gn = engine.get_global_grad_norm()
        metrics = {"loss": step_loss, **lrs,
                   "tokens_per_s": n_tokens / dt, "samples_per_s": n_samples / dt, "step_time_s": dt,
                   **reduce_breakdowns([merged])}
        if gn is not None:
            metrics["grad_norm"] = float(gn)
        if reliance is not None and reliance.due(step, steps):
            engine.eval()
            metrics.update(reliance.measure(step))
            engine.train()
        if step < steps and limit.reached():
            stopped_by = "train.max_wall_s"
            logger.info(f"train.max_wall_s={tcfg.max_wall_s}: stopping after step {step} of {steps} "
                        f"({limit.elapsed():.0f} s)")
        logger.log(step, metrics)
        if (save_every and step % save_every == 0) or step == steps or stopped_by != "train.steps":
            save_checkpoint(engine, ckpt_dir, step, {"data": loader.state_dict()}, keep_last=keep_last)
        if stopped_by != "train.steps":
            break

    encoder_path = out_dir / ENCODER_FILE
    _save_encoder_collective(engine, model, encoder_path, stage2_width, rank,
                             meta={"preset": mcfg.preset, "steps": step})
    # steady-state speed: skip the first step (allocator / lazy init warm-up) when we can
    timed = step_times[1:] if len(step_times) > 1 else step_times
    result = {
        "stage": 1, "out_dir": str(out_dir), "checkpoint_dir": str(ckpt_dir),
        "encoder_path": str(encoder_path), "steps": step, "stopped_by": stopped_by, "losses": losses,
        "final_loss": losses[-1] if losses else None,
        "mean_step_time_s": sum(timed) / len(timed) if timed else None,
        "tokens_seen": tokens_seen, "params": n_params, "data_stats": loader.stats,
        "reliance": reliance.history if reliance is not None else [],
        "pretrained": [r.summary() for r in pretrained],
    }
    if rank == 0:
        (out_dir / "stage1_result.json").write_text(json.dumps(
            {k: v for k, v in result.items() if k != "data_stats"}, indent=1))
        save_run_config(cfg, out_dir)  # train.evaluate rebuilds the model from it
    logger.summary({"final_loss": result["final_loss"], "mean_step_time_s": result["mean_step_time_s"]})
    logger.close()
    return result


def _stage1_reliance(engine, cfg, tok, seq_len: int, micro: int, seed: int, device):
    """The vision-reliance probe (train/reliance.py) on the DeepSpeed engine, or None (off)."""
    from .reliance import VisionReliance, heldout_batches

    rcfg = cfg.train.reliance
    if rcfg.every <= 0:
        return None
    batches = heldout_batches(rcfg, cfg.data, tok, seq_len=seq_len, micro_batch_size=micro,
                              seed=seed)

    @torch.no_grad()
    def loss_fn(b):
        _, token_loss, mask = engine(input_ids=b.input_ids, images=b.images, labels=b.labels,
                                     position_ids=b.position_ids, segment_ids=b.segment_ids)
        return float(token_loss[mask].sum()), int(mask.sum())

    return VisionReliance(rcfg, batches, loss_fn, device)


def reduce_pairs(parts: list[dict[str, tuple[float, int]]]) -> dict[str, tuple[float, int]]:
    """Sum (loss-sum, count) pairs of several micro-batches."""
    acc: dict[str, tuple[float, int]] = {}
    for p in parts:
        for k, (s, n) in p.items():
            s0, n0 = acc.get(k, (0.0, 0))
            acc[k] = (s0 + s, n0 + n)
    return acc


def _save_encoder_collective(engine, model: Stage1Model, path: Path, stage2_width: int, rank: int,
                             meta: dict) -> None:
    """Rank 0 writes the encoder; under ZeRO-3 the shards are gathered first (collective)."""
    import torch.distributed as dist

    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.encoder.parameters()), modifier_rank=None):
            if rank == 0:
                save_encoder(model, path, stage2_width, meta)
    elif rank == 0:
        save_encoder(model, path, stage2_width, meta)
    if dist.is_initialized():
        dist.barrier()
