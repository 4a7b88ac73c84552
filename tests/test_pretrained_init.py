"""Stage-1 init from public SAM ViT-B / CLIP ViT-L/14 weights (models/pretrained.py).

Randomly initialised ``transformers`` SamModel / CLIPVisionModel with the tiny preset's
shapes are saved locally (``save_pretrained``; the segment_anything ``.pth`` naming; the
transformers-4 ``vision_model.`` naming with a text tower), loaded into ocrflow's modules, and
every tensor is compared where it should land (names by an independent rule: the one
tests/test_sam_clip.py proves gives equal outputs). A wrong-shaped, missing or unknown tensor
is refused with its name before anything is copied. At full size, the mapping of SAM ViT-B and
CLIP ViT-L/14 (built on the meta device: no memory) gives exactly the published shapes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import (CLIPVisionConfig, CLIPVisionModel, SamConfig, SamMaskDecoderConfig, SamModel,
                          SamPromptEncoderConfig, SamVisionConfig)

from models.clip import ClipVisionTower
from models.config import get_preset
from models.deepencoder import DeepEncoder
from models.pretrained import init_encoder_from_pretrained, load_clip_weights, load_sam_weights, mapped_shapes, \
    plan_clip, plan_sam
from models.sam import SamEncoder
from test_sam_clip import randomize, sam_name_to_hf

TINY = get_preset("tiny")


def hf_sam_config(sam=TINY.sam, tiny_heads: bool = True) -> SamConfig:
    vc = SamVisionConfig(hidden_size=sam.width, output_channels=sam.neck_channels, num_hidden_layers=sam.depth,
                         num_attention_heads=sam.num_heads, window_size=sam.window_size,
                         global_attn_indexes=list(sam.global_attn_indexes), image_size=sam.img_size,
                         patch_size=sam.patch_size, mlp_ratio=sam.mlp_ratio)
    if not tiny_heads:  # the released SAM's prompt encoder / mask decoder sizes
        return SamConfig(vision_config=vc.to_dict())
    return SamConfig(vision_config=vc.to_dict(),
                     prompt_encoder_config=SamPromptEncoderConfig(hidden_size=16).to_dict(),
                     mask_decoder_config=SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, iou_head_hidden_dim=16,
                                                              num_attention_heads=2).to_dict())


def hf_clip_config(clip=TINY.clip) -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=clip.width, intermediate_size=clip.mlp_dim, num_hidden_layers=clip.layers,
                            num_attention_heads=clip.heads, image_size=clip.image_size, patch_size=clip.patch_size,
                            hidden_act="quick_gelu", layer_norm_eps=clip.layer_norm_eps)


def _save_random(model: torch.nn.Module, seed: int, folder: Path) -> tuple[torch.nn.Module, Path]:
    randomize(model.eval(), seed=seed)  # non-trivial values everywhere (SAM's init is ~1e-10)
    model.save_pretrained(folder)
    return model, folder


@pytest.fixture(scope="module")
def hf_sam(tmp_path_factory):
    torch.manual_seed(0)
    return _save_random(SamModel(hf_sam_config()), 5, tmp_path_factory.mktemp("sam") / "sam-vit-b-random")


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    torch.manual_seed(0)
    return _save_random(CLIPVisionModel(hf_clip_config()), 6, tmp_path_factory.mktemp("clip") / "clip-vit-l-14-random")


def _clip_sd(model: CLIPVisionModel) -> dict[str, torch.Tensor]:
    """The vision tower's tensors without a ``vision_model.`` prefix (transformers 4 and 5 differ)."""
    return {k.removeprefix("vision_model."): v for k, v in model.state_dict().items()}


