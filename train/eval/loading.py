"""Load what the evaluation reads: a stage-1 run, a stage-2 export, or the published checkpoint.

``load_model(path)`` recognises:

* a checkpoint directory in the published layout (``config.json`` + ``model.safetensors`` or
  shards + index): stage-2 exports (``<out_dir>/model``) and the released DeepSeek-OCR
  weights, loaded with ``models.checkpoint.import_checkpoint``;
* a stage-1 run directory (``<out_dir>`` of ``train.stage=1``: DeepEncoder + compact OPT LM):
  the run's config (``run_config.yaml`` or Hydra's ``hydra/config.yaml``) and the module
  weights of its latest DeepSpeed checkpoint (``checkpoints/latest``; ZeRO 0-2 store them
  whole; a ZeRO-3 run needs DeepSpeed's ``zero_to_fp32.py`` first).

Both come back as an ``OCRModel``: an object ``models.generation.generate`` decodes (stage-1
models through ``Stage1Generator``), the tokenizer, and ``fresh()``, the same architecture at
a fresh seeded init (the "untrained" row of the report).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn as nn

STAGE1_CONFIGS = ("run_config.yaml", "hydra/config.yaml")


@dataclass
class OCRModel:
    kind: str  # "stage1" | "checkpoint"
    model: nn.Module  # what models.generation.generate accepts
    tokenizer: Any  # models.tokenizer.OCRTokenizer
    source: str
    build_fresh: Callable[[], nn.Module]  # same architecture, fresh init (seed set by the caller)
    max_positions: int

    def fresh(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.build_fresh().eval()


class _Stage1Body(nn.Module):
    """The ``model.model`` face of a stage-1 model for ``generate``: vision tokens scattered into
    the OPT input embeddings, positions from the attention mask (left padding), and the HF
    key/value cache kept beside ``generate``'s own ``KVCache`` object (keyed weakly by it)."""

    def __init__(self, stage1) -> None:
        super().__init__()
        self.stage1 = stage1
        self.layers = stage1.lm.model.decoder.layers  # generate sizes its KVCache by this
        self._caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        import inspect

        params = inspect.signature(stage1.lm.model.decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # transformers 5 vs 4

    def encode_images(self, images) -> list[torch.Tensor]:
        return self.stage1.encoder(list(images))

    def forward(self, input_ids, vision_embeds=None, attention_mask=None, past_key_values=None):
        from transformers import DynamicCache

        s1 = self.stage1
        embeds = s1.lm.get_input_embeddings()(input_ids)  # (B, T, D)
        slots = input_ids == s1.image_token_id
        if vision_embeds is not None and int(slots.sum()):
            flat = torch.cat(list(vision_embeds)).to(embeds.dtype)
            embeds = embeds.masked_scatter(slots[..., None], flat)
        T = input_ids.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape[0], T, dtype=torch.long, device=input_ids.device)
        position_ids = (attention_mask.long().cumsum(1) - 1).clamp_min(0)[:, -T:]  # (B, T)
        cache = None
        if past_key_values is not None:
            cache = self._caches.get(past_key_values)
            if cache is None:
                cache = self._caches[past_key_values] = DynamicCache()
        out = s1.lm.model.decoder(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                  use_cache=cache is not None, **{self._cache_kw: cache})
        return out.last_hidden_state, None, None


class Stage1Generator(nn.Module):
    """Wraps ``train.stage1.Stage1Model`` so ``models.generation.generate`` decodes it exactly
    as it decodes DeepSeek-OCR (same greedy loop, logits processors, stopping rule)."""

    def __init__(self, stage1, eos_token_id: int, pad_token_id: int) -> None:
        super().__init__()
        self.model = _Stage1Body(stage1)
        self.lm_head = stage1.lm.lm_head
        self.cfg = SimpleNamespace(eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                   image_token_id=stage1.image_token_id)


