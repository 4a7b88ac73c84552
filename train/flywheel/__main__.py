"""Hydra entry of the flywheel: ``python -m train.flywheel out=runs/fw flywheel.rounds=3``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from train.flywheel.config import register

register()


@hydra.main(config_path="../../conf", config_name="flywheel", version_base=None)
def main(cfg: DictConfig) -> None:
    from train.flywheel import run_flywheel

    run_flywheel(cfg)


if __name__ == "__main__":
    main()