def test_sam_transformers_layout_every_tensor_lands(hf_sam):
    hf, path = hf_sam
    sam = SamEncoder(TINY.sam)
    compressor = {k: v.clone() for k, v in sam.state_dict().items() if k.startswith(("net_2", "net_3"))}
    report = load_sam_weights(sam, path)
    hf_sd = hf.state_dict()
    ours = sam.state_dict()
    checked = 0
    for name, value in ours.items():
        if name.startswith(("net_2", "net_3")):  # no public source: fresh init kept
            torch.testing.assert_close(value, compressor[name], rtol=0, atol=0)
            continue
        torch.testing.assert_close(value, hf_sd["vision_encoder." + sam_name_to_hf(name)], rtol=0, atol=0)
        checked += 1
    assert checked == len(report.loaded) == len([k for k in hf_sd if k.startswith("vision_encoder.")])
    assert {n.split(".")[0] for n in report.dropped} == {"mask_decoder", "prompt_encoder", "shared_image_embedding"}
    assert sorted({n.split(".")[0] for n in report.fresh}) == ["net_2", "net_3"]
    assert "65 tensors loaded" in report.summary()


def test_sam_segment_anything_pth(tmp_path):
    """The original release is a plain state dict: ``image_encoder.*`` (our names) + heads."""
    src = SamEncoder(TINY.sam)
    randomize(src, seed=7)
    sd = {"image_encoder." + k: v for k, v in src.state_dict().items() if not k.startswith(("net_2", "net_3"))}
    sd["mask_decoder.iou_token.weight"] = torch.randn(1, 16)
    sd["prompt_encoder.no_mask_embed.weight"] = torch.randn(1, 16)
    torch.save(sd, tmp_path / "sam_vit_b_random.pth")
    sam = SamEncoder(TINY.sam)
    report = load_sam_weights(sam, tmp_path / "sam_vit_b_random.pth")
    assert report.layout == "segment_anything" and len(report.dropped) == 2
    for name, value in sam.state_dict().items():
        if not name.startswith(("net_2", "net_3")):
            torch.testing.assert_close(value, sd["image_encoder." + name], rtol=0, atol=0)


def test_clip_transformers_layout_every_tensor_lands_and_computes_the_same(hf_clip):
    hf, path = hf_clip
    clip = ClipVisionTower(TINY.clip).eval()
    report = load_clip_weights(clip, path)
    src = _clip_sd(hf)
    ours = clip.state_dict()
    for i in range(TINY.clip.layers):
        for part in ("weight", "bias"):
            q, k, v = (src[f"encoder.layers.{i}.self_attn.{x}_proj.{part}"] for x in "qkv")
            torch.testing.assert_close(ours[f"transformer.layers.{i}.self_attn.qkv_proj.{part}"], torch.cat([q, k, v]),
                                       rtol=0, atol=0)
            for mod in ("self_attn.out_proj", "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"):
                torch.testing.assert_close(ours[f"transformer.layers.{i}.{mod}.{part}"],
                                           src[f"encoder.layers.{i}.{mod}.{part}"], rtol=0, atol=0)
    for name in ("embeddings.class_embedding", "embeddings.patch_embedding.weight",
                 "embeddings.position_embedding.weight", "pre_layrnorm.weight", "pre_layrnorm.bias"):
        torch.testing.assert_close(ours[name], src[name], rtol=0, atol=0)
    assert len(report.loaded) == len(ours) and not report.fresh
    assert sorted(report.dropped) == sorted(k for k in hf.state_dict() if "post_layernorm" in k)
    # the fused attention computes what transformers' q/k/v layers compute
    x = torch.randn(2, 17, TINY.clip.width)
    with torch.no_grad():
        torch.testing.assert_close(clip.transformer(x), hf.encoder(inputs_embeds=x).last_hidden_state,
                                   atol=2e-5, rtol=1e-4)


def test_clip_model_layout_with_text_tower(hf_clip, tmp_path):
    """transformers-4 / CLIPModel naming: ``vision_model.*`` plus a text tower and projections."""
    hf, _ = hf_clip
    sd = {"vision_model." + k: v.contiguous() for k, v in _clip_sd(hf).items()}
    sd.update({"text_model.embeddings.token_embedding.weight": torch.randn(10, 8),
               "visual_projection.weight": torch.randn(8, TINY.clip.width), "logit_scale": torch.tensor(2.0)})
    save_file(sd, str(tmp_path / "model.safetensors"))
    clip = ClipVisionTower(TINY.clip)
    report = load_clip_weights(clip, tmp_path / "model.safetensors")
    assert len(report.loaded) == len(clip.state_dict())
    torch.testing.assert_close(clip.state_dict()["embeddings.position_embedding.weight"],
                               sd["vision_model.embeddings.position_embedding.weight"], rtol=0, atol=0)


