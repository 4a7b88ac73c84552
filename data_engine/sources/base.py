"""What every data source is: item index -> one labelled sample, or ``Skip`` with a reason.

A ``Source`` is either generative (charts, molecules, geometry, formulas, tables: ``num_items``
is None, any count can be asked for) or reads a user's input (a SMILES file, an image folder,
caption shards, .docx files: item ``i`` is the ``i``-th input). ``make(index, rng)`` must use
only ``rng`` (seeded from (seed, source, index) by the writer) for its random choices, so a
sample never depends on which process made it or what was made before.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


class Skip(Exception):
    """An item that cannot become a sample (bad input); recorded with ``reason``, never fatal."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class MissingDependency(ImportError):
    """An optional dependency a source needs is not installed; the message names the package."""


def require(module: str, package: str, extra: str | None = None):
    """Import ``module`` or raise ``MissingDependency`` naming what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = f"pip install 'ocrflow[{extra}]'" if extra else f"pip install {package}"
        raise MissingDependency(f"this data source needs the Python package {package!r} "
                                f"(import {module!r} failed: {e}); install it with: {hint}") from None


def stable_rng(*parts) -> random.Random:
    """A ``random.Random`` seeded from ``parts``, equal in every process (no ``hash()``).

    Same construction as ``train.data_sources.stable_rng`` (kept here so engine workers do not
    import the trainer's torch/webdataset stack).
    """
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def hash16(*parts: Any) -> str:
    """First 16 hex digits of a SHA-256: the ``doc_id`` of a generated sample."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


@dataclass
class GeneratedSample:
    image: Image.Image
    labels: dict  # kind -> {"prompt": str, "text": str, ...} (docs/INTERFACES.md "Shard format")
    source_path: str  # input file, or "generated:<source>" for synthetic items
    doc_id: str | None = None  # 16 hex digits (key f"{doc_id}_00000"); None = hash of image + labels
    kind: str = "generated"  # meta "source": generated | image | docx | ...
    lang: str = "und"
    script: str = "Zyyy"
    extra: dict = field(default_factory=dict)  # source-specific metadata (e.g. the chart's data)


class Source:
    """Base class; subclasses set ``name``, ``data_source`` and implement ``make``."""

    name = "source"
    data_source = "ocr"  # "ocr" or "vision": the training-side source (train/data.py SOURCES)
    version = 1  # bump when sample bytes change for equal options
    seed = 0  # the run's seed; set by the writer before ``make`` (for draws shared by several items)
    image_format = "png"

    def __init__(self, **options):
        self.options = options

    def num_items(self) -> int | None:
        """Number of input items, or None for a generator without end."""
        return None

    def describe(self, index: int) -> str:
        """The input behind item ``index`` (for failure records)."""
        return f"{self.name}[{index}]"

    def options_digest(self) -> str:
        return json.dumps(self.options, sort_keys=True, default=str)

    def make(self, index: int, rng: random.Random) -> GeneratedSample:  # pragma: no cover - abstract
        raise NotImplementedError
