"""Typed configuration for DeepSeek-OCR (DeepEncoder + DeepSeek-3B-MoE decoder) and DeepSeek-OCR 2
(DeepEncoder V2 + the same decoder).

Named presets (litgpt style):
  * ``deepseek-ocr``: the published model (3,336,106,240 parameters), facts from
    ``PAPER_FACTS.md`` and the checkpoint's ``config.json``.
  * ``tiny``: the same structure (windowed + global SAM blocks, 16x compressor, CLIP over
    compressor tokens, a dense layer 0, MoE layers with shared + routed experts) at a few
    million parameters, for CPU tests and the embedded default run.
  * ``tiny-wide``: ``tiny`` with a 128-wide decoder and 8 x 8 SAM windows (the flywheel's CPU recognizer).
  * ``deepseek-ocr-slice``: the published sizes with 4 of the 12 decoder layers (the dense layer 0
    and 3 MoE layers): what ``benchmarks/gpu_check.py`` trains and times on one GPU with its
    optimizer state.
  * ``deepseek-ocr2``: DeepSeek-OCR 2 (arXiv 2601.20552): SAM-base + compressor to 896 channels,
    a Qwen2-0.5B-shaped encoder with 144 / 256 causal flow queries, a linear projector and the
    same DeepSeek-3B-MoE decoder (``DeepseekOCR2Config``).
  * ``tiny-ocr2``: the same structure at a few million parameters (CPU tests and runs); the
    query counts stay 144 / 256 because the checkpoint layout fixes them.
  * ``tiny-ocr2-reader``: ``tiny-ocr2`` with ``tiny-reader``'s vision widths and one flow query
    per SAM token (4 / 16), for the reading ladder's ``ocr2_nano`` view.

Image sizes and patch sizes are the same in both presets, so every resolution mode yields the
paper's vision token counts on the tiny model too; only widths and depths shrink.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamConfig:
    """SAM ViT-B image encoder + neck + 16x compressor (``model.sam_model``)."""

    img_size: int = 1024  # size the absolute position table was trained at (64x64 grid)
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    neck_channels: int = 256  # neck: 1x1 conv width->neck, LN2d, 3x3 conv, LN2d
    downsample_channels: tuple[int, ...] = (512, 1024)  # net_2, net_3: 3x3 stride-2 convs

    @property
    def out_channels(self) -> int:
        return self.downsample_channels[-1]

    @property
    def downsample(self) -> int:
        """Pixels per output token side: 16 (patch) * 2**len(downsample_channels) = 64."""
        return self.patch_size * 2 ** len(self.downsample_channels)


@dataclass(frozen=True)
class ClipConfig:
    """CLIP-L vision transformer over the compressor's tokens (``model.vision_model``).

    The patch embedding exists in the checkpoint but is bypassed: the input tokens are the
    compressor's ``width``-channel output. ``image_size``/``patch_size`` size the 257-entry
    position table (16x16 grid + class token) that is interpolated to the token grid.
    """

    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    image_size: int = 224
    patch_size: int = 14
    layer_norm_eps: float = 1e-5

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class DecoderConfig:
    """DeepSeek-MoE decoder (no MLA): ``model.embed_tokens``, ``model.layers``, ``model.norm``."""

    vocab_size: int = 129280
    hidden_size: int = 1280
    intermediate_size: int = 6848  # dense SwiGLU of the first ``first_k_dense_replace`` layers
    moe_intermediate_size: int = 896  # per routed expert; shared experts use n_shared * this
    num_hidden_layers: int = 12
    num_attention_heads: int = 10
    num_key_value_heads: int = 10
    n_routed_experts: int = 64
    num_experts_per_tok: int = 6
    n_shared_experts: int = 2
    first_k_dense_replace: int = 1
    max_position_embeddings: int = 8192
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    norm_topk_prob: bool = False  # DeepSeek-V2 style greedy top-k keeps softmax weights as is
    aux_loss_alpha: float = 0.001  # expert load-balance loss coefficient (0 disables it)
    moe_impl: str = "auto"  # "auto" (grouped GEMM on CUDA, loop elsewhere) | "grouped" | "loop"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class _ModelConfigMethods:
    """Copy / serialisation helpers shared by ``DeepseekOCRConfig`` and ``DeepseekOCR2Config``
    (frozen dataclasses whose nested parts are listed in ``_PARTS``)."""

    _PARTS: dict = {}
    family: str = ""  # "deepseek-ocr" | "deepseek-ocr2": picks the encoder, the modes and the checkpoint layout

    def replace(self, **changes):
        """Copy with top-level fields changed; nested configs are replaced whole."""
        return dataclasses.replace(self, **changes)

    def with_vocab(self, vocab_size: int, **token_ids: int):
        """Copy sized for a tokenizer (e.g. the engine's BPE): vocab + special token ids."""
        dec = dataclasses.replace(self.decoder, vocab_size=vocab_size)
        return dataclasses.replace(self, decoder=dec, **token_ids)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        def tup(x):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in x.items()}

        d = dict(d)
        parts = {name: part(**tup(d.pop(name, {}))) for name, part in cls._PARTS.items()}
        return cls(**parts, **d)


