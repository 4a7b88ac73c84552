"""Checks of a training config that need no model, run before anything heavy is imported.

    python -m train.preflight smoke train.steps=100      # what launch.sh runs first

Composes the recipe (Hydra), then checks what a user can get wrong without a model: an
unknown key (with "did you mean"), shard patterns that match nothing, a missing tokenizer,
checkpoints that are not there, an output folder that cannot be written. Each mistake is one
line on stderr (exit 2); ``logging.verbose=true`` adds the traceback. On success it prints the
process layout ``launch.sh`` starts (processes per node, pp, backend, stage, out_dir). The
trainers run the same checks (``train.api.train``) before they build a model.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from pathlib import Path
from typing import Any, get_origin

from .config import Config, ConfigError

# The mistakes of a user (their message is the whole story), as opposed to faults of the code.
USER_ERRORS = (ConfigError, FileNotFoundError, NotADirectoryError, PermissionError)


def config_keys(schema: type = Config, prefix: str = "") -> dict[str, bool]:
    """Every dotted key of the schema -> whether it holds free-form sub-keys (a dict setting)."""
    keys: dict[str, bool] = {}
    for f in dataclasses.fields(schema):
        name = f"{prefix}{f.name}"
        t = f.type if not isinstance(f.type, str) else _resolve(schema, f.name)
        if dataclasses.is_dataclass(t):
            keys[name] = False
            keys.update(config_keys(t, name + "."))
        else:
            keys[name] = "dict" in str(t).lower() or get_origin(t) is dict
    return keys


def _resolve(schema: type, field: str) -> Any:
    import typing

    return typing.get_type_hints(schema)[field]


def did_you_mean(key: str, keys: dict[str, bool] | None = None) -> str:
    """`` (did you mean 'train.steps'?)`` for a misspelt dotted key, or ``""``."""
    keys = config_keys() if keys is None else keys
    close = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.6)
    if not close:  # right key in the wrong group, e.g. model.steps
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] == leaf][:1]
    return f" (did you mean '{close[0]}'?)" if close else ""


def unknown_key_error(key: str) -> ConfigError:
    return ConfigError(f"unknown config key '{key}'{did_you_mean(key)}; every key and its default: "
                       "train/config.py (docs/training.md)")


def explain_composition_error(e: Exception) -> ConfigError:
    """Hydra's composition error as one line (never its ``+key`` advice: the schema is closed)."""
    text = str(e)
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        return unknown_key_error(m.group(1))
    why = str(e.__cause__).splitlines()[0] if e.__cause__ else ""
    first = text.splitlines()[0] if text else type(e).__name__
    if "Could not find" in text:  # a config group option that does not exist: list the options
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        return ConfigError(f"{first}; options: {', '.join(options)}" if options else first)
    return ConfigError(f"{first}: {why}" if why and why not in first else first)


def check_overrides(overrides: list[str]) -> None:
    """``+key=value`` on a key the schema does not have is a misspelling too (Hydra accepts it)."""
    keys = config_keys()
    for o in overrides:
        if o.startswith("+") and not o.startswith("++") and "=" in o:
            key = o[1:].split("=", 1)[0]
            parent = key.rsplit(".", 1)[0]
            if key not in keys and not keys.get(parent, False):
                raise unknown_key_error(key)


def _exists(key: str, path: str | None, what: str) -> None:
    if path and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"{key}={path}: no such {what}")


def _writable_folder(key: str, path: str) -> None:
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(f"{key}={path} is a file, not a folder")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{key}={path}: cannot write in {parent}")


def check_inputs(cfg: Config) -> None:
    """Raise one of ``USER_ERRORS`` for a mistake that needs no model to find (see the module)."""
    from .data_sources import expand_urls

    tok = cfg.model.tokenizer
    if not tok:
        raise ConfigError("model.tokenizer is not set: name the folder holding tokenizer.json "
                          "(e.g. model.tokenizer=runs/demo/tokenizer after ./launch.sh demo)")
    p = Path(tok).expanduser()
    if not (p / "tokenizer.json" if p.is_dir() else p).is_file():
        raise FileNotFoundError(f"model.tokenizer={tok}: no tokenizer.json there (a folder holding "
                                "tokenizer.json, or the file; tokenizers are never downloaded)")
    d = cfg.data
    patterns = [("data.shards", d.shards), ("data.vision_shards", d.vision_shards),
                ("data.text_shards", d.text_shards), ("train.reliance.shards", cfg.train.reliance.shards)]
    patterns += [(f"data.ocr_sources.{k}", v) for k, v in sorted((d.ocr_sources or {}).items())]
    for key, pats in patterns:
        try:
            expand_urls(list(pats) if pats else None)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{key}: {e}") from None
    _exists("data.text_corpus", d.text_corpus, "folder")
    _exists("model.init_from", cfg.model.init_from, "checkpoint")
    _exists("model.encoder_from", cfg.model.encoder_from, "file")
    _exists("model.stage1_from", cfg.model.stage1_from, "folder")
    _writable_folder("train.out_dir", cfg.train.out_dir)


def fail(e: BaseException, verbose: bool) -> None:
    """A user mistake: one line on stderr and exit 2; ``verbose``: the traceback too."""
    if verbose:
        raise e
    print(f"error: {e}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None


def _gpus() -> int:
    """GPUs this process may use, without importing torch (launch.sh's process layout)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m train.preflight <recipe|-> [hydra overrides]")
    from .api import compose, launch_plan

    experiment, overrides = (None if argv[0] == "-" else argv[0]), argv[1:]
    verbose = any(o.lstrip("+") in ("logging.verbose=true", "logging.verbose=True") for o in overrides)
    try:
        cfg = compose(experiment, overrides)  # the typed Config: converted and checked once
        check_inputs(cfg)
    except USER_ERRORS as e:
        fail(e, verbose)
    plan = launch_plan(cfg, gpus_per_node=_gpus())
    print(plan["nproc_per_node"], plan["pp"], plan["backend"], plan["stage"], plan["out_dir"])


if __name__ == "__main__":
    main(sys.argv[1:])
