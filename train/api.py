"""Python entry points of the trainers (no Hydra needed to call them).

    from train.api import compose, train
    cfg = compose("smoke", ["train.steps=20"])      # Hydra compose API over conf/ -> typed Config
    result = train(cfg)                               # dispatches on cfg.train.stage

``train`` also takes a plain, partial dict: its values are set onto the typed schema
(``train/config.py``, the one place of every default; no Hydra, no ``conf/`` needed), so
``train({"train": {"steps": 5}, "model": {"tokenizer": ...}, ...})`` works. A dict value such as
``data.mode_weights`` replaces the default as a whole. Types and ranges are checked either way,
once: the config becomes a typed ``Config`` where it enters (``compose``, or ``train`` for a
DictConfig or dict) and the trainers are handed that ``Config``; nothing below converts it again.
``python -m train.api plan experiment=paper_stage2`` prints the process layout ``launch.sh``
uses (processes per node, pipeline degree, backend).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .config import Config, ConfigError, as_config, register
from .preflight import check_overrides, explain_composition_error

CONF_DIR = Path(os.environ.get("OCRFLOW_CONF", Path(__file__).resolve().parents[1] / "conf"))


def compose(experiment: str | None = None, overrides: Sequence[str] = ()) -> Config:
    """The typed ``Config`` of ``conf/config.yaml`` (+ ``experiment/<name>.yaml``) with Hydra
    overrides.

    Types are checked while composing (OmegaConf), ranges right after, in the one conversion
    to ``Config`` (``as_config``): a bad override fails here with an error that names the key.
    Change a value afterwards as an attribute (``cfg.train.steps = 5``)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import ConfigCompositionException, MissingConfigException

    if not (CONF_DIR / "config.yaml").is_file():
        raise FileNotFoundError(f"no config.yaml in {CONF_DIR} (set OCRFLOW_CONF to the conf/ folder)")
    overrides = list(overrides)
    if experiment:
        overrides = [f"experiment={experiment}", *overrides]
    if GlobalHydra.instance().is_initialized():  # e.g. inside a Hydra app or a previous call
        GlobalHydra.instance().clear()
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        check_overrides(overrides)  # "+train.stpes=3": Hydra would add the misspelt key
        try:
            cfg = hydra_compose(config_name="config", overrides=overrides)
        except (ConfigCompositionException, MissingConfigException) as e:  # one line, "did you mean"
            raise explain_composition_error(e) from e
    return as_config(cfg)


def _select(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not hasattr(node, part):
            raise ConfigError(f"train.required names {dotted!r}, which is not a config key")
        node = getattr(node, part)
    return node


def train(cfg: Config | DictConfig | Mapping[str, Any]) -> dict:
    """Run the stage named by ``cfg.train.stage`` (1 or 2); returns the trainer's result dict."""
    cfg = as_config(cfg)
    # recipes name keys they cannot run without (train.required); "???" cannot express this
    # in an override recipe because merging "???" over a value keeps the value
    missing = [k for k in cfg.train.required if _select(cfg, k) in (None, "")]
    if missing:
        raise ConfigError(f"config values required but not set: {missing}; pass them as overrides, "
                          "e.g. model.init_from=/path")
    stage = cfg.train.stage
    if stage == 1:
        from .stage1 import run_stage1

        return run_stage1(cfg)
    if stage == 2:
        from .stage2 import run_stage2

        return run_stage2(cfg)
    raise AssertionError(f"train.stage={stage} passed the schema")  # unreachable: choices (1, 2)


def build_model(cfg: Config | DictConfig | Mapping[str, Any], device: str | None = "meta"):
    """The model the config trains, without data or DeepSpeed (``meta``: no memory).

    Stage 1: ``Stage1Model`` (DeepEncoder + OPT); stage 2: ``DeepseekOCRForCausalLM``. The
    vocabulary is the preset's (a tokenizer is not needed to check a recipe's shapes).
    """
    import torch

    cfg = as_config(cfg)
    ctx = torch.device(device) if device else torch.device("cpu")
    with ctx:
        if cfg.train.stage == 1:
            from .stage1 import build_stage1_model

            return build_stage1_model(cfg, seq_len=cfg.data.seq_len)
        import dataclasses

        from models.config import get_preset
        from models.deepseek_ocr import DeepseekOCRForCausalLM

        mc = get_preset(cfg.model.preset)
        dec = dataclasses.replace(mc.decoder, moe_impl=cfg.model.moe_impl, aux_loss_alpha=cfg.model.aux_loss_alpha)
        return DeepseekOCRForCausalLM(mc.replace(decoder=dec))


def launch_plan(cfg: Config | DictConfig | Mapping[str, Any], gpus_per_node: int | None = None) -> dict:
    """Processes per node for ``launch.sh``: ``train.nproc_per_node`` if set, else every GPU
    of the node, else (CPU) one process per pipeline stage (dp = 1)."""
    cfg = as_config(cfg)
    pp = cfg.train.pp
    if gpus_per_node is None:
        import torch

        gpus_per_node = torch.cuda.device_count() if torch.cuda.is_available() else 0
    nproc = cfg.train.nproc_per_node
    if nproc is None:
        nproc = gpus_per_node if gpus_per_node > 0 else pp
    backend = cfg.train.backend or ("nccl" if gpus_per_node > 0 else "gloo")
    return {"nproc_per_node": nproc, "pp": pp, "backend": backend, "stage": cfg.train.stage,
            "out_dir": cfg.train.out_dir}


def _main(argv: list[str]) -> None:
    if not argv or argv[0] != "plan":
        raise SystemExit("usage: python -m train.api plan [hydra overrides]")
    overrides = argv[1:]
    plan = launch_plan(compose(None, overrides))
    print(plan["nproc_per_node"], plan["pp"], plan["backend"], plan["stage"], plan["out_dir"])


if __name__ == "__main__":
    _main(sys.argv[1:])
