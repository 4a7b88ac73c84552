"""Typed config schema of the data engine (``conf/engine.yaml`` + ``conf/data_engine/``).

One default per key, here and nowhere else: the YAML files hold recipe values only.

* ``EngineConfig``: the ``data_engine`` group (what ``run_engine`` receives).
* ``EngineAppConfig``: the primary config of ``python -m data_engine.cli`` (``input``, ``out``).

To add a key: add a field to ``EngineConfig`` with its default, a trailing comment that
documents it, and ``setting(default, ge=/gt=/le=/choices=)`` when it has a range; checks that
involve several keys go in ``EngineConfig.check``. ``digest`` lists the keys that change sample
bytes. Types are checked by OmegaConf at composition, ranges by ``__post_init__`` (run by
``typed``, which every entry point calls right after composition).

The generic machinery (``setting``, ``Schema``, ``typed``, ``register_schema``) is shared with
the trainers' schema in ``train/config.py``; it needs omegaconf, and hydra only to register.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue, OmegaConfBaseException

IMAGE_FORMATS = ("jpg", "png")  # page image formats render.py writes (here: the trainers' config check imports no PyMuPDF)

ENGINE_VERSION = 4  # bump when sample bytes change for the same config (forces re-processing)
LABEL_KINDS = ("coarse", "fine")
EXECUTORS = ("local", "ray")  # where units run: this machine's process pool, or a Ray cluster (docs/cluster.md)


class ConfigError(ValueError):
    """A config value out of its range; the message names the dotted key."""


def setting(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            choices: tuple | None = None) -> Any:
    """A schema field with its one default and its range. Bounds and ``choices`` apply to each
    element of a list / value of a dict; ``None`` (for Optional keys) is always allowed."""
    meta = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("choices", choices)) if v is not None}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def group(schema: type) -> Any:
    """A nested config group (a field whose value is another ``Schema`` dataclass)."""
    return field(default_factory=schema)


def _range_error(key: str, value: Any, meta: Mapping) -> str | None:
    if "choices" in meta and value not in meta["choices"]:
        return f"{key} must be one of {list(meta['choices'])}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if "gt" in meta and not value > meta["gt"]:
        return f"{key} must be " + ("positive (> 0)" if meta["gt"] == 0 else f"> {meta['gt']}") + f", got {value!r}"
    if "ge" in meta and not value >= meta["ge"]:
        return f"{key} must be >= {meta['ge']}, got {value!r}"
    if "le" in meta and not value <= meta["le"]:
        return f"{key} must be <= {meta['le']}, got {value!r}"
    return None


@dataclass
class Schema:
    """Base of every config group: ranges are checked when an instance is built
    (``OmegaConf.to_object`` builds one from a composed config, so composition errors name the key)."""

    _key: ClassVar[str] = ""  # the group's dotted path in its primary config, for messages

    def _dotted(self, name: str) -> str:
        return f"{self._key}.{name}" if self._key else name

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None or not meta:
                continue
            items = (value.items() if isinstance(value, Mapping) else
                     enumerate(value) if isinstance(value, (list, tuple)) else [(None, value)])
            for sub, v in items:
                key = self._dotted(f.name) if sub is None else f"{self._dotted(f.name)}.{sub}"
                if v is not None and (msg := _range_error(key, v, meta)):
                    raise ConfigError(msg)
        self.check()

    def check(self) -> None:
        """Checks that involve several keys of the group (override; raise ConfigError)."""


S = TypeVar("S", bound=Schema)


def _set(node: DictConfig, given: Mapping, prefix: str) -> None:
    """Assign ``given`` onto a structured node: sub-groups recurse, every other value (lists and
    dicts included) replaces the default as a whole; types are checked by OmegaConf."""
    unknown = [k for k in given if k not in node]
    if unknown:
        raise ConfigError(f"unknown {prefix.replace('_', ' ').replace('.', ' ')} config keys "
                          f"{[f'{prefix}.{k}' if prefix else k for k in unknown]}; known: {sorted(node.keys())}")
    for k, v in given.items():
        child = node._get_node(k)
        sub = OmegaConf.get_type(child) if isinstance(child, DictConfig) else None
        if isinstance(v, Mapping) and sub is not None and dataclasses.is_dataclass(sub):
            _set(child, v, f"{prefix}.{k}" if prefix else str(k))
        else:
            try:
                node[k] = v
            except OmegaConfBaseException as e:  # wrong type: name the key as composition does
                raise ConfigError(f"{prefix + '.' if prefix else ''}{k}: {str(e).splitlines()[0]}") from None


def typed(cfg: Any, schema: type[S]) -> S:
    """The validated ``schema`` instance for ``cfg``: an instance (as is), a DictConfig composed
    with this schema (converted), or a partial dict / DictConfig (set onto the defaults)."""
    if isinstance(cfg, schema):
        return cfg
    if isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is schema:
        try:
            return OmegaConf.to_object(cfg)
        except (MissingMandatoryValue, InterpolationToMissingValueError) as e:
            key = str(e).partition("Missing mandatory value: ")[2].splitlines()[0] if "value: " in str(e) else e.full_key
            raise ConfigError(f"{key} is required but not set (???): pass {key}=...") from None
    if cfg is not None and not isinstance(cfg, Mapping):
        raise TypeError(f"{schema.__name__}: expected a dict or DictConfig, got {type(cfg).__name__}")
    node = OmegaConf.structured(schema)
    given = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})
    _set(node, given, schema._key)
    return OmegaConf.to_object(node)


def register_schema(name: str, node: type) -> None:
    """Put a primary schema in Hydra's ConfigStore; a primary YAML lists it first in ``defaults``."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=name, node=node)