def save_run_config(cfg: Any, out_dir: str | Path) -> Path:
    """Write a run's resolved config as ``<out_dir>/run_config.yaml`` (what ``load_stage1_run`` reads)."""
    from omegaconf import OmegaConf

    path = Path(out_dir) / STAGE1_CONFIGS[0]
    OmegaConf.save(cfg if OmegaConf.is_config(cfg) else OmegaConf.create(cfg), path, resolve=True)
    return path


def _is_checkpoint_dir(p: Path) -> bool:
    from models.checkpoint import CONFIG_FILE, INDEX_FILE, SINGLE_FILE

    return (p / CONFIG_FILE).is_file() and ((p / SINGLE_FILE).is_file() or (p / INDEX_FILE).is_file()
                                            or any(p.glob("model-*-of-*.safetensors")))


def _is_stage1_run(p: Path) -> bool:
    return (p / "checkpoints").is_dir() and any((p / c).is_file() for c in STAGE1_CONFIGS)


def _tokenizer_dir(model_dir: Path, tokenizer: str | Path | None, cfg_tokenizer: str | None = None) -> Path:
    for cand in (tokenizer, cfg_tokenizer, model_dir):
        if cand and (Path(cand) / "tokenizer.json").is_file():
            return Path(cand)
    raise FileNotFoundError(
        f"no tokenizer.json given or found (tried {tokenizer!r}, the run's model.tokenizer "
        f"{cfg_tokenizer!r}, {model_dir}); pass --tokenizer DIR")


def load_checkpoint_model(path: str | Path, tokenizer: str | Path | None = None, device: str = "cpu") -> OCRModel:
    from models.checkpoint import import_checkpoint
    from models.deepseek_ocr import DeepseekOCRForCausalLM
    from models.tokenizer import load_tokenizer

    p = Path(path)
    tok = load_tokenizer(_tokenizer_dir(p, tokenizer))
    model = import_checkpoint(p, device=device, dtype=torch.float32)
    cfg = model.cfg

    def fresh() -> nn.Module:
        with torch.device(device):
            return DeepseekOCRForCausalLM(cfg)

    return OCRModel("checkpoint", model, tok, str(p), fresh, cfg.decoder.max_position_embeddings)


def latest_module_state(ckpt_root: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """Module weights of the latest DeepSpeed checkpoint under ``ckpt_root`` (ZeRO 0-2)."""
    latest = ckpt_root / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"{ckpt_root} has no 'latest' file: no finished checkpoint to evaluate")
    tag_dir = ckpt_root / latest.read_text().strip()
    files = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"no mp_rank_*_model_states.pt in {tag_dir}")
    state = torch.load(files[0], map_location="cpu", weights_only=False)
    module = state.get("module") or {}
    if not module:
        raise ValueError(f"{files[0]} holds no module weights (a ZeRO-3 run: convert it with "
                         "DeepSpeed's zero_to_fp32.py first)")
    return module, tag_dir


