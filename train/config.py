"""Typed config schema of the trainers (``conf/config.yaml`` and its groups).

One default per key, here and nowhere else: the YAML files under ``conf/`` hold recipe values
only, and code reads ``cfg.<group>.<key>`` from a ``Config``, never with a fallback of its own.
The config is converted to a ``Config`` once, where it enters (``as_config``: ``train.api.compose``,
``train.api.train``, the Hydra command line), and passed down as it is. One dataclass per config
group, in ``conf/`` order:

    model -> ModelConfig (+ Stage1LMConfig)   data -> DataConfig      optim -> OptimConfig
    deepspeed -> DeepSpeedConfig              logging -> LoggingConfig (+ WandbConfig)
    train -> TrainConfig                      the whole primary config -> Config

To add a key: add a field to its group's dataclass with the default and a trailing comment
that documents it; use ``setting(default, ge=/gt=/le=/choices=)`` when it has a range (checked
when the config is composed, the error names the key), and the group's ``check`` for rules
that involve several keys. Put a value in a YAML file only where a recipe differs from the
default. Types are checked by OmegaConf (an override of the wrong type fails at composition).

``models/config.py`` keeps the architecture presets (no Hydra there); ``model.preset`` names one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from data_engine.config import ConfigError, Schema, group, register_schema, setting, typed
from models.config import PRESETS

__all__ = ["Config", "ConfigError", "as_config", "DataConfig", "DeepSpeedConfig", "LoggingConfig", "ModelConfig",
           "OptimConfig", "RelianceConfig", "Stage1LMConfig", "TrainConfig", "WandbConfig", "register",
           "to_container", "typed"]

DTYPES = ("bf16", "fp16", "fp32")


# --------------------------------------------------------------------------- model (conf/model/)


@dataclass
class Stage1LMConfig(Schema):
    """Stage 1's compact causal LM (transformers OPT built from config, no download). Its width
    is the projector output; when it equals the stage-2 decoder width the projector,
    image_newline and view_seperator are handed to stage 2 too. Paper: OPT-125M size."""

    _key: ClassVar[str] = "model.stage1_lm"

    hidden_size: int = setting(64, ge=1)
    num_layers: int = setting(2, ge=1)
    num_heads: int = setting(4, ge=1)
    ffn_dim: Optional[int] = setting(128, ge=1)  # null = 4 x hidden_size
    max_position_embeddings: int = setting(2048, ge=1)  # raised to data.seq_len automatically
    dropout: float = setting(0.0, ge=0, le=1)

    def check(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"model.stage1_lm.hidden_size={self.hidden_size} must be a multiple of "
                              f"model.stage1_lm.num_heads={self.num_heads}")


@dataclass
class ModelConfig(Schema):
    """Training-side model settings; the architecture itself is the preset (models/config.py)."""

    _key: ClassVar[str] = "model"

    preset: str = setting("tiny", choices=tuple(PRESETS))  # models.config.PRESETS
    tokenizer: Optional[str] = None   # dir with tokenizer.json (the engine's BPE or the official one; never downloaded)
    init_from: Optional[str] = None   # published/exported checkpoint dir (stage 2 / Gundam-M continuation)
    encoder_from: Optional[str] = None  # stage-1 encoder.safetensors (stage 2)
    stage1_from: Optional[str] = None  # stage 1: a finished stage-1 run dir whose weights start this one (a curriculum step)
    sam_from: Optional[str] = None    # stage 1: public SAM ViT-B weights (transformers SamModel dir / segment_anything .pth)
    clip_from: Optional[str] = None   # stage 1: public CLIP ViT-L/14 vision tower (transformers CLIPVisionModel / CLIPModel dir)
    moe_impl: str = setting("auto", choices=("auto", "grouped", "loop"))
    aux_loss_alpha: float = setting(0.001, ge=0)  # MoE load-balancing loss weight
    dtype: str = setting("fp32", choices=DTYPES)  # parameter dtype outside DeepSpeed (export / eval)
    gradient_checkpointing: bool = False
    stage1_lm: Stage1LMConfig = group(Stage1LMConfig)


# --------------------------------------------------------------------------- data (conf/data/)


@dataclass
class DataConfig(Schema):
    """Training data (train/data.py build_train_loader). Paths are webdataset shards written by
    the data engine (docs/INTERFACES.md "Shard format"); globs and {000000..000099} ranges expand."""

    _key: ClassVar[str] = "data"

    shards: list[str] = setting([])   # OCR pages (source "ocr")
    vision_shards: list[str] = setting([])  # general vision (source "vision"): captions, grounding (data_engine/sources, docs/sources.md)
    # More OCR data by name -> shard globs (data_engine/sources, docs/sources.md); another name:
    # +data.ocr_sources.NAME=[...] and +data.ocr_weights.NAME=w.
    ocr_sources: dict[str, list[str]] = setting(
        {"flywheel": [], "charts": [], "chemistry": [], "geometry": [], "formulas": [], "tables": [], "scene": []})
    text_shards: list[str] = setting([])  # shards whose label text is used as text-only data (source "text")
    text_corpus: Optional[str] = None  # dir of plain-text files (one per language), chunked (source "text")
    seq_len: int = setting(4096, ge=16)  # packed row length (paper: 4096 stage 1, 8192 stage 2)
    # Per-sample source probabilities (paper 70/20/10); a source without data is dropped and the
    # rest renormalised (warned once).
    source_weights: dict[str, float] = setting({"ocr": 0.7, "vision": 0.2, "text": 0.1}, ge=0)
    # Sub-weights inside OCR (relative; train/mix.py): the paper's dataset sizes in millions
    # (section 3.4): coarse 30M pages (fine 4M of them), flywheel 0.6M, Word documents 3M (formulas
    # + tables), scene 20M, charts 10M, chemistry 5M, geometry 1M. coarse/fine come from `shards`
    # (engine pages), the others from `ocr_sources.<name>`; a name without shards is dropped
    # (warned once). null = engine pages split coarse/fine by label_kind_weights, every
    # ocr_sources entry weighted like all pages together.
    ocr_weights: Optional[dict[str, float]] = setting(
        {"coarse": 30.0, "fine": 4.0, "flywheel": 0.6, "formulas": 1.5, "tables": 1.5, "scene": 20.0,
         "charts": 10.0, "chemistry": 5.0, "geometry": 1.0}, ge=0)
    mix_by: str = setting("samples", choices=("samples", "tokens"))  # what the weights are shares of (train/mix.py)
    mix_log_every: int = setting(100, ge=0)  # batches between "realised data mix" log lines (0 = never)
    # All native modes + Gundam trained together; Gundam-M is a continuation (experiment/paper_gundam_m).
    mode_weights: dict[str, float] = setting(
        {"tiny": 1.0, "small": 1.0, "base": 1.0, "large": 1.0, "gundam": 1.0, "gundam_m": 0.0}, ge=0)
    # among the label kinds of a non-page sample (scene: coarse/fine; unlisted kinds weigh 1; 0 excludes a kind)
    label_kind_weights: dict[str, float] = setting({"coarse": 0.5, "fine": 0.5}, ge=0)
    text_label_kind: str = setting("coarse", choices=("coarse", "fine"))  # label of text_shards used as text
    text_chunk_tokens: Optional[int] = setting(None, ge=1)  # corpus chunk length in tokens; null = seq_len - 2
    overlong: str = setting("truncate", choices=("truncate", "skip"))  # sample longer than seq_len
    pack_buffer: int = setting(8, ge=1)  # look-ahead samples for first-fit packing (1 = sequential)
    shuffle_window: int = setting(256, ge=1)  # records permuted together inside a shard
    # shards read at once, each next record drawn from one of them (weighted by shard size): a few
    # big single-kind shards (one per language) are interleaved, not trained on in long blocks that
    # make the model forget the other kinds; 1 = one shard after another. Memory: up to
    # open_shards x shuffle_window raw records per source and worker
    open_shards: int = setting(4, ge=1)
    max_bad_shards: int = setting(8, ge=1)  # unreadable shards in a row before the loader stops with an error
    max_tiles: Optional[int] = setting(None, ge=1)  # Gundam tile budget override (null = mode default 6)
    num_workers: int = setting(2, ge=0)  # DataLoader workers per rank (must match to resume exactly)
    prefetch_factor: int = setting(2, ge=1)
    log_bad_samples: int = setting(20, ge=0)  # per worker and reason logged at WARNING (all are counted)
    seed: Optional[int] = None        # null = the seed the trainer passes (train.seed)


# --------------------------------------------------------------------------- optim (conf/optim/)


@dataclass
class OptimConfig(Schema):
    """AdamW (torch, handed to DeepSpeed as a client optimizer) + linear warmup + a decay schedule."""

    _key: ClassVar[str] = "optim"

    lr: float = setting(5.0e-5, gt=0)  # peak learning rate
    betas: list[float] = setting([0.9, 0.95], ge=0, le=1)
    eps: float = setting(1.0e-8, gt=0)
    weight_decay: float = setting(0.1, ge=0)  # matrices only; norms / biases / vectors are not decayed
    schedule: str = setting("cosine", choices=("cosine", "step", "constant"))
    warmup_steps: int = setting(100, ge=0)
    min_lr_ratio: float = setting(0.1, ge=0, le=1)  # cosine floor, as a fraction of lr
    step_milestones: list[float] = setting([], ge=0)  # step schedule: <1 = fraction of train.steps, >=1 = absolute steps
    step_gamma: float = setting(0.1, gt=0)  # step schedule: lr x gamma at each milestone
    grad_clip: float = setting(1.0, ge=0)  # gradient norm clipping (0 = off)
    # lr multiplier of DeepEncoder (SAM, compressor, CLIP, projector, newline/separator): from
    # scratch at the LM's lr AdamW grows the patch embedding's response to white until the ink is
    # lost and the run stays image-blind (docs/training.md); from-scratch recipes use 0.1
    encoder_lr_scale: float = setting(1.0, gt=0)
    # a further multiplier for SAM + neck + compressor alone (x encoder_lr_scale)
    sam_lr_scale: float = setting(1.0, gt=0)
    # the encoder's own linear warm-up in optimizer steps (null: warmup_steps)
    encoder_warmup_steps: Optional[int] = setting(None, ge=0)

    def check(self) -> None:
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must be two numbers, got {self.betas}")


# --------------------------------------------------------------------------- deepspeed (conf/deepspeed/)


@dataclass
class DeepSpeedConfig(Schema):
    """DeepSpeed engine settings; ``extra`` holds raw DeepSpeed config keys, deep-merged last
    (e.g. extra.zero_optimization.offload_optimizer.device=cpu)."""

    _key: ClassVar[str] = "deepspeed"

    zero_stage: int = setting(1, choices=(0, 1, 2, 3))
    dtype: str = setting("bf16", choices=DTYPES)
    extra: dict[str, Any] = setting({})


# --------------------------------------------------------------------------- logging (conf/logging/)


@dataclass
class WandbConfig(Schema):
    """wandb runs offline unless WANDB_MODE is set (sync later with `wandb sync <out_dir>/wandb/...`)."""

    _key: ClassVar[str] = "logging.wandb"

    mode: str = setting("offline", choices=("offline", "online", "disabled"))  # env WANDB_MODE wins
    project: str = "ocrflow"
    name: Optional[str] = None
    dir: Optional[str] = None         # null: the run's out_dir


@dataclass
class LoggingConfig(Schema):
    _key: ClassVar[str] = "logging"

    wandb: WandbConfig = group(WandbConfig)
    log_every: int = setting(10, ge=1)  # console line (and stage 2's expert load) every N optimizer steps, plus the first and last; metrics.jsonl gets every step
    verbose: bool = False  # true: libraries (DeepSpeed, distutils) print and log as they would; false: their chatter is kept off the console (train/logging.py quiet_libraries)


# --------------------------------------------------------------------------- train (conf/train/)


@dataclass
class RelianceConfig(Schema):
    """Vision reliance (train/reliance.py): held-out loss with real vs blank images, logged as
    reliance/{loss_real,loss_blank,gap,ratio}; a warning when the model stays image-blind."""

    _key: ClassVar[str] = "train.reliance"

    every: int = setting(50, ge=0)  # optimizer steps between measurements (and at the end); 0 = off
    shards: list[str] = setting([])  # held-out shards (globs); empty = data.shards (pages seen in training)
    batches: int = setting(2, ge=1)  # fixed micro-batches measured each time
    min_gap: float = setting(0.02, ge=0)  # relative gap 1 - real/blank below which a measurement is image-blind
    patience: int = setting(3, ge=1)  # consecutive image-blind measurements before the warning
    start: int = setting(0, ge=0)  # no warning before this step


@dataclass
class TrainConfig(Schema):
    _key: ClassVar[str] = "train"

    stage: int = setting(1, choices=(1, 2))  # 1: DeepEncoder + compact OPT LM; 2: full DeepSeek-OCR (pipeline)
    steps: int = setting(1000, ge=1)  # optimizer steps (paper: 2 epochs of the corpus / global batch)
    # stage 1: wall seconds of training (from the first step); the run stops after the step that
    # passes it and ends as at train.steps (checkpoint, encoder); the lr schedule stays that of
    # train.steps. null: train.steps alone. (A fixed-time run: benchmarks/gpu_check.py's rung A.)
    max_wall_s: Optional[float] = setting(None, gt=0)
    micro_batch_size: int = setting(1, ge=1)  # packed sequences per GPU per micro-step
    global_batch_size: int = setting(8, ge=1)  # = micro x grad_accum x dp (dp = world / pp); checked at start
    pp: int = setting(1, ge=1)        # pipeline stages (stage 2: 1, 2 or 4)
    partition: Optional[list[int]] = None  # stage 2 layer split, pp+1 unit boundaries (train/pipeline.py); null = paper split
    activation_checkpoint_interval: int = setting(0, ge=0)
    vision_max_batch: Optional[int] = setting(None, ge=1)  # stage 2: cap on views per SAM forward (memory); null = all
    freeze_sam: bool = True           # stage 2: SAM + compressor frozen (the paper's "vision tokenizer")
    freeze_encoder: bool = False      # stage 2: SAM + CLIP / flow encoder frozen too (DeepSeek-OCR 2's stage 3)
    # flywheel ppocr recognizer with freeze_encoder: this many of PP-LCNetV3's last blocks still train
    # (at optim.encoder_lr_scale; features are cached before them). 0: the whole backbone frozen
    trained_tail_blocks: int = setting(0, ge=0, le=8)
    save_every: int = setting(500, ge=0)  # checkpoint every N optimizer steps (and at the end); 0 = end only
    keep_last: Optional[int] = setting(2, ge=0)  # checkpoints kept in <out_dir>/checkpoints (null / 0 = all)
    out_dir: str = "runs/default"
    resume: Optional[str] = "auto"    # auto: continue from <out_dir>/checkpoints if present | a path | null
    seed: int = 42
    log_every: Optional[int] = setting(None, ge=1)  # deprecated alias of logging.log_every (warned once)
    backend: Optional[str] = setting(None, choices=("nccl", "gloo"))  # null: nccl with CUDA, gloo without
    required: list[str] = setting([])  # dotted keys a recipe cannot run without (e.g. [model.init_from]); checked at start
    nproc_per_node: Optional[int] = setting(None, ge=1)  # launch.sh: processes per node (null: #GPUs, or pp on CPU)
    reliance: RelianceConfig = group(RelianceConfig)  # vision reliance metric (train/reliance.py)

    def check(self) -> None:
        if self.max_wall_s is not None and self.stage != 1:
            raise ConfigError(f"train.max_wall_s={self.max_wall_s} is a stage-1 setting (train.stage={self.stage})")


# --------------------------------------------------------------------------- the primary config


@dataclass
class Config(Schema):
    """``conf/config.yaml``: one field per config group."""

    model: ModelConfig = group(ModelConfig)
    data: DataConfig = group(DataConfig)
    optim: OptimConfig = group(OptimConfig)
    deepspeed: DeepSpeedConfig = group(DeepSpeedConfig)
    logging: LoggingConfig = group(LoggingConfig)
    train: TrainConfig = group(TrainConfig)

    def check(self) -> None:
        # train.log_every is the old name of logging.log_every: honoured, with one warning
        old = self.train.log_every
        if old is None:
            return
        default = LoggingConfig.__dataclass_fields__["log_every"].default
        if self.logging.log_every not in (default, old):
            raise ConfigError(f"train.log_every={old} (deprecated) and logging.log_every="
                              f"{self.logging.log_every} disagree: set logging.log_every only")
        self.logging.log_every = old
        _warn_once("train.log_every is deprecated: it sets logging.log_every "
                   f"(console line every {old} steps); use logging.log_every={old}")


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    """A config deprecation warning, once per process and from rank 0 only (the config is
    validated many times, on every rank)."""
    if msg not in _warned and os.environ.get("RANK", "0") == "0":
        _warned.add(msg)
        logging.getLogger(__name__).warning(msg)


def as_config(cfg: Any) -> Config:
    """The typed ``Config`` of ``cfg``: a ``Config`` is used as it is (never converted or checked
    again); a composed DictConfig, a partial dict or None is converted and checked here, once.
    Entry points call it (``train.api.compose`` / ``train``, the building blocks a caller may
    hand a dict); the trainers pass the ``Config`` they got down as it is."""
    return cfg if isinstance(cfg, Config) else typed(cfg, Config)


def to_container(x: Any) -> Any:
    """OmegaConf node or config dataclass -> plain python (dict/list); other values unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    return x


def register() -> None:
    """Register ``Config`` as ``train_schema`` (``conf/config.yaml`` lists it first in defaults)."""
    register_schema("train_schema", Config)
