"""The typed config schema (train/config.py, data_engine/config.py).

Checks: a wrong type or an out-of-range value in an override fails when the config is composed,
with an error naming the key (trainers and data engine, Python API and both command lines);
every recipe in conf/experiment composes and validates; the schema's defaults are exactly what
conf/ composes by default (one default per key); ``train(cfg)`` runs from a partial dict
without Hydra or conf/.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data_engine.config import ConfigError, EngineConfig, typed
from train.api import CONF_DIR, as_config, compose
from train.config import Config, DataConfig, OptimConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))

BAD_TRAIN_OVERRIDES = [  # (override, what the error must say)
    ("train.steps=-1", "train.steps must be >= 1, got -1"),
    ("train.steps=0", "train.steps must be >= 1, got 0"),
    ("train.steps=ten", "train.steps"),                    # wrong type
    ("train.micro_batch_size=0", "train.micro_batch_size must be >= 1"),
    ("train.stage=3", "train.stage must be one of [1, 2]"),
    ("train.freeze_sam=maybe", "train.freeze_sam"),        # wrong type (bool)
    ("optim.lr=0", "optim.lr must be positive"),
    ("optim.lr=fast", "optim.lr"),                         # wrong type
    ("optim.schedule=linear", "optim.schedule must be one of ['cosine', 'step', 'constant']"),
    ("optim.betas=[0.9,1.5]", "optim.betas.1 must be <= 1"),
    ("deepspeed.zero_stage=4", "deepspeed.zero_stage must be one of [0, 1, 2, 3]"),
    ("deepspeed.dtype=fp8", "deepspeed.dtype must be one of"),
    ("data.seq_len=8", "data.seq_len must be >= 16"),
    ("data.mode_weights.tiny=-1", "data.mode_weights.tiny must be >= 0"),
    ("data.overlong=drop", "data.overlong must be one of"),
    ("data.num_workers=two", "data.num_workers"),          # wrong type
    ("model.preset=huge", "model.preset must be one of"),
    ("model.stage1_lm.num_heads=5", "model.stage1_lm.hidden_size=64 must be a multiple of model.stage1_lm.num_heads=5"),
    ("logging.wandb.mode=cloud", "logging.wandb.mode must be one of"),
    ("train.stpes=3", "train.stpes"),                      # a typo is not a new key
    ("train.max_wall_s=0", "train.max_wall_s must be positive"),
]


@pytest.mark.parametrize("override,message", BAD_TRAIN_OVERRIDES, ids=[o for o, _ in BAD_TRAIN_OVERRIDES])
def test_bad_train_override_fails_at_composition_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        compose("smoke", [override])
    assert message in str(err.value)


def test_a_wall_clock_limit_is_a_stage_1_setting():
    assert compose("smoke", ["train.max_wall_s=180"]).train.max_wall_s == 180
    with pytest.raises(ConfigError, match=r"train.max_wall_s=10.0 is a stage-1 setting \(train.stage=2\)"):
        compose("smoke_stage2", ["train.max_wall_s=10"])


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_validates(recipe):
    cfg = as_config(compose(recipe))
    assert isinstance(cfg, Config) and isinstance(cfg.train, TrainConfig)
    assert cfg.train.stage in (1, 2) and cfg.train.steps >= 1
    assert isinstance(cfg.optim.lr, float) and isinstance(cfg.data.shards, list)


def test_schema_defaults_are_the_default_composition():
    """One default per key: conf/'s default groups add no value the schema does not hold, and
    every key conf/ can set is declared in the schema (struct: no undeclared keys)."""
    assert dataclasses.asdict(compose()) == dataclasses.asdict(Config())
    assert type(compose("smoke")) is Config


def test_group_options_keep_only_values_that_differ():
    """Group option files hold recipe values: a default is repeated only as the key that names
    the option (model.preset, deepspeed.zero_stage, optim.schedule)."""
    naming = {"model": "preset", "deepspeed": "zero_stage", "optim": "schedule"}
    defaults = dataclasses.asdict(Config())
    redundant = []
    for group in defaults:
        for f in (CONF_DIR / group).glob("*.yaml"):
            for key, value in (OmegaConf.to_container(OmegaConf.load(f)) or {}).items():
                if defaults[group].get(key) == value and naming.get(group) != key:
                    redundant.append(f"{group}/{f.name}: {key}")
    assert not redundant


def test_plain_dicts_are_typed_and_checked_without_hydra():
    cfg = as_config({"train": {"steps": 5}, "optim": {"lr": 1e-3}})
    assert cfg.train.steps == 5 and cfg.optim.lr == 1e-3
    assert cfg.train.global_batch_size == TrainConfig().global_batch_size  # the rest: schema defaults
    # a dict value replaces the default as a whole (only the modes named are drawn)
    assert typed({"mode_weights": {"tiny": 1.0}}, DataConfig).mode_weights == {"tiny": 1.0}
    assert typed({"lr": "3e-4"}, OptimConfig).lr == pytest.approx(3e-4)  # converted to the field's type
    for bad, message in [({"train": {"steps": -1}}, "train.steps must be >= 1"),
                         ({"train": {"steps": "many"}}, "train.steps"),
                         ({"train": {"stpes": 3}}, "train.stpes"),
                         ({"optim": {"schedule": "linear"}}, "optim.schedule")]:
        with pytest.raises(ConfigError, match=message):
            as_config(bad)


# --------------------------------------------------------------------------- data engine


def _compose_engine(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from data_engine.config import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name="engine", overrides=["input=in.pdf", "out=out", *overrides])
    return EngineConfig.from_any(cfg.data_engine)  # what data_engine.cli runs right after composing


BAD_ENGINE_OVERRIDES = [
    ("data_engine.dpi=-72", "data_engine.dpi must be positive"),
    ("data_engine.dpi=high", "data_engine.dpi"),                      # wrong type
    ("data_engine.jpeg_quality=101", "data_engine.jpeg_quality must be <= 100"),
    ("data_engine.image_format=gif", "data_engine.image_format must be one of ['jpg', 'png']"),
    ("data_engine.labels=[coarse,ocr]", "data_engine.labels.1 must be one of ['coarse', 'fine']"),
    ("data_engine.workers=-1", "data_engine.workers must be >= 0"),
    ("data_engine.max_bad_char_ratio=2", "data_engine.max_bad_char_ratio must be <= 1"),
    ("data_engine.keep_units=perhaps", "data_engine.keep_units"),     # wrong type
    ("data_engine.name=a/b", "data_engine.name"),
    ("data_engine.dpii=72", "data_engine.dpii"),
]


@pytest.mark.parametrize("override,message", BAD_ENGINE_OVERRIDES, ids=[o for o, _ in BAD_ENGINE_OVERRIDES])
def test_bad_engine_override_fails_at_composition_naming_the_key(override, message):
    from hydra.errors import ConfigCompositionException

    with pytest.raises((ConfigError, ConfigCompositionException)) as err:
        _compose_engine([override])
    text = f"{err.value} {err.value.__cause__ or ''}"
    assert message in text


def test_engine_config_composes_to_the_schema_defaults():
    cfg = _compose_engine(["data_engine.dpi=200"])
    assert cfg.dpi == 200.0 and cfg.input == "in.pdf" and cfg.out == "out"
    assert dataclasses.replace(cfg, dpi=144.0, input=None, out=None) == EngineConfig()


# --------------------------------------------------------------------------- command lines


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_train_cli_refuses_bad_steps_before_training(tmp_path):
    """train.steps=-1 used to exit 0 and write an untrained encoder."""
    out = tmp_path / "run"
    proc = _run("train.cli", "experiment=smoke", "train.steps=-1", f"train.out_dir={out}")
    assert proc.returncode != 0
    assert "train.steps must be >= 1, got -1" in proc.stderr
    assert not (out / "encoder.safetensors").exists() and not (out / "checkpoints").exists()


def test_engine_cli_refuses_bad_values_before_any_work(tmp_path):
    proc = _run("data_engine.cli", f"input={tmp_path}", f"out={tmp_path / 'o'}", "data_engine.jpeg_quality=0")
    assert proc.returncode != 0 and "data_engine.jpeg_quality must be >= 1, got 0" in proc.stderr
    assert not (tmp_path / "o" / "work").exists()
    proc = _run("data_engine.cli", f"input={tmp_path}", f"out={tmp_path / 'o'}", "data_engine.max_count=many")
    assert proc.returncode != 0 and "data_engine.max_count" in proc.stderr


# --------------------------------------------------------------------------- train(cfg) without Hydra


def test_train_runs_from_a_partial_dict_without_hydra(tmp_path, monkeypatch):
    """train(dict): only the values that differ from the schema; no conf/ folder, no Hydra."""
    from test_stage1 import train_tiny_tokenizer, write_tiny_shards

    import train.api

    monkeypatch.setattr(train.api, "CONF_DIR", tmp_path / "no_conf_here")
    shards, texts = write_tiny_shards(tmp_path / "shards", n=4)
    tok = train_tiny_tokenizer(tmp_path / "tok", texts)
    result = train.api.train({
        "model": {"tokenizer": str(tok)},
        "data": {"shards": [shards], "seq_len": 160, "num_workers": 0, "mode_weights": {"tiny": 1.0}},
        "deepspeed": {"dtype": "fp32"},
        "logging": {"wandb": {"mode": "disabled"}},
        "train": {"steps": 2, "global_batch_size": 1, "save_every": 0, "out_dir": str(tmp_path / "run"),
                  "backend": "gloo"},
    })
    assert result["stage"] == 1 and result["steps"] == 2 and len(result["losses"]) == 2
    assert Path(result["encoder_path"]).is_file()
