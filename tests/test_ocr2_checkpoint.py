"""DeepSeek-OCR 2 checkpoints: the layout ``DeepseekOcr2ForConditionalGeneration.save_pretrained``
writes (= the official release's) is imported and exported bit for bit, read back by transformers
with no missing / unexpected keys and equal logits; bad checkpoints are refused with both names."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

hf = pytest.importorskip("transformers.models.deepseek_ocr2")

from models.checkpoint import (  # noqa: E402
    SINGLE_FILE,
    export_checkpoint,
    import_checkpoint,
    published_config,
)
from models.config import DeepseekOCR2Config, get_preset  # noqa: E402
from models.deepseek_ocr import DeepseekOCRForCausalLM  # noqa: E402


def _ids(cfg, n_img, text=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    txt = torch.randint(16, cfg.decoder.vocab_size, (text,), generator=g)
    return torch.cat([torch.tensor([cfg.bos_token_id]), torch.full((n_img,), cfg.image_token_id), txt])[None]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A random tiny model made and saved by transformers (its own init, its own writer)."""
    ours_cfg = get_preset("tiny-ocr2")
    hf_cfg = hf.DeepseekOcr2Config(**{k: v for k, v in published_config(ours_cfg).items()
                                      if k in ("vision_config", "text_config", "image_token_id")})
    torch.manual_seed(0)
    ref = hf.DeepseekOcr2ForConditionalGeneration(hf_cfg).eval()
    with torch.no_grad():  # SAM's position tables start at ~0: make them count
        for n, p in ref.named_parameters():
            if "pos" in n:
                p.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("hf_saved")
    ref.save_pretrained(out)
    return ref, out


def test_import_export_bit_identical_and_transformers_reads_it_back(saved, tmp_path):
    ref, src = saved
    model = import_checkpoint(src)
    assert isinstance(model.cfg, DeepseekOCR2Config) and model.cfg.image_token_id == ref.config.image_token_id
    dst = export_checkpoint(model, tmp_path / "export", dtype=None)
    a, b = load_file(str(src / SINGLE_FILE)), load_file(str(dst / SINGLE_FILE))
    assert sorted(a) == sorted(b)
    diff = [n for n in a if a[n].dtype != b[n].dtype or not torch.equal(a[n], b[n])]
    assert not diff, diff[:5]

    back, info = hf.DeepseekOcr2ForConditionalGeneration.from_pretrained(str(dst), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    from ocr2_reference import page
    from models.image_processing import preprocess_image

    img = preprocess_image(page((900, 500)), "ocr2")  # 2 tiles + the global view
    px = hf.DeepseekOcr2ImageProcessorPil()(page((900, 500)), return_tensors="pt")
    ids = _ids(model.cfg, img.num_tokens)
    kw = dict(input_ids=ids, pixel_values=px["pixel_values"], pixel_values_local=px["pixel_values_local"],
              num_local_patches=px["num_local_patches"])
    with torch.no_grad():
        l_ref, l_back = ref(**kw).logits, back.eval()(**kw).logits
        l_ours = model(ids, images=[img]).logits
    assert torch.equal(l_ref, l_back)
    assert float((l_ours - l_ref).abs().max()) <= 1e-4


def test_refusals_name_both_names(tmp_path):
    torch.manual_seed(0)
    m = DeepseekOCRForCausalLM(get_preset("tiny-ocr2"))
    out = export_checkpoint(m, tmp_path / "bad", dtype=torch.float32)
    sd = load_file(str(out / SINGLE_FILE))
    victim = "model.qwen2_model.model.model.layers.1.mlp.up_proj.weight"
    del sd[victim]
    sd["model.qwen2_model.model.model.layers.0.self_attn.q_proj.bias"] = torch.zeros(3)
    save_file(sd, str(out / SINGLE_FILE))
    with pytest.raises(ValueError) as e:
        import_checkpoint(out)
    msg = str(e.value)
    assert f"1 missing:\n    {victim} (model: model.qwen2_model.layers.1.mlp.up_proj.weight)" in msg
    assert "model.qwen2_model.model.model.layers.0.self_attn.q_proj.bias (model: " \
           "model.qwen2_model.layers.0.self_attn.q_proj.bias): checkpoint [3] vs model [64]" in msg


def test_v1_checkpoint_refused_by_v2_model(tmp_path):
    torch.manual_seed(0)
    v1 = export_checkpoint(DeepseekOCRForCausalLM(get_preset("tiny")), tmp_path / "v1", dtype=torch.float32)
    with pytest.raises(ValueError, match=r"(?s)missing:.*qwen2_model.*unexpected:.*vision_model"):
        import_checkpoint(v1, cfg=get_preset("tiny-ocr2"))


def test_evaluate_reads_a_v2_export_and_generates(tmp_path):
    """``train.evaluate --model`` on a DeepSeek-OCR 2 export: loaded by its config.json, read with
    a v2 mode by default, v1 modes refused; generation runs (trained and image-blind rows)."""
    from test_evaluate import _tokenizer, write_pages

    from train.eval.decode import heldout_pages
    from train.eval.loading import load_model
    from train.eval.suite import check_modes, evaluate_model

    glob_, texts = write_pages(tmp_path / "pages", 2, seed=5)
    tok = _tokenizer(tmp_path, texts)
    cfg = get_preset("tiny-ocr2").with_vocab(tok.vocab_size, bos_token_id=tok.bos_token_id,
                                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                             image_token_id=tok.image_token_id)
    torch.manual_seed(0)
    export_checkpoint(DeepseekOCRForCausalLM(cfg), tmp_path / "export", dtype=torch.float32)
    m = load_model(tmp_path / "export", tmp_path / "tok")
    assert m.kind == "checkpoint" and isinstance(m.model.cfg, DeepseekOCR2Config)
    assert check_modes(m.model, None) == ["ocr2"]
    with pytest.raises(ValueError, match="not DeepSeek-OCR 2 modes"):
        check_modes(m.model, ["tiny"])
    res = evaluate_model(m, heldout_pages(glob_, None, ("coarse",)), modes=["ocr2_micro"], progress=None,
                         max_new_tokens=8)
    rows = res["rows"]
    assert {r["variant"] for r in rows} == {"trained", "blind"} and len(rows) == 4
    assert all(r["vision_tokens"] == 144 for r in rows)  # the flow queries, separator excluded
