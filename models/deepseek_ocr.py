"""DeepSeek-OCR: DeepEncoder + DeepSeek-3B-MoE decoder (paper section 3; published checkpoint
``deepseek-ai/DeepSeek-OCR``).

``DeepseekOCRModel`` is a ``DeepEncoder`` (SAM + compressor + CLIP + projector, see
``models/deepencoder.py``) that also owns the language model (``embed_tokens``, ``layers``,
``norm``), so parameter names equal the published ``model.*`` names. The vision embeddings
of all images are scattered, in order, into the positions where ``input_ids ==
image_token_id``. ``DeepseekOCRForCausalLM`` adds the untied ``lm_head`` and the loss.

Pipeline-friendly: everything ``forward`` does is also available piecewise and depends on
nothing but its inputs — ``sam_features`` / ``project`` / ``arrange`` (encoder),
``embed(input_ids, vision_embeds)``, ``rotary_emb(position_ids)``,
``build_attention_mask(...)``, each ``layers[i]``, ``norm``, ``lm_head`` and
``causal_lm_loss`` — so the stage-2 trainer can cut the model into 4 DeepSpeed stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.config import DeepseekOCR2Config, DeepseekOCRConfig
from models.decoder import DecoderLayer, KVCache, RMSNorm, RotaryEmbedding, build_attention_mask
from models.deepencoder import DeepEncoder
from models.deepencoder_v2 import DeepEncoderV2
from models.image_processing import ImageInput
from models.moe import MoE

IGNORE_INDEX = -100


@dataclass
class CausalLMOutput:
    loss: Tensor | None  # CE over label positions + aux_loss (None without labels)
    logits: Tensor  # (B, T, V) in the model dtype
    aux_loss: Tensor  # scalar fp32: MoE load-balance loss, already scaled by aux_loss_alpha
    past_key_values: KVCache | None = None


def default_position_ids(
    T: int, past_len: int = 0, segment_ids: Tensor | None = None,
    attention_mask: Tensor | None = None, device=None,
) -> Tensor:
    """Positions when none are given: restart at 0 for each packed segment; skip padding
    (left padding: the first real token is position 0); else past_len .. past_len + T - 1."""
    if segment_ids is not None:
        # over all keys (B, past_len + T): a segment that began before a cached chunk keeps counting
        seg = segment_ids
        idx = torch.arange(seg.shape[1], device=seg.device).expand_as(seg)
        starts = torch.ones_like(seg, dtype=torch.bool)
        starts[:, 1:] = seg[:, 1:] != seg[:, :-1]
        # index of the current segment's first token, carried forward with a running max
        first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
        return (idx - first)[:, -T:]
    if attention_mask is not None:
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
    return torch.arange(past_len, past_len + T, device=device)[None]  # (1, T)


def causal_lm_loss(logits: Tensor, labels: Tensor, segment_ids: Tensor | None = None) -> Tensor:
    """Mean next-token cross-entropy. labels (B, T) are aligned with input_ids (the shift
    happens here); IGNORE_INDEX positions are skipped, and so are targets that lie in another
    packed segment than the predicting token. Only label positions are upcast to fp32, so the
    (B, T, V) logits are never materialised in fp32."""
    target = labels[:, 1:]  # (B, T-1)
    valid = target != IGNORE_INDEX
    if segment_ids is not None:
        valid = valid & (segment_ids[:, 1:] == segment_ids[:, :-1])
    pred = logits[:, :-1][valid].float()  # (n, V)
    if pred.shape[0] == 0:
        return logits.sum() * 0.0  # keeps the graph (and DDP/ZeRO hooks) alive
    return F.cross_entropy(pred, target[valid])


class LanguageModelMixin(nn.Module):
    """Token embedding + decoder layers + final norm (``model.*``) on top of a vision encoder
    (``DeepEncoder`` or ``DeepEncoderV2``, listed after this class): DeepSeek-OCR and
    DeepSeek-OCR 2 share the decoder and everything here."""

    def _build_language_model(self, cfg) -> None:
        d = cfg.decoder
        self.cfg = cfg
        self.image_token_id = cfg.image_token_id
        self.embed_tokens = nn.Embedding(d.vocab_size, d.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(d, i) for i in range(d.num_hidden_layers))
        self.norm = RMSNorm(d.hidden_size, d.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(d.head_dim, d.rope_theta)  # stateless: no parameters
        self.gradient_checkpointing_layers = False
        self.init_language_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def init_language_weights(self, std: float = 0.02) -> None:
        """DeepSeek-V2 init: N(0, std) for embeddings, projections, router and experts."""
        for init in self.language_init_parts(std).values():
            init()

    def language_init_parts(self, std: float = 0.02) -> dict[str, Callable[[], None]]:
        """Attribute name ("layers.3", ...) -> the init of that part alone, in ``init_language_weights`` order."""

        def layer_init(layer: nn.Module) -> None:
            for m in layer.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=std)
                elif isinstance(m, RMSNorm):
                    m.reset_parameters()
                elif isinstance(m, MoE):
                    m.reset_parameters(std)

        parts: dict[str, Callable[[], None]] = {"embed_tokens": lambda: nn.init.normal_(self.embed_tokens.weight, std=std)}
        for i, layer in enumerate(self.layers):
            parts[f"layers.{i}"] = partial(layer_init, layer)
        parts["norm"] = self.norm.reset_parameters
        return parts

    def init_weights(self, std: float = 0.02) -> None:
        self.init_vision_weights(std)
        self.init_language_weights(std)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        super().set_gradient_checkpointing(enabled)  # the encoder's
        self.gradient_checkpointing_layers = enabled

    # ------------------------------------------------------------------ pieces
    def encode_images(self, images: Sequence[ImageInput], max_batch: int | None = None) -> list[Tensor]:
        """DeepEncoder.forward (the vision forward of both encoders): one (img.num_tokens, D)
        tensor per image."""
        return DeepEncoder.forward(self, images, max_batch)

    def embed(self, input_ids: Tensor, vision_embeds: Sequence[Tensor] | Tensor | None = None) -> Tensor:
        """input_ids (B, T) + vision tokens (list of (n_i, D) or one (sum n_i, D)) -> (B, T, D).
        Vision tokens fill the ``image_token_id`` positions in row-major order."""
        h = self.embed_tokens(input_ids)  # (B, T, D)
        is_img = input_ids == self.image_token_id  # (B, T)
        if vision_embeds is not None and not isinstance(vision_embeds, Tensor):
            vision_embeds = torch.cat(list(vision_embeds)) if len(vision_embeds) else None
        n_slots = int(is_img.sum())
        n_vis = 0 if vision_embeds is None else vision_embeds.shape[0]
        if n_slots != n_vis:
            raise ValueError(
                f"input_ids hold {n_slots} <image> tokens (id {self.image_token_id}) but the images "
                f"give {n_vis} vision embeddings; expand each <image> to img.num_tokens ids "
                "(tokenizer.encode_prompt) and pass every image of the batch, in order"
            )
        if n_vis == 0:
            return h
        return h.masked_scatter(is_img[..., None], vision_embeds.to(h.dtype))

    def run_layers(
        self, h: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
        cache: KVCache | None = None, start: int = 0, end: int | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Apply ``layers[start:end]``; returns (hidden, summed aux loss)."""
        aux = h.new_zeros((), dtype=torch.float32)
        for layer in self.layers[start:end]:
            if self.gradient_checkpointing_layers and self.training and cache is None:
                h, a = checkpoint(layer, h, cos, sin, mask, use_reentrant=False)
            else:
                h, a = layer(h, cos, sin, mask, cache)
            aux = aux + a
        return h, aux

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Tensor,
        images: Sequence[ImageInput] = (),
        position_ids: Tensor | None = None,
        segment_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        vision_embeds: Sequence[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, KVCache | None]:
        """-> (final hidden states (B, T, D) after ``norm``, aux_loss, cache or None).
        ``vision_embeds``: already encoded images (``encode_images`` output), instead of
        ``images``. (The encoder-only forward stays available as ``encode_images``.)"""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (B, T), got {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        cache = past_key_values
        if use_cache and cache is None:
            cache = KVCache(len(self.layers))
        past_len = cache.seq_len if cache is not None else 0
        if len(images) and vision_embeds is not None:
            raise ValueError("pass images or vision_embeds, not both")
        vision = self.encode_images(images) if len(images) else vision_embeds
        h = self.embed(input_ids, vision)  # (B, T, D)
        if position_ids is None:
            position_ids = default_position_ids(T, past_len, segment_ids, attention_mask, input_ids.device)
        cos, sin = self.rotary_emb(position_ids)  # (B|1, T, hd)
        mask = build_attention_mask(segment_ids, attention_mask, T, past_len, device=input_ids.device)
        h, aux = self.run_layers(h, cos, sin, mask, cache)
        return self.norm(h), aux, cache


class DeepseekOCRModel(LanguageModelMixin, DeepEncoder):
    """DeepSeek-OCR: DeepEncoder (SAM + compressor + CLIP + projector) + the MoE decoder."""

    def __init__(self, cfg: DeepseekOCRConfig):
        DeepEncoder.__init__(self, cfg)
        self._build_language_model(cfg)


class DeepseekOCR2Model(LanguageModelMixin, DeepEncoderV2):
    """DeepSeek-OCR 2: DeepEncoder V2 (SAM + compressor + flow encoder + projector) + the same
    MoE decoder."""

    def __init__(self, cfg: DeepseekOCR2Config):
        DeepEncoderV2.__init__(self, cfg)
        self._build_language_model(cfg)


class DeepseekOCRForCausalLM(nn.Module):
    """``model`` (DeepseekOCRModel, or DeepseekOCR2Model for a ``DeepseekOCR2Config``) +
    untied ``lm_head``."""

    def __init__(self, cfg: DeepseekOCRConfig | DeepseekOCR2Config):
        super().__init__()
        self.cfg = cfg
        self.model = DeepseekOCR2Model(cfg) if isinstance(cfg, DeepseekOCR2Config) else DeepseekOCRModel(cfg)
        self.lm_head = nn.Linear(cfg.decoder.hidden_size, cfg.decoder.vocab_size, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)

    def init_weights(self, std: float = 0.02) -> None:
        """Fresh init of every parameter (e.g. after ``to_empty`` from the meta device)."""
        self.model.init_weights(std)
        with torch.no_grad():
            nn.init.normal_(self.lm_head.weight, std=std)

    def init_parts(self, std: float = 0.02) -> dict[str, Callable[[], None]]:
        """State-dict prefix ("model.sam_model", "model.layers.3", "lm_head", ...) -> the fresh
        init of that part alone. Run in order under one RNG stream they are ``init_weights``;
        run each under its own seed they initialise a model materialised piecewise (say one
        pipeline stage, from the meta device) identically whichever other parts exist."""
        parts = {f"model.{k}": f for k, f in self.model.vision_init_parts(std).items()}
        parts.update({f"model.{k}": f for k, f in self.model.language_init_parts(std).items()})
        parts["lm_head"] = lambda: nn.init.normal_(self.lm_head.weight, std=std)
        return parts

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def expert_load(self) -> dict[int, Tensor]:
        """layer index -> tokens per routed expert in the last forward (for logging)."""
        return {i: l.mlp.last_expert_load for i, l in enumerate(self.model.layers) if l.is_moe}

    def forward(
        self,
        input_ids: Tensor,
        images: Sequence[ImageInput] = (),
        labels: Tensor | None = None,
        position_ids: Tensor | None = None,
        segment_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        past_key_values: KVCache | None = None,
        use_cache: bool = False,
        vision_embeds: Sequence[Tensor] | None = None,
    ) -> CausalLMOutput:
        h, aux, cache = self.model(
            input_ids, images, position_ids=position_ids, segment_ids=segment_ids,
            attention_mask=attention_mask, past_key_values=past_key_values, use_cache=use_cache,
            vision_embeds=vision_embeds,
        )
        logits = self.lm_head(h)  # (B, T, V)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels {tuple(labels.shape)} must match input_ids {tuple(input_ids.shape)}")
            loss = causal_lm_loss(logits, labels, segment_ids) + aux
        return CausalLMOutput(loss=loss, logits=logits, aux_loss=aux, past_key_values=cache)
