"""Per-stage construction of the stage-2 model (train/stage_build.py) and the per-stage export
(models.checkpoint.write_checkpoint_shard / write_checkpoint_index), in one process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dist_pipeline_worker as W

from models.checkpoint import (
    INDEX_FILE,
    build_meta_model,
    export_checkpoint,
    import_checkpoint,
    load_config,
    write_checkpoint_index,
    write_checkpoint_shard,
)
from models.config import get_preset
from train.pipeline import build_units, default_partition, sequential_forward
from train.stage_build import init_stage_weights


def _stages(cfg, parts, **kw) -> list[tuple]:
    """One (meta model, stage units) per stage, each stage materialised as its rank would."""
    out, dtype = [], kw.pop("dtype", torch.float32)
    for s in range(len(parts) - 1):
        model = build_meta_model(cfg)
        units, bounds = build_units(model, parts)
        init_stage_weights(model, units[bounds[s]:bounds[s + 1]], "cpu", dtype, **kw)
        out.append((model, units[bounds[s]:bounds[s + 1]]))
    return out


def _real(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not v.is_meta}


def test_stage_reads_only_its_tensors_and_matches_whole_model(tmp_path):
    full = W.tiny_model()
    export_checkpoint(full, tmp_path, dtype=torch.float32)
    ref = full.state_dict()
    stages = _stages(load_config(tmp_path), default_partition(4, 4), seed=0, init_from=tmp_path)
    seen = set()
    for model, units in stages:
        own = _real(model)
        assert own and not seen & own.keys()  # disjoint stages
        seen |= own.keys()
        for k, v in own.items():
            assert torch.equal(v, ref[k]), k
        # the units hold the model's tensors, not copies (image_newline is borrowed by a unit)
        unit_params = {id(p) for u in units for p in u.parameters()}
        assert {id(p) for n, p in model.named_parameters() if not p.is_meta} <= unit_params
    assert seen == set(ref)
    # a whole model materialised from the meta device computes today's loss exactly
    model = build_meta_model(load_config(tmp_path))
    units, _ = build_units(model, [0, 7])
    init_stage_weights(model, units, "cpu", torch.float32, seed=0, init_from=tmp_path)
    for b in W.fixed_batches()[:2]:
        assert torch.equal(sequential_forward(model, b), sequential_forward(full, b))


def test_random_init_is_the_same_for_every_partition():
    cfg = get_preset("tiny")
    a = {k: v for m, _ in _stages(cfg, default_partition(4, 4), seed=7) for k, v in _real(m).items()}
    b = {k: v for m, _ in _stages(cfg, default_partition(4, 2), seed=7) for k, v in _real(m).items()}
    c = {k: v for m, _ in _stages(cfg, [0, 7], seed=8) for k, v in _real(m).items()}
    assert a.keys() == b.keys() == set(W.tiny_model().state_dict())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])  # the seed matters
    assert float(a["model.norm.weight"].mean()) == 1.0 and a["lm_head.weight"].std() > 0.01


def test_bf16_stage_and_per_stage_export(tmp_path):
    """Stages built directly in bf16 write their own files; the index is made from headers."""
    full = W.tiny_model()
    export_checkpoint(full, tmp_path / "src", dtype=torch.bfloat16)
    cfg = load_config(tmp_path / "src")
    parts = default_partition(4, 4)
    stages = _stages(cfg, parts, seed=0, init_from=tmp_path / "src", dtype=torch.bfloat16)
    out = tmp_path / "export"
    out.mkdir()
    for i, (model, _) in enumerate(stages):
        assert all(v.dtype == torch.bfloat16 for v in _real(model).values() if v.is_floating_point())
        write_checkpoint_shard(_real(model), out, i, len(stages), torch.bfloat16)
    write_checkpoint_index(out, cfg, len(stages), torch.bfloat16)
    assert (out / INDEX_FILE).is_file() and len(list(out.glob("model-*-of-00004.safetensors"))) == 4
    back = import_checkpoint(out)
    src = import_checkpoint(tmp_path / "src")
    for (k, v), (k2, v2) in zip(back.state_dict().items(), src.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    # a missing stage is refused, naming what is missing
    (out / "model-00003-of-00004.safetensors").unlink()
    write_checkpoint_shard(_real(stages[0][0]), out, 2, 4, torch.bfloat16)  # wrong content in file 3
    with pytest.raises(ValueError, match="both|missing"):
        write_checkpoint_index(out, cfg, 4, torch.bfloat16)
