"""Initialise DeepEncoder from public SAM ViT-B and CLIP ViT-L/14 weights (stage 1).

The paper starts DeepEncoder from public weights: SAM-base (Segment Anything ViT-B) for
``sam_model`` and CLIP ViT-L/14 (224 px) for ``vision_model``. This module maps those
checkpoints onto ocrflow's (= the published DeepSeek-OCR) names, checks every shape before any
value is copied, and refuses a mismatch naming the tensors.

Accepted sources (local paths only):

* SAM, ``transformers`` layout: ``SamModel`` / ``SamVisionModel`` (``save_pretrained`` folder
  or a ``.safetensors`` / ``.bin`` file). Names ``vision_encoder.{patch_embed.projection,
  pos_embed, layers.N.{layer_norm1, attn.{qkv, proj, rel_pos_h, rel_pos_w}, layer_norm2,
  mlp.{lin1, lin2}}, neck.{conv1, layer_norm1, conv2, layer_norm2}}``.
* SAM, original ``segment_anything`` layout: the released ``sam_vit_b_01ec64.pth`` (a plain
  state dict; ``image_encoder.*`` names equal ours, ``neck.0..3``).
* CLIP, ``transformers`` layout: ``CLIPVisionModel`` (also ``CLIPModel`` /
  ``CLIPVisionModelWithProjection``: the text tower and projections are dropped). Names
  ``[vision_model.]{embeddings.{class_embedding, patch_embedding, position_embedding},
  pre_layrnorm, encoder.layers.N.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2,
  mlp.{fc1, fc2}}, post_layernorm}``; q/k/v are concatenated into our fused ``qkv_proj``
  (rows [q; k; v]).

What does not map:

* SAM's prompt encoder, mask decoder and ``shared_image_embedding`` (segmentation heads):
  dropped.
* CLIP's ``post_layernorm``: dropped (DeepEncoder has none; the projector reads the last
  layer's output). CLIP's ``patch_embedding`` is loaded into the tensor the published
  checkpoint keeps, but DeepEncoder bypasses it (CLIP reads the compressor's tokens), so it
  has no effect.
* ``sam_model.net_2`` / ``net_3`` (the 16x compressor), ``projector``, ``image_newline`` and
  ``view_seperator`` have no public source: they keep their fresh initialisation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# source-name prefixes that are dropped on purpose (not errors)
SAM_DROPPED = ("prompt_encoder.", "mask_decoder.", "shared_image_embedding.")
CLIP_DROPPED = ("text_model.", "visual_projection.", "text_projection.", "logit_scale")
CLIP_DROPPED_VISION = ("post_layernorm.", "embeddings.position_ids")  # inside the vision tower
# ocrflow tensors with no public source
SAM_FRESH = ("net_2.", "net_3.")

_HF_SAM_RULES = [  # transformers SamVisionEncoder (after "vision_encoder.") -> ours
    (re.compile(r"^patch_embed\.projection\.(weight|bias)$"), r"patch_embed.proj.\1"),
    (re.compile(r"^pos_embed$"), r"pos_embed"),
    (re.compile(r"^layers\.(\d+)\.layer_norm([12])\.(weight|bias)$"), r"blocks.\1.norm\2.\3"),
    (re.compile(r"^layers\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)$"), r"blocks.\1.attn.\2.\3"),
    (re.compile(r"^layers\.(\d+)\.attn\.(rel_pos_h|rel_pos_w)$"), r"blocks.\1.attn.\2"),
    (re.compile(r"^layers\.(\d+)\.mlp\.(lin1|lin2)\.(weight|bias)$"), r"blocks.\1.mlp.\2.\3"),
    (re.compile(r"^neck\.conv1\.weight$"), r"neck.0.weight"),
    (re.compile(r"^neck\.layer_norm1\.(weight|bias)$"), r"neck.1.\1"),
    (re.compile(r"^neck\.conv2\.weight$"), r"neck.2.weight"),
    (re.compile(r"^neck\.layer_norm2\.(weight|bias)$"), r"neck.3.\1"),
]
_HF_CLIP_RULES = [  # transformers CLIPVisionTransformer (after "vision_model.") -> ours
    (re.compile(r"^embeddings\.(class_embedding|patch_embedding\.weight|position_embedding\.weight)$"),
     r"embeddings.\1"),
    (re.compile(r"^pre_layrnorm\.(weight|bias)$"), r"pre_layrnorm.\1"),
    (re.compile(r"^encoder\.layers\.(\d+)\.(layer_norm[12]|mlp\.fc[12]|self_attn\.out_proj)\.(weight|bias)$"),
     r"transformer.layers.\1.\2.\3"),
]
_HF_CLIP_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")

_MAX_LISTED = 20


@dataclass
class InitReport:
    """What an init did: ``loaded`` / ``fresh`` are ocrflow names under ``prefix``."""

    part: str  # "sam_model" | "vision_model"
    source: str
    layout: str
    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # source tensors not used, on purpose
    fresh: list[str] = field(default_factory=list)  # ours with no public source

    def summary(self) -> str:
        kinds = sorted({n.split(".")[0] for n in self.dropped})
        return (f"{self.part} <- {self.source} ({self.layout}): {len(self.loaded)} tensors loaded, "
                f"{len(self.dropped)} dropped ({', '.join(kinds) or 'none'}), "
                f"fresh init kept for {', '.join(sorted({n.split('.')[0] for n in self.fresh})) or 'nothing'}")


# ------------------------------------------------------------------------- reading


class TensorSource:
    """Names and shapes of a checkpoint first; values only when asked (safetensors lazily)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._files: dict[str, Path] = {}
        self._tensors: dict[str, torch.Tensor] | None = None
        self.config: dict = {}
        p = self.path
        if p.is_dir():
            cfg = p / "config.json"
            self.config = json.loads(cfg.read_text()) if cfg.is_file() else {}
            st = sorted(p.glob("*.safetensors"))
            bins = sorted(p.glob("*.bin")) + sorted(p.glob("*.pth")) + sorted(p.glob("*.pt"))
            if st:
                self._index_safetensors(st)
            elif bins:
                self._load_torch(bins)
            else:
                raise FileNotFoundError(f"no *.safetensors, *.bin, *.pth or *.pt weights in {p}")
        elif p.is_file():
            cfg = p.parent / "config.json"
            self.config = json.loads(cfg.read_text()) if cfg.is_file() else {}
            if p.suffix == ".safetensors":
                self._index_safetensors([p])
            else:
                self._load_torch([p])
        else:
            raise FileNotFoundError(f"pretrained weights not found: {p}")

    def _index_safetensors(self, files: list[Path]) -> None:
        from safetensors import safe_open

        self._shapes: dict[str, tuple[int, ...]] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as h:
                for n in h.keys():
                    self._files[n] = f
                    self._shapes[n] = tuple(h.get_slice(n).get_shape())

    def _load_torch(self, files: list[Path]) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for f in files:
            sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            for key in ("model", "state_dict"):  # training checkpoints wrap the weights
                if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
                    sd = sd[key]
            if not isinstance(sd, Mapping):
                raise ValueError(f"{f} does not hold a state dict (got {type(sd).__name__})")
            tensors.update({k: v for k, v in sd.items() if isinstance(v, torch.Tensor)})
        self._tensors = tensors
        self._shapes = {k: tuple(v.shape) for k, v in tensors.items()}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def get(self, name: str) -> torch.Tensor:
        if self._tensors is not None:
            return self._tensors[name]
        from safetensors import safe_open

        with safe_open(str(self._files[name]), framework="pt") as h:
            return h.get_tensor(name)