def test_wrong_shaped_missing_and_unknown_tensors_are_refused_by_name(hf_sam, hf_clip, tmp_path):
    hf, _ = hf_sam
    sd = {k: v.clone() for k, v in hf.state_dict().items() if k.startswith("vision_encoder.")}
    sd["vision_encoder.layers.2.mlp.lin1.weight"] = torch.zeros(64, 32)  # model: (128, 32)
    del sd["vision_encoder.neck.conv2.weight"]
    sd["vision_encoder.layers.0.attn.extra_gate"] = torch.zeros(3)
    save_file(sd, str(tmp_path / "bad_sam.safetensors"))
    sam = SamEncoder(TINY.sam)
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_sam_weights(sam, tmp_path / "bad_sam.safetensors")
    msg = str(err.value)
    assert "sam_model.blocks.2.mlp.lin1.weight <- vision_encoder.layers.2.mlp.lin1.weight: checkpoint [64, 32] " \
           "vs model [128, 32]" in msg
    assert "sam_model.neck.2.weight" in msg and "vision_encoder.layers.0.attn.extra_gate" in msg
    for k, v in sam.state_dict().items():  # refused before anything was copied
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)

    # a CLIP whose width differs from the compressor's channels
    wide = CLIPVisionModel(hf_clip_config(TINY.clip.__class__(width=96, layers=2, heads=2, mlp_dim=128)))
    wide.save_pretrained(tmp_path / "clip_wide")
    with pytest.raises(ValueError, match=r"vision_model\.embeddings\.class_embedding <- .*: checkpoint \[96\] vs model \[64\]"):
        load_clip_weights(ClipVisionTower(TINY.clip), tmp_path / "clip_wide")
    # settings shapes cannot show: a GELU (not quick-GELU) CLIP
    gelu = CLIPVisionModel(CLIPVisionConfig(**{**hf_clip_config().to_dict(), "hidden_act": "gelu"}))
    gelu.save_pretrained(tmp_path / "clip_gelu")
    with pytest.raises(ValueError, match="hidden_act"):
        load_clip_weights(ClipVisionTower(TINY.clip), tmp_path / "clip_gelu")
    with pytest.raises(ValueError, match="not a SAM checkpoint"):
        load_sam_weights(SamEncoder(TINY.sam), tmp_path / "clip_gelu")


def test_deepencoder_init_from_both(hf_sam, hf_clip):
    enc = DeepEncoder(TINY)
    proj = enc.projector.layers.weight.detach().clone()
    reports = init_encoder_from_pretrained(enc, hf_sam[1], hf_clip[1])
    assert [r.part for r in reports] == ["sam_model", "vision_model"]
    torch.testing.assert_close(enc.sam_model.pos_embed, hf_sam[0].vision_encoder.pos_embed, rtol=0, atol=0)
    torch.testing.assert_close(enc.projector.layers.weight, proj, rtol=0, atol=0)  # no public source


def test_full_size_mapping_gives_the_published_shapes(manifest):
    """SAM ViT-B (transformers defaults) and CLIP ViT-L/14 on the meta device -> the published
    ``model.sam_model.*`` / ``model.vision_model.*`` shapes, every one (compressor excepted)."""
    full = get_preset("deepseek-ocr")
    with torch.device("meta"):
        sam = SamModel(hf_sam_config(full.sam, tiny_heads=False))
        clip = CLIPVisionModel(hf_clip_config(full.clip))
    published = {k: tuple(v) for k, v in manifest["tensors"].items()}
    for prefix, model, plan_fn, fresh in (("model.sam_model.", sam, plan_sam, ("net_2.", "net_3.")),
                                          ("model.vision_model.", clip, plan_clip, ())):
        src = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        plan = plan_fn(src)
        assert not plan.unknown
        got = mapped_shapes(plan, src)
        want = {k[len(prefix):]: s for k, s in published.items() if k.startswith(prefix)}
        assert set(got) == {k for k in want if not k.startswith(fresh)}
        assert all(got[k] == want[k] for k in got), [(k, got[k], want[k]) for k in got if got[k] != want[k]]

