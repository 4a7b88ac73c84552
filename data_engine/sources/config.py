"""Typed schema of the data sources' Hydra entry (``conf/sources.yaml``), registered with Hydra's
ConfigStore as ``sources_schema`` (same machinery as data_engine/config.py).

The top-level keys have their one default here. ``source`` is the group ``conf/source/<name>.yaml``:
the source's name and its options, passed as keyword arguments to the source's constructor
(data_engine/sources/<module>.py), which validates them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from omegaconf import MISSING

from data_engine.config import Schema, register_schema, setting


@dataclass
class SourcesConfig(Schema):
    _key: ClassVar[str] = ""

    out: str = MISSING                # output root: shards/, work/, report.json, failures.jsonl
    count: Optional[int] = setting(None, ge=0)  # items to make; null = all input items (sources with an input)
    seed: int = 0
    shard_size: int = setting(1000, ge=1)  # items per shard (shard k = items k*shard_size ..): resumable per shard
    workers: int = setting(1, ge=1)   # processes, one shard each at a time
    progress: bool = True
    source: Any = field(default_factory=lambda: {"name": "charts"})  # conf/source/<name>.yaml: name + options


def register() -> None:
    register_schema("sources_schema", SourcesConfig)