def load_stage1_state(stage1: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Checkpoint weights into a stage-1 model: every tensor present with its shape, none extra,
    the LM head excepted (tied to the embeddings); else ValueError opening with ``what`` and
    naming the tensors that differ."""
    own = stage1.state_dict()
    other = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state and not k.endswith("lm_head.weight")]
    unexpected = [k for k in state if k not in own]
    if other or missing or unexpected:
        raise ValueError(f"{what}: other shapes {other[:20]}, missing {missing[:20]}, unexpected {unexpected[:20]}")
    stage1.load_state_dict(state, strict=False)


def load_stage1_run(path: str | Path, tokenizer: str | Path | None = None, device: str = "cpu",
                    config: str | Path | None = None) -> OCRModel:
    from omegaconf import OmegaConf

    from models.tokenizer import load_tokenizer

    from ..stage1 import build_stage1_model

    p = Path(path)
    cfg_file = Path(config) if config else next((p / c for c in STAGE1_CONFIGS if (p / c).is_file()), None)
    if cfg_file is None:
        raise FileNotFoundError(f"stage-1 run {p} has none of {STAGE1_CONFIGS}; pass the run's config")
    cfg = OmegaConf.load(cfg_file)
    tok = load_tokenizer(_tokenizer_dir(p, tokenizer, OmegaConf.select(cfg, "model.tokenizer")))
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
               "pad_token_id": tok.pad_token_id, "image_token_id": tok.image_token_id}
    seq_len = int(OmegaConf.select(cfg, "data.seq_len") or 0)

    def build() -> nn.Module:
        with torch.device(device):
            s1 = build_stage1_model(cfg, tok.vocab_size, special_ids=special, seq_len=seq_len)
        return Stage1Generator(s1, tok.eos_token_id, tok.pad_token_id)

    state, tag_dir = latest_module_state(p / "checkpoints")
    gen = build()
    load_stage1_state(gen.model.stage1, state, f"stage-1 checkpoint {tag_dir} does not match the run's config")
    lm_cfg = gen.model.stage1.lm.config
    return OCRModel("stage1", gen.eval(), tok, f"{p} ({tag_dir.name})", build, int(lm_cfg.max_position_embeddings))


def load_model(path: str | Path, tokenizer: str | Path | None = None, device: str = "cpu",
               config: str | Path | None = None) -> OCRModel:
    """A stage-1 run, a stage-2 export or a published checkpoint (see module docstring)."""
    p = Path(path)
    if _is_checkpoint_dir(p) or (p.is_file() and p.suffix == ".safetensors"):
        return load_checkpoint_model(p, tokenizer, device)
    if _is_stage1_run(p) or (config and (p / "checkpoints").is_dir()):
        return load_stage1_run(p, tokenizer, device, config)
    if (p / "model").is_dir() and _is_checkpoint_dir(p / "model"):  # a stage-2 run dir
        return load_checkpoint_model(p / "model", tokenizer, device)
    raise FileNotFoundError(
        f"{p} is neither a checkpoint directory (config.json + safetensors: a stage-2 export or the "
        f"published weights) nor a stage-1 run (checkpoints/ + {' or '.join(STAGE1_CONFIGS)})")


def run_dir(path: str | Path) -> Path | None:
    """The training run a model path belongs to: itself (a stage-1 run) or the parent of a
    stage-2 export (``<out_dir>/model``), when it holds ``metrics.jsonl`` or a run config."""
    p = Path(path)
    for d in (p, p.parent):
        if d.is_dir() and ((d / "metrics.jsonl").is_file() or any((d / c).is_file() for c in STAGE1_CONFIGS)):
            return d
    return None


def last_loss_ratio(run: Path) -> float | None:
    """The run's last held-out loss ratio real/blank images (``reliance/ratio``, train/reliance.py)."""
    import json

    ratio = None
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash
                continue
            ratio = row.get("reliance/ratio", ratio)
    return ratio


def run_train_shards(run: Path) -> list[str] | None:
    """The run config's ``data.shards`` (training pages), or None without a config."""
    from omegaconf import OmegaConf

    cfg_file = next((run / c for c in STAGE1_CONFIGS if (run / c).is_file()), None)
    if cfg_file is None:
        return None
    shards = OmegaConf.select(OmegaConf.load(cfg_file), "data.shards", throw_on_resolution_failure=False)
    return [str(s) for s in shards] if shards else None


def describe(m: OCRModel) -> dict:
    n = sum(t.numel() for t in m.model.parameters())
    return {"kind": m.kind, "source": m.source, "params": n, "vocab_size": m.tokenizer.vocab_size}


__all__ = ["OCRModel", "Stage1Generator", "save_run_config", "load_model", "load_checkpoint_model", "load_stage1_run",
           "load_stage1_state", "latest_module_state", "describe", "run_dir", "last_loss_ratio", "run_train_shards"]