# ------------------------------------------------------------------------- mapping
# A plan maps each of our names to the source names it is built from (concatenated on dim 0).


@dataclass
class Plan:
    layout: str
    targets: dict[str, list[str]]  # ours -> source names (one, or q/k/v to concatenate)
    dropped: list[str]
    unknown: list[str]  # source tensors that are neither mapped nor dropped on purpose


def _apply_rules(name: str, rules) -> str | None:
    for pat, repl in rules:
        if pat.match(name):
            return pat.sub(repl, name)
    return None


def plan_sam(names: Iterable[str]) -> Plan:
    """Source names (transformers or segment_anything layout) -> our ``SamEncoder`` names."""
    names = list(names)
    if any(n.startswith("vision_encoder.") for n in names):
        layout, prefix = "transformers SamModel", "vision_encoder."
    elif any(n.startswith("image_encoder.") for n in names):
        layout, prefix = "segment_anything", "image_encoder."
    elif "patch_embed.proj.weight" in names:
        layout, prefix = "segment_anything image encoder", ""
    else:
        raise ValueError("not a SAM checkpoint: no vision_encoder.* (transformers SamModel), image_encoder.* "
                         f"(segment_anything) or patch_embed.proj.weight tensor; first names: {names[:5]}")
    targets, dropped, unknown = {}, [], []
    for n in names:
        if n.startswith(SAM_DROPPED):
            dropped.append(n)
            continue
        if not n.startswith(prefix):
            unknown.append(n)
            continue
        rest = n[len(prefix):]
        ours = _apply_rules(rest, _HF_SAM_RULES) if prefix == "vision_encoder." else rest
        if ours is None:
            unknown.append(n)
        else:
            targets[ours] = [n]
    return Plan(layout, targets, dropped, unknown)


