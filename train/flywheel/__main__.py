"""Hydra entry of the flywheel: ``python -m train.flywheel out=runs/fw flywheel.rounds=3``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from train.flywheel.config import register

register()


@hydra.main(config_path="../../conf", config_name="flywheel", version_base=None)
def main(cfg: DictConfig) -> None:
    from data_engine.lock import FolderInUseError, folder_lock
    from train.flywheel import run_flywheel

    try:
        with folder_lock(cfg.out, "flywheel"):  # one flywheel per out=: the refusal names the other
            run_flywheel(cfg)
    except FolderInUseError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
