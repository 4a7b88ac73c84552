"""Hydra entry point of the data engine.

    python -m data_engine.cli input=/data/pdfs out=/data/shards data_engine.workers=16
    python -m data_engine.cli input=[a.pdf,more/,list.txt] out=o data_engine.labels=[coarse,fine]

Primary config `conf/engine.yaml` (input/out at the top level) composes the group
`conf/data_engine/`; `run_engine` receives the `data_engine` node. Keys, types, ranges and
defaults: `data_engine/config.py` (registered with Hydra's ConfigStore as `engine_schema`).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from data_engine.config import EngineConfig, register
from data_engine.executor import WorkerStartError
from data_engine.lock import FolderInUseError
from data_engine.pipeline import run_engine
from data_engine.queue import OutputError

register()


@hydra.main(config_path="../conf", config_name="engine", version_base=None)
def _main(cfg: DictConfig) -> None:
    try:
        rep = run_engine(EngineConfig.from_any(cfg.data_engine))  # ranges checked before any work
    except (WorkerStartError, FolderInUseError) as e:
        raise SystemExit(f"data engine stopped: {e}") from None
    except OutputError as e:  # disk full, a path in the way: not the documents' fault
        raise SystemExit(f"data engine stopped: {e}\nFix the cause and run the same command again: "
                         "committed documents are kept, the others are processed then.") from None
    # A run that wrote nothing is almost always a configuration error (wrong input, all filtered).
    if rep["pages"]["written"] == 0:
        raise SystemExit("data engine wrote no pages; see report.json / failures.jsonl")


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
