"""DeepEncoder: SAM-base + 16x compressor + CLIP-L + linear projector (paper section 3.2).

Pixels -> ``sam_features`` (SAM ViT-B, neck, net_2/net_3: the frozen "vision tokenizer", PP0 in
stage 2) -> ``project`` (CLIP over the compressed tokens, CLIP output without its class token
concatenated with the compressor output per token, CLIP first, -> linear projector to the
decoder width: PP1) -> ``arrange`` (the official token layout with ``image_newline`` and
``view_seperator``).

Layout per image (DeepSeek-OCR's inference code order):
    [tiles stitched into one (rows*h') x (cols*w') grid, image_newline after each grid row]
    [global view h x w, image_newline after each row]
    [view_seperator]

``DeepseekOCRModel`` subclasses this class and adds the language model, so the module
attribute names here are the published checkpoint prefixes below ``model.``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .clip import ClipVisionTower
from .config import DeepseekOCRConfig
from .image_processing import ImageInput
from .sam import SamEncoder


class Projector(nn.Module):
    """``projector.layers``: one linear layer, (CLIP width + compressor channels) -> decoder width."""

    def __init__(self, input_dim: int, output_dim: int) -> None:
        super().__init__()
        self.layers = nn.Linear(input_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        nn.init.trunc_normal_(self.layers.weight, std=std)
        nn.init.zeros_(self.layers.bias)


def _square_side(num_tokens: int) -> int:
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens do not form a square grid")
    return side


class DeepEncoder(nn.Module):
    def __init__(self, cfg: DeepseekOCRConfig) -> None:
        super().__init__()
        D = cfg.decoder.hidden_size
        self.sam_model = SamEncoder(cfg.sam)
        self.vision_model = ClipVisionTower(cfg.clip)
        self.projector = Projector(cfg.projector_input_dim, D)
        self.image_newline = nn.Parameter(torch.zeros(D))
        self.view_seperator = nn.Parameter(torch.zeros(D))  # sic: the published name
        # not init_weights(): a subclass's override would run before its own modules exist
        self.init_vision_weights()

    # ------------------------------------------------------------------ init / utilities
    @torch.no_grad()
    def init_vision_weights(self, std: float = 0.02) -> None:
        """Fresh-training init of the encoder's parameters only (subclasses init the rest)."""
        for init in self.vision_init_parts(std).values():
            init()

    def vision_init_parts(self, std: float = 0.02) -> dict[str, Callable[[], None]]:
        """Attribute name -> the init of that part alone, in ``init_vision_weights`` order."""
        # the official code draws both vectors from N(0, 1/D), the embedding scale
        embed_std = self.image_newline.shape[0] ** -0.5
        return {
            "sam_model": lambda: self.sam_model.init_weights(std),
            "vision_model": lambda: self.vision_model.init_weights(std),
            "projector": lambda: self.projector.reset_parameters(std),
            "image_newline": lambda: nn.init.normal_(self.image_newline, std=embed_std),
            "view_seperator": lambda: nn.init.normal_(self.view_seperator, std=embed_std),
        }

    def init_weights(self, std: float = 0.02) -> None:
        self.init_vision_weights(std)

    # modules after SAM that ``project`` / ``arrange`` read (the pipeline's PP1 holds them)
    EMBEDDING_PARTS: tuple[str, ...] = ("vision_model", "projector", "image_newline", "view_seperator")
    # the encoder proper (frozen with SAM by ``train.freeze_encoder``)
    ENCODER_CORE: str = "vision_model"

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute SAM blocks and CLIP layers in backward (activation memory for stage 1)."""
        self.sam_model.gradient_checkpointing = enabled
        self.vision_model.transformer.gradient_checkpointing = enabled

    # ------------------------------------------------------------------ stages
    # sam_features / project / arrange read only the attributes they name (sam_model;
    # vision_model + projector; image_newline + view_seperator): train/pipeline.py borrows them
    # as plain functions on its pipeline-stage modules.
    def sam_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels -> (B, C, S/64, S/64): SAM + neck + compressor (PP0)."""
        w = self.sam_model.patch_embed.proj.weight
        return self.sam_model(pixels.to(device=w.device, dtype=w.dtype))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) compressor features -> (B, h*w, D): CLIP + concat + projector (PP1)."""
        clip_tokens = self.vision_model(features)[:, 1:]  # (B, h*w, Wc): class token dropped
        sam_tokens = features.flatten(2).transpose(1, 2)  # (B, h*w, C), same row-major order
        return self.projector(torch.cat([clip_tokens, sam_tokens], dim=-1))  # (B, h*w, D)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, (S/64)**2, D) vision tokens of same-size views."""
        return self.project(self.sam_features(pixels))

    def arrange(
        self,
        global_tokens: torch.Tensor,
        tile_tokens: torch.Tensor | None = None,
        tile_grid: tuple[int, int] = (0, 0),
    ) -> torch.Tensor:
        """Lay out one image's tokens: global_tokens (h*w, D), tile_tokens (n, h'*w', D) with
        n = cols * rows for tile_grid = (cols, rows) -> (N, D) incl. newlines + separator."""
        D = global_tokens.shape[-1]
        newline = self.image_newline.to(global_tokens.dtype)
        parts = []
        cols, rows = tile_grid
        if cols * rows:
            if tile_tokens is None or tile_tokens.shape[0] != cols * rows:
                got = 0 if tile_tokens is None else tile_tokens.shape[0]
                raise ValueError(f"tile_grid {tile_grid} needs {cols * rows} tiles, got {got}")
            t = _square_side(tile_tokens.shape[1])
            # tile k is at (row k // cols, col k % cols): stitch into one (rows*t, cols*t) grid
            grid = tile_tokens.reshape(rows, cols, t, t, D).permute(0, 2, 1, 3, 4).reshape(rows * t, cols * t, D)
            grid = torch.cat([grid, newline.expand(rows * t, 1, D)], dim=1)  # newline per grid row
            parts.append(grid.reshape(-1, D))
        elif tile_tokens is not None and tile_tokens.shape[0]:
            raise ValueError(f"{tile_tokens.shape[0]} tiles given with tile_grid {tile_grid}")
        s = _square_side(global_tokens.shape[0])
        view = torch.cat([global_tokens.reshape(s, s, D), newline.expand(s, 1, D)], dim=1)
        parts.append(view.reshape(-1, D))
        parts.append(self.view_seperator.to(global_tokens.dtype)[None])
        return torch.cat(parts, dim=0)

    def forward(self, images: Sequence[ImageInput], max_batch: int | None = None) -> list[torch.Tensor]:
        """Encode images -> one (img.num_tokens, D) tensor each. Views and tiles of equal size
        (from any image, global or tile) share a batch; ``max_batch`` caps its size."""
        if not images:
            return []
        # side -> [(image index, is_tile, (n, 3, side, side) pixels)]
        buckets: dict[int, list[tuple[int, bool, torch.Tensor]]] = defaultdict(list)
        for i, img in enumerate(images):
            buckets[img.global_view.shape[-1]].append((i, False, img.global_view[None]))
            if img.tiles.shape[0]:
                buckets[img.tiles.shape[-1]].append((i, True, img.tiles))

        global_out: list[torch.Tensor | None] = [None] * len(images)
        tile_out: list[torch.Tensor | None] = [None] * len(images)
        for side in sorted(buckets):
            entries = buckets[side]
            pixels = torch.cat([px for _, _, px in entries])  # (B, 3, side, side)
            chunks = pixels.split(max_batch) if max_batch else (pixels,)
            tokens = torch.cat([self.encode(c) for c in chunks])  # (B, (side/64)**2, D)
            for (i, is_tile, _), tok in zip(entries, tokens.split([px.shape[0] for _, _, px in entries])):
                if is_tile:
                    tile_out[i] = tok
                else:
                    global_out[i] = tok[0]
        return [self.arrange(global_out[i], tile_out[i], img.tile_grid) for i, img in enumerate(images)]
