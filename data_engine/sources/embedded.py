"""The embedded default mix: every source's embedded generator, written side by side.

    python -m data_engine.sources.embedded --out runs/demo/sources --count 16 \\
        --engine-shards 'runs/demo/engine/shards/*.tar'

writes ``{out}/<name>/shards`` for charts, chemistry, geometry, formulas, tables and scene
(OCR sub-sources) and, from engine shards with fine labels, grounding (general vision), then
prints the trainer overrides that use them (``data.ocr_sources`` and ``data.vision_shards``),
one per line, for ``./launch.sh`` to pass on. Re-running continues / reuses what exists.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_engine.sources import get_source
from data_engine.sources.writer import write_source

OCR_GENERATORS = ("charts", "chemistry", "geometry", "formulas", "tables", "scene")


def write_embedded(out: str | Path, count: int, seed: int = 0, engine_shards: str | None = None,
                   scene_count: int | None = None, progress: bool = False) -> dict:
    """Write the embedded sources; returns ``{"ocr_sources": {name: glob}, "vision_shards": [...],
    "reports": {name: report}}``."""
    out = Path(out)
    result: dict = {"ocr_sources": {}, "vision_shards": [], "reports": {}}
    for name in OCR_GENERATORS:
        n = scene_count if name == "scene" and scene_count is not None else count
        rep = write_source(get_source(name), out / name, n, seed, shard_size=max(1, n), progress=progress)
        result["reports"][name] = rep
        if rep["written"]:
            result["ocr_sources"][name] = str(out / name / "shards" / f"{name}-*.tar")
    if engine_shards:
        src = get_source("grounding", input=engine_shards)
        rep = write_source(src, out / "grounding", None, seed, shard_size=max(1, src.num_items() or 1),
                           progress=progress)
        result["reports"]["grounding"] = rep
        if rep["written"]:
            result["vision_shards"].append(str(out / "grounding" / "shards" / "grounding-*.tar"))
    return result


def overrides(result: dict) -> list[str]:
    """Hydra overrides of the trainer's data group for ``result``."""
    srcs = ", ".join(f"{k}: [{v}]" for k, v in result["ocr_sources"].items())
    out = [f"data.ocr_sources={{{srcs}}}"]
    if result["vision_shards"]:
        out.append(f"data.vision_shards=[{','.join(result['vision_shards'])}]")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_engine.sources.embedded", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--count", type=int, default=16, help="samples per generator")
    ap.add_argument("--scene-count", type=int, default=None, help="scene samples (PP-OCR is the slow one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine-shards", default=None, help="engine shards with fine labels -> grounding samples")
    a = ap.parse_args(argv)
    res = write_embedded(a.out, a.count, a.seed, a.engine_shards, a.scene_count)
    for name, rep in res["reports"].items():
        print(f"[sources] {name}: {rep['written']} written, {rep['failed']} failed", file=sys.stderr)
    print("\n".join(overrides(res)))


if __name__ == "__main__":
    main()
