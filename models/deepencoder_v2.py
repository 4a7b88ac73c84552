"""DeepEncoder V2: SAM-base + compressor -> flow encoder -> linear projector (DeepSeek-OCR 2,
arXiv 2601.20552 section 3; reference: ``transformers.models.deepseek_ocr2``).

Pixels -> ``sam_features`` (the v1 SAM + neck + two stride-2 convs, here to 896 channels: the
"vision tokenizer", PP0 in stage 2) -> ``project`` (the flow encoder over the compressor tokens
plus 144 or 256 causal queries, then the projector to the decoder width: PP1) -> ``arrange``.

Layout per image (the reference's order; no newline tokens, unlike v1):
    [tile 0 queries][tile 1 queries]...   row-major tiles, 144 tokens each (768 px tiles)
    [global view queries]                 256 tokens at 1024 px, 144 at 768 px
    [view_seperator]
so an image with n tiles has 144 n + 256 + 1 tokens (the reference processor's count).

Batching, ``sam_features``, ``encode`` and ``forward`` are ``DeepEncoder``'s; only the
modules after SAM differ. Module names are the published ones below ``model.``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .config import DeepseekOCR2Config
from .deepencoder import DeepEncoder, Projector
from .flow_encoder import FlowEncoder
from .sam import SamEncoder


class DeepEncoderV2(DeepEncoder):
    EMBEDDING_PARTS = ("qwen2_model", "projector", "view_seperator")
    ENCODER_CORE = "qwen2_model"

    def __init__(self, cfg: DeepseekOCR2Config) -> None:
        nn.Module.__init__(self)  # not DeepEncoder.__init__: no CLIP, no image_newline
        D = cfg.decoder.hidden_size
        self.sam_model = SamEncoder(cfg.sam)
        self.qwen2_model = FlowEncoder(cfg.encoder)
        self.projector = Projector(cfg.encoder.hidden_size, D)
        self.view_seperator = nn.Parameter(torch.zeros(D))  # sic: the published name
        self.init_vision_weights()

    def vision_init_parts(self, std: float = 0.02) -> dict[str, Callable[[], None]]:
        embed_std = self.view_seperator.shape[0] ** -0.5  # N(0, 1/D), as the reference
        return {
            "sam_model": lambda: self.sam_model.init_weights(std),
            "qwen2_model": lambda: self.qwen2_model.init_weights(std),
            "projector": lambda: self.projector.reset_parameters(std),
            "view_seperator": lambda: nn.init.normal_(self.view_seperator, std=embed_std),
        }

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.sam_model.gradient_checkpointing = enabled
        self.qwen2_model.gradient_checkpointing = enabled

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) compressor features -> (B, Q, D): flow queries + projector (PP1)."""
        return self.projector(self.qwen2_model(features))

    def arrange(
        self,
        global_tokens: torch.Tensor,
        tile_tokens: torch.Tensor | None = None,
        tile_grid: tuple[int, int] = (0, 0),
    ) -> torch.Tensor:
        """global_tokens (Q, D), tile_tokens (n, Q', D) -> (n Q' + Q + 1, D)."""
        cols, rows = tile_grid
        n = 0 if tile_tokens is None else tile_tokens.shape[0]
        if n != cols * rows:
            raise ValueError(f"tile_grid {tile_grid} needs {cols * rows} tiles, got {n}")
        parts = [tile_tokens.reshape(-1, global_tokens.shape[-1])] if n else []
        parts += [global_tokens, self.view_seperator.to(global_tokens.dtype)[None]]
        return torch.cat(parts, dim=0)


def build_vision_encoder(cfg) -> DeepEncoder:
    """The encoder of ``cfg``'s family: ``DeepEncoder`` (v1) or ``DeepEncoderV2``."""
    return DeepEncoderV2(cfg) if isinstance(cfg, DeepseekOCR2Config) else DeepEncoder(cfg)
