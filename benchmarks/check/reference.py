"""transformers' DeepSeek-OCR-2 SAM and text model holding ocrflow's weights (the speed and
equality references of the device check and of tests/test_decoder.py).

``transformers.models.deepseek_ocr2`` is an independent implementation of the same parts:
its SAM (``DeepseekOcr2SamVisionEncoder``: ViT-B, neck, two stride-2 convs) is ocrflow's
``SamEncoder``; its text model (``DeepseekOcr2TextModel``: DeepSeek-V2 with MHA, dense layer 0,
greedy softmax top-k without renormalization) is ocrflow's decoder. Only names and the fused
``gate_up_proj`` of the experts differ; the functions here translate ocrflow's state dict.
"""

from __future__ import annotations

import torch
from torch import nn

from models.config import DecoderConfig, SamConfig
from models.decoder import DecoderLayer, RMSNorm, RotaryEmbedding, build_attention_mask


class TextDecoder(nn.Module):
    """ocrflow's language model alone: embed + ``DecoderLayer``s + final norm (+ ``lm_head``),
    named like the checkpoint's ``model.*`` (the decoder of ``DeepseekOCRModel`` without
    DeepEncoder)."""

    def __init__(self, c: DecoderConfig, head: bool = False):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.rope = RotaryEmbedding(c.head_dim, c.rope_theta)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False) if head else None

    def forward(self, ids, attention_mask=None, position_ids=None, cache=None):
        """ids (B, T) -> (hidden (B, T, D) after the final norm, summed MoE aux loss)."""
        B, T = ids.shape
        past = cache.seq_len if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=ids.device).expand(B, T)
        cos, sin = self.rope(position_ids)
        mask = build_attention_mask(None, attention_mask, T, past, device=ids.device)
        h, aux = self.embed_tokens(ids), 0.0
        for layer in self.layers:
            h, a = layer(h, cos, sin, mask, cache)
            aux = aux + a
        return self.norm(h), aux


def hf_text_model(c: DecoderConfig, attn: str = "sdpa"):
    """An untrained ``DeepseekOcr2TextModel`` of ``c``'s sizes (greedy top-k, no renormalization,
    dense layers below ``first_k_dense_replace``), attention implementation ``attn``."""
    from transformers.models.deepseek_ocr2 import configuration_deepseek_ocr2 as hf_cfg
    from transformers.models.deepseek_ocr2 import modeling_deepseek_ocr2 as hf_mod

    hc = hf_cfg.DeepseekOcr2TextConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        moe_intermediate_size=c.moe_intermediate_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, num_key_value_heads=c.num_key_value_heads,
        n_routed_experts=c.n_routed_experts, num_experts_per_tok=c.num_experts_per_tok,
        n_shared_experts=c.n_shared_experts, n_group=1, topk_group=1, topk_method="greedy",
        norm_topk_prob=c.norm_topk_prob,
        mlp_layer_types=["dense" if i < c.first_k_dense_replace else "sparse" for i in range(c.num_hidden_layers)],
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        rms_norm_eps=c.rms_norm_eps, max_position_embeddings=c.max_position_embeddings,
    )
    hc._attn_implementation = attn
    return hf_mod.DeepseekOcr2TextModel(hc).eval()


def decoder_state_for_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ocrflow decoder names -> transformers' (stacked gate/up experts joined into gate_up_proj)."""
    sd = {}
    for k, v in state.items():
        if k.startswith("lm_head."):
            continue
        if ".mlp.experts.gate_proj" in k:
            up = state[k.replace("gate_proj", "up_proj")]
            sd[k.replace("gate_proj", "gate_up_proj")] = torch.cat([v, up], dim=1)  # (E, 2I, D)
        elif ".mlp.experts.up_proj" not in k:
            sd[k] = v
    return sd


def copy_decoder_to_hf(ours: TextDecoder, hf: nn.Module) -> None:
    """Load ``ours``' weights into ``hf``; anything but RoPE buffers left unset is an error."""
    missing, unexpected = hf.load_state_dict(decoder_state_for_hf(ours.state_dict()), strict=False)
    if unexpected or any("rotary" not in m for m in missing):
        raise RuntimeError(f"decoder weights do not map onto transformers': missing {missing}, unexpected {unexpected}")


def hf_sam_encoder(c: SamConfig, attn: str = "sdpa"):
    """An untrained ``DeepseekOcr2SamVisionEncoder`` (SAM + neck + compressor) of ``c``'s sizes."""
    from transformers.models.deepseek_ocr2 import configuration_deepseek_ocr2 as hf_cfg
    from transformers.models.deepseek_ocr2 import modeling_deepseek_ocr2 as hf_mod

    hc = hf_cfg.DeepseekOcr2SamVisionConfig(
        hidden_size=c.width, output_channels=c.neck_channels, num_hidden_layers=c.depth,
        num_attention_heads=c.num_heads, image_size=c.img_size, patch_size=c.patch_size,
        window_size=c.window_size, global_attn_indexes=list(c.global_attn_indexes), mlp_ratio=c.mlp_ratio,
        downsample_channels=list(c.downsample_channels),
    )
    hc._attn_implementation = attn
    return hf_mod.DeepseekOcr2SamVisionEncoder(hc).eval()


_SAM_RENAMES = (("patch_embed.proj.", "patch_embed.projection."), ("blocks.", "layers."),
                (".norm1.", ".layer_norm1."), (".norm2.", ".layer_norm2."),
                ("neck.0.", "neck.conv1."), ("neck.1.", "neck.layer_norm1."),
                ("neck.2.", "neck.conv2."), ("neck.3.", "neck.layer_norm2."),
                ("net_2.", "proj.conv1."), ("net_3.", "proj.conv2."))


def sam_name_for_hf(name: str) -> str:
    for old, new in _SAM_RENAMES:
        name = name.replace(old, new)
    return name


def copy_sam_to_hf(ours: nn.Module, hf: nn.Module) -> None:
    """Load a ``SamEncoder``'s weights (same image size) into transformers' SAM, every tensor."""
    sd = {sam_name_for_hf(k): v for k, v in ours.state_dict().items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"SAM weights do not map onto transformers': missing {missing}, unexpected {unexpected}")
