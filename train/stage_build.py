"""Stage-2 construction per pipeline stage: each rank materialises only its own stage.

The whole ``DeepseekOCRForCausalLM`` is first built on the meta device (names and shapes, no
memory), cut into pipeline units (``train/pipeline.py``), and only the units of this rank's
stage get real tensors, on the target device and in the training dtype:

1. meta parameters / buffers of the stage's units become empty tensors on ``device`` (floating
   ones in ``dtype``, so a bf16 run never holds an fp32 copy of its stage);
2. every materialised part of the model (``DeepseekOCRForCausalLM.init_parts``: SAM, CLIP,
   projector, ..., one per decoder layer, lm_head) gets the model's own init under a seed
   derived from ``(seed, part name)``: identical on every data-parallel replica and for any
   partition (the same weights for pp=2 and pp=4);
3. ``init_from`` (published / exported checkpoint): only the stage's tensors are read from the
   safetensors files (by name, plain reads into the parameters), after the whole checkpoint has been checked
   against the whole model from the file headers (``models.checkpoint.load_published_weights``
   skips tensors still on the meta device); ``encoder_from`` (stage-1 encoder) likewise.

Peak host memory per rank is its stage (plus one tensor in flight), not the 3.3B model: the
full-size numbers are in ``benchmarks/bench_stage2_memory.py``. With random init the weights
differ from ``build_stage2_model``'s (one RNG stream over the whole model in construction
order, which a stage alone cannot replay); loaded weights are identical.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


def part_seed(seed: int, part: str) -> int:
    """Seed of one model part: stable across processes, machines and partitions."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{part}".encode()).digest()[:8], "little") & (2**63 - 1)


@torch.no_grad()
def materialize(modules: Sequence[nn.Module], device: torch.device | str, dtype: torch.dtype,
                share_with: Sequence[nn.Module] = ()) -> None:
    """Replace the meta parameters / buffers of ``modules`` by empty tensors on ``device``
    (floating ones in ``dtype``); real tensors (e.g. ``pipe_anchor``) are left as they are.
    Buffers are zeroed (the model's only ones are non-persistent counters). A tensor that
    several modules hold (a unit borrows ``image_newline`` from the model) stays one tensor,
    in ``modules`` and in ``share_with`` (the model the units were cut from)."""
    new: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(meta) -> (meta, real): keeps ids valid

    def real(t: torch.Tensor, is_param: bool) -> torch.Tensor:
        if id(t) not in new:
            dt = dtype if t.is_floating_point() else t.dtype
            r = torch.empty(t.shape, device=device, dtype=dt) if is_param else torch.zeros(t.shape, device=device, dtype=dt)
            new[id(t)] = (t, nn.Parameter(r, requires_grad=t.requires_grad) if is_param else r)
        return new[id(t)][1]

    for root in modules:
        for m in root.modules():
            for store, is_param in ((m._parameters, True), (m._buffers, False)):
                for k, t in list(store.items()):
                    if t is not None and t.is_meta:
                        store[k] = real(t, is_param)
    for root in share_with:
        for m in root.modules():
            for store in (m._parameters, m._buffers):
                for k, t in list(store.items()):
                    if t is not None and id(t) in new and new[id(t)][0] is t:
                        store[k] = new[id(t)][1]


def _materialised_parts(model: nn.Module, parts: Sequence[str]) -> list[str]:
    real = [n for n, p in model.named_parameters() if not p.is_meta]
    return [part for part in parts if any(n == part or n.startswith(part + ".") for n in real)]


@torch.no_grad()
def init_stage_weights(model: nn.Module, units: Sequence[nn.Module], device: torch.device | str,
                       dtype: torch.dtype, seed: int, init_from: str | Path | None = None,
                       encoder_from: str | Path | None = None) -> list[str]:
    """Materialise ``units`` (this stage's pipeline units, cut from the meta ``model``) and
    fill them: per-part seeded init, then the stage's tensors of ``init_from`` and of
    ``encoder_from``. Returns the names of the model parts this stage holds."""
    from models.checkpoint import load_published_weights

    materialize(units, device, dtype, share_with=[model])
    inits = model.init_parts()
    held = _materialised_parts(model, list(inits))
    device = torch.device(device)
    for part in held if not init_from else ():  # a strict init_from overwrites every tensor
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(part_seed(seed, part))
            inits[part]()
    if init_from:
        load_published_weights(model, init_from, strict=True)  # reads only non-meta tensors
    if encoder_from:
        load_encoder_tensors(model, encoder_from)
    return held


@torch.no_grad()
def load_encoder_tensors(model: nn.Module, path: str | Path) -> list[str]:
    """Load a stage-1 encoder file (``DeepEncoder`` names) into ``model.model``, reading only the
    tensors whose parameters are materialised (all of them for a whole model). Every name and
    shape in the file is checked first, from its header. Returns the names loaded."""
    from models.checkpoint import TensorReader

    own = model.model.state_dict(keep_vars=True)
    encoder_prefixes = ("sam_model.", "vision_model.", "qwen2_model.", "projector.", "image_newline", "view_seperator")
    loaded = []
    with TensorReader(path) as f:
        names = f.keys()
        bad = [k for k in names if k not in own or not k.startswith(encoder_prefixes)]
        if bad:
            raise ValueError(f"{path}: {len(bad)} tensors are not DeepEncoder parameters of this model, "
                             f"e.g. {bad[:5]}")
        for k in names:
            shape = f.shape(k)
            if tuple(own[k].shape) != shape:
                raise ValueError(f"{path}: {k} has shape {shape}, the model {tuple(own[k].shape)}")
        for k in names:
            if not own[k].is_meta:
                f.read_into(k, own[k])
                loaded.append(k)
    return sorted(loaded)
