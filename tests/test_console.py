"""The trainers' console: step lines that fit 100 columns, libraries kept quiet unless
``logging.verbose``, and ``train.log_every`` as a deprecated alias of ``logging.log_every``."""

from __future__ import annotations

import logging
import os

import pytest

import train.config as tconfig
from train.api import as_config
from train.config import ConfigError
from train.logging import (CONSOLE_WIDTH, QUIET_LEVELS, MetricsLogger, format_step, library_prints,
                           quiet_libraries)

# what stage 2 logs on a reliance step of a long run (keys and magnitudes of a real metrics.jsonl line)
STAGE2 = {
    "loss": 10.873412, "lr": 2.9999e-05, "step_time_s": 123.456, "tokens_per_s": 1_234_567.8,
    "samples_per_s": 301.2, "ce": 10.86, "aux_loss": 0.012345, "grad_norm": 12.3456,
    "loss/source/ocr": 10.91, "loss/source/vision": 10.52, "loss/source/text": 11.07,
    "loss/mode/tiny": 10.2, "loss/mode/gundam": 11.3,
    "expert_load/max_over_mean": 1.83, "expert_load/cv": 0.41,
    "reliance/loss_real": 10.712, "reliance/loss_blank": 11.954, "reliance/gap": 1.242,
    "reliance/ratio": 0.896,
}
STAGE1 = {"loss": 6.786495, "lr": 1.86e-4, "tokens_per_s": 742.3, "samples_per_s": 1.93,
          "step_time_s": 1.04, "grad_norm": 1.4, "loss/source/ocr": 6.786, "loss/mode/tiny": 6.8}


@pytest.mark.parametrize("metrics", [STAGE1, STAGE2, {k: v for k, v in STAGE2.items() if "reliance" not in k}],
                         ids=["stage1", "stage2-reliance", "stage2"])
def test_step_line_fits_and_keeps_the_essentials(metrics):
    line = format_step(159_876, 160_000, metrics, eta_s=7_322.0)
    assert "\n" not in line and len(line) <= CONSOLE_WIDTH, (len(line), line)
    assert line.startswith("step 159876/160000")
    assert f"loss {metrics['loss']:.4f}" in line and f"lr {metrics['lr']:.2e}" in line
    assert " tok/s" in line and f"{metrics['step_time_s']:.3g} s/step" in line
    if "reliance/loss_real" in metrics:
        assert f"real/blank {metrics['reliance/loss_real']:.3f}/{metrics['reliance/loss_blank']:.3f}" in line
    else:
        assert "real/blank" not in line
    assert "1.23M tok/s" in line or "742 tok/s" in line


def test_step_line_drops_optional_fields_in_order():
    wide = format_step(12, 30, STAGE2, eta_s=75.0, width=1000)
    for field in ("aux 0.0123", "gnorm 12.35", "src ocr 10.91 vision 10.52 text 11.07", "eta 1m15s"):
        assert field in wide
    line = format_step(12, 30, STAGE2, eta_s=75.0)
    assert len(line) <= CONSOLE_WIDTH and "src " not in line  # per-source losses go first
    assert "eta 1m15s" in line  # the time left goes last


def test_metrics_logger_prints_one_unwrapped_line_per_step(tmp_path, capsys):
    """Off a terminal rich would wrap at 80 columns: every logged step is one line."""
    cfg = {"logging": {"wandb": {"mode": "disabled"}, "log_every": 1}}
    with MetricsLogger(cfg, tmp_path, total_steps=160_000) as logger:
        logger.info("stage 2: 3336.1M params, pp 4 x dp 2 (partition [0, 3, 5, 11, 17]), micro 1 x accum 80 "
                    "x dp 2 = 160, seq 8192, ZeRO-1")
        logger.log(159_876, STAGE2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("step 159876/160000"), lines
    assert len(lines[1]) <= CONSOLE_WIDTH
    assert "[0, 3, 5, 11, 17]" in lines[0]  # printed as is (no rich markup)


@pytest.fixture
def library_levels():
    """Restore the library loggers' levels and DS_ACCELERATOR after the test."""
    saved = {name: logging.getLogger(name).level for name in QUIET_LEVELS}
    env = os.environ.get("DS_ACCELERATOR")
    for name in QUIET_LEVELS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger().setLevel(logging.INFO)  # as Hydra's job logging sets the root
    os.environ.pop("DS_ACCELERATOR", None)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    if env is None:
        os.environ.pop("DS_ACCELERATOR", None)
    else:
        os.environ["DS_ACCELERATOR"] = env


def test_quiet_libraries_raises_the_library_loggers(library_levels, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert logging.getLogger("compilers.C.base").isEnabledFor(logging.INFO)  # gcc lines would show
    quiet_libraries(verbose=False)
    for name, level in QUIET_LEVELS.items():
        assert logging.getLogger(name).getEffectiveLevel() >= level
    assert not logging.getLogger("compilers.C.base").isEnabledFor(logging.INFO)
    assert logging.getLogger("DeepSpeed").isEnabledFor(logging.WARNING)  # real warnings stay
    assert logging.getLogger("train.data").isEnabledFor(logging.WARNING)  # ours untouched
    assert os.environ["DS_ACCELERATOR"] == "cpu"


def test_quiet_libraries_keeps_a_chosen_accelerator(library_levels, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    os.environ["DS_ACCELERATOR"] = "xpu"
    quiet_libraries(verbose=False)
    assert os.environ["DS_ACCELERATOR"] == "xpu"


def test_verbose_leaves_the_libraries_alone(library_levels, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    quiet_libraries(verbose=True)
    for name in QUIET_LEVELS:
        assert logging.getLogger(name).level == logging.NOTSET
    assert logging.getLogger("compilers.C.base").isEnabledFor(logging.INFO)
    assert "DS_ACCELERATOR" not in os.environ


def test_library_prints_go_to_debug_unless_verbose(capsys, caplog):
    with caplog.at_level(logging.DEBUG, logger="train.logging"):
        with library_prints(verbose=False):
            print("Using topology: {ProcessCoord(pipe=0, data=0): 0}")
    assert capsys.readouterr().out == ""
    assert any("Using topology" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    with library_prints(verbose=True):
        print("SEED_LAYERS=False")
    assert capsys.readouterr().out == "SEED_LAYERS=False\n"
    with pytest.raises(RuntimeError), library_prints(verbose=False):  # context for an error: shown
        print("building op X")
        raise RuntimeError("op X failed")
    assert "building op X" in capsys.readouterr().out


def test_train_log_every_is_a_deprecated_alias(caplog, monkeypatch):
    monkeypatch.setattr(tconfig, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="train.config"):
        cfg = as_config({"train": {"log_every": 7}})
        as_config({"train": {"log_every": 7}})
    assert cfg.logging.log_every == 7
    msgs = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(msgs) == 1 and "logging.log_every=7" in msgs[0]
    assert as_config({}).logging.log_every == 10 and as_config({}).train.log_every is None
    assert as_config({"train": {"log_every": 3}, "logging": {"log_every": 3}}).logging.log_every == 3
    with pytest.raises(ConfigError, match="disagree"):
        as_config({"train": {"log_every": 3}, "logging": {"log_every": 5}})
