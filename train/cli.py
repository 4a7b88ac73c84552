"""Hydra command line of the trainers (``conf/config.yaml``).

    python -m train.cli experiment=smoke train.steps=20
    deepspeed --num_gpus 8 -m train.cli experiment=paper_stage1     # what launch.sh runs
    python -m train.cli experiment=paper_stage2 --cfg job            # print the composed config

Everything is in ``train.api.train``; this only adds Hydra's command line, the saved config
(``<out_dir>/hydra/config.yaml``) and a final summary line.
"""

from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig

from .api import train
from .config import register
from .preflight import USER_ERRORS, fail

register()  # the typed schema (train/config.py) that conf/config.yaml names first in its defaults


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        result = train(cfg)
    except USER_ERRORS as e:  # one line; the traceback with logging.verbose=true
        fail(e, bool(cfg.logging.verbose))
    from .distributed import world_info

    if world_info()[0] == 0:
        keep = ("stage", "out_dir", "checkpoint_dir", "encoder_path", "export_dir", "steps",
                "final_loss", "mean_step_time_s")
        print("RESULT " + json.dumps({k: result[k] for k in keep if k in result}))


if __name__ == "__main__":
    main()