@dataclass(frozen=True)
class DeepseekOCRConfig(_ModelConfigMethods):
    sam: SamConfig = field(default_factory=SamConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    projector_input_dim: int = 2048  # CLIP width + compressor channels, concatenated per token
    image_token_id: int = 128815  # id of "<image>" in the official tokenizer
    bos_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int = 1

    _PARTS = {"sam": SamConfig, "clip": ClipConfig, "decoder": DecoderConfig}
    family = "deepseek-ocr"

    def __post_init__(self) -> None:
        if self.clip.width != self.sam.out_channels:
            raise ValueError(
                f"CLIP width ({self.clip.width}) must equal the compressor's output channels "
                f"({self.sam.out_channels}): CLIP reads the compressor tokens directly"
            )
        if self.projector_input_dim != self.clip.width + self.sam.out_channels:
            raise ValueError(
                f"projector_input_dim ({self.projector_input_dim}) must be CLIP width + "
                f"compressor channels ({self.clip.width} + {self.sam.out_channels})"
            )


@dataclass(frozen=True)
class FlowEncoderConfig:
    """DeepEncoder V2's LLM-style encoder (``model.qwen2_model``): Qwen2-0.5B-shaped decoder
    layers (GQA with q/k/v bias, SwiGLU, RMSNorm, RoPE theta 1e6) run over the compressor's
    tokens followed by learned causal flow queries. Qwen2-0.5B's published shape; the
    reference's ``query_768_resolution`` / ``query_1024_resolution`` fix the query counts."""

    hidden_size: int = 896  # = the compressor's output channels: SAM tokens enter unprojected
    intermediate_size: int = 4864
    num_hidden_layers: int = 24
    num_attention_heads: int = 14
    num_key_value_heads: int = 2
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    queries_768: int = 144  # 12 x 12: views of up to 144 SAM tokens (768 px tiles)
    queries_1024: int = 256  # 16 x 16: larger views (the 1024 px global view)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def num_queries(self, num_patches: int) -> int:
        """Flow queries (= output tokens) of a view with ``num_patches`` compressor tokens."""
        return self.queries_768 if num_patches <= self.queries_768 else self.queries_1024


@dataclass(frozen=True)
class DeepseekOCR2Config(_ModelConfigMethods):
    """DeepSeek-OCR 2: SAM-base + compressor (896 channels) -> flow encoder -> linear projector
    -> DeepSeek-3B-MoE decoder (the v1 decoder, unchanged)."""

    sam: SamConfig = field(default_factory=lambda: SamConfig(downsample_channels=(512, 896)))
    encoder: FlowEncoderConfig = field(default_factory=FlowEncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    image_token_id: int = 128815
    bos_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int = 1

    _PARTS = {"sam": SamConfig, "encoder": FlowEncoderConfig, "decoder": DecoderConfig}
    family = "deepseek-ocr2"

    def __post_init__(self) -> None:
        if self.encoder.hidden_size != self.sam.out_channels:
            raise ValueError(
                f"flow encoder width ({self.encoder.hidden_size}) must equal the compressor's output "
                f"channels ({self.sam.out_channels}): the encoder reads the SAM tokens directly"
            )
        if self.encoder.hidden_size % self.encoder.num_attention_heads or \
                self.encoder.num_attention_heads % self.encoder.num_key_value_heads:
            raise ValueError(f"flow encoder heads {self.encoder.num_attention_heads} / kv heads "
                             f"{self.encoder.num_key_value_heads} do not divide width {self.encoder.hidden_size}")


def _tiny() -> DeepseekOCRConfig:
    return DeepseekOCRConfig(
        sam=SamConfig(
            width=32, depth=4, num_heads=2, global_attn_indexes=(1, 3),
            neck_channels=16, downsample_channels=(32, 64),
        ),
        clip=ClipConfig(width=64, layers=2, heads=2, mlp_dim=128),
        decoder=DecoderConfig(
            vocab_size=1024, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
            n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=2,
            max_position_embeddings=8192,
        ),
        projector_input_dim=128,
        image_token_id=3, bos_token_id=0, eos_token_id=1, pad_token_id=2,
    )


def _tiny_wide() -> DeepseekOCRConfig:
    """``tiny`` with a 128-wide decoder and 8 x 8 SAM attention windows: the flywheel's recognizer.
    On CPU a 64-wide language model starts reading about twice as late (docs/training.md); the
    paper's 14 x 14 windows fit its 64 x 64 patch grid (1024 px) but pad the 16 x 16 grid of a
    256 px ``micro`` view to 28 x 28, three times the tokens (SAM forward + backward: 2.9x the
    CPU time of 8 x 8 windows, which divide every mode's grid)."""
    cfg = _tiny()
    return dataclasses.replace(
        cfg, sam=dataclasses.replace(cfg.sam, window_size=8),
        decoder=dataclasses.replace(cfg.decoder, hidden_size=128, intermediate_size=256, moe_intermediate_size=64))


def _tiny_reader() -> DeepseekOCRConfig:
    """``tiny-wide`` with a wider vision path, for learning to read drawn pages on a CPU (the
    reading ladder, docs/training.md): SAM 64 wide (tiny: 32) with 8 x 8 windows, neck 64,
    compressor 64 -> 128 -> 512 channels, CLIP 512 wide, projector 1024 -> 128 (paper: 1024 and
    2048 -> 1280). A 16-px patch of a glyph squeezed into 32 numbers loses the strokes that tell
    letters apart, and a 64-px token that holds a letter at any offset must carry which letter and
    where: with 128-channel tokens rung A1 reached unseen-font CER 0.704 after 1,500 steps, with
    256 0.637, with 512 0.487 (docs/training.md). With 4-16 tokens per view the width costs
    little next to SAM."""
    cfg = _tiny_wide()
    return dataclasses.replace(
        cfg, sam=dataclasses.replace(cfg.sam, width=64, neck_channels=64, downsample_channels=(128, 512)),
        clip=dataclasses.replace(cfg.clip, width=512, heads=8, mlp_dim=1024), projector_input_dim=1024)


def _paper_slice() -> DeepseekOCRConfig:
    """The published model with decoder layers 0-3: every kind of layer at full size (dense
    layer 0, MoE layers), a third of the depth, so one GPU holds it with ZeRO-1 optimizer state."""
    cfg = DeepseekOCRConfig()
    return dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, num_hidden_layers=4))


