"""Model flywheel rounds (DeepSeek-OCR paper, section 3.4); data side in ``data_engine.flywheel``.

    from train.flywheel import run_flywheel
    report = run_flywheel(cfg)          # cfg: conf/flywheel.yaml composed (or a dict like it)

``python -m train.flywheel [overrides]`` / ``./launch.sh flywheel [overrides]`` is the Hydra
entry. See docs/flywheel.md for the loop, its knobs and its outputs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def _console(msg: str) -> None:
    print(msg, flush=True)


def run_flywheel(cfg: DictConfig | dict, log=_console) -> dict:
    """Prepare the data (once), then run ``flywheel.rounds`` rounds; returns the run report."""
    import torch

    from data_engine.flywheel.dataset import generate_default_corpus, prepare_data
    from data_engine.flywheel.detect import get_line_source

    from .report import table, write_run_report
    from .rounds import RoundRunner

    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    fw = cfg.flywheel
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(fw.threads))
    languages = {}
    for item in fw.languages:  # [{lang: eng-Latn, digital: n, scan: n, gold: n}, ...]
        item = dict(item)
        spec = str(item.pop("lang", ""))
        if not spec or spec in languages:
            raise ValueError(f"flywheel.languages: every entry needs a distinct 'lang' (got {spec!r})")
        languages[spec] = item
    if not languages:
        raise ValueError("flywheel.languages is empty: name at least one '<iso639-3>-<iso15924>' language")
    t0 = time.process_time()
    if fw.input:
        pdf_dir = Path(str(fw.input))
        if not pdf_dir.is_dir() or not any(pdf_dir.glob("*.pdf")):
            raise FileNotFoundError(f"flywheel.input={pdf_dir}: no PDF files there (expected <lang>_<script>_*.pdf)")
    else:
        pdf_dir = out / "pdfs"
        log(f"[flywheel] generating the embedded default corpus -> {pdf_dir}")
        generate_default_corpus(pdf_dir, languages, int(fw.pages_per_doc), int(fw.seed))
    det_kw = {k: v for k, v in dict(fw.detector).items() if k != "name" and v is not None}
    if str(fw.detector.name) == "ppocr_det":
        det_kw.setdefault("threads", int(fw.threads))
        det_kw.setdefault("dpi", int(fw.dpi))
    detector = get_line_source(str(fw.detector.name), **det_kw)
    counts = prepare_data(out / "data", languages, pdf_dir=pdf_dir, detector=detector, dpi=int(fw.dpi),
                          tokenizer_vocab=int(fw.tokenizer_vocab), log=log)
    if sum(c["pool"] for c in counts.values()) == 0:
        log("[flywheel] warning: nothing to label (no image-only pages and no refused text-layer lines)")
    runner = RoundRunner(fw, out, list(languages), log=log)
    rounds = []
    for k in range(int(fw.rounds)):
        log(f"[flywheel] round {k}: train -> label -> accept -> measure")
        rounds.append(runner.run_round(k))
        write_run_report(out, rounds, {"data": counts, "config": OmegaConf.to_container(cfg, resolve=True)})
    log(table(rounds))
    log(f"[flywheel] report: {out / 'report.json'}, {out / 'report.md'}, {out / 'report.png'} "
        f"({time.process_time() - t0:.0f} CPU-s in this process)")
    return json.loads((out / "report.json").read_text(encoding="utf-8"))
