"""DeepEncoder: checkpoint names, token layout, per-mode token counts, batching, gradients."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from models.config import CPU_MODES, PAPER_MODES, RESOLUTION_MODES, get_preset
from models.deepencoder import DeepEncoder
from models.image_processing import num_vision_tokens, preprocess_image

_TINY = get_preset("tiny")
# the tiny preset with a 2-block SAM (one windowed, one global block, one head): the same code
# paths at a quarter of the CPU time; the modes' image sizes (512..1280) are fixed anyway
CFG = _TINY.replace(sam=dataclasses.replace(_TINY.sam, depth=2, num_heads=1, global_attn_indexes=(1,)))
D = CFG.decoder.hidden_size
ENCODER_PREFIXES = ("model.sam_model.", "model.vision_model.", "model.projector.", "model.image_newline",
                    "model.view_seperator")


def page(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def encoder() -> DeepEncoder:
    torch.manual_seed(0)
    return DeepEncoder(CFG)


def test_state_dict_equals_published_names_and_shapes(manifest):
    with torch.device("meta"):
        enc = DeepEncoder(get_preset("deepseek-ocr"))
    ours = {f"model.{k}": list(v.shape) for k, v in enc.state_dict().items()}
    published = {k: v for k, v in manifest["tensors"].items() if k.startswith(ENCODER_PREFIXES)}
    assert ours == published
    assert sum(np.prod(s) for s in ours.values()) > 380e6  # ~380M parameters (paper: DeepEncoder)


def test_arrange_matches_the_official_order(encoder):
    """Tokens carry their (view, row, col) identity; compare with a loop-built layout."""
    cols, rows, t, s = 3, 2, 2, 3
    tiles = torch.zeros(cols * rows, t * t, D)
    for k in range(cols * rows):
        for i in range(t * t):
            tiles[k, i, 0] = 1000 + 100 * k + i
    glob = torch.zeros(s * s, D)
    glob[:, 0] = torch.arange(s * s) + 1
    with torch.no_grad():
        out = encoder.arrange(glob, tiles, (cols, rows))
    nl, sep = encoder.image_newline.detach(), encoder.view_seperator.detach()
    expect = []
    for r in range(rows):  # stitched grid: every token row spans all tiles of a tile row
        for y in range(t):
            for c in range(cols):
                expect += [tiles[r * cols + c, y * t + x] for x in range(t)]
            expect.append(nl)
    for y in range(s):
        expect += [glob[y * s + x] for x in range(s)] + [nl]
    expect.append(sep)
    torch.testing.assert_close(out, torch.stack(expect))
    assert out.shape[0] == rows * t * (cols * t + 1) + s * (s + 1) + 1
    with pytest.raises(ValueError, match="needs 6 tiles"):
        encoder.arrange(glob, tiles[:5], (cols, rows))


def test_project_concatenates_clip_then_compressor(encoder):
    torch.manual_seed(1)
    feats = torch.randn(2, CFG.sam.out_channels, 4, 4)
    Wc = CFG.clip.width
    W = encoder.projector.layers.weight.detach()
    b = encoder.projector.layers.bias.detach()
    with torch.no_grad():
        clip = encoder.vision_model(feats)[:, 1:]  # (B, 16, Wc)
        sam = feats.flatten(2).transpose(1, 2)  # (B, 16, C), row-major
        expect = clip @ W[:, :Wc].T + sam @ W[:, Wc:].T + b
        torch.testing.assert_close(encoder.project(feats), expect, atol=1e-5, rtol=1e-5)


def test_forward_rows_equal_num_tokens_every_mode(encoder):
    images = [preprocess_image(page(1400, 700, i), m, max_tiles=2 if m.startswith("gundam") else None)
              for i, m in enumerate([*CPU_MODES, *PAPER_MODES])]  # Gundam-M last: images[-5:]
    images += [
        preprocess_image(page(700, 2100, 2), "gundam"),  # (1, 3)
        preprocess_image(page(1900, 1300, 3), "gundam"),  # (3, 2)
        preprocess_image(page(500, 600, 4), "gundam"),  # too small: no tiles, degrades to Base
    ]
    assert [im.tile_grid for im in images[-5:]] == [(2, 1), (2, 1), (1, 3), (3, 2), (0, 0)]
    with torch.no_grad():
        outs = encoder(images, max_batch=4)
    nl, sep = encoder.image_newline, encoder.view_seperator
    for img, out in zip(images, outs):
        assert out.shape == (img.num_tokens, D)
        assert img.num_tokens == num_vision_tokens(img.mode, img.tile_grid)
        torch.testing.assert_close(out[-1], sep)
        side = img.global_view.shape[-1] // 64
        glob = out[-1 - side * (side + 1) : -1].reshape(side, side + 1, D)
        torch.testing.assert_close(glob[:, -1], nl.expand(side, D))  # newline closes every row
        assert not torch.isclose(glob[:, :-1], nl).all(-1).any()


def test_batching_equals_one_image_at_a_time(encoder):
    """Equal-size views share a batch (Gundam's 640 tiles with a Small view): the result must not
    depend on what else is in the batch."""
    images = [preprocess_image(page(1400, 700, 1), "gundam"), preprocess_image(page(300, 300, 6), "small"),
              preprocess_image(page(800, 900, 5), "tiny"), preprocess_image(page(500, 300, 7), "tiny")]
    with torch.no_grad():
        together = encoder(images)  # buckets: 512 (2 views), 640 (2 tiles + 1 view), 1024 (1 view)
        alone = [encoder([img])[0] for img in images]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert encoder([]) == []


# CPU autograd through the rel-pos bias takes SDPA's math path: the 1280 views cost most
# (seconds each on an idle 2-core machine), still cheap enough for the default run.
@pytest.mark.parametrize("mode", [n for n, m in RESOLUTION_MODES.items() if m.version == 1])  # v2: test_ocr2*
def test_forward_backward_reaches_every_trainable_parameter(mode):
    torch.manual_seed(0)
    enc = DeepEncoder(CFG).train()
    img = preprocess_image(page(1400, 700), mode, max_tiles=2 if mode.startswith("gundam") else None)
    out = enc([img])[0]
    assert out.shape == (img.num_tokens, D)
    (out.float() ** 2).mean().backward()
    frozen = {"vision_model.embeddings.patch_embedding.weight"}  # bypassed, kept for loading only
    for name, p in enc.named_parameters():
        if name in frozen:
            assert not p.requires_grad and p.grad is None
            continue
        assert p.grad is not None, f"{name} got no gradient in mode {mode}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name}: zero/non-finite grad"


def test_gradient_checkpointing_gives_the_same_gradients():
    img = preprocess_image(page(600, 500), "tiny")
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        enc = DeepEncoder(CFG).train()
        enc.set_gradient_checkpointing(ckpt)
        enc([img])[0].pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5)


def test_bfloat16_encoder_accepts_float_pixels(encoder):
    enc = DeepEncoder(CFG).to(torch.bfloat16).eval()
    img = preprocess_image(page(600, 500), "tiny")
    with torch.no_grad():
        out = enc([img])[0]
    assert out.dtype == torch.bfloat16 and out.shape == (73, D) and torch.isfinite(out).all()