def _tiny_ocr2() -> DeepseekOCR2Config:
    """``tiny``'s SAM and decoder, a 2-layer 64-wide flow encoder (GQA 4 heads / 2 kv heads)."""
    t = _tiny()
    return DeepseekOCR2Config(
        sam=t.sam,
        encoder=FlowEncoderConfig(hidden_size=t.sam.out_channels, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2),
        decoder=t.decoder,
        image_token_id=t.image_token_id, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
        pad_token_id=t.pad_token_id,
    )


def _tiny_ocr2_reader() -> DeepseekOCR2Config:
    """``tiny-ocr2`` with ``tiny-reader``'s vision path, for the reading ladder on a CPU
    (docs/training.md): SAM 64 wide with 8 x 8 windows, compressor 64 -> 128 -> 512 channels, a
    2-layer 512-wide flow encoder (8 heads, 2 kv heads, SwiGLU 1024) and ``tiny-wide``'s 128-wide
    decoder. Its flow encoder has 4 queries for a view of up to 4 SAM tokens and 16 above: one per
    SAM token, the reference processor's count ((side / 64)^2) at the ``ocr2_nano`` (128 px) and
    256 px views; the published 144 / 256 would put 36 times the nano view's tokens in front of a
    CPU-sized language model."""
    r, t = _tiny_reader(), _tiny_wide()
    return DeepseekOCR2Config(
        sam=r.sam,
        encoder=FlowEncoderConfig(hidden_size=r.sam.out_channels, intermediate_size=1024, num_hidden_layers=2,
                                  num_attention_heads=8, num_key_value_heads=2, queries_768=4, queries_1024=16),
        decoder=t.decoder,
        image_token_id=t.image_token_id, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
        pad_token_id=t.pad_token_id,
    )


