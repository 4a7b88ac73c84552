"""Checkpoint import/export in the published layout: names/shapes, bit-exact round trips, refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from models.checkpoint import (
    INDEX_FILE,
    SINGLE_FILE,
    config_from_json,
    expected_published_shapes,
    export_checkpoint,
    import_checkpoint,
    load_config,
    load_published_weights,
    published_config,
    published_to_state_dict,
    state_dict_to_published,
)
from models.config import get_preset


@pytest.fixture(scope="module")
def tiny_cfg():
    return get_preset("tiny")


@pytest.fixture(scope="module")
def tiny_model(tiny_cfg):
    from models.deepseek_ocr import DeepseekOCRForCausalLM

    torch.manual_seed(0)
    model = DeepseekOCRForCausalLM(tiny_cfg)
    with torch.no_grad():  # make every tensor distinct from its init (e.g. ones/zeros norms)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module, dtype=None):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        want = sa[k].to(dtype) if dtype is not None and sa[k].is_floating_point() else sa[k]
        assert sb[k].dtype == want.dtype, k
        assert torch.equal(sb[k], want), k


# ------------------------------------------------------------------------------ full size


def test_full_size_layout_matches_published_manifest(manifest):
    shapes = expected_published_shapes(get_preset("deepseek-ocr"))  # meta device: no memory
    want = {k: tuple(v) for k, v in manifest["tensors"].items()}
    missing, extra = sorted(set(want) - set(shapes)), sorted(set(shapes) - set(want))
    assert not missing and not extra, (missing[:10], extra[:10])
    wrong = {k: (shapes[k], want[k]) for k in want if shapes[k] != want[k]}
    assert not wrong, list(wrong.items())[:10]
    assert len(shapes) == 2710
    assert sum(math.prod(s) for s in shapes.values()) == manifest["total_parameters"] == 3_336_106_240


def test_config_json_matches_published_fields(manifest):
    cfg = get_preset("deepseek-ocr")
    ours = published_config(cfg)

    def assert_subset(want, got, path="config"):
        if isinstance(want, dict):
            for k, v in want.items():
                assert k in got, f"{path}.{k} missing"
                assert_subset(v, got[k], f"{path}.{k}")
        else:
            assert got == want, f"{path}: {got!r} != {want!r}"

    assert_subset(manifest["config"], json.loads(json.dumps(ours)))
    # The official config.json has no "ocrflow" entry: the published fields alone rebuild the preset.
    assert config_from_json(manifest["config"]) == cfg


# ------------------------------------------------------------------------------ tiny model


def test_name_mapping_round_trip(tiny_model, tiny_cfg):
    sd = tiny_model.state_dict()
    pub = state_dict_to_published(sd)
    e = tiny_cfg.decoder.n_routed_experts
    assert "model.layers.1.mlp.experts.gate_proj" in sd
    assert f"model.layers.1.mlp.experts.{e - 1}.down_proj.weight" in pub
    assert not any(k.endswith("experts.gate_proj") for k in pub)
    assert torch.equal(pub["model.layers.2.mlp.experts.3.up_proj.weight"], sd["model.layers.2.mlp.experts.up_proj"][3])
    back = published_to_state_dict(pub, tiny_cfg)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    # Wrapper prefixes (DDP/DeepSpeed "module.", torch.compile "_orig_mod.") are stripped.
    assert state_dict_to_published({"module._orig_mod.lm_head.weight": sd["lm_head.weight"]}).keys() == {"lm_head.weight"}
    del pub["model.layers.3.mlp.experts.5.gate_proj.weight"]
    with pytest.raises(ValueError, match=r"layers\.3\.mlp\.experts\.gate_proj.*missing \[5\]"):
        published_to_state_dict(pub, tiny_cfg)


def test_export_import_float32_bit_identical(tiny_model, tiny_cfg, tmp_path):
    out = export_checkpoint(tiny_model, tmp_path / "ckpt", dtype=torch.float32)
    assert (out / SINGLE_FILE).is_file() and not (out / INDEX_FILE).exists()
    with safe_open(str(out / SINGLE_FILE), framework="pt") as f:
        names = set(f.keys())
    assert names == set(expected_published_shapes(tiny_cfg))
    assert load_config(out) == tiny_cfg  # exact config rebuilt from config.json's "ocrflow"
    model = import_checkpoint(out)
    _assert_same_state(tiny_model, model)
    assert not model.training
    # Same function, not just same tensors: non-loaded state (buffers, RoPE) is built correctly.
    ids = torch.randint(10, tiny_cfg.decoder.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny_model.eval()(ids).logits)


def test_export_import_bfloat16(tiny_model, tmp_path):
    out = export_checkpoint(tiny_model, tmp_path / "bf16")  # default dtype: bf16 like the published one
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    model = import_checkpoint(out)
    params = dict(model.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    _assert_same_state(tiny_model, model, dtype=torch.bfloat16)


def test_import_casts_to_requested_dtype(tiny_model, tmp_path):
    out = export_checkpoint(tiny_model, tmp_path / "bf16")
    model = import_checkpoint(out, dtype="float32")
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
    _assert_same_state(_bf16_rounded(tiny_model), model)
    assert model.model.layers[1].mlp.last_expert_load.dtype == torch.long  # built, not loaded


def _bf16_rounded(model):
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return m


def test_encoder_part_loads_into_deep_encoder(tiny_model, tiny_cfg, tmp_path):
    """Stage 1/2 plumbing: the encoder of a full checkpoint loads into a bare DeepEncoder."""
    from models.deepencoder import DeepEncoder

    out = export_checkpoint(tiny_model, tmp_path / "full", dtype=torch.float32)
    enc = DeepEncoder(tiny_cfg)
    with pytest.raises(ValueError, match="unexpected"):
        load_published_weights(enc, out, prefix="model.")
    missing, unexpected = load_published_weights(enc, out, prefix="model.", strict=False)
    assert missing == [] and "embed_tokens.weight" in unexpected and "lm_head.weight" not in unexpected
    ref = tiny_model.model.state_dict()
    for k, v in enc.state_dict().items():
        assert torch.equal(v, ref[k]), k


def test_sharded_export_and_load_into_existing_model(tiny_model, tiny_cfg, tmp_path):
    out = export_checkpoint(tiny_model, tmp_path / "sharded", dtype=torch.float32, max_shard_bytes=200_000)
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (out / SINGLE_FILE).exists()
    index = json.loads((out / INDEX_FILE).read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    assert set(index["weight_map"]) == set(expected_published_shapes(tiny_cfg))
    _assert_same_state(tiny_model, import_checkpoint(out))

    from models.deepseek_ocr import DeepseekOCRForCausalLM

    fresh = DeepseekOCRForCausalLM(tiny_cfg)
    missing, unexpected = load_published_weights(fresh, out)
    assert missing == [] and unexpected == []
    _assert_same_state(tiny_model, fresh)
    # Re-exporting unsharded into the same folder removes the stale shards and index.
    export_checkpoint(tiny_model, out, dtype=torch.float32)
    assert (out / SINGLE_FILE).is_file() and not list(out.glob("model-*-of-*")) and not (out / INDEX_FILE).exists()


@pytest.mark.parametrize("corruption", ["missing", "extra", "shape"])
def test_corrupted_checkpoint_is_refused(tiny_model, tmp_path, corruption):
    out = export_checkpoint(tiny_model, tmp_path / corruption, dtype=torch.float32)
    sd = load_file(str(out / SINGLE_FILE))
    victim = "model.layers.2.mlp.experts.4.down_proj.weight"
    if corruption == "missing":
        del sd[victim]
    elif corruption == "extra":
        sd["model.layers.2.mlp.bogus.weight"] = torch.zeros(3)
        victim = "model.layers.2.mlp.bogus.weight"
    else:
        victim = "model.sam_model.net_2.weight"
        sd[victim] = torch.zeros(5, 5)
    save_file(sd, str(out / SINGLE_FILE))
    with pytest.raises(ValueError) as e:
        import_checkpoint(out)
    msg = str(e.value)
    assert victim in msg and "1 " + {"missing": "missing", "extra": "unexpected", "shape": "wrong-shaped"}[corruption] in msg
    if corruption == "shape":
        assert "[5, 5]" in msg


def test_non_strict_load_reports_missing(tiny_model, tiny_cfg, tmp_path):
    out = export_checkpoint(tiny_model, tmp_path / "partial", dtype=torch.float32)
    sd = load_file(str(out / SINGLE_FILE))
    save_file({k: v for k, v in sd.items() if not k.startswith("lm_head")}, str(out / SINGLE_FILE))
    from models.deepseek_ocr import DeepseekOCRForCausalLM

    fresh = DeepseekOCRForCausalLM(tiny_cfg)
    with pytest.raises(ValueError, match="1 missing:\n    lm_head.weight"):
        load_published_weights(fresh, out)
    missing, unexpected = load_published_weights(fresh, out, strict=False)
    assert missing == ["lm_head.weight"] and unexpected == []
    assert torch.equal(fresh.model.embed_tokens.weight, tiny_model.model.embed_tokens.weight)


def test_config_round_trip_variants(tiny_cfg, tmp_path):
    import dataclasses

    for cfg in (tiny_cfg, tiny_cfg.with_vocab(777, image_token_id=5, pad_token_id=4),
                tiny_cfg.replace(decoder=dataclasses.replace(tiny_cfg.decoder, moe_impl="loop", aux_loss_alpha=0.0))):
        (tmp_path / "config.json").write_text(json.dumps(published_config(cfg)))
        assert load_config(tmp_path) == cfg


@pytest.mark.parametrize("preset", ["tiny", pytest.param("deepseek-ocr", marks=pytest.mark.slow)])
def test_real_weights_export_import_streaming(preset, tmp_path, request):
    """Export -> import of a model holding real (filled) bf16 weights, compared tensor by tensor
    against the file without holding two copies of the model at once. The full-size run writes
    the 6.7 GB published-layout file and needs ~14 GB RAM (marked slow)."""
    from models.checkpoint import _skip_init, build_meta_model
    from models.deepseek_ocr import DeepseekOCRForCausalLM

    cfg = get_preset(preset)
    with _skip_init():
        model = DeepseekOCRForCausalLM(cfg).to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1, 1, generator=g)
    out = export_checkpoint(model, tmp_path / preset)
    want = expected_published_shapes(cfg)
    if preset == "deepseek-ocr":
        man = request.getfixturevalue("manifest")
        assert want == {k: tuple(v) for k, v in man["tensors"].items()}
        assert (out / SINGLE_FILE).is_file()  # 6.7 GB fits the default shard limit, like the published file
    pub = state_dict_to_published(model.state_dict())
    with safe_open(str(out / SINGLE_FILE), framework="pt") as f:
        assert set(f.keys()) == set(want)
        for n in f.keys():
            t = f.get_tensor(n)
            assert t.dtype == torch.bfloat16 and tuple(t.shape) == want[n], n
            assert torch.equal(t, pub[n]), n
    del model, pub
    loaded = import_checkpoint(out)
    lpub = state_dict_to_published(loaded.state_dict())
    with safe_open(str(out / SINGLE_FILE), framework="pt") as f:
        for n in f.keys():
            assert lpub[n].dtype == torch.bfloat16 and torch.equal(lpub[n], f.get_tensor(n)), n
    assert build_meta_model(cfg).state_dict().keys() == loaded.state_dict().keys()
