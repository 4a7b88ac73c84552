"""An export the official DeepSeek-OCR code paths load: config.json read with the defaults of
vLLM's ``DeepseekVLV2Config`` (vllm/transformers_utils/configs/deepseek_vl2.py) and the
tokenizer files the official scripts load from the model folder."""

from __future__ import annotations

import json

import torch

from models.checkpoint import (
    CONFIG_FILE,
    export_checkpoint,
    write_checkpoint_index,
    write_checkpoint_shard,
)
from models.config import get_preset
from models.tokenizer import load_tokenizer

# vLLM builds DeepseekVLV2Config(**config_json): a key config.json leaves out takes the
# constructor's default, which for tile_tag is the string "tile_tag" (not the class attribute
# "2D"); the official DeepSeek-OCR model then raises "Only 2D tile_tag is supported".
VLLM_INIT_DEFAULTS = {"tile_tag": "tile_tag", "global_view_pos": "head",
                      "candidate_resolutions": ((384, 384),)}


def vllm_view(config_json: dict) -> dict:
    """The fields as vLLM's DeepseekVLV2Config holds them after parsing ``config_json``."""
    parsed = {k: config_json.get(k, default) for k, default in VLLM_INIT_DEFAULTS.items()}
    arch = config_json.get("architectures", [])
    parsed["model_type"] = "deepseek_ocr" if "DeepseekOCRForCausalLM" in arch else config_json.get("model_type")
    parsed["vocab_size"] = config_json.get("language_config", {}).get("vocab_size", 102400)
    return parsed


def _assert_official_loadable(config_json: dict, cfg) -> None:
    v = vllm_view(config_json)
    assert v["tile_tag"] == "2D", "the official model supports only 2D tiles"
    assert v["global_view_pos"] in ("head", "tail")
    side = cfg.sam.img_size
    assert [list(r) for r in v["candidate_resolutions"]] == [[side, side]]  # the global view's size
    assert v["model_type"] == "deepseek_ocr" and v["vocab_size"] == cfg.decoder.vocab_size


def _tokenizer_dir(tmp_path):
    from data_engine.tokenizer_train import save_tokenizer, train_tokenizer

    tok = train_tokenizer(["a page of text", "another line"] * 20, vocab_size=300, min_frequency=1)
    return save_tokenizer(tok, tmp_path / "tok").parent


def test_export_config_and_tokenizer_load_like_the_official_code(tmp_path):
    from models.deepseek_ocr import DeepseekOCRForCausalLM

    cfg = get_preset("tiny")
    tok_dir = _tokenizer_dir(tmp_path)
    out = export_checkpoint(DeepseekOCRForCausalLM(cfg), tmp_path / "model", dtype=torch.float32,
                            tokenizer=tok_dir)
    _assert_official_loadable(json.loads((out / CONFIG_FILE).read_text()), cfg)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (tok_dir / name).read_bytes(), name
    assert load_tokenizer(out).vocab_size == load_tokenizer(tok_dir).vocab_size


def test_pipeline_export_index_writes_the_same_fields(tmp_path):
    """Stage 2's sharded export (write_checkpoint_shard per stage + write_checkpoint_index)."""
    from models.deepseek_ocr import DeepseekOCRForCausalLM

    cfg = get_preset("tiny")
    tok_dir = _tokenizer_dir(tmp_path)
    out = tmp_path / "model"
    out.mkdir()
    write_checkpoint_shard(DeepseekOCRForCausalLM(cfg).state_dict(), out, 0, 1, torch.float32)
    write_checkpoint_index(out, cfg, 1, torch.float32, tokenizer=tok_dir)
    _assert_official_loadable(json.loads((out / CONFIG_FILE).read_text()), cfg)
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
