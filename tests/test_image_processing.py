"""Preprocessing per resolution mode, Gundam grid choice, token counts, valid tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.config import CPU_MODES, PAPER_MODES, RESOLUTION_MODES
from models.image_processing import (
    ImageInput,
    choose_tile_grid,
    count_tokens_table,
    num_vision_tokens,
    paper_token_table,
    preprocess_image,
    valid_tokens,
)

PAD = 127 / 127.5 - 1.0  # the mean colour after normalisation


def gradient_image(w: int, h: int) -> Image.Image:
    """Distinct content everywhere: R varies with x, G with y, B constant."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    arr = np.stack([x, y, np.full_like(x, 40)], axis=-1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def test_paper_table():
    table = paper_token_table()
    # (global tokens, tokens per tile), straight from the paper's mode table
    assert table == {
        "tiny": (64, 0), "small": (100, 0), "base": (256, 0), "large": (400, 0),
        "gundam": (256, 100), "gundam_m": (400, 256),
    }
    assert count_tokens_table() == table


def test_cpu_modes_are_outside_the_paper_table():
    # nano / micro: 2x2 and 4x4 tokens of 64 px, + a newline per row + the separator
    assert set(CPU_MODES).isdisjoint(paper_token_table())
    assert num_vision_tokens("nano") == 4 + 2 + 1 and num_vision_tokens("micro") == 16 + 4 + 1
    img = preprocess_image(Image.new("RGB", (300, 90), "white"), "micro")
    assert img.global_view.shape == (3, 256, 256) and img.num_tokens == 21


@pytest.mark.parametrize("mode", list(PAPER_MODES))
def test_num_vision_tokens_is_table_plus_layout(mode):
    glob, per_tile = paper_token_table()[mode]
    side = int(glob**0.5)
    assert num_vision_tokens(mode) == glob + side + 1  # + newline per row + separator
    if per_tile:
        t = int(per_tile**0.5)
        for cols, rows in [(2, 1), (1, 3), (3, 2), (3, 3)]:
            n = cols * rows
            newlines = side + rows * t
            assert num_vision_tokens(mode, (cols, rows)) == n * per_tile + glob + newlines + 1


def test_num_vision_tokens_examples_and_errors():
    assert num_vision_tokens("base") == 273
    assert num_vision_tokens("tiny") == 73
    assert num_vision_tokens("Gundam", (3, 2)) == 20 * (30 + 1) + 273
    with pytest.raises(KeyError, match="unknown resolution mode"):
        num_vision_tokens("huge")
    with pytest.raises(ValueError):
        num_vision_tokens("base", (2, 1))  # base never tiles
    with pytest.raises(ValueError):
        num_vision_tokens("gundam", (2, 0))


def test_valid_tokens():
    assert valid_tokens(1000, 1000, 256) == 256
    assert valid_tokens(1000, 500, 256) == 128
    assert valid_tokens(300, 1000, 256) == 77  # ceil(76.8)
    assert valid_tokens(1000, 300, 400) == 120
    # the paper's formula literally, on sizes where it is not an integer
    for w, h, n in [(612, 792, 256), (595, 842, 400), (1700, 2200, 256), (7, 1000, 64)]:
        expect = int(np.ceil(n * (1 - (max(w, h) - min(w, h)) / max(w, h)) - 1e-9))
        assert valid_tokens(w, h, n) == expect
    with pytest.raises(ValueError):
        valid_tokens(0, 10, 256)


