"""Stage-2 pipeline: DeepSeek-OCR cut into DeepSpeed ``PipelineModule`` stages.

Paper (section 3.5): PP0 = SAM + compressor (frozen "vision tokenizer"), PP1 = CLIP +
projector + token-embedding merge ("input embedding"), PP2 = decoder layers 0-5, PP3 =
decoder layers 6-11 (+ final norm, lm head, loss here). ``models/`` knows nothing about
parallelism (torchtitan style): this file wraps the modules of a ``DeepseekOCRForCausalLM``
into pipeline *units* and reuses the model's own pieces (``DeepEncoder.sam_features`` /
``project`` / ``arrange``, ``DeepseekOCRModel.embed``, ``DecoderLayer``,
``build_attention_mask``), so the pipelined forward is the model's forward, cut.

DeepSeek-OCR 2 (``DeepseekOCR2Config``) is cut the same way: PP1 holds the flow encoder (Qwen2
layers + queries) + projector + separator instead of CLIP (``VisionEmbedding`` borrows the
model's own ``project`` / ``arrange`` and ``EMBEDDING_PARTS``); ``freeze_encoder`` freezes it
with SAM (the v2 paper's stage 3).

Units, in order (``U`` = num_hidden_layers):
    0          VisionTokenizer   SAM + neck + compressor of every view
    1          VisionEmbedding   CLIP + projector + newline/separator layout + embed_tokens merge
    2 .. U+1   one per decoder layer (consecutive layers of a stage run as one DecoderBlock)
    U+2        LMHead            final RMSNorm + lm_head
``partition`` = pp+1 unit boundaries (DeepSpeed's ``parts``). Defaults: pp=4 is the paper's
split [0, 1, 2, 2+U/2, U+3]; pp=2 merges neighbours [0, 2+U/2, U+3]; pp=1 is [0, U+3].

Activations between stages are tuples of tensors only (DeepSpeed p2p), with a FIXED layout:
floating tensors first, integer tensors after. DeepSpeed sets ``requires_grad`` on every
floating tensor it receives and sends a gradient back for each, and it reuses one receive /
gradient buffer per tuple index regardless of dtype, so the position of each dtype must never
change. Integer tensors (metadata, labels) travel without gradients.

    batch input  (pixels f32 (P,), image_meta i64 (I, 5), input_ids, labels, position_ids,
                  segment_ids, source_ids, mode_ids)                            # text: (B, T)
    after PP0    (features f32 (F,), aux f32 (), image_meta, input_ids, labels, position_ids,
                  segment_ids, source_ids, mode_ids)
    after PP1+   (hidden (B, T, D), aux f32 (), position_ids, segment_ids, labels, source_ids,
                  mode_ids)
    LMHead       (logits (B, T, V), aux, ...same integer tensors)  -> PipelineLoss

Images of any resolution mode mix in one micro-batch: all views (global views and Gundam
tiles) are flattened into one pixel vector; ``image_meta`` rows ``[side, tile_side, n_tiles,
cols, rows]`` rebuild them. Views of equal size are batched through SAM and CLIP together, in
the same order ``DeepEncoder.forward`` uses, so the math equals the unpipelined model's.
Shapes change between micro-batches, hence ``PipelineModule(dynamic_shape=True)``. Text-only micro-batches carry empty pixel/feature tensors.

MoE aux loss: an fp32 accumulator travels with the hidden states; each MoE layer adds its
load-balance loss, the last stage adds it to the CE loss, so its gradient flows back through
the pipeline like any activation.

Frozen SAM: a stage whose parameters are all frozen gives DeepSpeed an empty optimizer
(deepspeedai/DeepSpeed#5071) and has no graph to run backward on. VisionTokenizer therefore
owns a 1-element ``pipe_anchor`` parameter, identically zero, added as ``anchor * 0`` to its
outputs: its gradient is exactly 0, so AdamW (decoupled decay of 0) keeps it at 0 forever;
it is not part of the model's state dict or exported checkpoint.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from models.decoder import build_attention_mask
from models.deepencoder import DeepEncoder
from models.deepseek_ocr import IGNORE_INDEX, DeepseekOCRForCausalLM, DeepseekOCRModel
from models.image_processing import ImageInput
from train.distributed import touch_params
from train.data import (  # index spaces of PackedBatch.source_ids / mode_ids
    MODES,
    SOURCES,
)

META_COLS = 5  # image_meta row: side, tile_side, n_tiles, cols, rows
ANCHOR = "pipe_anchor"


# ---------------------------------------------------------------------------------------
# batch <-> tensor tuple
# ---------------------------------------------------------------------------------------


def pack_images(images: Sequence[ImageInput]) -> tuple[Tensor, Tensor]:
    """images -> (pixels (P,) f32: per image its global view then its tiles, flattened;
    image_meta (I, 5) long: side, tile_side, n_tiles, cols, rows)."""
    flat, meta = [], []
    for img in images:
        S, n = img.global_view.shape[-1], img.tiles.shape[0]
        t = img.tiles.shape[-1] if n else 0
        cols, rows = img.tile_grid
        meta.append([S, t, n, cols, rows])
        flat.append(img.global_view.reshape(-1).float())
        if n:
            flat.append(img.tiles.reshape(-1).float())
    pixels = torch.cat(flat) if flat else torch.zeros(0)
    return pixels, torch.tensor(meta, dtype=torch.long).reshape(-1, META_COLS)


def batch_to_inputs(batch) -> tuple[Tensor, ...]:
    """``PackedBatch`` -> the first stage's input tuple (see the module docstring)."""
    pixels, meta = pack_images(batch.images)
    return (pixels, meta, batch.input_ids, batch.labels, batch.position_ids, batch.segment_ids,
            batch.source_ids, batch.mode_ids)


