"""SamEncoder and ClipVisionTower against independent references.

* SAM (up to the neck) vs ``transformers``' SamVisionEncoder (eager attention, explicit
  rel-pos bias) with the same weights, at the native size and at a smaller input size
  (our interpolated absolute table copied in, global rel-pos tables left for HF to resize).
* The decomposed relative-position bias vs a brute-force double loop.
* Absolute-position interpolation vs Pillow's antialiased bicubic (what torch's
  ``antialias=True`` reproduces, and what the official code uses).
* CLIP layers vs ``transformers``' CLIPEncoder with q/k/v split out of the fused qkv_proj.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, SamVisionConfig
from transformers.models.clip.modeling_clip import CLIPEncoder
from transformers.models.sam.modeling_sam import SamVisionEncoder

from models.clip import ClipVisionTower
from models.config import ClipConfig, SamConfig, get_preset
from models.sam import SamEncoder, decomposed_rel_pos_bias, resize_abs_pos

# tiny SAM: 16x16 patch grid, window 5 (16 -> padded to 20), global blocks 1 and 3
SAM_CFG = SamConfig(
    img_size=256, width=32, depth=4, num_heads=2, window_size=5, global_attn_indexes=(1, 3),
    neck_channels=16, downsample_channels=(32, 64),
)


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values everywhere (rel-pos tables are zero-initialised otherwise)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("weight") and p.ndim == 1:  # norms around 1
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.2 * noise if p.ndim > 1 else 0.05 * noise)


def hf_sam(image_size: int) -> SamVisionEncoder:
    cfg = SamVisionConfig(
        hidden_size=SAM_CFG.width, output_channels=SAM_CFG.neck_channels, num_hidden_layers=SAM_CFG.depth,
        num_attention_heads=SAM_CFG.num_heads, image_size=image_size, patch_size=16,
        window_size=SAM_CFG.window_size, global_attn_indexes=list(SAM_CFG.global_attn_indexes), mlp_ratio=4.0,
    )
    cfg._attn_implementation = "eager"  # explicit softmax(qk + bias): independent of our SDPA path
    return SamVisionEncoder(cfg).eval()


def sam_name_to_hf(name: str) -> str:
    name = name.replace("patch_embed.proj.", "patch_embed.projection.").replace("blocks.", "layers.")
    name = name.replace(".norm1.", ".layer_norm1.").replace(".norm2.", ".layer_norm2.")
    for i, hf in enumerate(["conv1", "layer_norm1", "conv2", "layer_norm2"]):
        name = name.replace(f"neck.{i}.", f"neck.{hf}.")
    return name


def copy_sam_to_hf(ours: SamEncoder, hf: SamVisionEncoder, grid: int) -> None:
    hf_params = dict(hf.named_parameters())
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.startswith(("net_2", "net_3")):
                continue  # the compressor is not part of SAM
            target = sam_name_to_hf(name)
            if name == "pos_embed":
                hf_params[target].copy_(resize_abs_pos(p, grid, grid))
            elif hf_params[target].shape != p.shape:
                # a global block's table for a different grid: hand HF the 1024-size table as is,
                # HF's get_rel_pos interpolates it itself (independent of our resize)
                block = hf.layers[int(name.split(".")[1])].attn
                setattr(block, target.rsplit(".", 1)[1], torch.nn.Parameter(p.detach().clone()))
            else:
                hf_params[target].copy_(p)


@pytest.mark.parametrize("size", [256, 192])  # native 16x16 grid, and 12x12 (interpolated)
def test_sam_matches_transformers(size):
    torch.manual_seed(0)
    ours = SamEncoder(SAM_CFG).eval()
    randomize(ours)
    hf = hf_sam(size)
    copy_sam_to_hf(ours, hf, size // 16)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expect = hf(pixel_values=x).last_hidden_state  # (B, neck, S/16, S/16)
        got = ours.encode(x)
        compressed = ours(x)
    assert got.shape == expect.shape == (2, SAM_CFG.neck_channels, size // 16, size // 16)
    torch.testing.assert_close(got, expect, atol=2e-5, rtol=1e-4)
    assert compressed.shape == (2, SAM_CFG.out_channels, size // 64, size // 64)


def test_global_block_rel_pos_bias_matches_brute_force():
    torch.manual_seed(1)
    B, nh, h, w, hd = 1, 2, 6, 5, 4
    q = torch.randn(B, nh, h * w, hd)
    rel_h, rel_w = torch.randn(2 * h - 1, hd), torch.randn(2 * w - 1, hd)
    bias = decomposed_rel_pos_bias(q, rel_h, rel_w, h, w)
    ref = torch.zeros(B, nh, h * w, h * w)
    for qy in range(h):
        for qx in range(w):
            for ky in range(h):
                for kx in range(w):
                    qi, ki = qy * w + qx, ky * w + kx
                    ref[:, :, qi, ki] = q[:, :, qi] @ rel_h[qy - ky + h - 1] + q[:, :, qi] @ rel_w[qx - kx + w - 1]
    torch.testing.assert_close(bias, ref)
    # a table trained for a bigger grid is resized linearly, then indexed the same way
    big_h = torch.randn(2 * 9 - 1, hd)
    resized = torch.nn.functional.interpolate(big_h.t()[None], size=2 * h - 1, mode="linear")[0].t()
    torch.testing.assert_close(
        decomposed_rel_pos_bias(q, big_h, rel_w, h, w), decomposed_rel_pos_bias(q, resized, rel_w, h, w)
    )


def pil_resize(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """(G, G, C) float -> (h, w, C), channel by channel with Pillow's bicubic."""
    out = [np.asarray(Image.fromarray(grid[..., c], mode="F").resize((w, h), Image.Resampling.BICUBIC))
           for c in range(grid.shape[-1])]
    return np.stack(out, axis=-1)