@pytest.mark.parametrize(
    "size, max_tiles, grid",
    [
        ((3000, 1000), 6, (3, 1)),  # wide
        ((1000, 3000), 6, (1, 3)),  # tall
        ((2000, 2000), 6, (2, 2)),  # square: (1, 1) is below the 2-tile minimum
        ((3000, 3000), 9, (3, 3)),  # square tie (2,2)/(3,3): enough pixels -> larger grid
        ((700, 700), 9, (2, 2)),  # same tie, too few pixels -> keeps the smaller grid
        ((1275, 1650), 6, (2, 3)),  # US letter at 150 dpi (0.77): 0.667 beats (2, 2) = 1.0
        ((1275, 1650), 4, (2, 2)),  # ... with 4 tiles at most: 1.0 beats (1, 2) = 0.5
        ((1654, 2339), 9, (2, 3)),  # A4 at 200 dpi (0.707); (3, 4) = 0.75 would need 12 tiles
        ((2339, 1654), 9, (3, 2)),  # A4 landscape
        ((5000, 1000), 9, (5, 1)),  # panorama
        ((5000, 1000), 4, (4, 1)),  # ... capped by the tile budget
    ],
)
def test_gundam_grid_choice(size, max_tiles, grid):
    assert choose_tile_grid(*size, tile_size=640, min_tiles=2, max_tiles=max_tiles) == grid


@pytest.mark.parametrize("size, grid", [((1400, 700), (2, 1)), ((700, 2100), (1, 3)), ((1300, 1300), (2, 2))])
def test_gundam_preprocess_follows_the_grid(size, grid):
    img = preprocess_image(gradient_image(*size), "gundam")
    assert img.tile_grid == grid
    assert img.tiles.shape == (grid[0] * grid[1], 3, 640, 640)
    assert img.global_view.shape == (3, 1024, 1024)
    assert img.num_tokens == num_vision_tokens("gundam", grid)


