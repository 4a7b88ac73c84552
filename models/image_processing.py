"""Image preprocessing for DeepEncoder: resolution modes, Gundam tiling, vision token counts.

Reference: DeepSeek-OCR paper section 3.2.2 (multiple resolution support) and the public
inference code's processor; tiling follows InternVL2's ``dynamic_preprocess``.

* Tiny (512) / Small (640): plain resize to the square (aspect not kept, nothing is padding).
* Base (1024) / Large (1280): keep aspect, pad centred with the mean colour (127,127,127);
  ``valid_tokens`` = ceil(N * (1 - (max - min) / max)) counts the tokens that see the page.
* Gundam / Gundam-M: n tiles (640 / 1024) cut from the image resized to the best (cols, rows)
  grid with min_tiles <= cols*rows <= max_tiles, plus a padded global view (1024 / 1280).
  Images with both sides <= 640 get no tiles (the official threshold, for Gundam-M too:
  a 900x900 image is cut into 2x2 tiles of 1024); without tiles Gundam degrades to Base.
* Any input mode is turned into RGB by a plain ``convert("RGB")`` (official code).

DeepSeek-OCR 2's modes (``ocr2``, ``ocr2_768``, ``ocr2_micro``, ``ocr2_nano``) have their own views, pixel
arithmetic and token count: see the section at the end of this file.

Pixels are normalised with mean = std = 0.5 (to [-1, 1]). Each output token covers 64x64
pixels (16-pixel patches, 16x compressor) in every preset, so token counts depend on the mode
only. Token layout per image (see ``models/deepencoder.py``): tiles stitched into one grid
with a newline after each grid row, then the global view with a newline after each row, then
one view separator: Base = 16 * (16 + 1) + 1 = 273.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from .config import PAPER_MODES, RESOLUTION_MODES, FlowEncoderConfig, ResolutionMode, SamConfig, get_mode

PIXELS_PER_TOKEN = SamConfig().downsample  # 64 = 16-pixel patch * 2 * 2 (compressor)
PAD_COLOR = (127, 127, 127)  # int(0.5 * 255): the normalisation mean
MAX_TILES_LIMIT = 9  # the paper's largest tile count

__all__ = [
    "ImageInput", "preprocess_image", "num_vision_tokens", "layout_tokens", "paper_token_table",
    "count_tokens_table", "valid_tokens", "choose_tile_grid", "candidate_grids", "to_rgb",
    "pil_to_tensor", "PIXELS_PER_TOKEN", "PAD_COLOR", "preprocess_image_v2", "ocr2_layout_tokens", "view_queries",
]


def layout_tokens(side: int, tile_side: int = 0, tile_grid: tuple[int, int] = (0, 0)) -> int:
    """Tokens of one image incl. newlines and the separator.

    side: tokens per side of the global view; tile_side: per side of one tile;
    tile_grid: (cols, rows), (0, 0) without tiles.
    """
    cols, rows = tile_grid
    n = side * (side + 1) + 1  # global rows + newline each, + view separator
    if cols * rows:
        n += rows * tile_side * (cols * tile_side + 1)  # stitched tile grid rows + newline each
    return n


def num_vision_tokens(mode: str, tile_grid: tuple[int, int] = (0, 0)) -> int:
    """Vision tokens (incl. newline + separator) for one image of ``mode`` with ``tile_grid``."""
    m = get_mode(mode)
    cols, rows = tile_grid
    if (cols == 0) != (rows == 0) or cols < 0 or rows < 0:
        raise ValueError(f"tile_grid must be (0, 0) or two positive ints, got {tile_grid}")
    if cols and not m.tiled:
        raise ValueError(f"mode {m.name!r} does not tile, but tile_grid={tile_grid}")
    if m.version == 2:
        return ocr2_layout_tokens(m.base_size, m.tile_size, cols * rows, m.queries)
    return layout_tokens(m.base_size // PIXELS_PER_TOKEN, m.tile_size // PIXELS_PER_TOKEN, tile_grid)


def paper_token_table() -> dict[str, tuple[int, int]]:
    """The paper's table, excluding newline/separator: mode -> (global-view tokens, tokens per
    tile); an image with n tiles has n * per_tile + global tokens (per_tile = 0: not tiled)."""
    return {
        name: ((m.base_size // PIXELS_PER_TOKEN) ** 2, (m.tile_size // PIXELS_PER_TOKEN) ** 2)
        for name, m in PAPER_MODES.items()
    }


count_tokens_table = paper_token_table  # name used in docs/INTERFACES.md


def valid_tokens(width: int, height: int, n_tokens: int) -> int:
    """Paper's N_valid = ceil(N * (1 - (max - min) / max)) = ceil(N * min / max), in exact
    integer arithmetic (float rounding would turn e.g. 256.0000001 into 257)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    lo, hi = min(width, height), max(width, height)
    return -(-n_tokens * lo // hi)


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """All (cols, rows) with min_tiles <= cols * rows <= max_tiles, by increasing area."""
    grids = [
        (i, j) for i in range(1, max_tiles + 1) for j in range(1, max_tiles + 1) if min_tiles <= i * j <= max_tiles
    ]
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))