# --------------------------------------------------------------------------- the engine's keys


@dataclass
class EngineConfig(Schema):
    """``data_engine`` group: settings of ``data_engine.pipeline.run_engine``."""

    _key: ClassVar[str] = "data_engine"

    input: Any = None                 # path | dir | glob | list file, or a list of them
    out: Optional[str] = None         # output root: shards/, work/, report.json, failures.jsonl
    name: str = "pages"               # shard prefix: {out}/shards/{name}-{NNNNNN}.tar
    work_dir: Optional[str] = None    # unit outputs + caches; default {out}/work
    workers: Optional[int] = setting(None, ge=0)  # None or 0: all available cores
    start_method: str = "spawn"       # spawn: MuPDF state is never forked
    labels: list[str] = setting(["coarse"], choices=LABEL_KINDS)  # fine needs `fine:` (layout source)
    # rendering
    dpi: float = setting(144.0, gt=0)
    max_side: Optional[int] = setting(3000, gt=0)  # cap on the rendered longest side (px; posters, huge scans)
    image_format: str = setting("jpg", choices=IMAGE_FORMATS)
    jpeg_quality: int = setting(90, ge=1, le=100)
    # coarse labels and filters
    sort_text: bool = False           # False: content-stream order (keeps columns); True: top-left to bottom-right
    min_chars: int = setting(10, ge=0)  # fewer non-space chars -> too_little_text
    max_bad_char_ratio: float = setting(0.01, ge=0, le=1)  # U+FFFD / private-use / control chars in runs -> garbled_text
    max_isolated_bad_ratio: float = setting(0.05, ge=0, le=1)  # lone ones (a delimiter) dropped up to this
    max_tokens: int = setting(7168, gt=0)  # 8192 context - up to ~1000 vision tokens (Gundam) - prompt
    tokenizer: Optional[str] = None   # tokenizer.json for exact token counts; None: cheap estimate
    min_lang_prob: float = setting(0.5, ge=0, le=1)  # below this the language is "und"
    max_pages_per_doc: Optional[int] = setting(None, ge=1)
    cer_pages_per_doc: int = setting(2, ge=0)  # real PDFs: pages per document whose coarse label is scored against pdftotext (when installed) for the report's coarse_cer_per_language; 0: none
    # shards
    max_count: int = setting(1000, gt=0)  # samples per shard
    max_size: int = setting(1_000_000_000, gt=0)  # payload bytes per shard
    keep_units: bool = True           # keep work/units after assembly; false halves disk use but a re-run redoes every unit
    fine: dict[str, Any] = setting({})  # kwargs of data_engine.layout.get_layout_source ({} = picodet; {name: textlayer}: rules only)
    max_crash_retries: int = setting(1, ge=0)  # a unit that kills its worker more often is worker_crash
    # wall-clock limit per document: its worker is stopped, the document recorded as timeout (None: no limit)
    doc_timeout_s: Optional[float] = setting(900.0, gt=0)
    # wall-clock limit per page (local executor): a page still running is recorded as page_timeout and skipped, the rest of its document goes on (None: no limit)
    page_timeout_s: Optional[float] = setting(60.0, gt=0)
    executor: str = setting("local", choices=EXECUTORS)  # local: process pool here; ray: Ray tasks on a cluster
    ray_address: Optional[str] = None  # executor=ray: "auto", "host:6379", "ray://host:10001"; None: $RAY_ADDRESS, else a new local Ray instance
    ray_runtime_env: dict[str, Any] = setting({})  # executor=ray: Ray runtime_env of the workers ({}: this checkout on PYTHONPATH)
    progress: bool = True
    print_summary: bool = True

    def check(self) -> None:
        if not self.labels:
            raise ConfigError(f"data_engine.labels must be a non-empty subset of {list(LABEL_KINDS)}")
        if not re.fullmatch(r"[A-Za-z0-9_.]+", self.name):
            raise ConfigError(f"data_engine.name (shard prefix) must match [A-Za-z0-9_.]+, got {self.name!r}")
        if self.start_method not in mp.get_all_start_methods():
            raise ConfigError(f"data_engine.start_method must be one of {mp.get_all_start_methods()}, "
                              f"got {self.start_method!r}")

    def validate(self) -> None:
        """What a run needs beyond ranges: input and output given, files and layout source present."""
        if not self.input:
            raise ConfigError("data engine: `input` is required (file, directory, glob or list file)")
        if not self.out:
            raise ConfigError("data engine: `out` (output directory) is required")
        if self.tokenizer and not Path(self.tokenizer).is_file():
            raise FileNotFoundError(f"data_engine.tokenizer file not found: {self.tokenizer}")
        if "fine" in self.labels:
            from data_engine.layout import check_layout_config

            check_layout_config(**(self.fine or {}))
        if self.executor == "ray":
            try:
                import ray  # noqa: F401
            except ImportError as e:
                raise ImportError("data_engine.executor=ray needs Ray: pip install 'ocrflow[ray]'") from e

    @classmethod
    def from_any(cls, cfg: EngineConfig | Mapping) -> EngineConfig:
        """From an instance, the ``data_engine`` node, a primary config holding one, or a dict."""
        if isinstance(cfg, (Mapping, DictConfig)) and isinstance(cfg.get("data_engine"), (Mapping, DictConfig)):
            cfg = cfg["data_engine"]
        return typed(cfg, cls)

    def digest(self) -> str:
        """Hash of every setting that changes sample bytes; a committed unit with another digest is redone."""
        keys = ("labels", "dpi", "max_side", "image_format", "jpeg_quality", "sort_text", "min_chars",
                "max_bad_char_ratio", "max_isolated_bad_ratio", "max_tokens", "tokenizer", "min_lang_prob", "max_pages_per_doc", "fine")
        blob = json.dumps({k: getattr(self, k) for k in keys} | {"v": ENGINE_VERSION}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class EngineAppConfig(Schema):
    """Primary config of the engine CLI: ``conf/engine.yaml`` (``data_engine.input/out`` follow these)."""

    input: Any = MISSING              # PDF/image file, directory (recursive), glob, or list file; or a list
    out: str = MISSING                # output root
    data_engine: EngineConfig = group(EngineConfig)


def register() -> None:
    register_schema("engine_schema", EngineAppConfig)