def plan_clip(names: Iterable[str]) -> Plan:
    """Source names (transformers CLIPVisionModel / CLIPModel) -> our ``ClipVisionTower`` names.

    transformers 4.x writes the vision tower under ``vision_model.`` (also inside CLIPModel);
    transformers 5 writes a CLIPVisionModel without that prefix: both are accepted."""
    names = list(names)
    if any(n.startswith("vision_model.") for n in names):
        prefix = "vision_model."
    elif "embeddings.class_embedding" in names:
        prefix = ""
    else:
        raise ValueError("not a transformers CLIP vision checkpoint: no vision_model.* or embeddings.class_embedding "
                         f"tensor (CLIPVisionModel / CLIPModel layout); first names: {names[:5]}")
    targets: dict[str, list[str]] = {}
    qkv: dict[str, dict[str, str]] = {}
    dropped, unknown = [], []
    for n in names:
        rest = n[len(prefix):] if n.startswith(prefix) else None
        if n.startswith(CLIP_DROPPED) or (rest is not None and rest.startswith(CLIP_DROPPED_VISION)):
            dropped.append(n)
            continue
        if rest is None:
            unknown.append(n)
            continue
        m = _HF_CLIP_QKV.match(rest)
        if m:
            qkv.setdefault(f"transformer.layers.{m[1]}.self_attn.qkv_proj.{m[3]}", {})[m[2]] = n
            continue
        ours = _apply_rules(rest, _HF_CLIP_RULES)
        if ours is None:
            unknown.append(n)
        else:
            targets[ours] = [n]
    for ours, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            unknown += sorted(parts.values())  # an incomplete q/k/v set cannot be fused
        else:
            targets[ours] = [parts["q"], parts["k"], parts["v"]]  # rows [q; k; v]
    return Plan("transformers CLIPVisionModel", targets, dropped, unknown)


