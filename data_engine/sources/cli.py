"""Command lines of the data sources: argparse (``python -m data_engine.sources``) and Hydra
(``python -m data_engine.sources.cli source=<name> out=... count=...``, conf/sources.yaml)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping

from data_engine.sources import REGISTRY, get_source
from data_engine.sources.base import MissingDependency
from data_engine.sources.writer import write_source


def run(name: str, out: str, count: int | None = None, seed: int = 0, shard_size: int = 1000,
        workers: int = 1, progress: bool = True, options: Mapping | None = None) -> dict:
    """Build source ``name`` with ``options`` and write it under ``out``; returns the report."""
    opts = {k: v for k, v in dict(options or {}).items() if v is not None}
    src = get_source(name, **opts)
    return write_source(src, out, count, seed, shard_size=shard_size, workers=workers, progress=progress)


def _value(v: str):
    try:
        return json.loads(v)
    except ValueError:
        return v


def main_argv(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_engine.sources", description=__doc__)
    ap.add_argument("name", choices=sorted(REGISTRY))
    ap.add_argument("--out", required=True, help="output root: shards/, work/, report.json, failures.jsonl")
    ap.add_argument("--count", type=int, default=None, help="items to make (default: all input items)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input", default=None, help="user input: SMILES file, chart tables .jsonl, image folder / shards, .docx folder")
    ap.add_argument("--shard-size", type=int, default=1000, help="items per shard (fixed: shard k = items k*size..)")
    ap.add_argument("--workers", type=int, default=1, help="processes (one shard each at a time)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="source option, e.g. translations=4 (geometry), min_score=0.6 (scene)")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args(argv)
    opts = {"input": a.input}
    for kv in a.option:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--option expects KEY=VALUE, got {kv!r}")
        opts[k] = _value(v)
    try:
        rep = run(a.name, a.out, a.count, a.seed, a.shard_size, a.workers, not a.no_progress, opts)
    except MissingDependency as e:
        sys.exit(f"error: {e}")
    print(json.dumps(rep, indent=1, ensure_ascii=False))
    if rep["written"] == 0:
        sys.exit("no sample written; see failures.jsonl")


def run_config(cfg) -> dict:
    """Run the source described by a composed ``conf/sources.yaml`` (``source`` group + top keys)."""
    from data_engine.config import typed
    from data_engine.sources.config import SourcesConfig

    c = typed(cfg, SourcesConfig)  # ranges checked, a missing `out` named
    s = dict(c.source)
    name = s.pop("name")
    return run(name, c.out, c.count, c.seed, c.shard_size, c.workers, c.progress, s)


def main_hydra() -> None:
    import hydra
    from omegaconf import DictConfig

    from data_engine.sources.config import register

    register()

    @hydra.main(config_path="../../conf", config_name="sources", version_base=None)
    def _main(cfg: DictConfig) -> None:
        print(json.dumps(run_config(cfg), indent=1, ensure_ascii=False))

    _main()


if __name__ == "__main__":
    main_hydra()