ModelConfig = DeepseekOCRConfig | DeepseekOCR2Config

PRESETS = {
    "deepseek-ocr": DeepseekOCRConfig,
    "deepseek-ocr-slice": _paper_slice,
    "tiny": _tiny,
    "tiny-wide": _tiny_wide,
    "tiny-reader": _tiny_reader,
    "deepseek-ocr2": DeepseekOCR2Config,
    "tiny-ocr2": _tiny_ocr2,
    "tiny-ocr2-reader": _tiny_ocr2_reader,
}


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None


# ---------------------------------------------------------------------------------------
# Resolution modes (paper table). Token counts exclude newline/separator tokens.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolutionMode:
    name: str
    base_size: int  # side of the global view fed to the encoder
    pad: bool  # True: keep aspect, pad with the mean colour; False: plain resize
    tile_size: int = 0  # >0: dynamic tiling (Gundam): n tiles of this side + global view
    min_tiles: int = 2
    max_tiles: int = 6  # InternVL2-style grid search over min..max tiles
    # tiled modes cut tiles once a side exceeds this, whatever the tile size (the official
    # process/image_process.py tests ``<= 640`` for Gundam and Gundam-M alike)
    tile_threshold: int = 640
    version: int = 1  # 1: DeepSeek-OCR's processing and layout; 2: DeepSeek-OCR 2's (preprocess_image_v2 in models/image_processing.py)
    # version 2: flow queries (output tokens) of the global view; 0 = the checkpoint's rule (144 for
    # a view of at most 144 SAM tokens, else 256). A CPU mode names its own count, for presets
    # whose flow encoder has that many queries.
    queries: int = 0

    @property
    def tiled(self) -> bool:
        return self.tile_size > 0


PAPER_MODES: dict[str, ResolutionMode] = {
    "tiny": ResolutionMode("tiny", 512, pad=False),
    "small": ResolutionMode("small", 640, pad=False),
    "base": ResolutionMode("base", 1024, pad=True),
    "large": ResolutionMode("large", 1280, pad=True),
    "gundam": ResolutionMode("gundam", 1024, pad=True, tile_size=640),
    "gundam_m": ResolutionMode("gundam_m", 1280, pad=True, tile_size=1024),
}
# Not in the paper: views small enough to train on CPU in minutes (reading tests, the embedded
# default, line/block patches of the flywheel). Same 64-pixel tokens: nano 2x2 = 4 tokens, micro
# 4x4 = 16 (the paper's smallest mode, tiny, has 64). Plain resize, like tiny and small.
CPU_MODES: dict[str, ResolutionMode] = {
    "nano": ResolutionMode("nano", 128, pad=False),
    "micro": ResolutionMode("micro", 256, pad=False),
}
# DeepSeek-OCR 2 (its reference image processor): a 1024 px padded global view plus, when the
# longer side exceeds 768 px, 2..6 tiles of 768 px (``ocr2``); without tiling the global view is
# 768 px (``ocr2_768``). ``ocr2_micro``: a 256 px CPU view (16 SAM tokens -> 144 flow queries).
# ``ocr2_nano``: a 128 px CPU view with the reference processor's count for its size, one query
# per 64 px SAM token ((128 / 16 / 4)^2 = 4, as 768 px -> 144 and 1024 px -> 256), for presets whose
# flow encoder has 4 queries (``tiny-ocr2-reader``): the nano view of v1's reading runs.
OCR2_MODES: dict[str, ResolutionMode] = {
    "ocr2": ResolutionMode("ocr2", 1024, pad=True, tile_size=768, tile_threshold=768, version=2),
    "ocr2_768": ResolutionMode("ocr2_768", 768, pad=True, version=2),
    "ocr2_micro": ResolutionMode("ocr2_micro", 256, pad=False, version=2),
    "ocr2_nano": ResolutionMode("ocr2_nano", 128, pad=False, version=2, queries=4),
}
RESOLUTION_MODES: dict[str, ResolutionMode] = {**PAPER_MODES, **CPU_MODES, **OCR2_MODES}


def get_mode(name: str) -> ResolutionMode:
    key = name.lower().replace("-", "_")
    try:
        return RESOLUTION_MODES[key]
    except KeyError:
        raise KeyError(f"unknown resolution mode {name!r}; known: {sorted(RESOLUTION_MODES)}") from None