def mapped_shapes(plan: Plan, src: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Our name -> the shape the plan builds (concatenation on dim 0 for q/k/v)."""
    out = {}
    for ours, parts in plan.targets.items():
        shapes = [tuple(src[p]) for p in parts]
        out[ours] = (sum(s[0] for s in shapes), *shapes[0][1:]) if len(shapes) > 1 else shapes[0]
    return out


def _listing(kind: str, items: list[str]) -> str:
    shown = "\n    ".join(items[:_MAX_LISTED])
    more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"  {len(items)} {kind}:\n    {shown}{more}"


def check_plan(plan: Plan, src: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
               fresh_prefixes: tuple[str, ...], part: str, source: str) -> None:
    """Raise, naming every tensor, on wrong shapes, missing or unknown tensors."""
    got = mapped_shapes(plan, src)
    wanted = {n: s for n, s in expected.items() if not n.startswith(fresh_prefixes)}
    wrong = sorted(f"{part}.{n} <- {' + '.join(plan.targets[n])}: checkpoint {list(got[n])} vs model {list(wanted[n])}"
                   for n in set(got) & set(wanted) if tuple(got[n]) != tuple(wanted[n]))
    missing = sorted(f"{part}.{n}" for n in set(wanted) - set(got))
    unexpected = sorted(plan.unknown) + sorted(f"{' + '.join(plan.targets[n])} -> {part}.{n} (no such tensor)"
                                               for n in set(got) - set(wanted))
    parts = [_listing(k, v) for k, v in (("wrong-shaped", wrong), ("missing", missing),
                                         ("unexpected", unexpected)) if v]
    if parts:
        raise ValueError(f"{plan.layout} checkpoint {source} does not match {part}:\n" + "\n".join(parts))


@torch.no_grad()
def _load(module: nn.Module, source: TensorSource, plan: Plan, fresh: tuple[str, ...], part: str) -> InitReport:
    own = module.state_dict(keep_vars=True)
    check_plan(plan, source.shapes(), {n: tuple(t.shape) for n, t in own.items()}, fresh, part, str(source.path))
    for ours, parts in plan.targets.items():
        value = torch.cat([source.get(p) for p in parts]) if len(parts) > 1 else source.get(parts[0])
        own[ours].copy_(value)  # casts to the parameter's dtype / device
    return InitReport(part, str(source.path), plan.layout, sorted(plan.targets), sorted(plan.dropped),
                      sorted(n for n in own if n.startswith(fresh)))


def _check_config(cfg: dict, expect: Mapping[str, object], source: str) -> None:
    """Settings that shapes cannot reveal (head count, activation) against the source's config.json."""
    bad = [f"{k}: checkpoint {cfg[k]!r} vs model {v!r}" for k, v in expect.items() if k in cfg and cfg[k] != v]
    if bad:
        raise ValueError(f"pretrained config {source} does not match the model: " + "; ".join(bad))


def load_sam_weights(sam: nn.Module, path: str | Path) -> InitReport:
    """SAM ViT-B weights (transformers or segment_anything layout) into ``models.sam.SamEncoder``."""
    src = TensorSource(path)
    vc = src.config.get("vision_config", src.config)
    _check_config(vc, {"num_attention_heads": sam.cfg.num_heads}, str(path))
    return _load(sam, src, plan_sam(src.shapes()), SAM_FRESH, "sam_model")


def load_clip_weights(clip: nn.Module, path: str | Path) -> InitReport:
    """CLIP ViT-L/14 vision weights (transformers layout) into ``models.clip.ClipVisionTower``."""
    src = TensorSource(path)
    vc = src.config.get("vision_config", src.config)
    _check_config(vc, {"num_attention_heads": clip.cfg.heads, "hidden_act": "quick_gelu",
                       "layer_norm_eps": clip.cfg.layer_norm_eps}, str(path))
    return _load(clip, src, plan_clip(src.shapes()), (), "vision_model")


def init_encoder_from_pretrained(encoder: nn.Module, sam_from: str | Path | None = None,
                                 clip_from: str | Path | None = None) -> list[InitReport]:
    """``model.sam_from`` / ``model.clip_from`` into a ``DeepEncoder`` (or a model with
    ``sam_model`` / ``vision_model``); returns one report per part loaded."""
    reports = []
    if sam_from:
        reports.append(load_sam_weights(encoder.sam_model, sam_from))
    if clip_from:
        if not hasattr(encoder, "vision_model"):
            raise ValueError("model.clip_from: DeepSeek-OCR 2's encoder has no CLIP (its flow encoder "
                             "would start from Qwen2-0.5B, which ocrflow does not import yet)")
        reports.append(load_clip_weights(encoder.vision_model, clip_from))
    return reports


__all__ = ["InitReport", "TensorSource", "Plan", "plan_sam", "plan_clip", "mapped_shapes", "check_plan",
           "load_sam_weights", "load_clip_weights", "init_encoder_from_pretrained",
           "SAM_DROPPED", "CLIP_DROPPED", "CLIP_DROPPED_VISION", "SAM_FRESH"]
