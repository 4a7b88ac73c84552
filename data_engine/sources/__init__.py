"""OCR 2.0, formula/table, scene-text and general-vision data sources (paper section 3.4).

Each source writes the engine's shard contract (docs/INTERFACES.md "Shard format") through
one resumable, deterministic writer (``writer.write_source``); see docs/sources.md.

    python -m data_engine.sources charts --out data/charts --count 10000 --seed 0
    python -m data_engine.sources chemistry --out data/mols --input my.smi
    python -m data_engine.sources.cli source=scene out=data/scene count=1000   (Hydra)
"""

from __future__ import annotations

import importlib

# name -> (module, class). Modules are imported on demand: each pulls its own dependencies.
REGISTRY = {
    "charts": ("data_engine.sources.charts", "ChartSource"),
    "chemistry": ("data_engine.sources.chemistry", "ChemistrySource"),
    "geometry": ("data_engine.sources.geometry", "GeometrySource"),
    "formulas": ("data_engine.sources.formulas_tables", "FormulaSource"),
    "tables": ("data_engine.sources.formulas_tables", "TableSource"),
    "docx": ("data_engine.sources.docx", "DocxSource"),
    "scene": ("data_engine.sources.scene_text", "SceneTextSource"),
    "captions": ("data_engine.sources.general_vision", "CaptionSource"),
    "grounding": ("data_engine.sources.general_vision", "GroundingSource"),
}


def get_source(name: str, **options):
    """An instance of source ``name`` built with ``options`` (its keyword arguments)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown data source {name!r}; known: {sorted(REGISTRY)}")
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(**options)
