"""config.json of the published checkpoint layouts: written from our config (DeepSeek-OCR and
DeepSeek-OCR 2, with our full config under ``"ocrflow"``) and read back (``config_from_json``,
``load_config``), including a config.json written by transformers for DeepSeek-OCR 2. The
tensors themselves: ``models/checkpoint.py``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from .config import DeepseekOCR2Config, DeepseekOCRConfig, ModelConfig

CONFIG_FILE = "config.json"

# The published config.json carries this (architecturally unused) value; written as is so
# tools that read our config.json see the same fields as the official one.
_PUBLISHED_VISION_MLP_RATIO = 3.7362


def published_config(cfg: ModelConfig, torch_dtype: torch.dtype | None = torch.bfloat16) -> dict:
    """config.json content: the published architecture fields plus ``"ocrflow"`` (our full config)."""
    if isinstance(cfg, DeepseekOCR2Config):
        return published_config_v2(cfg, torch_dtype)
    d, s, c = cfg.decoder, cfg.sam, cfg.clip
    out = {
        "architectures": ["DeepseekOCRForCausalLM"],
        "model_type": "deepseek_vl_v2",
        "language_config": {
            "vocab_size": d.vocab_size, "hidden_size": d.hidden_size,
            "intermediate_size": d.intermediate_size, "moe_intermediate_size": d.moe_intermediate_size,
            "num_hidden_layers": d.num_hidden_layers, "num_attention_heads": d.num_attention_heads,
            "num_key_value_heads": d.num_key_value_heads, "n_routed_experts": d.n_routed_experts,
            "num_experts_per_tok": d.num_experts_per_tok, "n_shared_experts": d.n_shared_experts,
            "first_k_dense_replace": d.first_k_dense_replace,
            "max_position_embeddings": d.max_position_embeddings,
            "n_group": 1, "topk_group": 1,  # no group-limited routing in DeepSeek-OCR
            "rope_theta": d.rope_theta, "rms_norm_eps": d.rms_norm_eps,
            "norm_topk_prob": d.norm_topk_prob, "topk_method": "greedy", "scoring_func": "softmax",
            "use_mla": False, "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        },
        "projector_config": {"input_dim": cfg.projector_input_dim, "n_embed": d.hidden_size,
                             "projector_type": "linear"},
        "vision_config": {
            "image_size": s.img_size, "mlp_ratio": _PUBLISHED_VISION_MLP_RATIO,
            "model_name": "deeplip_b_l",
            "width": {
                "clip-l-14-224": {"heads": c.heads, "image_size": c.image_size, "layers": c.layers,
                                  "patch_size": c.patch_size, "width": c.width},
                "sam_vit_b": {"downsample_channels": list(s.downsample_channels),
                              "global_attn_indexes": list(s.global_attn_indexes), "heads": s.num_heads,
                              "layers": s.depth, "width": s.width},
            },
        },
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id, "image_token_id": cfg.image_token_id,
        # Read by vLLM's DeepseekVLV2Config, whose defaults would not load: its tile_tag default
        # is the string "tile_tag" and the official model supports only "2D". The global view
        # (SAM's input size) comes first, like the published config.json.
        "tile_tag": "2D", "global_view_pos": "head",
        "candidate_resolutions": [[s.img_size, s.img_size]],
        "ocrflow": cfg.to_dict(),
    }
    if torch_dtype is not None:
        out["torch_dtype"] = str(torch_dtype).removeprefix("torch.")
    return out


# transformers' DeepSeek-OCR 2 config names -> ours (SAM, flow encoder, decoder)
_HF_SAM = {"hidden_size": "width", "num_hidden_layers": "depth", "num_attention_heads": "num_heads",
           "output_channels": "neck_channels", "image_size": "img_size", "patch_size": "patch_size",
           "mlp_ratio": "mlp_ratio", "window_size": "window_size", "global_attn_indexes": "global_attn_indexes",
           "downsample_channels": "downsample_channels"}
_HF_ENCODER = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "rms_norm_eps")
_HF_TEXT = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "n_routed_experts", "num_experts_per_tok",
            "n_shared_experts", "max_position_embeddings", "rms_norm_eps")


def _rope(c: Mapping) -> dict:
    return {"rope_type": "default", "rope_theta": c}


def published_config_v2(cfg: DeepseekOCR2Config, torch_dtype: torch.dtype | None = torch.bfloat16) -> dict:
    """config.json of DeepSeek-OCR 2 as transformers writes it (``DeepseekOcr2Config``), so
    ``DeepseekOcr2ForConditionalGeneration.from_pretrained`` reads our exports, plus ``"ocrflow"``."""
    s, e, d = cfg.sam, cfg.encoder, cfg.decoder
    sam = {hf: getattr(s, ours) for hf, ours in _HF_SAM.items()}
    sam.update(global_attn_indexes=list(s.global_attn_indexes), downsample_channels=list(s.downsample_channels),
               layer_norm_eps=1e-6, model_type="deepseek_ocr2_sam_vision_model")
    encoder = {k: getattr(e, k) for k in _HF_ENCODER}
    encoder.update(rope_parameters=_rope(e.rope_theta), model_type="deepseek_ocr2_encoder")
    text = {k: getattr(d, k) for k in _HF_TEXT}
    text.update(
        mlp_layer_types=["dense" if i < d.first_k_dense_replace else "sparse" for i in range(d.num_hidden_layers)],
        n_group=1, topk_group=1, topk_method="greedy", routed_scaling_factor=1.0,
        rope_parameters=_rope(d.rope_theta), model_type="deepseek_ocr2_text",
    )
    if d.norm_topk_prob:
        raise ValueError("DeepSeek-OCR 2's layout has no norm_topk_prob: export needs decoder.norm_topk_prob=False")
    out = {
        "architectures": ["DeepseekOcr2ForConditionalGeneration"],
        "model_type": "deepseek_ocr2",
        "vision_config": {"model_type": "deepseek_ocr2_vision", "sam_config": sam, "encoder_config": encoder},
        "text_config": text,
        "image_token_id": cfg.image_token_id, "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id, "tie_word_embeddings": False,
        "ocrflow": cfg.to_dict(),
    }
    if torch_dtype is not None:
        out["dtype"] = str(torch_dtype).removeprefix("torch.")
    return out


def _config_from_hf_v2(d: Mapping) -> DeepseekOCR2Config:
    """An official / transformers DeepSeek-OCR 2 config.json -> ours (unstated fields: preset values)."""
    base = DeepseekOCR2Config().to_dict()
    vision = d.get("vision_config") or {}
    sam, enc, text = vision.get("sam_config") or {}, vision.get("encoder_config") or {}, d.get("text_config") or {}
    base["sam"].update({ours: sam[hf] for hf, ours in _HF_SAM.items() if hf in sam})
    base["encoder"].update({k: enc[k] for k in _HF_ENCODER if k in enc})
    base["encoder"]["rope_theta"] = (enc.get("rope_parameters") or {}).get("rope_theta", enc.get("rope_theta", base["encoder"]["rope_theta"]))
    base["decoder"].update({k: text[k] for k in _HF_TEXT if k in text})
    base["decoder"]["rope_theta"] = (text.get("rope_parameters") or {}).get("rope_theta", text.get("rope_theta", base["decoder"]["rope_theta"]))
    if "mlp_layer_types" in text:
        kinds = list(text["mlp_layer_types"])
        dense = next((i for i, k in enumerate(kinds) if k != "dense"), len(kinds))
        if any(k == "dense" for k in kinds[dense:]):
            raise ValueError(f"mlp_layer_types {kinds}: dense layers must come first (first_k_dense_replace)")
        base["decoder"]["first_k_dense_replace"] = dense
    for k in ("bos_token_id", "eos_token_id", "pad_token_id", "image_token_id"):
        if isinstance(d.get(k), int):
            base[k] = d[k]
    return DeepseekOCR2Config.from_dict(base)


def config_from_json(d: Mapping) -> ModelConfig:
    """Rebuild the config from a config.json: exact from ``"ocrflow"``, else from the published fields.

    The official config.json has no ``"ocrflow"`` entry; its architecture fields override the
    ``deepseek-ocr`` defaults (fields it does not state, like CLIP's MLP width, keep them).
    ``model_type: deepseek_ocr2`` marks a DeepSeek-OCR 2 checkpoint.
    """
    v2 = d.get("model_type") == "deepseek_ocr2"
    if "ocrflow" in d:
        return (DeepseekOCR2Config if v2 else DeepseekOCRConfig).from_dict(d["ocrflow"])
    if v2:
        return _config_from_hf_v2(d)
    base = DeepseekOCRConfig().to_dict()
    lang = d.get("language_config", {})
    base["decoder"].update({k: v for k, v in lang.items() if k in base["decoder"]})
    width = d.get("vision_config", {}).get("width", {})
    sam, clip = width.get("sam_vit_b", {}), width.get("clip-l-14-224", {})
    ren = {"layers": "depth", "heads": "num_heads"}
    base["sam"].update({ren.get(k, k): v for k, v in sam.items() if ren.get(k, k) in base["sam"]})
    if "image_size" in d.get("vision_config", {}):
        base["sam"]["img_size"] = d["vision_config"]["image_size"]
    base["clip"].update({k: v for k, v in clip.items() if k in base["clip"]})
    if "width" in clip and "mlp_dim" not in clip:
        base["clip"]["mlp_dim"] = 4 * clip["width"]
    if "input_dim" in d.get("projector_config", {}):
        base["projector_input_dim"] = d["projector_config"]["input_dim"]
    for k in ("bos_token_id", "eos_token_id", "pad_token_id", "image_token_id"):
        if isinstance(d.get(k), int):
            base[k] = d[k]
    return DeepseekOCRConfig.from_dict(base)


def load_config(path: str | Path) -> DeepseekOCRConfig:
    """Config of a checkpoint directory (or of a config.json path)."""
    p = Path(path)
    f = p / CONFIG_FILE if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} at {p}; pass cfg= explicitly to load weights without one")
    return config_from_json(json.loads(f.read_text()))