@pytest.mark.parametrize("side", [32, 40, 64, 80])  # tiny view, 640 tile, native, 1280 view
def test_sam_abs_pos_interpolation_matches_pillow_bicubic(side):
    torch.manual_seed(2)
    table = torch.randn(1, 64, 64, 3)
    got = resize_abs_pos(table, side, side)
    ref = pil_resize(table[0].numpy(), side, side)
    np.testing.assert_allclose(got[0].numpy(), ref, atol=2e-4, rtol=0)


def clip_cfg() -> ClipConfig:
    return get_preset("tiny").clip


def hf_clip_encoder(cfg: ClipConfig) -> CLIPEncoder:
    hc = CLIPVisionConfig(
        hidden_size=cfg.width, intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads, hidden_act="quick_gelu", layer_norm_eps=cfg.layer_norm_eps,
    )
    hc._attn_implementation = "eager"
    return CLIPEncoder(hc).eval()


def copy_clip_layers_to_hf(ours: ClipVisionTower, hf: CLIPEncoder) -> None:
    with torch.no_grad():
        for ol, hl in zip(ours.transformer.layers, hf.layers):
            for part in ("weight", "bias"):
                fused = getattr(ol.self_attn.qkv_proj, part)
                q, k, v = fused.chunk(3, dim=0)
                getattr(hl.self_attn.q_proj, part).copy_(q)
                getattr(hl.self_attn.k_proj, part).copy_(k)
                getattr(hl.self_attn.v_proj, part).copy_(v)
                getattr(hl.self_attn.out_proj, part).copy_(getattr(ol.self_attn.out_proj, part))
                for name in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"):
                    src, dst = ol.get_submodule(name), hl.get_submodule(name)
                    getattr(dst, part).copy_(getattr(src, part))


def test_clip_layers_match_transformers():
    cfg = clip_cfg()
    ours = ClipVisionTower(cfg).eval()
    randomize(ours, seed=3)
    hf = hf_clip_encoder(cfg)
    copy_clip_layers_to_hf(ours, hf)
    x = torch.randn(2, 1 + 100, cfg.width)
    with torch.no_grad():
        torch.testing.assert_close(ours.transformer(x), hf(inputs_embeds=x).last_hidden_state, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("grid", [16, 10, 20])
def test_clip_tower_end_to_end(grid):
    """Full tower vs a hand-built reference: class token + features, positions (class kept,
    grid resized with Pillow's bicubic), pre-LN, transformers' layers."""
    cfg = clip_cfg()
    ours = ClipVisionTower(cfg).eval()
    randomize(ours, seed=4)
    hf = hf_clip_encoder(cfg)
    copy_clip_layers_to_hf(ours, hf)
    feats = torch.randn(2, cfg.width, grid, grid)
    table = ours.embeddings.position_embedding.weight.detach()
    g = table[1:].reshape(16, 16, cfg.width).numpy()
    pos_grid = torch.from_numpy(pil_resize(g, grid, grid)).reshape(grid * grid, cfg.width)
    pos = torch.cat([table[:1], pos_grid])
    cls = ours.embeddings.class_embedding.detach().expand(2, 1, -1)
    x = torch.cat([cls, feats.flatten(2).transpose(1, 2)], dim=1) + pos
    with torch.no_grad():
        x = ours.pre_layrnorm(x)
        expect = hf(inputs_embeds=x).last_hidden_state
        got = ours(feats)
    assert got.shape == (2, 1 + grid * grid, cfg.width)
    torch.testing.assert_close(got, expect, atol=1e-4, rtol=1e-4)


def test_clip_rejects_wrong_width():
    with pytest.raises(ValueError, match="compressor features"):
        ClipVisionTower(clip_cfg())(torch.zeros(1, 3, 4, 4))