class PipelineBatches:
    """Iterator for ``engine.train_batch``: yields ``(inputs, None)`` per micro-batch.

    Only the first stage reads data; labels and source/mode ids reach the last stage through
    the activations, so other stages get a placeholder ``(None, None)`` and never touch the
    (expensive) loader. ``batches`` is an iterator of ``PackedBatch``.
    """

    def __init__(self, batches, is_first_stage: bool):
        self.batches, self.first = batches, is_first_stage

    def __iter__(self):
        return self

    def __next__(self):
        if not self.first:
            return None, None
        return batch_to_inputs(next(self.batches)), None


def _views(meta: Tensor) -> list[tuple[int, int, bool, int]]:
    """image_meta -> [(image index, side, is_tile, count)] in flat order (global, then tiles)."""
    out = []
    for i, (S, t, n, _, _) in enumerate(meta.tolist()):
        out.append((i, S, False, 1))
        if n:
            out.append((i, t, True, n))
    return out


def _buckets(views) -> dict[int, list[int]]:
    """side -> view indices, sides ascending; the grouping of ``DeepEncoder.forward``."""
    b: dict[int, list[int]] = {}
    for k, (_, side, _, _) in enumerate(views):
        b.setdefault(side, []).append(k)
    return dict(sorted(b.items()))


# ---------------------------------------------------------------------------------------
# pipeline units
# ---------------------------------------------------------------------------------------


