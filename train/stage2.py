"""Stage 2: train the whole DeepSeek-OCR with DeepSpeed pipeline parallelism (paper section 3.5).

PP stages from ``train/pipeline.py`` (paper: SAM + compressor frozen | CLIP + projector + merge
| decoder 0-5 | decoder 6-11 + head), data parallelism with ZeRO-1 across DP groups (dp =
world / pp), AdamW with the step (or cosine) schedule of ``train.lr_schedule``. The loop is
``engine.train_batch``: one call runs grad-accum micro-batches through the 1F1B schedule.

* Data: only the first stage of each pipeline reads ``train.data.build_train_loader`` (with
  rank = DP rank, world = DP size); labels and source/mode ids ride along the activations.
* Logging (rank 0): loss, CE, aux loss, per data source / resolution mode CE, lr, grad norm,
  tokens/s, samples/s, step time, expert load (every ``logging.log_every`` steps).
* Checkpoints: ``train.checkpoints.save_checkpoint`` every ``save_every`` steps and at the end
  (DeepSpeed layer files + optimizer + scheduler, per-rank RNG and data position), exact
  resume with ``train.resume`` (auto | path).
* Export: at the end each stage writes its own parameters (model names, published layout) as
  one file of a sharded safetensors checkpoint in ``<out_dir>/model`` and rank 0 writes the
  index and config.json from the files' headers: no rank ever holds more than its stage.
  Loadable by ``models.checkpoint.import_checkpoint``.

Construction per stage (``train/stage_build.py``): the model is built on the meta device and
each rank materialises only its own stage's units, on its device and in the training dtype
(``deepspeed.dtype``). Init: ``model.init_from`` (published / exported checkpoint, strict;
only the stage's tensors are read) and/or ``model.encoder_from`` (stage-1
``encoder.safetensors``: SAM, CLIP and, when widths match, projector / newline / separator),
else the model's own init, seeded per part from ``train.seed`` (identical on every DP replica
and for every partition). ``build_stage2_model`` still builds the whole model in one process
(evaluation, tests, the memory benchmark's "before").
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoints import resume_if_requested, save_checkpoint
from .config import Config, ConfigError, as_config
from .deepspeed_config import build_ds_config
from .logging import MetricsLogger, expert_load_metrics, library_prints, quiet_libraries
from .lr_schedule import build_lr_scheduler
from .optimizer import build_optimizer, current_lrs, encoder_has_own_schedule
from .pace import StepPace
from .run_setup import start_run

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # model.dtype (schema choices)
EXPORT_DIRNAME = "model"


def stage2_model_config(cfg: Config, tokenizer=None):
    """``DeepseekOCRConfig`` for ``cfg.model``: the config of ``init_from`` if given, else the
    preset sized for the tokenizer; ``moe_impl`` / ``aux_loss_alpha`` overrides applied."""
    from models.checkpoint import load_config
    from models.config import get_preset

    mcfg = cfg.model
    init_from = mcfg.init_from
    if init_from:
        mc = load_config(init_from)
    else:
        mc = get_preset(mcfg.preset)
        if tokenizer is not None:
            mc = mc.with_vocab(tokenizer.vocab_size, bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                               image_token_id=tokenizer.image_token_id)
    if tokenizer is not None and tokenizer.vocab_size > mc.decoder.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, the model's vocabulary only "
                         f"{mc.decoder.vocab_size}: model.tokenizer does not belong to model.init_from")
    dec = dataclasses.replace(mc.decoder, moe_impl=mcfg.moe_impl, aux_loss_alpha=mcfg.aux_loss_alpha)
    return mc.replace(decoder=dec)


def build_stage2_model(cfg: Any, tokenizer=None):
    """The whole ``DeepseekOCRForCausalLM`` for ``cfg.model`` in this process (fp32, CPU), with
    published weights and/or the stage-1 encoder. Training builds per stage instead
    (``build_stage2_pipeline``)."""
    from models.checkpoint import load_published_weights
    from models.deepseek_ocr import DeepseekOCRForCausalLM

    cfg = as_config(cfg)  # a building block: a caller may hand it a dict
    mcfg = cfg.model
    init_from, encoder_from = mcfg.init_from, mcfg.encoder_from
    model = DeepseekOCRForCausalLM(stage2_model_config(cfg, tokenizer))
    if init_from:
        load_published_weights(model, init_from, strict=True)
    if encoder_from:
        load_encoder(model, encoder_from)
    return model


def load_encoder(model, path: str | Path) -> list[str]:
    """Load a stage-1 encoder file (``DeepEncoder`` names) into ``model.model``; returns the
    names loaded. Shapes must match; names outside the encoder are an error."""
    from .stage_build import load_encoder_tensors

    return load_encoder_tensors(model, path)


def build_stage2_pipeline(cfg: Any, tokenizer, pp: int, device, seed: int):
    """This rank's stage of the stage-2 ``PipelineModule``, built per stage (module docstring).
    Returns (module, model config, number of parameters of the whole model)."""
    from functools import partial

    from models.checkpoint import build_meta_model

    from .pipeline import build_pipeline_module
    from .stage_build import init_stage_weights

    cfg = as_config(cfg)  # a building block: a caller may hand it a dict
    tcfg, mcfg = cfg.train, cfg.model
    mc = stage2_model_config(cfg, tokenizer)
    model = build_meta_model(mc)  # names and shapes only
    if mcfg.gradient_checkpointing:
        model.model.set_gradient_checkpointing(True)  # SAM / CLIP blocks
    module = build_pipeline_module(
        model, pp, partition=tcfg.partition, freeze_sam=tcfg.freeze_sam, freeze_encoder=tcfg.freeze_encoder,
        vision_max_batch=tcfg.vision_max_batch, checkpoint_layers=mcfg.gradient_checkpointing,
        init_stage=partial(init_stage_weights, model, device=device, dtype=_DTYPES[cfg.deepspeed.dtype],
                           seed=seed, init_from=mcfg.init_from, encoder_from=mcfg.encoder_from),
    )
    return module, mc, model.num_parameters()


def _stats_metrics(extra: dict[str, float]) -> dict[str, float]:
    """DeepSpeed-averaged PipelineLoss stats -> logged metrics (per-group mean CE)."""
    m = {"ce": extra["ce"], "aux_loss": extra["aux"]}
    for k, v in extra.items():
        if k.startswith("ce_sum/"):
            _, kind, name = k.split("/")
            n = extra[f"n/{kind}/{name}"]
            if n > 0:
                m[f"loss/{kind}/{name}"] = v / n
    return m


def _expert_load(engine, num_layers: int, n_experts: int) -> torch.Tensor | None:
    """(L_moe, E) tokens per routed expert in the last micro-batch, summed over the pipeline
    stages (each holds its own layers). Collective over the pipe group."""
    import torch.distributed as dist

    from .pipeline import DecoderBlock

    counts = torch.zeros(num_layers, n_experts, dtype=torch.float64)
    moe = torch.zeros(num_layers, dtype=torch.float64)
    for unit in engine.module.forward_funcs:
        if isinstance(unit, DecoderBlock):
            for i, layer in unit.layers.items():
                if layer.is_moe:
                    counts[int(i)] = layer.mlp.last_expert_load.double().cpu()
                    moe[int(i)] = 1
    if engine.is_pipe_parallel:
        group = engine.grid.get_pipe_parallel_group()
        dist.all_reduce(counts, group=group)
        dist.all_reduce(moe, group=group)
    keep = moe > 0
    return counts[keep] if keep.any() else None


def export_pipeline(engine, mcfg, out_dir: Path, dtype: torch.dtype | None, tokenizer: str | None = None) -> Path:
    """Collective: the first DP replica of every stage writes its parameters (published names)
    as file ``stage`` of ``pp`` of a sharded checkpoint in ``out_dir/model``; rank 0 then writes
    the index and config.json from the files' headers (+ the ``tokenizer`` folder's files). No
    rank loads more than its stage.
    Needs a file system all ranks see (the usual shared run directory)."""
    import torch.distributed as dist

    from models.checkpoint import write_checkpoint_index, write_checkpoint_shard

    dest = out_dir / EXPORT_DIRNAME
    n_stages = engine.num_stages
    if dist.get_rank() == 0:
        if dest.exists():  # an earlier export (other sharding) must not linger
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
    dist.barrier()
    if engine.grid.get_data_parallel_rank() == 0:
        write_checkpoint_shard(engine.module.model_state_dict(), dest, engine.stage_id, n_stages, dtype)
    dist.barrier()
    if dist.get_rank() == 0:
        write_checkpoint_index(dest, mcfg, n_stages, dtype, tokenizer=tokenizer)
    dist.barrier()
    return dest


def _tokenizer_file(tok) -> str | None:
    """The tokenizer.json the run loaded (copied into the export), None for an in-memory one."""
    source = getattr(tok, "source", None)
    return source if source and Path(source).is_file() else None


def _stage2_reliance(engine, cfg, tok, seq_len: int, micro: int, seed: int):
    """The vision-reliance probe (train/reliance.py) through ``engine.eval_batch`` (every
    rank takes part; the first stage feeds the batches), or None (off). The pipeline's loss
    includes the MoE aux loss (x aux_loss_alpha), equal for real and blank pages up to routing."""
    from .pipeline import PipelineBatches
    from .reliance import VisionReliance, heldout_batches

    rcfg = cfg.train.reliance
    if rcfg.every <= 0:
        return None
    batches = heldout_batches(rcfg, cfg.data, tok, seq_len=seq_len, micro_batch_size=micro,
                              seed=seed)

    def loss_fn(b):
        data = PipelineBatches(iter([b]), engine.is_first_stage())
        loss = engine.eval_batch(data, num_micro_batches=1)  # broadcast to every stage
        return float(loss), 1  # one value per micro-batch: mean over batches

    return VisionReliance(rcfg, batches, loss_fn)


def _check_pipeline_groups(cfg: Config, pp: int) -> None:
    """ZeRO reduces gradient norms once per parameter group across the pipeline stages, so every
    stage needs the same groups; the encoder lives on the first stages only."""
    if pp > 1 and encoder_has_own_schedule(cfg.optim) and cfg.deepspeed.zero_stage >= 1:
        raise ConfigError(
            "optim.encoder_lr_scale / sam_lr_scale / encoder_warmup_steps give the encoder its own "
            f"parameter groups, which only the first pipeline stages have; with train.pp={pp} and ZeRO "
            f"stage {cfg.deepspeed.zero_stage} the stages would wait on each other forever. Use them in "
            "stage 1 or with train.pp=1 (stage 2 trains a pretrained encoder at the common lr)")


def run_stage2(cfg: Config) -> dict:
    """Train stage 2 per ``cfg`` (see conf/, experiment/paper_stage2.yaml); returns a summary.
    ``cfg``: the typed ``Config`` (``train.api.compose`` / ``train``), passed down as it is."""
    cfg = as_config(cfg)  # as it is when a Config (train.api.train's); converted once otherwise
    verbose = cfg.logging.verbose
    quiet_libraries(verbose)  # before DeepSpeed is imported
    import deepspeed

    from .data import build_train_loader
    from .pipeline import PipelineBatches

    with library_prints(verbose):  # what DeepSpeed prints while it sets up (topology, seeds)
        (tcfg, mcfg, dcfg, rank, world, device, seed, steps, seq_len,
         out_dir, ckpt_dir, tok) = start_run(cfg)
        pp = tcfg.pp
        _check_pipeline_groups(cfg, pp)  # before the pipeline is built
        module, model_cfg, n_params = build_stage2_pipeline(cfg, tok, pp, device, seed)
        dec = model_cfg.decoder

        ds_config = build_ds_config(cfg, world)
        accum = ds_config["gradient_accumulation_steps"]
        # named: DeepEncoder parts get their own lr and warm-up (optim.encoder_lr_scale)
        trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        optimizer = build_optimizer(trainable, cfg.optim)
        scheduler = build_lr_scheduler(optimizer, cfg.optim, steps)
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer,
                                               lr_scheduler=scheduler, config=ds_config)
    dp, dp_rank = engine.dp_world_size, engine.grid.get_data_parallel_rank()

    loader = None
    if engine.is_first_stage():
        loader = build_train_loader(dcfg, tok, seq_len=seq_len,
                                    micro_batch_size=ds_config["train_micro_batch_size_per_gpu"],
                                    seed=seed, rank=dp_rank, world_size=dp)  # data.seed wins when set

    step, resume = resume_if_requested(engine, tcfg, ckpt_dir, loader)
    reliance = _stage2_reliance(engine, cfg, tok, seq_len, ds_config["train_micro_batch_size_per_gpu"], seed)

    logger = MetricsLogger(cfg, out_dir, steps, run_config=cfg, start_step=step)
    logger.info(f"stage 2: {n_params / 1e6:.1f}M params, pp {pp} x dp {dp} (partition "
                f"{module.parts}), micro {ds_config['train_micro_batch_size_per_gpu']} x accum {accum} "
                f"x dp {dp} = {ds_config['train_batch_size']}, seq {seq_len}, "
                f"ZeRO-{ds_config['zero_optimization']['stage']}"
                + (f", resumed at step {step} from {resume}" if resume else ""))

    data = PipelineBatches(iter(loader) if loader is not None else None, engine.is_first_stage())
    save_every, keep_last, log_every = tcfg.save_every, tcfg.keep_last, cfg.logging.log_every
    losses, step_times = [], []
    tokens_seen = 0
    pace = StepPace()  # one warning if steps slow down far below their pace (busy machine)
    while step < steps:
        t0 = time.perf_counter()
        lrs = current_lrs(optimizer)  # the lrs this step uses (the scheduler steps with it)
        loss = float(engine.train_batch(data))
        dt = time.perf_counter() - t0
        step += 1
        if rank == 0:
            pace.observe(step, dt)
        # stats are means over micro-batches and DP ranks: x accum x dp gives totals
        extra = {k: float(v) for k, v in (engine.agg_additional_losses or {}).items()}
        n_tokens = extra.get("tokens", 0.0) * accum * dp
        tokens_seen += round(n_tokens)
        losses.append(loss)
        step_times.append(dt)
        metrics = {"loss": loss, **lrs, "step_time_s": dt,
                   "tokens_per_s": n_tokens / dt, "samples_per_s": extra.get("samples", 0.0) * accum * dp / dt,
                   **_stats_metrics(extra)}
        gn = engine.get_global_grad_norm()
        if gn is not None:
            metrics["grad_norm"] = float(gn)
        if step == 1 or step % max(1, log_every) == 0 or step == steps:
            load = _expert_load(engine, dec.num_hidden_layers, dec.n_routed_experts)  # collective
            if load is not None:
                metrics.update(expert_load_metrics(load))
        if reliance is not None and reliance.due(step, steps):
            metrics.update(reliance.measure(step))  # collective: every stage runs eval_batch
        logger.log(step, metrics)
        if (save_every and step % save_every == 0) or step == steps:
            save_checkpoint(engine, ckpt_dir, step,
                            {"data": loader.state_dict() if loader is not None else None},
                            keep_last=keep_last)

    export_dtype = _DTYPES[mcfg.dtype]
    export_dir = export_pipeline(engine, model_cfg, out_dir, export_dtype,
                                 tokenizer=_tokenizer_file(tok))
    timed = step_times[1:] if len(step_times) > 1 else step_times
    result = {
        "stage": 2, "out_dir": str(out_dir), "checkpoint_dir": str(ckpt_dir),
        "export_dir": str(export_dir), "steps": step, "losses": losses,
        "final_loss": losses[-1] if losses else None,
        "mean_step_time_s": sum(timed) / len(timed) if timed else None,
        "tokens_seen": tokens_seen, "params": n_params, "pp": pp, "dp": dp,
        "reliance": reliance.history if reliance is not None else [],
    }
    if rank == 0:
        (out_dir / "stage2_result.json").write_text(json.dumps(result, indent=1))
    logger.summary({"final_loss": result["final_loss"], "mean_step_time_s": result["mean_step_time_s"]})
    logger.close()
    return result