def choose_tile_grid(
    width: int, height: int, tile_size: int, min_tiles: int = 2, max_tiles: int = 6
) -> tuple[int, int]:
    """InternVL2's grid choice: the (cols, rows) whose aspect is closest to the image's; on a tie
    the later (larger) grid wins only if the image has over half that grid's pixels."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB with a plain ``convert("RGB")``, as the official preprocessing does:
    the alpha channel is dropped, so transparent RGBA pixels keep their stored colour (often
    black) rather than being composited on white. Training must see what inference sees."""
    return image if image.mode == "RGB" else image.convert("RGB")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 normalised with mean = std = 0.5."""
    arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # (H, W, 3)
    return arr.permute(2, 0, 1).float().div_(127.5).sub_(1.0)


@dataclass
class ImageInput:
    """One preprocessed image: a global view plus (Gundam modes) a grid of tiles."""

    mode: str
    global_view: torch.Tensor  # (3, S, S) float, normalised
    tiles: torch.Tensor  # (n, 3, t, t); n == 0 when not tiled
    tile_grid: tuple[int, int]  # (cols, rows); (0, 0) when n == 0
    valid_tokens: int  # paper's N_valid for the global view
    version: int = 1  # 2: a DeepSeek-OCR 2 image (preprocess_image_v2): its token layout

    def __post_init__(self) -> None:
        cols, rows = self.tile_grid
        if self.tiles.shape[0] != cols * rows:
            raise ValueError(f"{self.tiles.shape[0]} tiles do not fill a {cols}x{rows} grid")
        g = self.global_view
        if g.ndim != 3 or g.shape[0] != 3 or g.shape[1] != g.shape[2] or g.shape[-1] % PIXELS_PER_TOKEN:
            raise ValueError(f"global view must be (3, S, S) with S % {PIXELS_PER_TOKEN} == 0, "
                             f"got {tuple(g.shape)}")
        t = self.tiles
        if t.shape[0] and (t.ndim != 4 or t.shape[1] != 3 or t.shape[2] != t.shape[3] or t.shape[-1] % PIXELS_PER_TOKEN):
            raise ValueError(f"tiles must be (n, 3, t, t) with t % {PIXELS_PER_TOKEN} == 0, got {tuple(t.shape)}")

    @property
    def num_tokens(self) -> int:
        """Vision tokens incl. newlines + separator (from the tensors' actual sizes)."""
        if self.version == 2:
            mode = RESOLUTION_MODES.get(self.mode)
            return ocr2_layout_tokens(self.global_view.shape[-1], self.tiles.shape[-1], self.tiles.shape[0],
                                      mode.queries if mode else 0)
        tile_side = self.tiles.shape[-1] // PIXELS_PER_TOKEN if self.tiles.shape[0] else 0
        return layout_tokens(self.global_view.shape[-1] // PIXELS_PER_TOKEN, tile_side, self.tile_grid)

    @property
    def content_tokens(self) -> int:
        """Vision tokens without newlines / separator (the paper's count; v2: the flow queries)."""
        if self.version == 2:
            return self.num_tokens - 1
        n_tile = (self.tiles.shape[-1] // PIXELS_PER_TOKEN) ** 2 if self.tiles.shape[0] else 0
        return (self.global_view.shape[-1] // PIXELS_PER_TOKEN) ** 2 + self.tiles.shape[0] * n_tile

    def to(self, *args, **kwargs) -> "ImageInput":
        """Tensor.to on both tensors (device / dtype), other fields unchanged."""
        return ImageInput(self.mode, self.global_view.to(*args, **kwargs), self.tiles.to(*args, **kwargs),
                          self.tile_grid, self.valid_tokens, self.version)


def _global_view(image: Image.Image, m: ResolutionMode) -> tuple[Image.Image, int]:
    n = (m.base_size // PIXELS_PER_TOKEN) ** 2
    size = (m.base_size, m.base_size)
    if not m.pad:
        return image.resize(size, Image.Resampling.BICUBIC), n
    view = ImageOps.pad(image, size, method=Image.Resampling.BICUBIC, color=PAD_COLOR, centering=(0.5, 0.5))
    return view, valid_tokens(image.width, image.height, n)


def preprocess_image(image: Image.Image, mode: str, max_tiles: int | None = None) -> ImageInput:
    """PIL image -> ImageInput for ``mode`` (see module docstring). ``max_tiles`` overrides the
    mode's default tile budget (Gundam: 6; at most 9)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(image).__name__}")
    if image.width <= 0 or image.height <= 0:
        raise ValueError(f"empty image ({image.width}x{image.height})")
    m = get_mode(mode)
    if m.version == 2:
        return preprocess_image_v2(image, mode, max_tiles)
    image = to_rgb(image)
    view, n_valid = _global_view(image, m)
    global_view = pil_to_tensor(view)

    t = m.tile_size
    grid = (0, 0)
    tiles = torch.empty(0, 3, t, t) if m.tiled else torch.empty(0, 3, 0, 0)
    if m.tiled:
        budget = m.max_tiles if max_tiles is None else max_tiles
        if not m.min_tiles <= budget <= MAX_TILES_LIMIT:
            raise ValueError(f"max_tiles must be in [{m.min_tiles}, {MAX_TILES_LIMIT}], got {budget}")
        if image.width > m.tile_threshold or image.height > m.tile_threshold:
            cols, rows = grid = choose_tile_grid(image.width, image.height, t, m.min_tiles, budget)
            big = pil_to_tensor(image.resize((cols * t, rows * t), Image.Resampling.BICUBIC))  # (3, rows*t, cols*t)
            # row-major tiles: tile k sits at (row k // cols, col k % cols)
            tiles = big.reshape(3, rows, t, cols, t).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, t, t)
    return ImageInput(m.name, global_view, tiles.contiguous(), grid, n_valid)


# ---------------------------------------------------------------------------------------
# DeepSeek-OCR 2 (reference: transformers.models.deepseek_ocr2's image processor, PIL backend,
# and its processor's token count; the tests compare pixels and counts with them)
#
# * Global view (``ocr2``: 1024 px, ``ocr2_768``: 768 px): the longer side is scaled to the view
#   side (sides rounded to the nearest pixel, bicubic), then centred on a mean-colour square.
#   ``ocr2_micro`` and ``ocr2_nano`` (CPU, not in the paper) resize plainly.
# * Tiles (``ocr2`` only, when the longer side exceeds 768 px): the image resized to the best
#   (cols, rows) grid of 768 px tiles, 2 <= cols * rows <= 6 (``choose_tile_grid``: the
#   reference's grid choice is the same), cut row-major.
# * Pixels: uint8 -> x * (1/255) in float64, then float32 -> (x - 0.5) / 0.5: the reference's
#   arithmetic, so the tensors are bit-identical.
# * Tokens (laid out by models/deepencoder_v2.py): each view gives its flow queries, 144 for a
#   view of at most 144 SAM tokens (<= 768 px), else 256, plus one separator per image:
#   n tiles -> 144 n + 256 + 1 at 1024 px; 145 for the 768 px view alone. A CPU mode may name its
#   own count (``ResolutionMode.queries``: ``ocr2_nano`` 4 + 1, the processor's (side / 64)^2).
# ---------------------------------------------------------------------------------------

_FLOW = FlowEncoderConfig()  # query counts only (fixed by the checkpoint layout)


def view_queries(side: int) -> int:
    """Flow queries (output tokens) of one square view of ``side`` pixels."""
    return _FLOW.num_queries((side // PIXELS_PER_TOKEN) ** 2)


def ocr2_layout_tokens(side: int, tile_side: int = 0, n_tiles: int = 0, global_queries: int = 0) -> int:
    """Tokens of one image: its tiles' queries, the global view's queries (``global_queries``, a
    CPU mode's own count; 0: the checkpoint's rule), one separator."""
    return n_tiles * (view_queries(tile_side) if n_tiles else 0) + (global_queries or view_queries(side)) + 1


def normalize_v2(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 in [-1, 1], with the reference's rounding."""
    x = (np.asarray(image, dtype=np.uint8).astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.float32(0.5)) / np.float32(0.5)  # (H, W, 3)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def pad_to_view(image: Image.Image, side: int) -> Image.Image:
    """Longer side scaled to ``side`` (rounded sides, bicubic), centred on a mean-colour square."""
    scale = side / max(image.width, image.height)
    w, h = round(image.width * scale), round(image.height * scale)
    resized = image.resize((w, h), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (side, side), PAD_COLOR)
    canvas.paste(resized, ((side - w) // 2, (side - h) // 2))
    return canvas


def preprocess_image_v2(image: Image.Image, mode: str, max_tiles: int | None = None) -> ImageInput:
    """PIL image -> ImageInput (``version=2``) for a DeepSeek-OCR 2 ``mode``."""
    m = get_mode(mode)
    if m.version != 2:
        v2 = ", ".join(k for k, r in RESOLUTION_MODES.items() if r.version == 2)
        raise ValueError(f"mode {m.name!r} is a DeepSeek-OCR mode; DeepSeek-OCR 2 reads {v2}")
    if image.width <= 0 or image.height <= 0:
        raise ValueError(f"empty image ({image.width}x{image.height})")
    image = to_rgb(image)
    S = m.base_size
    view = pad_to_view(image, S) if m.pad else image.resize((S, S), Image.Resampling.BICUBIC)
    t, grid = m.tile_size, (0, 0)
    tiles = torch.empty(0, 3, t, t) if m.tiled else torch.empty(0, 3, 0, 0)
    if m.tiled and max(image.width, image.height) > m.tile_threshold:
        budget = m.max_tiles if max_tiles is None else max_tiles
        if not m.min_tiles <= budget <= MAX_TILES_LIMIT:
            raise ValueError(f"max_tiles must be in [{m.min_tiles}, {MAX_TILES_LIMIT}], got {budget}")
        cols, rows = grid = choose_tile_grid(image.width, image.height, t, m.min_tiles, budget)
        big = normalize_v2(image.resize((cols * t, rows * t), Image.Resampling.BICUBIC))  # (3, rows*t, cols*t)
        tiles = big.reshape(3, rows, t, cols, t).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, t, t)
    n = m.queries or view_queries(S)
    return ImageInput(m.name, normalize_v2(view), tiles.contiguous(), grid, n, version=2)