class VisionTokenizer(nn.Module):
    """PP0: SAM + neck + 16x compressor over every view, batched by view size."""

    def __init__(self, model: DeepseekOCRForCausalLM, max_batch: int | None = None):
        super().__init__()
        self.sam_model = model.model.sam_model
        self.pipe_anchor = nn.Parameter(torch.zeros(1))  # see module docstring
        self.max_batch = max_batch

    sam_features = DeepEncoder.sam_features  # uses self.sam_model only

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        pixels, meta, *text = inputs
        views = _views(meta)
        frozen = not any(p.requires_grad for p in self.sam_model.parameters())
        sizes = [c * 3 * s * s for _, s, _, c in views]
        chunks = list(pixels.split(sizes)) if views else []
        feats: list[Tensor | None] = [None] * len(views)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            for side, ks in _buckets(views).items():
                px = torch.cat([chunks[k].view(-1, 3, side, side) for k in ks])  # (N, 3, S, S)
                parts = px.split(self.max_batch) if self.max_batch else (px,)
                f = torch.cat([self.sam_features(p) for p in parts])  # (N, C, S/64, S/64)
                for k, fk in zip(ks, f.split([views[k][3] for k in ks])):
                    feats[k] = fk.reshape(-1)
        a = self.pipe_anchor
        features = torch.cat(feats) if feats else pixels.new_zeros(0, dtype=a.dtype)
        features = features.to(a.dtype) + a * 0  # (F,) attached to the graph even when frozen
        if not views and not frozen:
            features = touch_params(features, self.sam_model)
        aux = (a.sum() * 0).float()  # () MoE aux-loss accumulator, fp32 on every stage
        return (features, aux, meta, *text)