def test_gundam_tiles_are_row_major_crops_of_the_resized_image():
    src = gradient_image(1500, 1000)
    img = preprocess_image(src, "gundam")
    cols, rows = img.tile_grid
    assert (cols, rows) == (3, 2)
    resized = src.resize((cols * 640, rows * 640), Image.Resampling.BICUBIC)
    for k in range(cols * rows):
        x, y = (k % cols) * 640, (k // cols) * 640
        crop = np.asarray(resized.crop((x, y, x + 640, y + 640)), dtype=np.float32) / 127.5 - 1
        torch.testing.assert_close(img.tiles[k], torch.from_numpy(crop).permute(2, 0, 1))


def test_small_image_gets_no_tiles():
    img = preprocess_image(gradient_image(640, 500), "gundam")
    assert img.tile_grid == (0, 0) and img.tiles.shape[0] == 0
    assert img.global_view.shape == (3, 1024, 1024)
    assert img.num_tokens == num_vision_tokens("base") == 273
    # one side over the tile size is enough to tile
    assert preprocess_image(gradient_image(641, 200), "gundam").tile_grid != (0, 0)
    # Gundam-M tiles at 1024
    big = preprocess_image(gradient_image(2000, 1000), "gundam_m")
    assert big.tile_grid == (2, 1) and big.tiles.shape == (2, 3, 1024, 1024)
    assert big.global_view.shape == (3, 1280, 1280)


def test_gundam_m_tiles_over_640_like_the_official_code():
    """Official process/image_process.py: tiles once a side exceeds 640 in every tiled mode,
    whatever the tile size: a 900x900 image gets 2x2 tiles of 1024 in Gundam-M = 1477 tokens."""
    img = preprocess_image(gradient_image(900, 900), "gundam_m")
    assert img.tile_grid == (2, 2) and img.tiles.shape == (4, 3, 1024, 1024)
    assert img.num_tokens == num_vision_tokens("gundam_m", (2, 2)) == 2 * 16 * (2 * 16 + 1) + 20 * 21 + 1 == 1477
    at = preprocess_image(gradient_image(640, 640), "gundam_m")
    assert at.tile_grid == (0, 0) and at.num_tokens == 421  # 640 is not over the threshold
    assert preprocess_image(gradient_image(641, 100), "gundam_m").tile_grid != (0, 0)


@pytest.mark.parametrize("mode", ["base", "large", "gundam"])
def test_pad_modes_keep_aspect_and_centre_with_mean_colour(mode):
    S = RESOLUTION_MODES[mode].base_size
    img = preprocess_image(Image.new("RGB", (1000, 500), (255, 255, 255)), mode)
    v = img.global_view
    assert v.shape == (3, S, S)
    # content: rows S/4 .. 3S/4 are white (1.0), bands above/below are the mean colour
    band = S // 4
    torch.testing.assert_close(v[:, : band - 2], torch.full_like(v[:, : band - 2], PAD))
    torch.testing.assert_close(v[:, -(band - 2):], torch.full_like(v[:, -(band - 2):], PAD))
    torch.testing.assert_close(v[:, band + 2 : S - band - 2], torch.ones_like(v[:, band + 2 : S - band - 2]))
    assert img.valid_tokens == valid_tokens(1000, 500, (S // 64) ** 2)


@pytest.mark.parametrize("mode, side", [("tiny", 512), ("small", 640)])
def test_resize_modes_stretch_without_padding(mode, side):
    src = Image.new("RGB", (1000, 300), (255, 0, 0))
    img = preprocess_image(src, mode)
    assert img.global_view.shape == (3, side, side)
    assert img.tiles.shape[0] == 0 and img.tile_grid == (0, 0)
    torch.testing.assert_close(img.global_view[0], torch.ones(side, side))  # no pad anywhere
    torch.testing.assert_close(img.global_view[1], -torch.ones(side, side))
    assert img.valid_tokens == (side // 64) ** 2
    assert img.num_tokens == num_vision_tokens(mode)


def test_normalisation_range():
    img = preprocess_image(gradient_image(512, 512), "tiny")
    v = img.global_view
    assert v.dtype == torch.float32
    assert v.min() >= -1.0 and v.max() <= 1.0
    assert v[0, 0, 0] == -1.0 and v[0, 0, -1] == 1.0  # R: 0 at the left edge, 255 at the right


def test_image_modes_are_converted():
    # RGBA: a plain convert("RGB") as the official code does (alpha dropped, no white
    # compositing): transparent black stays black, half-transparent red stays full red
    rgba = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    torch.testing.assert_close(preprocess_image(rgba, "tiny").global_view, -torch.ones(3, 512, 512))
    red = preprocess_image(Image.new("RGBA", (300, 200), (255, 0, 0, 40)), "tiny").global_view
    assert red[0].min() == 1.0 and red[1].max() == -1.0 and red[2].max() == -1.0
    rgba = gradient_image(300, 200).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((300, 200)))
    torch.testing.assert_close(preprocess_image(rgba, "tiny").global_view,
                               preprocess_image(rgba.convert("RGB"), "tiny").global_view)
    grey = preprocess_image(Image.new("L", (300, 200), 0), "small").global_view
    torch.testing.assert_close(grey, -torch.ones(3, 640, 640))
    pal = Image.new("P", (300, 200), 0)
    pal.putpalette([0, 255, 0] * 256)
    v = preprocess_image(pal, "tiny").global_view
    assert v[1].min() == 1.0 and v[0].max() == -1.0
    for mode in ["1", "I;16", "CMYK", "LA"]:
        assert preprocess_image(Image.new(mode, (64, 64)), "base").global_view.shape == (3, 1024, 1024)


def test_errors():
    with pytest.raises(KeyError, match="unknown resolution mode"):
        preprocess_image(gradient_image(10, 10), "giant")
    with pytest.raises(ValueError, match="empty image"):
        preprocess_image(Image.new("RGB", (0, 10)), "base")
    with pytest.raises(TypeError):
        preprocess_image(np.zeros((10, 10, 3), np.uint8), "base")
    with pytest.raises(ValueError, match="max_tiles"):
        preprocess_image(gradient_image(2000, 1000), "gundam", max_tiles=10)
    with pytest.raises(ValueError, match="max_tiles"):
        preprocess_image(gradient_image(2000, 1000), "gundam", max_tiles=1)
    with pytest.raises(ValueError, match="tiles do not fill"):
        ImageInput("gundam", torch.zeros(3, 1024, 1024), torch.zeros(3, 3, 640, 640), (2, 1), 256)
    with pytest.raises(ValueError, match="global view"):  # not square: the token layout needs S x S
        ImageInput("base", torch.zeros(3, 1024, 512), torch.zeros(0, 3, 0, 0), (0, 0), 256)
    with pytest.raises(ValueError, match="tiles must be"):
        ImageInput("gundam", torch.zeros(3, 1024, 1024), torch.zeros(2, 3, 640, 600), (2, 1), 256)
