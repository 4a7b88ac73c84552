"""Threads per process on a busy machine, and the one warning for steps far below their pace."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from train.pace import StepPace, WallLimit, default_threads

REPO = Path(__file__).resolve().parents[1]


def test_one_thread_per_process_when_the_machine_is_oversubscribed():
    assert default_threads(1, cores=8, load=0.5) == 8
    assert default_threads(2, cores=8, load=3.0) == 4
    assert default_threads(1, cores=2, load=2.0) == 1  # busy: a second thread would only spin
    assert default_threads(1, cores=2, load=7.5) == 1
    assert default_threads(4, cores=2, load=0.0) == 1


def test_launcher_threads_follow_the_load():
    """What launch.sh sets as OMP_NUM_THREADS when the user set none."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "train.pace", "2"], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True).stdout
    assert int(out) == default_threads(2)


def test_slow_steps_warn_once(caplog):
    pace = StepPace(baseline=3, factor=5.0)
    with caplog.at_level(logging.WARNING, logger="train.pace"):
        assert not pace.observe(1, 30.0)  # the first step (set-up) is not part of the pace
        for step in (2, 3, 4):
            assert not pace.observe(step, 1.0)
        assert not pace.observe(5, 4.0)  # slower, not far slower
        assert pace.observe(6, 12.0)
        assert not pace.observe(7, 40.0)  # said once
    (rec,) = caplog.records
    assert "step 6 took 12.00 s, 12x the first steps' 1.00 s" in rec.getMessage()
    assert "OMP_NUM_THREADS=1" in rec.getMessage()


def test_wall_limit_is_reached_once_its_seconds_have_passed():
    assert not WallLimit(None).reached()  # no limit: train.steps alone
    assert not WallLimit(3600.0).reached()
    limit = WallLimit(1e-6)
    while limit.elapsed() < 1e-6:
        pass
    assert limit.reached()