class VisionEmbedding(nn.Module):
    """PP1: CLIP + projector (v1) or the flow encoder + projector (v2) per view size, image
    layout, merge into the token embeddings."""

    def __init__(self, model: DeepseekOCRForCausalLM):
        super().__init__()
        m = model.model
        self.part_names = type(m).EMBEDDING_PARTS
        for name in self.part_names:  # same objects: state-dict names stay the model's
            setattr(self, name, getattr(m, name))
        # the model's own project / arrange (DeepEncoder's or DeepEncoderV2's), run on this unit
        self._project, self._arrange = type(m).project, type(m).arrange
        self.embed_tokens = m.embed_tokens
        self.image_token_id = m.image_token_id
        self.channels = model.cfg.sam.out_channels
        self.down = model.cfg.sam.downsample

    def project(self, features: Tensor) -> Tensor:
        return self._project(self, features)

    def arrange(self, *args) -> Tensor:
        return self._arrange(self, *args)

    embed = DeepseekOCRModel.embed  # uses self.embed_tokens / self.image_token_id

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        features, aux, meta, input_ids, labels, position_ids, segment_ids, src, mode = inputs
        views = _views(meta)
        C = self.channels
        sizes = [c * C * (s // self.down) ** 2 for _, s, _, c in views]
        chunks = list(features.split(sizes)) if views else []
        tokens: list[Tensor | None] = [None] * len(views)
        for side, ks in _buckets(views).items():
            g = side // self.down
            f = torch.cat([chunks[k].view(-1, C, g, g) for k in ks])  # (N, C, g, g)
            out = self.project(f)  # (N, g*g, D)
            for k, tk in zip(ks, out.split([views[k][3] for k in ks])):
                tokens[k] = tk
        per_image = []
        for i, (_, _, n, cols, rows) in enumerate(meta.tolist()):
            glob = next(tokens[k][0] for k, v in enumerate(views) if v[0] == i and not v[2])
            tiles = next((tokens[k] for k, v in enumerate(views) if v[0] == i and v[2]), None)
            per_image.append(self.arrange(glob, tiles, (cols, rows)))
        h = self.embed(input_ids, per_image)  # (B, T, D)
        if not views:  # text-only micro-batch
            h = h + features.sum().to(h.dtype) * 0  # an unused received input still needs a grad
            h = touch_params(h, *(getattr(self, n) for n in self.part_names))
        return (h, aux, position_ids, segment_ids, labels, src, mode)


class DecoderBlock(nn.Module):
    """Consecutive decoder layers of one stage; RoPE and the attention mask are rebuilt here
    from position/segment ids (cheap, and bool/float tables need not cross stages)."""

    def __init__(self, model: DeepseekOCRForCausalLM, start: int, end: int, checkpoint_layers: bool = False):
        super().__init__()
        self.start, self.end = start, end
        # keys are the global layer indices, so state_dict names stay "layers.{L}.*"
        self.layers = nn.ModuleDict({str(i): model.model.layers[i] for i in range(start, end)})
        self.rotary_emb = model.model.rotary_emb
        self.checkpoint_layers = checkpoint_layers

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        h, aux, position_ids, segment_ids, *rest = inputs
        cos, sin = self.rotary_emb(position_ids)  # (B, T, hd) fp32
        mask = build_attention_mask(segment_ids, None, h.shape[1])
        for layer in self.layers.values():
            if self.checkpoint_layers and self.training and torch.is_grad_enabled():
                h, a = checkpoint(layer, h, cos, sin, mask, use_reentrant=False)
            else:
                h, a = layer(h, cos, sin, mask)
            aux = aux + a.float()
        return (h, aux, position_ids, segment_ids, *rest)


class LMHead(nn.Module):
    """Last unit: final RMSNorm + lm_head -> logits (B, T, V); the loss is ``PipelineLoss``."""

    def __init__(self, model: DeepseekOCRForCausalLM):
        super().__init__()
        self.norm, self.lm_head = model.model.norm, model.lm_head

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        h, aux, *rest = inputs
        return (self.lm_head(self.norm(h)), aux, *rest)


def stat_names() -> list[str]:
    """Fixed keys of ``PipelineLoss.stats`` (DeepSpeed needs the same keys on every stage)."""
    names = ["ce", "aux", "loss_tokens", "tokens", "samples"]
    for kind, values in (("source", SOURCES), ("mode", MODES)):
        for v in values:
            names += [f"ce_sum/{kind}/{v}", f"n/{kind}/{v}"]
    return names


class PipelineLoss:
    """``loss_fn`` of the last stage: mean next-token CE over label positions (same rule as
    ``models.deepseek_ocr.causal_lm_loss``) + the accumulated MoE aux loss.

    ``stats`` (detached scalars, fixed keys) of the last micro-batch: ce, aux, token counts and
    per data-source / per resolution-mode CE sums and counts, so that sums / counts averaged
    by DeepSpeed over micro-batches and data-parallel ranks still give exact per-group means.
    """

    def __init__(self):
        self.stats: OrderedDict[str, Tensor] = OrderedDict((k, torch.zeros(())) for k in stat_names())

    def __call__(self, outputs: tuple[Tensor, ...], _labels=None) -> Tensor:
        logits, aux, _, segment_ids, labels, source_ids, mode_ids = outputs
        target = labels[:, 1:]  # (B, T-1): the shift is here, labels align with input_ids
        valid = (target != IGNORE_INDEX) & (segment_ids[:, 1:] == segment_ids[:, :-1])
        pred = logits[:, :-1][valid].float()  # (n, V)
        if pred.shape[0]:
            tok = F.cross_entropy(pred, target[valid], reduction="none")  # (n,)
            ce = tok.mean()
        else:
            tok, ce = pred.new_zeros(0), logits.sum() * 0.0
        loss = ce + aux
        with torch.no_grad():
            s = OrderedDict((k, torch.zeros((), device=loss.device)) for k in stat_names())
            s["ce"], s["aux"] = ce.detach().float(), aux.detach().float()
            s["loss_tokens"] += float(tok.numel())
            s["tokens"] += float((segment_ids != 0).sum())
            s["samples"] += float(segment_ids.max(dim=1).values.sum())  # segments are 1..k per row
            for kind, ids, values in (("source", source_ids, SOURCES), ("mode", mode_ids, MODES)):
                g = ids[:, 1:][valid]  # group of each target token
                for j, v in enumerate(values):
                    sel = g == j
                    s[f"ce_sum/{kind}/{v}"] += tok.detach()[sel].float().sum()
                    s[f"n/{kind}/{v}"] += sel.sum().float()
        self.stats = s
        return loss


# ---------------------------------------------------------------------------------------
# PipelineModule
# ---------------------------------------------------------------------------------------


def default_partition(num_layers: int, pp: int) -> list[int]:
    """Unit boundaries: the paper's 4-way split, neighbours merged for pp 2 and 1."""
    mid, end = 2 + num_layers // 2, num_layers + 3
    table = {1: [0, end], 2: [0, mid, end], 4: [0, 1, 2, mid, end]}
    if pp not in table:
        raise ValueError(f"no default partition for pp={pp}; pass partition= with pp+1 unit "
                         f"boundaries over the {end} units (see train/pipeline.py)")
    return table[pp]


def check_partition(partition: Sequence[int], pp: int, num_units: int) -> list[int]:
    parts = [int(p) for p in partition]
    if len(parts) != pp + 1 or parts[0] != 0 or parts[-1] != num_units or any(
        b <= a for a, b in pairwise(parts)
    ):
        raise ValueError(
            f"partition {parts} must be {pp + 1} strictly increasing unit boundaries from 0 to "
            f"{num_units} (units: vision tokenizer, vision embedding, decoder layers, head)"
        )
    return parts


def build_units(model: DeepseekOCRForCausalLM, parts: Sequence[int], vision_max_batch: int | None = None,
                checkpoint_layers: bool = False) -> tuple[list[nn.Module], list[int]]:
    """Units grouped by stage -> (layers for the PipelineModule, their stage boundaries).
    Decoder layers of one stage become one ``DecoderBlock``."""
    U = model.cfg.decoder.num_hidden_layers
    layers, bounds = [], [0]
    for a, b in pairwise(parts):
        units = list(range(a, b))
        if 0 in units:
            layers.append(VisionTokenizer(model, vision_max_batch))
        if 1 in units:
            layers.append(VisionEmbedding(model))
        dec = [u - 2 for u in units if 2 <= u < U + 2]
        if dec:
            layers.append(DecoderBlock(model, dec[0], dec[-1] + 1, checkpoint_layers))
        if U + 2 in units:
            layers.append(LMHead(model))
        bounds.append(len(layers))
    return layers, bounds


def _pipeline_module_cls():
    from deepspeed.pipe import PipelineModule

    class OCRPipelineModule(PipelineModule):
        """PipelineModule with explicit stage boundaries and the loss stats as DeepSpeed's
        "additional losses" (averaged over micro-batches and DP ranks, broadcast to all)."""

        def __init__(self, layers, parts, **kw):
            object.__setattr__(self, "_explicit_parts", list(parts))
            super().__init__(layers, partition_method="uniform", **kw)
            # DeepSpeed's fp32 (non-ZeRO) gradient clipping counts only the parameters of
            # "model-parallel rank 0" = pipeline stage 0 unless a parameter is marked model
            # parallel, so the clipping norm would miss every later stage. Each parameter
            # lives on exactly one stage, so mark them all: the norm is then summed over the
            # stages (ZeRO and tensor-parallel paths use the tensor-parallel rank: unaffected).
            for p in self.parameters():
                p.model_parallel = True

        def _partition_layers(self, method="uniform"):
            self.parts = list(self._explicit_parts)
            stage = self._topo.get_coord(self.global_rank).pipe
            self._set_bounds(start=self.parts[stage], stop=self.parts[stage + 1])

        def get_additional_losses(self):
            if isinstance(self.loss_fn, PipelineLoss):
                return self.loss_fn.stats
            return None

        def model_state_dict(self) -> dict[str, Tensor]:
            """This stage's parameters under the names of ``DeepseekOCRForCausalLM``."""
            out = {}
            for layer in self.forward_funcs:
                for k, v in layer.state_dict().items():
                    if k == ANCHOR:
                        continue
                    out[k if k.startswith("lm_head.") else f"model.{k}"] = v
            return out

    return OCRPipelineModule


def build_pipeline_module(
    model: DeepseekOCRForCausalLM,
    pp: int,
    partition: Sequence[int] | None = None,
    loss_fn: PipelineLoss | None = None,
    *,
    freeze_sam: bool = True,
    freeze_encoder: bool = False,
    topology=None,
    vision_max_batch: int | None = None,
    checkpoint_layers: bool = False,
    init_stage: Callable[[list[nn.Module]], object] | None = None,
):
    """Wrap ``model`` into a DeepSpeed ``PipelineModule`` with ``pp`` stages.

    Needs torch.distributed initialised (``train.distributed.init_distributed``); the data-parallel
    degree is world_size / pp unless ``topology`` is given. ``partition``: pp+1 unit
    boundaries (module docstring), default ``default_partition``. ``freeze_sam`` turns off
    ``requires_grad`` of SAM + compressor (paper: frozen in stage 2), so they stay out of the
    optimizer; ``freeze_encoder`` freezes CLIP / the flow encoder as well (DeepSeek-OCR 2's
    stage 3). Only the local stage's units are registered (and moved to the device); the
    caller may drop ``model`` afterwards. Build the optimizer from
    ``[p for p in module.parameters() if p.requires_grad]``.

    ``model`` may live on the meta device: ``init_stage(units)`` is then called with this
    rank's units only, before DeepSpeed sees them, to materialise and fill them
    (``train.stage_build.init_stage_weights``); the other stages' units stay meta.
    """
    if pp < 1:
        raise ValueError(f"pp must be >= 1, got {pp}")
    U = model.cfg.decoder.num_hidden_layers
    parts = check_partition(partition if partition is not None else default_partition(U, pp), pp, U + 3)
    if freeze_sam or freeze_encoder:
        model.model.sam_model.requires_grad_(False)
    if freeze_encoder:  # v2 stage 3: the whole DeepEncoder V2 (SAM + flow encoder) is frozen
        getattr(model.model, model.model.ENCODER_CORE).requires_grad_(False)
    layers, bounds = build_units(model, parts, vision_max_batch, checkpoint_layers)
    cls = _pipeline_module_cls()
    import torch.distributed as dist  # initialised by the caller (train.distributed.init_distributed)

    if topology is None:  # DeepSpeed's default layout, built here to know this rank's stage
        from deepspeed.runtime.pipe.topology import PipeDataParallelTopology

        if dist.get_world_size() % pp:
            raise ValueError(f"pp={pp} must divide the world size {dist.get_world_size()}")
        topology = PipeDataParallelTopology(num_pp=pp, num_dp=dist.get_world_size() // pp)
    if init_stage is not None:
        stage = topology.get_coord(dist.get_rank()).pipe
        init_stage(layers[bounds[stage]:bounds[stage + 1]])
    # dynamic_shape is a PipelineModule argument: DeepSpeed 0.19 ignores a config key of that
    # name. With it, tensor shapes are re-sent for every micro-batch (a few ints per tensor).
    return cls(layers, bounds, loss_fn=loss_fn if loss_fn is not None else PipelineLoss(),
               dynamic_shape=True, topology=topology)


def sequential_forward(model: DeepseekOCRForCausalLM, batch, loss_fn: PipelineLoss | None = None,
                       freeze_sam: bool = False) -> Tensor:
    """Run all units in one process (no DeepSpeed): the pipelined math, unpipelined. For
    tests and debugging; returns the loss of ``batch`` (a ``PackedBatch``)."""
    if freeze_sam:
        model.model.sam_model.requires_grad_(False)
    layers, _ = build_units(model, default_partition(model.cfg.decoder.num_hidden_layers, 4))
    x = batch_to_inputs(batch)
    for layer in layers:
        x = layer(x)
    loss_fn = loss_fn or PipelineLoss()
    return loss_fn(x)
